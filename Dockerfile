# One image for every brewcast service of docker-compose.yml (MLflow server, Airflow
# components, the BentoML service): the locked environment plus the project (libgomp1:
# the OpenMP runtime LightGBM, the boosted model family, links against).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 UV_LINK_MODE=copy \
    PATH=/app/.venv/bin:$PATH BREWCAST_HOME=/data/brewcast
RUN pip install --no-cache-dir uv && apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY brewcast ./brewcast
COPY ingest ./ingest
COPY validation ./validation
COPY models ./models
COPY serving ./serving
COPY monitoring ./monitoring
COPY application ./application
COPY dags ./dags
RUN uv sync --frozen --no-default-groups --extra production --compile-bytecode
EXPOSE 3000 5000 8080
CMD ["brewcast", "--help"]

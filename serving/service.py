"""The BentoML service: ``bentoml serve serving.service:FermentationService``.

* ``POST /predict``  body ``{"rows": [snapshot, ...]}`` -> per row a prediction id, the
  calibrated probability, the decision at the model's threshold, hours remaining; plus
  the model version and threshold. Every row is logged before the response is sent (sync
  mode).
* ``POST /feedback`` body ``{"labels": [...]}`` -> ground truth for earlier predictions.
* ``POST /reload`` -> check MLflow for a new champion now (also polled in the background).
* ``GET /metadata`` -> model version, threshold, calibration, execution provider in use,
  schema; BentoML's ``/healthz``, ``/livez``, ``/readyz`` (ready once a model is loaded) and
  ``/metrics`` (Prometheus, with brewcast's own metrics).

Known BentoML costs, avoided:

* a bare list/ndarray return regenerates a JSON schema per response: ``/predict`` answers
  JSON bytes it built with orjson (BentoML passes a returned ``Response`` through), while
  ``output_spec`` keeps ``PredictResponse`` as the documented schema;
* the request models are positional-only ("root") inputs, so BentoML hands the validated
  model over as it is instead of copying its fields one by one (through a pydantic
  deprecation warning on every request); the JSON body is the same;
* BentoML binds an API method anew on every request (``inspect.signature``,
  ``functools.wraps``): the service binds each once at start;
* OpenTelemetry is told to skip every URL.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from http import HTTPStatus

import anyio.to_thread
import bentoml
import orjson
import pandas as pd
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from brewcast.schema import FEATURES, schema_fingerprint, slice_keys
from brewcast.settings import get_settings
from serving.api_models import (
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    predict_response_json,
)
from serving.bento_config import service_config
from serving.coalesce import ScoringCoalescer
from serving.metrics import MODEL_VERSION, RequestMetrics, flush_all
from serving.model import ModelHolder
from serving.prediction_log import PredictionLog

log = logging.getLogger("brewcast.serving")

# GET routes; docs off so BentoML's own Swagger UI at / and /docs stays the API's documentation.
routes = FastAPI(title="brewcast metadata", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _refuse(status: int, message: str) -> BentoMLException:
    """An error raised inside an API method; BentoML answers ``status`` with the message."""
    return BentoMLException(message, error_code=HTTPStatus(status))


def _parse_json(body: bytes):
    """orjson (~5x json.loads; this parse is on every request). What orjson refuses goes to
    the standard parser, which takes NaN and Infinity literals, so that validation can say
    which field holds one."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class RequestGuard:
    """ASGI middleware in front of the POST endpoints, answering ``{"error": message}``:

    * 401 without the right ``X-API-Key`` (when ``BREWCAST_SERVING_API_KEY`` is set);
    * 413 for a body over the byte limit (before it is read whole) or over the row limit;
    * 400 for a body that is not JSON (BentoML would report a confusing missing field);
    * 422 for an empty ``rows`` list;

    and, before BentoML answers ``GET /metrics``, flushes the metrics this worker added up.
    """

    ROUTES = ("/predict", "/feedback", "/reload")

    def __init__(self, app, max_bytes: int) -> None:
        settings = get_settings()
        self.app, self.max_bytes = app, max_bytes
        self.max_rows, self.api_key = settings.serving_max_rows, settings.serving_api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/metrics":
            flush_all()  # what this worker added up, before BentoML reads the shared files
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in (self.ROUTES)
        ):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if (
            self.api_key is not None
            and headers.get(b"x-api-key", b"").decode(errors="replace") != self.api_key
        ):
            return await _error(401, "missing or wrong X-API-Key header")(scope, receive, send)
        if int(headers.get(b"content-length", b"0") or 0) > self.max_bytes:
            return await _error(413, f"request body over {self.max_bytes} bytes")(
                scope, receive, send
            )
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _error(413, f"request body over {self.max_bytes} bytes")(
                    scope, receive, send
                )
        if scope["path"] != "/reload":
            try:
                payload = _parse_json(body)
            except ValueError as exc:
                return await _error(400, f"request body is not valid JSON: {exc}")(
                    scope, receive, send
                )
            problem = self._problem(scope["path"], payload)
            if problem:
                return await _error(*problem)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def _problem(self, path: str, payload) -> tuple[int, str] | None:
        field = "rows" if path == "/predict" else "labels"
        items = payload.get(field) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            return 400, f'body must be a JSON object with a list "{field}"'
        if not items:
            return 422, f"{field}: give at least one"
        if len(items) > self.max_rows:
            return 413, (
                f"{field}: {len(items)} in one request, the limit is {self.max_rows} "
                f"(BREWCAST_SERVING_MAX_ROWS)"
            )
        return None


#: Read once at import: BentoML takes the service's configuration from its decorator.
_SETTINGS = get_settings()


@bentoml.service(name="brewcast", **service_config(_SETTINGS))
@bentoml.asgi_app(routes, path="/")
class FermentationService:
    def __init__(self) -> None:
        # BentoML's API descriptor builds a bound method on every request; an instance
        # attribute shadows it (a non-data descriptor), so each is bound once, here.
        for name in FermentationService.apis:
            setattr(self, name, getattr(self, name))
        self.settings = get_settings()
        self.holder = ModelHolder(self.settings)
        self.holder.refresh()
        if self.settings.serving_poll_seconds > 0:
            self.holder.poll(self.settings.serving_poll_seconds)
        self.log = PredictionLog(
            self.settings.prediction_log,
            self.settings.prediction_log_mode,
            self.settings.prediction_log_queue,
        )
        self.metrics = RequestMetrics(
            lambda: (self.log.stats.rows_written, self.log.stats.rows_dropped)
        )
        self.metrics.start()
        self.coalescer = ScoringCoalescer()
        model = self.holder.current
        if model is not None:
            MODEL_VERSION.set(float(model.version) if model.version.isdigit() else 0)
            log.info("brewcast serving version %s on %s", model.version, model.session.provider)
        else:
            log.warning("brewcast serving started without a model: %s", self.holder.last_error)
        # Everything loaded so far (BentoML, pydantic, onnx, MLflow's client...) lives as long
        # as the worker: out of the collector's sight, a full collection no longer walks it.
        # Without this, p99 at concurrency 1 was 100-130 ms (a gen-2 collection) against 6.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        self.log.close()
        self.metrics.stop()

    @bentoml.api(route="/predict", output_spec=PredictResponse)
    async def predict(self, request: PredictRequest, /) -> Response:
        """Score fermentation snapshots with the champion model."""
        model = self.holder.current  # this request's model, even if a swap happens now
        if model is None:
            raise _refuse(503, f"no model loaded yet: {self.holder.last_error}")
        # The validated fields (extra fields are refused), without model_dump's copy.
        records = [vars(r) for r in request.rows]
        served_at = pd.Timestamp.now("UTC").to_pydatetime()
        started = time.perf_counter()
        # Async, so a request waiting for its log commit holds no thread: every waiting
        # request joins the next group commit. Small requests score on the event loop, in
        # one onnxruntime call with the others of the same loop turn; big ones on a thread,
        # so they do not stall it (BREWCAST_SERVING_INLINE_ROWS).
        if len(records) <= self.settings.serving_inline_rows:
            log_rows = await self.coalescer.score(model, records, served_at)
        else:
            log_rows = await anyio.to_thread.run_sync(model.score, records, served_at)
        model_seconds = time.perf_counter() - started
        try:
            await self.log.write_async(log_rows)
        except Exception as exc:  # never answer rows that were not logged
            log.exception("prediction log write failed")
            raise _refuse(503, f"prediction log unavailable, nothing served: {exc}") from exc
        self.metrics.record(model.version, records, log_rows, model_seconds)
        return Response(
            predict_response_json(
                model.version,
                model.threshold,
                model.horizon_hours,
                log_rows,
                model.notes(log_rows),
            ),
            media_type="application/json",
        )

    @bentoml.api(route="/feedback")
    def feedback(self, request: FeedbackRequest, /) -> FeedbackResponse:
        """Ground truth for earlier predictions: by prediction id, or by batch finish time."""
        labels = request.labels  # each one of a kind (``Label`` validates that)
        self.log.flush()  # predictions answered a moment ago are committed even in async mode
        ids = [label.prediction_id for label in labels if label.prediction_id]
        unknown = sorted(set(ids) - self.log.known_prediction_ids(ids))
        accepted = [
            label.model_dump()
            for label in labels
            if label.prediction_id is None or label.prediction_id not in unknown
        ]
        self.log.add_labels(accepted, source="api")
        return FeedbackResponse(accepted=len(accepted), unknown_prediction_ids=unknown)

    @bentoml.api(route="/reload")
    def reload(self) -> dict:
        """Check MLflow for a new champion now; the swap is atomic, no request is dropped."""
        swapped = self.holder.refresh()
        model = self.holder.current
        if model is not None:
            MODEL_VERSION.set(float(model.version) if model.version.isdigit() else 0)
        return {
            "swapped": swapped,
            "model_version": model.version if model else None,
            "error": self.holder.last_error,
        }

    @routes.get("/metadata")
    def metadata(self) -> dict:
        model = self.holder.current
        return {
            "model": model.describe() if model else None,
            "model_error": self.holder.last_error,
            "execution_provider": model.session.provider if model else None,
            "schema": {
                "fingerprint": schema_fingerprint(),
                "features": [
                    {
                        "name": c.name,
                        "dtype": c.dtype,
                        "unit": c.unit,
                        "min": c.min,
                        "max": c.max,
                        "categorical": c.is_categorical,
                        # closed sets only; a brewery's own names are the model's
                        # ``model.vocabularies``
                        "vocabulary": list(c.vocabulary) if c.vocabulary else None,
                    }
                    for c in FEATURES.by_role("feature")
                ],
                "slice_keys": slice_keys(),
            },
            "prediction_log": {
                "mode": self.log.mode,
                "rows_written": self.log.stats.rows_written,
                "rows_dropped": self.log.stats.rows_dropped,
                "commits": self.log.stats.commits,
            },
            "max_rows_per_request": self.settings.serving_max_rows,
        }


FermentationService.add_asgi_middleware(RequestGuard, max_bytes=_SETTINGS.serving_max_body_bytes)

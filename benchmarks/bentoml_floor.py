"""The floor of BentoML's own cost: a BentoML service configured as brewcast's is (traffic
timeout and concurrency limit, its HTTP metrics on, tracing and access log off, the start-up
heap frozen) with the same request model, but no model, no prediction log, no guard and no
metrics of brewcast's: it validates the rows and answers fixed bytes. What a request costs
here, every BentoML service with those features pays; what brewcast's service costs on top
is brewcast's own. Run: bentoml serve benchmarks.bentoml_floor:BentoMLFloor."""

from __future__ import annotations

import gc
import os

import bentoml
from starlette.responses import Response

from serving.api_models import PredictRequest, PredictResponse

ANSWER = b'{"model_version":"floor","threshold":0.5,"horizon_hours":24.0,"predictions":[]}'


@bentoml.service(
    name="bentoml-floor",
    workers=int(os.environ.get("BREWCAST_SERVING_WORKERS", "1")),
    traffic={"timeout": 30, "max_concurrency": 256},
    metrics={"enabled": True},
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": [".*"]},
)
class BentoMLFloor:
    def __init__(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict", output_spec=PredictResponse)
    async def predict(self, request: PredictRequest, /) -> Response:
        """Validate the rows, answer a fixed response."""
        return Response(ANSWER, media_type="application/json")

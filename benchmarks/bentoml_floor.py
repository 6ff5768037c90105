"""The floor of BentoML's own cost: a BentoML service configured as brewcast's is (the same
``service_config``: workers, traffic timeout and concurrency limit, its HTTP metrics, tracing
and access log; the start-up heap frozen) with the same request model, but no model, no
prediction log, no guard and no metrics of brewcast's: it validates the rows and answers
fixed bytes. What a request costs here, every BentoML service with those features pays;
what brewcast's service costs on top is brewcast's own.
Run: bentoml serve benchmarks.bentoml_floor:BentoMLFloor."""

from __future__ import annotations

import gc

import bentoml
from starlette.responses import Response

from brewcast.settings import get_settings
from serving.api_models import PredictRequest, PredictResponse
from serving.bento_config import service_config

ANSWER = b'{"model_version":"floor","threshold":0.5,"horizon_hours":24.0,"predictions":[]}'


@bentoml.service(name="bentoml-floor", **service_config(get_settings()))
class BentoMLFloor:
    def __init__(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict", output_spec=PredictResponse)
    async def predict(self, request: PredictRequest, /) -> Response:
        """Validate the rows, answer a fixed response."""
        return Response(ANSWER, media_type="application/json")

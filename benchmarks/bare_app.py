"""The floor of HTTP cost: the same ONNX model behind a bare Starlette app (no BentoML, no
validation beyond JSON, no prediction log). Run: uvicorn benchmarks.bare_app:app."""

from __future__ import annotations

import os

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from brewcast.contract import OUTPUTS, raw_inputs_from_records
from models.export import cpu_session

SESSION = cpu_session(open(os.environ["BARE_MODEL"], "rb").read())  # noqa: SIM115


async def predict(request: Request) -> JSONResponse:
    rows = (await request.json())["rows"]
    probability, hours = SESSION.run(list(OUTPUTS), raw_inputs_from_records(rows))
    return JSONResponse(
        {
            "predictions": [
                {"probability": float(p), "hours_remaining": float(h)}
                for p, h in zip(np.ravel(probability), np.ravel(hours), strict=True)
            ]
        }
    )


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/healthz", healthz)])

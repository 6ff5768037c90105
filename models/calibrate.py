"""Recalibration fitted on held-out data: Platt scaling or temperature scaling.

Both act on the network's logit, ``p = sigmoid(a * logit + b)`` (temperature: ``b = 0``,
``a = 1 / T``), so the calibration becomes two constants inside the exported ONNX graph —
never a patch on outputs at serving time (DOMAIN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize

Method = Literal["platt", "temperature", "none"]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class Calibration:
    method: str
    a: float = 1.0
    b: float = 0.0

    def apply(self, logit: np.ndarray) -> np.ndarray:
        return sigmoid(self.a * np.asarray(logit, dtype=np.float64) + self.b)


def _nll(params: np.ndarray, logit: np.ndarray, y: np.ndarray, with_bias: bool) -> tuple:
    a, b = params[0], params[1] if with_bias else 0.0
    z = a * logit + b
    # log(1 + exp(z)) - y z, stable; gradient sigmoid(z) - y.
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    g = sigmoid(z) - y
    grad = [np.mean(g * logit)] + ([np.mean(g)] if with_bias else [])
    return loss, np.array(grad)


def fit_calibration(logit, y, method: Method = "platt") -> Calibration:
    """Fit by maximum likelihood (log loss) on validation logits and labels."""
    logit = np.asarray(logit, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if method == "none":
        return Calibration("none")
    if method not in ("platt", "temperature"):
        raise ValueError(f"calibration method must be platt, temperature or none: {method!r}")
    if np.unique(y).size < 2:
        raise ValueError("calibration needs both classes in the validation split")
    with_bias = method == "platt"
    start = np.array([1.0, 0.0][: 2 if with_bias else 1])
    result = minimize(_nll, start, args=(logit, y, with_bias), jac=True, method="L-BFGS-B")
    a = float(result.x[0])
    b = float(result.x[1]) if with_bias else 0.0
    return Calibration(method, a, b)

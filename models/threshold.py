"""The decision threshold is a business choice: chosen on validation data by expected cost
(a false "finished" spoils a batch, a late call wastes tank time), or as the highest recall
whose precision reaches a target. The report is versioned with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from models.metrics import Confusion

Policy = Literal["cost", "precision_target"]


@dataclass
class ThresholdReport:
    policy: str
    threshold: float
    expected_cost_per_row: float
    precision: float
    recall: float
    cost_false_finished: float
    cost_late: float
    precision_target: float | None
    curve: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "curve"}


def _sweep(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """For every candidate threshold (each distinct score, highest first): TP, FP, FN."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tp = np.cumsum(y_sorted)[last_of_tie]
    fp = np.cumsum(1 - y_sorted)[last_of_tie]
    thresholds = p_sorted[last_of_tie]
    pos = y.sum()
    # Also "decide nothing": a threshold above every score.
    return {
        "threshold": np.r_[np.nextafter(p_sorted[0], np.inf) if p.size else 1.0, thresholds],
        "tp": np.r_[0.0, tp],
        "fp": np.r_[0.0, fp],
        "fn": pos - np.r_[0.0, tp],
    }


def choose_threshold(
    y,
    p,
    policy: Policy = "cost",
    cost_false_finished: float = 10.0,
    cost_late: float = 1.0,
    precision_target: float = 0.95,
) -> ThresholdReport:
    """Pick the threshold on validation labels ``y`` and calibrated probabilities ``p``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError("threshold choice needs validation rows")
    s = _sweep(y, p)
    cost = (cost_false_finished * s["fp"] + cost_late * s["fn"]) / y.size
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(s["tp"] + s["fp"] > 0, s["tp"] / (s["tp"] + s["fp"]), 1.0)
        recall = np.where(s["tp"] + s["fn"] > 0, s["tp"] / (s["tp"] + s["fn"]), 0.0)
    if policy == "cost":
        best = int(np.argmin(cost))  # ties: the highest threshold (fewest automatic calls)
    elif policy == "precision_target":
        ok = np.flatnonzero(precision >= precision_target)
        best = int(ok[np.argmax(recall[ok])]) if ok.size else 0
    else:
        raise ValueError(f"threshold policy must be cost or precision_target, not {policy!r}")
    threshold = float(s["threshold"][best])
    c = Confusion.at(y, p, threshold)
    return ThresholdReport(
        policy=policy,
        threshold=threshold,
        expected_cost_per_row=float(cost[best]),
        precision=c.precision,
        recall=c.recall,
        cost_false_finished=cost_false_finished,
        cost_late=cost_late,
        precision_target=precision_target if policy == "precision_target" else None,
        curve={
            "threshold": s["threshold"].tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "cost_per_row": cost.tolist(),
        },
    )

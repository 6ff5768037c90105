"""The statistics of DOMAIN.md, defined once: classification metrics, log loss, Brier, ROC
AUC, prediction bias with a confidence interval, calibration (ECE, reliability table).

Plain NumPy, so every number can be checked by hand or against scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

EPS = 1e-15
Z95 = 1.959963984540054


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    return y, p


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def at(cls, y, p, threshold: float) -> Confusion:
        """Decisions ``p >= threshold`` against labels ``y``."""
        y, p = _arrays(y, p)
        pos, dec = y == 1, p >= threshold
        return cls(
            int((pos & dec).sum()),
            int((~pos & dec).sum()),
            int((~pos & ~dec).sum()),
            int((pos & ~dec).sum()),
        )

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else float("nan")

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else float("nan")

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the more common class."""
        pos = self.tp + self.fn
        return max(pos, self.n - pos) / self.n if self.n else float("nan")

    @property
    def decision_rate(self) -> float:
        return (self.tp + self.fp) / self.n if self.n else float("nan")

    def accuracy_note(self) -> str | None:
        """DOMAIN.md's accuracy paradox, said out loud where it applies."""
        if self.n and self.accuracy <= self.majority_rate:
            return (
                f"accuracy {self.accuracy:.3f} does not beat the majority rate "
                f"{self.majority_rate:.3f}: accuracy is meaningless here"
            )
        return None


def log_loss(y, p) -> float:
    y, p = _arrays(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y, p) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def roc_auc(y, score) -> float:
    """P(score of a random positive > score of a random negative), ties count half.

    Computed by sorting (Mann-Whitney U with mid-ranks); NaN when one class is absent.
    """
    y, s = _arrays(y, score)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Bias:
    """mean(p) - mean(y) over a set, with a 95% interval and its support."""

    value: float
    low: float
    high: float
    n: int
    groups: int

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high)


def prediction_bias(y, p, groups=None) -> Bias:
    """Prediction bias with a normal 95% interval.

    Snapshots of one batch are correlated, so with ``groups`` (batch ids) the standard
    error is cluster-robust: residuals are summed per batch before their variance is taken.
    """
    y, p = _arrays(y, p)
    n = y.size
    if n == 0:
        return Bias(float("nan"), float("nan"), float("nan"), 0, 0)
    residual = p - y
    value = float(residual.mean())
    if groups is None:
        k = n
        se = float(residual.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    else:
        sums = pd.Series(residual - value).groupby(np.asarray(groups)).sum().to_numpy()
        k = sums.size
        se = float(np.sqrt(k / (k - 1) * np.sum(sums**2)) / n) if k > 1 else float("nan")
    return Bias(value, value - Z95 * se, value + Z95 * se, n, k)


def reliability_table(y, p, bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Per bucket: count, mean predicted, observed rate. ``strategy``: uniform | quantile."""
    y, p = _arrays(y, p)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        inner = np.quantile(p, np.linspace(0.0, 1.0, bins + 1))[1:-1] if p.size else []
        edges = np.unique(np.concatenate([[0.0], inner, [1.0]]))
    else:
        raise ValueError(f"strategy must be uniform or quantile, not {strategy!r}")
    bucket = np.searchsorted(edges[1:-1], p, side="left")  # (low, high], as scikit-learn
    frame = pd.DataFrame({"bucket": bucket, "p": p, "y": y})
    table = frame.groupby("bucket").agg(
        count=("p", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean")
    )
    table["low"] = edges[table.index]
    table["high"] = edges[table.index + 1]
    return table.reset_index(drop=True)[["low", "high", "count", "mean_predicted", "observed_rate"]]


def expected_calibration_error(y, p, bins: int = 10, strategy: str = "uniform") -> float:
    """ECE = sum_b (n_b / N) |mean p_b - mean y_b| (DOMAIN.md)."""
    table = reliability_table(y, p, bins, strategy)
    if table.empty:
        return float("nan")
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["mean_predicted"] - table["observed_rate"]).abs()).sum())


def classification_report(y, p, threshold: float, groups=None) -> dict[str, float | int | None]:
    """Every number we log for a set of predictions, under stable names."""
    y, p = _arrays(y, p)
    c = Confusion.at(y, p, threshold)
    bias = prediction_bias(y, p, groups)
    return {
        "rows": int(y.size),
        "batches": bias.groups,
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "mean_prediction": float(p.mean()) if p.size else float("nan"),
        "auc": roc_auc(y, p),
        "log_loss": log_loss(y, p) if y.size else float("nan"),
        "brier": brier(y, p) if y.size else float("nan"),
        "ece": expected_calibration_error(y, p, 10, "uniform") if y.size else float("nan"),
        "ece_quantile": expected_calibration_error(y, p, 10, "quantile")
        if y.size
        else float("nan"),
        "bias": bias.value,
        "bias_low": bias.low,
        "bias_high": bias.high,
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
        "accuracy": c.accuracy,
        "majority_rate": c.majority_rate,
        "decision_rate": c.decision_rate,
        **{k: v for k, v in asdict(c).items()},
    }

"""The statistics of DOMAIN.md, defined once: classification metrics, log loss, Brier, ROC
AUC, prediction bias with a confidence interval, calibration (ECE, reliability table), and
the batch bootstrap that puts an interval on any of them.

Plain NumPy, so every number can be checked by hand or against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

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
    ranks = rankdata(s)  # mid-ranks
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


def _buckets(p: np.ndarray, bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's bucket and the bucket edges. ``strategy``: uniform | quantile."""
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
    elif strategy == "quantile":
        inner = np.quantile(p, np.linspace(0.0, 1.0, bins + 1))[1:-1] if p.size else []
        edges = np.unique(np.concatenate([[0.0], inner, [1.0]]))
    else:
        raise ValueError(f"strategy must be uniform or quantile, not {strategy!r}")
    return np.searchsorted(edges[1:-1], p, side="left"), edges  # (low, high], as scikit-learn


def reliability_table(y, p, bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Per bucket: count, mean predicted, observed rate. ``strategy``: uniform | quantile."""
    y, p = _arrays(y, p)
    bucket, edges = _buckets(p, bins, strategy)
    frame = pd.DataFrame({"bucket": bucket, "p": p, "y": y})
    table = frame.groupby("bucket").agg(
        count=("p", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean")
    )
    table["low"] = edges[table.index]
    table["high"] = edges[table.index + 1]
    return table.reset_index(drop=True)[["low", "high", "count", "mean_predicted", "observed_rate"]]


def expected_calibration_error(y, p, bins: int = 10, strategy: str = "uniform") -> float:
    """ECE = sum_b (n_b / N) |mean p_b - mean y_b| (DOMAIN.md) = sum_b |sum p_b - sum y_b| / N.

    Summed with ``bincount`` (it runs inside every bootstrap replicate); the same buckets as
    :func:`reliability_table`."""
    y, p = _arrays(y, p)
    if p.size == 0:
        return float("nan")
    bucket, _ = _buckets(p, bins, strategy)
    return float(np.abs(np.bincount(bucket, p) - np.bincount(bucket, y)).sum() / p.size)


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


def bootstrap_replicates(
    groups,
    statistics: Mapping[str, Callable[[np.ndarray], float]],
    replicates: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each statistic of the rows on ``replicates`` resamples of whole groups (batches).

    A batch is the unit: its snapshots are correlated, so resampling rows would make an
    interval look narrower than the data allow. Each replicate draws as many batches as
    there are, with replacement, and passes every statistic the same row indices (an
    index array into the arrays the statistic closes over), so differences between two
    models are paired. Non-finite values (an AUC of one class) are dropped.
    """
    codes, uniques = pd.factorize(np.asarray(groups, dtype=object))
    k = len(uniques)
    out: dict[str, list[float]] = {name: [] for name in statistics}
    if k < 2:
        return {name: np.array([]) for name in statistics}
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        pick = rng.integers(0, k, k)
        lengths = counts[pick]
        # row positions of the picked batches, without a Python loop over batches
        offsets = np.repeat(starts[pick] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        rows = order[np.arange(lengths.sum()) + offsets]
        for name, statistic in statistics.items():
            out[name].append(float(statistic(rows)))
    return {name: np.array([v for v in values if np.isfinite(v)]) for name, values in out.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` share of bootstrap replicates; NaNs without replicates."""
    if np.asarray(values).size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_absolute_error(target, predicted) -> float:
    """Mean |predicted - target| over the rows with a finite target (NaN without any)."""
    target, predicted = _arrays(target, predicted)
    known = np.isfinite(target)
    return float(np.mean(np.abs(predicted[known] - target[known]))) if known.any() else float("nan")


#: The headline metrics of a set of predictions, each with a batch-bootstrap interval:
#: name -> f(y, p, hours target, predicted hours).
HEADLINE: dict[str, Callable[..., float]] = {
    "auc": lambda y, p, t, h: roc_auc(y, p),
    "log_loss": lambda y, p, t, h: log_loss(y, p),
    "brier": lambda y, p, t, h: brier(y, p),
    "ece": lambda y, p, t, h: expected_calibration_error(y, p),
    "bias": lambda y, p, t, h: float(np.mean(p - y)),
    "hours_mae": lambda y, p, t, h: mean_absolute_error(t, h),
}


def headline_report(
    y, p, target, hours, groups, replicates: int = 200, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Every :data:`HEADLINE` metric as ``{"value", "low", "high"}`` (batch bootstrap)."""
    y, p = _arrays(y, p)
    target, hours = _arrays(target, hours)
    stats = {
        name: (lambda rows, f=f: f(y[rows], p[rows], target[rows], hours[rows]))
        for name, f in HEADLINE.items()
    }
    draws = bootstrap_replicates(groups, stats, replicates, seed)
    report = {}
    for name, f in HEADLINE.items():
        low, high = percentile_interval(draws[name], level)
        report[name] = {"value": f(y, p, target, hours), "low": low, "high": high}
    return report


def paired_difference(
    y, first, second, groups, metric: Callable = log_loss, replicates: int = 200, seed: int = 0
) -> dict[str, float]:
    """``metric(y, first) - metric(y, second)`` with a paired batch-bootstrap 95% interval:
    both models are scored on the same resampled batches, so the interval is about the
    difference, not about the rows."""
    y, first = _arrays(y, first)
    second = np.asarray(second, dtype=np.float64).ravel()
    draws = bootstrap_replicates(
        groups,
        {"d": lambda rows: metric(y[rows], first[rows]) - metric(y[rows], second[rows])},
        replicates,
        seed,
    )["d"]
    low, high = percentile_interval(draws)
    return {"value": metric(y, first) - metric(y, second), "low": low, "high": high}


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error over every test in the run)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted

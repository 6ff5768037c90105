"""Evaluation on the held-out test split, overall and per slice, with plots.

The same metric functions (``models.metrics``) serve training, the promotion gate and
monitoring; slices come from the schema's slice keys. A slice's numbers are always shown
with their support; only slices with at least ``min_batches`` batches may fail a gate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast.schema import LABEL, slice_keys
from models.metrics import (
    bootstrap_replicates,
    classification_report,
    expected_calibration_error,
    percentile_interval,
    reliability_table,
    roc_auc,
)

SLICE_COLUMNS = ("slice", "value")


def slice_table(
    frame: pd.DataFrame,
    p: np.ndarray,
    threshold: float,
    min_batches: int,
    keys: list[str] | None = None,
    replicates: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (slice key, value): every metric, the support in rows and batches,
    whether it is enough to test, ``rows_key`` (the same for slices of the same rows), and
    for a testable slice a batch-bootstrap interval on its ECE."""
    rows = []
    p = np.asarray(p, dtype=np.float64)
    for key in keys or slice_keys(frame):
        values = frame[key].astype(object).where(frame[key].notna(), "(missing)")
        for value, index in values.groupby(values, sort=True).indices.items():
            part = frame.iloc[index]
            y = part[LABEL].to_numpy(dtype=np.float64)
            report = classification_report(y, p[index], threshold, part["batch_id"])
            enough = report["batches"] >= min_batches
            ece_low = ece_high = float("nan")
            if enough:
                draws = bootstrap_replicates(
                    part["batch_id"],
                    {"ece": lambda r, y=y, q=p[index]: expected_calibration_error(y[r], q[r])},
                    replicates,
                    seed,
                )
                ece_low, ece_high = percentile_interval(draws["ece"])
            rows.append(
                {
                    "slice": key,
                    "value": str(value),
                    **report,
                    "ece_low": ece_low,
                    "ece_high": ece_high,
                    "enough_support": enough,
                    "rows_key": hashlib.sha256(np.sort(index).tobytes()).hexdigest()[:16],
                }
            )
    return pd.DataFrame(rows)


def metric_key(*parts: str) -> str:
    """MLflow metric names: letters, digits, ``_ - . /`` only (slice values are sanitised)."""
    clean = ["".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in str(p)) for p in parts]
    return "/".join(clean)


def flatten_metrics(
    prefix: str,
    overall: dict,
    slices: pd.DataFrame | None = None,
    names: tuple[str, ...] = (
        "rows",
        "auc",
        "log_loss",
        "brier",
        "ece",
        "bias",
        "bias_low",
        "bias_high",
        "precision",
        "recall",
    ),
) -> dict[str, float]:
    """The stable metric keys every run logs: ``{prefix}/{metric}`` and
    ``{prefix}/slice/{key}/{value}/{metric}``."""
    out = {
        metric_key(prefix, k): float(v)
        for k, v in overall.items()
        if isinstance(v, int | float | np.floating | np.integer)
    }
    if slices is not None:
        for row in slices.itertuples(index=False):
            for name in names:
                value = getattr(row, name)
                out[metric_key(prefix, "slice", row.slice, row.value, name)] = float(value)
    return {k: v for k, v in out.items() if np.isfinite(v)}


# ------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------


def _figure(*shape: int, size=(6.0, 4.5)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*shape, figsize=size, squeeze=False)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str = "Calibration (reliability)",
    bins: int = 10,
) -> Path:
    """Mean predicted vs observed per bucket, one line per named (y, p); the diagonal is
    perfect calibration; marker size shows bucket support."""
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, (y, p) in curves.items():
        table = reliability_table(y, p, bins)
        sizes = 20 + 180 * table["count"] / max(table["count"].max(), 1)
        ax.plot(table["mean_predicted"], table["observed_rate"], "-", lw=1.2, label=name)
        ax.scatter(table["mean_predicted"], table["observed_rate"], s=sizes, alpha=0.6)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed rate",
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_slice_reliability(
    frame: pd.DataFrame, p: np.ndarray, key: str, path: Path, min_rows: int
) -> Path:
    values = frame[key].astype(object).where(frame[key].notna(), "(missing)")
    curves = {}
    for value, index in values.groupby(values, sort=True).indices.items():
        if len(index) >= min_rows:
            curves[f"{value} (n={len(index)})"] = (frame[LABEL].to_numpy()[index], p[index])
    return plot_reliability(curves, path, title=f"Calibration by {key}")


def plot_roc_pr(y, p, path: Path, threshold: float | None = None) -> Path:
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y, dtype=int)
    fig, axes = _figure(1, 2, size=(10.0, 4.2))
    fpr, tpr, roc_t = roc_curve(y, p)
    axes[0, 0].plot(fpr, tpr, lw=1.5, label=f"AUC {roc_auc(y, p):.3f}")
    axes[0, 0].plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    precision, recall, pr_t = precision_recall_curve(y, p)
    axes[0, 1].plot(recall, precision, lw=1.5)
    axes[0, 1].axhline(y.mean(), ls="--", color="grey", lw=1, label=f"base rate {y.mean():.2f}")
    if threshold is not None:
        i = int(np.argmin(np.abs(roc_t - threshold)))
        axes[0, 0].plot(fpr[i], tpr[i], "o", color="red", label=f"threshold {threshold:.3f}")
        j = int(np.argmin(np.abs(pr_t - threshold)))
        axes[0, 1].plot(
            recall[j], precision[j], "o", color="red", label=f"threshold {threshold:.3f}"
        )
    axes[0, 0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes[0, 1].set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for ax in axes[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bias_by_slice(slices: pd.DataFrame, path: Path, limit: float | None = None) -> Path:
    """Prediction bias with its 95% interval per slice value; thin slices drawn faint."""
    keys = list(dict.fromkeys(slices["slice"]))
    fig, axes = _figure(len(keys), 1, size=(7.0, 1.2 + 0.32 * len(slices)))
    for ax, key in zip(axes[:, 0], keys, strict=True):
        part = slices[slices["slice"] == key].reset_index(drop=True)
        ypos = np.arange(len(part))
        err = np.vstack([part["bias"] - part["bias_low"], part["bias_high"] - part["bias"]])
        colors = ["C0" if ok else "lightgrey" for ok in part["enough_support"]]
        ax.errorbar(part["bias"], ypos, xerr=np.nan_to_num(err), fmt="none", ecolor=colors)
        ax.scatter(part["bias"], ypos, c=colors, zorder=3)
        ax.set_yticks(
            ypos,
            [f"{v} (n={n})" for v, n in zip(part["value"], part["rows"], strict=True)],
            fontsize=8,
        )
        ax.axvline(0, color="grey", lw=1)
        if limit is not None:
            for x in (-limit, limit):
                ax.axvline(x, color="red", lw=0.8, ls=":")
        ax.set_title(f"prediction bias by {key}", fontsize=9)
    axes[-1, 0].set_xlabel("mean(p) - mean(y)")
    return _save(fig, path)


def plot_loss_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Training vs validation loss per epoch (overfitting shows as a widening gap)."""
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    for name, values in sorted(history.items()):
        if name.endswith("loss"):
            ax.plot(
                np.arange(1, len(values) + 1),
                values,
                label=name,
                ls="--" if name.startswith("val_") else "-",
            )
    ax.set(xlabel="epoch", ylabel="loss", title="Loss curves")
    ax.legend(fontsize=8)
    return _save(fig, path)

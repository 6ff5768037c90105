"""Fitting, checking and evaluating the finish forecast (:mod:`brewcast.intervals`).

* :func:`fit_finish_forecast`: the groups' residuals on the calibration set (the validation
  split's pre-finish rows, batches the model was not fitted on and the test split never
  shares);
* :func:`crepes_parity`: the same forecast from ``crepes`` (a maintained implementation of
  Mondrian conformal predictive systems) on the test split, against the served code: the
  export fails when they differ;
* :func:`coverage_table`: empirical coverage and width per level, overall, per slice, per
  served bucket and per true time to finish, with batch-bootstrap intervals;
* :func:`horizon_report`: each horizon's P(finished by t) scored against what happened,
  and its agreement with the classifier at the model's horizon;
* :func:`plain_split_conformal`: the baseline to beat, one symmetric width for all
  (``crepes.ConformalRegressor``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast.intervals import (
    BUCKET_INPUTS,
    DECIMALS,
    EVERY,
    FinishForecast,
    Forecasts,
    Group,
    buckets,
    group_value,
    min_group_rows,
)
from brewcast.schema import REGRESSION_TARGET, slice_keys
from models.metrics import (
    bootstrap_replicates,
    expected_calibration_error,
    log_loss,
    percentile_interval,
)

#: Largest difference the export allows between the served forecast and crepes' (hours
#: for bounds, probability for finish probabilities): the same arithmetic, so ~0.
INTERVAL_PARITY_LIMIT = 1e-6
#: True time to finish, in hours, for the report by horizon (not known when serving: not
#: a group, not gated).
TIME_TO_FINISH_EDGES = (24.0, 48.0, 96.0)


def actual_hours(frame: pd.DataFrame) -> np.ndarray:
    """Hours from each snapshot to its batch's finish; +inf for a stuck batch (never)."""
    return frame[REGRESSION_TARGET].astype("float64").fillna(np.inf).to_numpy()


def forecast_frame(forecast: FinishForecast, frame: pd.DataFrame, hours: np.ndarray) -> Forecasts:
    """:meth:`FinishForecast.forecast` for a frame of snapshot columns."""
    return forecast.forecast(
        hours,
        frame[forecast.group_column].astype(object).tolist(),
        *(frame[name].astype("float64").to_numpy() for name in BUCKET_INPUTS),
    )


def _calibration_rows(
    frame: pd.DataFrame, hours: np.ndarray, group_column: str, edges
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Residuals (rounded as stored), buckets, group values and batches of the rows."""
    hours = np.maximum(np.asarray(hours, float), 0.0)
    residuals = np.round(actual_hours(frame) - hours, DECIMALS)
    bucket = buckets(hours, *(frame[n].astype("float64").to_numpy() for n in BUCKET_INPUTS), edges)
    values = np.array([group_value(v) for v in frame[group_column].astype(object)], dtype=object)
    return residuals, bucket, values, frame["batch_id"].astype(str).to_numpy()


def fit_finish_forecast(
    frame: pd.DataFrame,
    hours: np.ndarray,
    group_column: str,
    min_batches: int,
    edges: tuple[float, ...] | None = None,
) -> FinishForecast:
    """The forecast's groups on calibration rows ``frame`` (pre-finish snapshots with their
    ``hours_remaining``; NaN: a stuck batch) and the model's point forecasts ``hours``
    there. A group is kept when it has :func:`~brewcast.intervals.min_group_rows` rows
    (finite bounds at every level) from at least ``min_batches`` batches; ``*|*`` (every
    row) is always kept."""
    from brewcast.intervals import BUCKET_EDGES

    edges = tuple(edges or BUCKET_EDGES)
    residuals, bucket, values, batches = _calibration_rows(frame, hours, group_column, edges)
    candidates = {f"{EVERY}|{EVERY}": np.ones(len(residuals), bool)}
    for b in dict.fromkeys(bucket):
        in_bucket = bucket == b
        candidates[f"{EVERY}|{b}"] = in_bucket
        for value in dict.fromkeys(values[in_bucket]):
            candidates[f"{value}|{b}"] = in_bucket & (values == value)
    groups = {}
    for key, rows in candidates.items():
        count, batch_count = int(rows.sum()), len(set(batches[rows]))
        if key == f"{EVERY}|{EVERY}" or (count >= min_group_rows() and batch_count >= min_batches):
            r = np.sort(residuals[rows])
            finite = r[np.isfinite(r)]
            groups[key] = Group(
                tuple(float(x) for x in finite), int(r.size - finite.size), batch_count
            )
    return FinishForecast(group_column, groups, bucket_edges=edges)


def crepes_parity(forecast: FinishForecast, frame: pd.DataFrame, hours: np.ndarray) -> dict:
    """The largest difference between the served forecast on ``frame`` and ``crepes``'
    Mondrian conformal predictive system fitted on the same groups (its unsmoothed
    p-value ``(#{<= t} + 1) / (n + 1)`` is the served mid p-value plus ``1/2 / (n + 1)``)."""
    import warnings

    from crepes import ConformalPredictiveSystem

    served = forecast_frame(forecast, frame, hours)
    keys = np.asarray(served.groups, dtype=object)
    answered = keys != ""
    if not answered.any():
        return {"bounds_max_abs_error": 0.0, "probability_max_abs_error": 0.0, "rows": 0}
    residuals = np.concatenate([g.sorted_residuals() for g in forecast.groups.values()])
    bins = np.concatenate(
        [np.full(g.size, key, dtype=object) for key, g in forecast.groups.items()]
    )
    cps = ConformalPredictiveSystem().fit(residuals, bins=bins.astype(str))
    y_hat = np.maximum(np.asarray(hours, float), 0.0)[answered]
    test_bins = keys[answered].astype(str)
    bound_error, probability_error = 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crepes warns of every too-small bin; none is used
        for level in forecast.levels:
            reference = cps.predict_int(y_hat, bins=test_bins, confidence=level)
            low, high = served.intervals[level]
            for mine, theirs in (
                (low[answered], np.maximum(reference[:, 0], 0.0)),
                (high[answered], reference[:, 1]),
            ):
                same = (mine == theirs) | (np.isinf(mine) & np.isinf(theirs))
                diff = np.where(same, 0.0, np.abs(mine - theirs))
                bound_error = max(bound_error, float(np.nan_to_num(diff, nan=np.inf).max()))
        sizes = served.support[answered]
        for i, t in enumerate(forecast.horizons):
            reference = cps.predict_p(y_hat, float(t), bins=test_bins, smoothing=False)
            mine = served.finish_probabilities[answered, i] + 0.5 / (sizes + 1)
            probability_error = max(probability_error, float(np.max(np.abs(mine - reference))))
    return {
        "bounds_max_abs_error": bound_error,
        "probability_max_abs_error": probability_error,
        "rows": int(answered.sum()),
    }


def covered(forecasts: Forecasts, target: np.ndarray, level: float) -> np.ndarray:
    """Whether each actual time to finish lies in its interval (+inf, never finished, lies
    only in an open-ended one)."""
    low, high = forecasts.intervals[level]
    return (target >= low) & (target <= high)


def _time_to_finish(target: np.ndarray) -> np.ndarray:
    from brewcast.intervals import bucket_names

    names = np.array([*bucket_names(TIME_TO_FINISH_EDGES)], dtype=object)
    out = names[np.searchsorted(np.asarray(TIME_TO_FINISH_EDGES), target, side="right")]
    return np.where(np.isinf(target), "never (stuck)", out)


def coverage_table(
    frame: pd.DataFrame,
    forecasts: Forecasts,
    min_batches: int,
    replicates: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (slice, value): for each level, coverage with its batch-bootstrap 95%
    interval, the median width (hours; inf when open-ended) and the share of open-ended
    intervals; support in rows and batches; whether it may be gated (``gated``: a slice
    key or the served bucket, not the true time to finish, which no forecast knows) and
    has the batches to be; ``rows_key`` (the same for slices of the same rows)."""
    target = actual_hours(frame)
    levels = list(forecasts.intervals)
    hits = {level: covered(forecasts, target, level).astype(float) for level in levels}
    widths = {
        level: forecasts.intervals[level][1] - forecasts.intervals[level][0] for level in levels
    }
    partitions = {"all": pd.Series("all", index=frame.index)}
    for key in slice_keys(frame):
        partitions[key] = frame[key].astype(object).where(frame[key].notna(), "(missing)")
    partitions["forecast_bucket"] = pd.Series(forecasts.buckets, index=frame.index)
    partitions["time_to_finish"] = pd.Series(_time_to_finish(target), index=frame.index)
    batches = frame["batch_id"].astype(str).to_numpy()
    rows = []
    for name, values in partitions.items():
        for value, index in values.groupby(values, sort=True).indices.items():
            batch_count = len(set(batches[index]))
            enough = batch_count >= min_batches
            row = {
                "slice": name,
                "value": str(value),
                "rows": len(index),
                "batches": batch_count,
                "gated": name != "time_to_finish",
                "enough_support": enough,
                "rows_key": hashlib.sha256(np.sort(index).tobytes()).hexdigest()[:16],
            }
            draws = (
                bootstrap_replicates(
                    batches[index],
                    {level: lambda r, h=hits[level][index]: h[r].mean() for level in levels},
                    replicates,
                    seed,
                )
                if enough
                else {}
            )
            for level in levels:
                tag = f"{round(level * 100)}"
                low, high = percentile_interval(draws.get(level, np.array([])))
                row[f"coverage_{tag}"] = float(hits[level][index].mean())
                row[f"coverage_{tag}_low"], row[f"coverage_{tag}_high"] = low, high
                row[f"median_width_{tag}"] = float(np.median(widths[level][index]))
                row[f"open_share_{tag}"] = float(
                    np.isinf(forecasts.intervals[level][1][index]).mean()
                )
            rows.append(row)
    return pd.DataFrame(rows)


def horizon_report(
    forecasts: Forecasts,
    frame: pd.DataFrame,
    horizons: tuple[float, ...],
    classifier_probability: np.ndarray,
    horizon_hours: float,
    replicates: int = 200,
    seed: int = 0,
) -> dict:
    """Per horizon t: ECE and log loss of P(finished by t) against ``actual <= t``, the mean
    forecast and the observed rate (rows with an answer); and at the model's horizon, the
    mean |P(finished by H) - classifier probability| with its batch-bootstrap interval,
    and whether every row's probabilities rise with t."""
    target = actual_hours(frame)
    p = forecasts.finish_probabilities
    answered = np.isfinite(p).all(axis=1)
    out: dict = {"rows": int(answered.sum()), "horizons": {}}
    for i, t in enumerate(horizons):
        y = (target[answered] <= t).astype(float)
        q = p[answered, i]
        out["horizons"][f"{t:g}"] = {
            "ece": expected_calibration_error(y, q),
            "log_loss": log_loss(y, np.clip(q, 1e-6, 1 - 1e-6)),
            "mean_probability": float(q.mean()) if q.size else float("nan"),
            "observed_rate": float(y.mean()) if y.size else float("nan"),
        }
    out["monotone"] = bool(np.all(np.diff(p[answered], axis=1) >= 0))
    if horizon_hours in horizons:
        at = p[answered, list(horizons).index(horizon_hours)]
        gap = np.abs(at - np.asarray(classifier_probability, float)[answered])
        draws = bootstrap_replicates(
            frame["batch_id"].astype(str).to_numpy()[answered],
            {"gap": lambda r: gap[r].mean()},
            replicates,
            seed,
        )
        low, high = percentile_interval(draws["gap"])
        out["classifier_agreement"] = {
            "horizon_hours": horizon_hours,
            "mean_abs_difference": float(gap.mean()) if gap.size else float("nan"),
            "low": low,
            "high": high,
        }
    return out


def plain_split_conformal(
    calibration: pd.DataFrame,
    calibration_hours: np.ndarray,
    frame: pd.DataFrame,
    hours: np.ndarray,
    levels: tuple[float, ...],
) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """The baseline: one symmetric interval width per level for every snapshot, from the
    absolute residuals of all calibration rows (``crepes.ConformalRegressor``)."""
    import warnings

    from crepes import ConformalRegressor

    residuals = actual_hours(calibration) - np.maximum(calibration_hours, 0.0)
    regressor = ConformalRegressor().fit(np.abs(residuals))
    y_hat = np.maximum(np.asarray(hours, float), 0.0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for level in levels:
            bounds = regressor.predict_int(y_hat, confidence=level)
            out[level] = (np.maximum(bounds[:, 0], 0.0), bounds[:, 1])
    return out


def width_before_finish(
    intervals: dict[float, tuple[np.ndarray, np.ndarray]],
    target: np.ndarray,
    hours_before: float = 48.0,
    within: float = 6.0,
) -> dict[str, float]:
    """Median width per level over snapshots ``hours_before`` (± ``within``) hours before
    their batch finished: how precise a plan made two days ahead can be."""
    near = np.abs(target - hours_before) <= within
    return {
        f"{round(level * 100)}": float(np.median(high[near] - low[near]))
        if near.any()
        else float("nan")
        for level, (low, high) in intervals.items()
    }


#: The order of the coverage plot's slices: the groups' own partitions first.
PLOT_ORDER = ("all", "yeast_strain", "forecast_bucket", "time_to_finish", "brand", "fermenter")


def plot_coverage(
    table: pd.DataFrame, levels: tuple[float, ...], path: Path, max_rows: int = 40
) -> Path:
    """Coverage with its 95% interval per slice value, one panel per level, the nominal
    level as a line; slices without the batches to be tested drawn faint."""
    from models.evaluate import _figure, _save

    rank = {name: i for i, name in enumerate(PLOT_ORDER)}
    shown = table.assign(_rank=table["slice"].map(lambda s: rank.get(s, len(rank))))
    shown = shown.sort_values(["_rank", "slice", "batches"], ascending=[True, True, False])
    shown = shown.head(max_rows).reset_index(drop=True)
    fig, axes = _figure(1, len(levels), size=(4.6 * len(levels), 1.4 + 0.3 * len(shown)))
    ypos = np.arange(len(shown))[::-1]
    labels = [
        f"{s}={v} ({b} b)"
        for s, v, b in zip(shown["slice"], shown["value"], shown["batches"], strict=True)
    ]
    for ax, level in zip(axes[0], levels, strict=True):
        tag = f"{round(level * 100)}"
        value = shown[f"coverage_{tag}"].to_numpy()
        low = np.where(
            np.isfinite(shown[f"coverage_{tag}_low"]), shown[f"coverage_{tag}_low"], value
        )
        high = np.where(
            np.isfinite(shown[f"coverage_{tag}_high"]), shown[f"coverage_{tag}_high"], value
        )
        colors = ["C0" if ok else "lightgrey" for ok in shown["enough_support"]]
        ax.errorbar(
            value, ypos, xerr=np.vstack([value - low, high - value]), fmt="none", ecolor=colors
        )
        ax.scatter(value, ypos, c=colors, zorder=3)
        ax.axvline(level, color="red", lw=1, ls="--", label=f"nominal {tag}%")
        ax.set_yticks(ypos, labels if ax is axes[0][0] else [""] * len(labels), fontsize=7)
        ax.set(
            xlim=(max(0.0, min(level - 0.3, float(np.nanmin(low)) - 0.02)), 1.01), xlabel="coverage"
        )
        ax.set_title(f"{tag}% intervals: coverage by slice", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)

"""Sequential detection for small slices: a two-sided CUSUM per slice on batch residuals.

A weekly window needs ``monitor_min_batches`` labelled batches in a slice before it may
alarm, which one fermenter, a rare brand or a rare strain never has in a week. The evidence
is still there, spread over weeks: so each slice also gets a cumulative test since its
model version was deployed (a retraining starts a new one).

Each finished batch gives one residual per family, in the order its label became known
(its finish): the mean over its snapshots of ``predicted - actual hours remaining`` and of
``probability - label``, so a long batch weighs as much as a short one. Each residual is
standardised by the robust spread of the version's batches before it (the MAD scaled to a
normal sigma, ``scipy.stats.median_abs_deviation``; the first ``MIN_VERSION_BATCHES`` only
set it) and clipped at ±4 (one wild batch is not a drift). Everything a batch is tested
with was known when it arrived, so the daily run and a look back over the same months
raise the same alarms, and a later batch never rewrites an earlier decision. Page's CUSUM
(Page 1954) accumulates ``z - k`` upwards and ``-z - k`` downwards, with ``k`` three
quarters of the monitoring limit in sigma units: the log-likelihood-ratio CUSUM for "a bias
of half the limit" (tolerated: no model is unbiased in every slice) against "a bias of the
limit". The threshold ``h`` is set per slice from the false-alarm rate
(``monitor_false_alarms_per_slice_year``, shared by both sides and both families) and the
slice's own batch rate so far, for a slice biased by half the limit, by Siegmund's
approximation of the run length,

    ARL(h, k) = (exp(2 k b) - 2 k b - 1) / (2 k^2),   b = h + 1.166,

and the expected detection delay for a true bias ``d`` (in sigma units) is the same formula
at ``k - d``. The change's start is estimated as the batch after the statistic last stood
at zero (the CUSUM's own change-point estimate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from brewcast.schema import slice_keys
from brewcast.settings import Settings
from monitoring.causes import resolve

#: Standardised residuals are clipped here: one stuck or mislabelled batch is not a drift.
CLIP = 4.0
#: Batches a version needs before its spread is trusted enough to test.
MIN_VERSION_BATCHES = 20
#: Batches since the estimated change a sequential alarm needs (one or two are anecdotes).
MIN_ALARM_BATCHES = 3
#: The spread is estimated again every this many batches (each estimate from all before).
SPREAD_EVERY = 10
#: The shortest span a slice's batch rate is estimated over.
MIN_SPAN_DAYS = 28.0


@dataclass(frozen=True)
class Family:
    """A residual tested sequentially: its alert metric, its column in
    :func:`batch_residuals`, the monitoring limit it is tested against, and the floor of its
    spread (so a near-perfect slice does not turn noise into sigma)."""

    metric: str
    column: str
    limit_setting: str
    min_spread: float


FAMILIES = (
    Family("hours_remaining_bias", "hours_residual", "monitor_max_hours_bias", 1.0),
    Family("prediction_bias", "probability_residual", "monitor_max_abs_bias", 0.01),
)


@dataclass(frozen=True)
class Crossing:
    """A CUSUM's first crossing of its threshold: the side (+1: the residuals run above
    zero), the index of the batch that crossed, the first batch of the estimated change,
    the statistic there and the threshold it crossed."""

    side: int
    at: int
    start: int
    statistic: float
    threshold: float


def batch_residuals(labelled: pd.DataFrame) -> pd.DataFrame:
    """One row per (model version, batch) of labelled predictions: when its label was known
    (its finish; a batch that never finished, its last snapshot), its slice values, its mean
    hours residual over finished snapshots and its mean probability residual."""
    frame = labelled.assign(
        hours_residual=labelled["hours_remaining"].astype(float) - labelled["actual_hours"],
        probability_residual=labelled["probability"].astype(float) - labelled["label"],
        finish=labelled["at"] + pd.to_timedelta(labelled["actual_hours"], unit="h"),
    )
    keys = slice_keys(frame)
    grouped = frame.groupby(["model_version", "batch_id"], sort=False)
    out = grouped.agg(
        hours_residual=("hours_residual", "mean"),
        probability_residual=("probability_residual", "mean"),
        snapshots=("probability_residual", "size"),
        finish=("finish", "max"),
        last_snapshot=("at", "max"),
        **{k: (k, "first") for k in keys},
    ).reset_index()
    out["known_at"] = out["finish"].fillna(out["last_snapshot"])
    out[keys] = out[keys].astype(object).where(out[keys].notna(), "(missing)").astype(str)
    return out.drop(columns=["finish", "last_snapshot"]).sort_values(
        ["model_version", "known_at", "batch_id"], ignore_index=True
    )


def run_length(h: float, k: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length for standard
    normal increments with mean ``-k`` relative to its allowance (``k < 0``: a true shift)."""
    b = h + 1.166
    if abs(k) < 1e-9:
        return b * b
    if 2 * k * b > 700:  # beyond any horizon (and exp's range)
        return math.inf
    return (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)


def thresholds(k: np.ndarray, in_control_run_length: np.ndarray) -> np.ndarray:
    """The one-sided thresholds ``h`` whose in-control run lengths (batches) are the ones
    given, for allowances ``k > 0``, elementwise (at least 0). Siegmund's formula at
    ``x = 2 k b`` reads ``exp(x) - x - 1 = 2 k^2 ARL``, solved by the fixed point
    ``x = log(2 k^2 ARL + x + 1)``, a contraction for ``x > 0``."""
    k = np.asarray(k, float)
    target = 2 * k * k * np.asarray(in_control_run_length, float)
    x = np.log1p(target)
    for _ in range(500):  # the slowest (tiny k and ARL) contract by ~0.5 a step
        step = np.log(target + x + 1)
        done = np.nanmax(np.abs(step - x), initial=0.0) < 1e-12
        x = step
        if done:
            break
    return np.maximum(x / (2 * k) - 1.166, 0.0)


def threshold(k: float, in_control_run_length: float) -> float:
    """The one-sided threshold ``h`` whose in-control run length (batches) is the one
    given (:func:`thresholds`)."""
    return float(thresholds(np.array([k]), np.array([in_control_run_length]))[0])


def cusum(
    z: np.ndarray, k: float | np.ndarray, h: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, Crossing | None]:
    """The upper and lower CUSUM paths of ``z`` and the open alarm: the first crossing of
    ``h``, by at least :data:`MIN_ALARM_BATCHES` batches since the estimated change, after
    which the statistic has not fallen back to 0 (None: no alarm open; the earlier of the
    two sides when both are). ``k`` and ``h`` may differ batch by batch; a NaN ``z`` (a
    batch not tested yet) leaves both statistics where they were."""
    k, h = np.broadcast_to(k, len(z)), np.broadcast_to(h, len(z))
    upper, lower = np.zeros(len(z)), np.zeros(len(z))
    statistic = {1: 0.0, -1: 0.0}
    start = {1: 0, -1: 0}
    open_alarm: dict[int, Crossing | None] = {1: None, -1: None}
    for i, value in enumerate(z):
        for side in (1, -1):
            if not np.isnan(value):
                statistic[side] = max(0.0, statistic[side] + side * value - k[i])
            if statistic[side] == 0.0:
                start[side], open_alarm[side] = i + 1, None
            elif (
                open_alarm[side] is None
                and statistic[side] > h[i]
                and i - start[side] + 1 >= MIN_ALARM_BATCHES
            ):
                open_alarm[side] = Crossing(side, i, start[side], statistic[side], float(h[i]))
        upper[i], lower[i] = statistic[1], statistic[-1]
    alarms = [a for a in open_alarm.values() if a is not None]
    return upper, lower, min(alarms, key=lambda a: a.at) if alarms else None


def prior_spread(residuals: np.ndarray, floor: float) -> np.ndarray:
    """Per batch, the robust spread (MAD scaled to a normal sigma, at least ``floor``) of
    the batches before it, once :data:`MIN_VERSION_BATCHES` of them are known (NaN
    before), estimated again every :data:`SPREAD_EVERY` batches: a batch is standardised
    by what was known when it arrived, so later batches never rewrite an earlier
    decision."""
    out = np.full(len(residuals), np.nan)
    known = ~np.isnan(residuals)
    seen = np.cumsum(known) - known  # batches with a residual before this one
    spread = np.nan
    for i in np.flatnonzero(seen >= MIN_VERSION_BATCHES):
        if np.isnan(spread) or seen[i] % SPREAD_EVERY == 0:
            prior = residuals[:i][known[:i]]
            spread = max(float(median_abs_deviation(prior, scale="normal")), floor)
        out[i] = spread
    return out


def _slices(residuals: pd.DataFrame):
    yield "all", "all", residuals
    for key in slice_keys(residuals):
        for value, part in residuals.groupby(key, sort=True):
            yield key, str(value), part


@dataclass
class Finding:
    """A slice's CUSUM crossing, with the slice's batches in the order tested, and the
    alarmed parents it explains (:func:`explain`)."""

    model_version: str
    slice: str
    value: str
    family: Family
    crossing: Crossing
    part: pd.DataFrame
    explains: list[str]

    @property
    def name(self) -> str:
        return f"{self.slice}={self.value}"


def sequential_tests(labelled: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, list]:
    """Every slice's CUSUM paths (one row per version, slice, family and batch) and its
    root causes: the crossings not explained by a smaller alarmed slice (:func:`explain`).
    Everything a batch is tested with was known when it arrived (:func:`prior_spread`, the
    slice's batch rate so far), so a daily run and a look back agree."""
    residuals = batch_residuals(labelled)
    paths, findings = [], []
    for version, by_version in residuals.groupby("model_version", sort=True):
        if len(by_version) <= MIN_VERSION_BATCHES:
            continue
        by_version = by_version.reset_index(drop=True)
        elapsed = (by_version["known_at"] - by_version["known_at"].iloc[0]) / pd.Timedelta(days=1)
        span_days = np.maximum(elapsed.to_numpy(), MIN_SPAN_DAYS)
        for family in FAMILIES:
            spread = prior_spread(by_version[family.column].to_numpy(float), family.min_spread)
            limit = float(getattr(settings, family.limit_setting)) / spread  # in sigmas, per batch
            crossed = []
            for name, value, part in _slices(by_version):
                part = part[part[family.column].notna()]
                if len(part) < MIN_ALARM_BATCHES:
                    continue
                at = part.index.to_numpy()  # the slice's batches among the version's
                # the slice's batches a year, as known at each of its batches
                per_year = np.arange(1, len(part) + 1) / span_days[at] * 365.0
                # two sides and two families share the slice's false alarms, which must
                # hold for a slice biased by half the limit (a model is never unbiased
                # everywhere): the run length is set for increments of mean -(k - limit/2)
                runs = 4 * per_year / settings.monitor_false_alarms_per_slice_year
                # halfway between a tolerated bias (half the limit) and the limit
                k = 0.75 * limit[at]
                h = thresholds(0.25 * limit[at], runs)  # NaN while untested
                z = np.clip(part[family.column].to_numpy() / spread[at], -CLIP, CLIP)
                upper, lower, crossing = cusum(z, k, h)
                paths.append(
                    pd.DataFrame(
                        {
                            "model_version": version,
                            "slice": name,
                            "value": value,
                            "metric": family.metric,
                            "batch_id": part["batch_id"].to_numpy(),
                            "known_at": part["known_at"].to_numpy(),
                            "residual": part[family.column].to_numpy(),
                            "upper": upper,
                            "lower": lower,
                            "threshold": h,
                            "spread": spread[at],
                        }
                    )
                )
                if crossing is not None:
                    finding = Finding(version, name, value, family, crossing, part, [])
                    crossed.append((finding, z, k, h))
            findings += explain(crossed)
    columns = ["model_version", "slice", "value", "metric", "batch_id", "known_at"]
    table = pd.concat(paths, ignore_index=True) if paths else pd.DataFrame(columns=columns)
    return table, findings


def explain(crossed: list[tuple[Finding, np.ndarray, np.ndarray, np.ndarray]]) -> list[Finding]:
    """One finding per cause (:func:`monitoring.causes.resolve`): a slice lies in another
    when its batches do, and a parent still alarms without a child when its test, run again
    without the child's batches, still crosses. The roots are returned, each listing the
    slices it explains."""
    batches = [frozenset(f.part["batch_id"]) for f, *_ in crossed]

    def alarms_without(p: int, c: int) -> bool:
        parent, z, k, h = crossed[p]
        rest = ~parent.part["batch_id"].isin(batches[c]).to_numpy()
        return cusum(z[rest], k[rest], h[rest])[2] is not None

    roots = resolve(
        len(crossed),
        inside=lambda p, c: batches[c] <= batches[p],
        same_rows=lambda p, c: batches[c] == batches[p],
        alarms_without=alarms_without,
        size=lambda i: len(batches[i]),
        overlaps=lambda p, c: (
            bool(batches[c] & batches[p])
            and not (batches[c] <= batches[p] or batches[p] <= batches[c])
        ),
    )
    for i, (finding, *_) in enumerate(crossed):
        if roots[i] != i:
            crossed[roots[i]][0].explains.append(finding.name)
    return [finding for i, (finding, *_) in enumerate(crossed) if roots[i] == i]


def expected_delay(shift_sigmas: float, k: float, h: float) -> float:
    """Batches a CUSUM takes on average to cross ``h`` once the bias is ``shift_sigmas``."""
    return run_length(h, k - shift_sigmas)

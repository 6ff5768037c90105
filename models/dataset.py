"""From raw batches and readings to labelled snapshots, without peeking into the future.

A *snapshot* is what was known about a batch at time ``t``: its pitch metadata and the
readings with ``timestamp <= t`` only. Its labels come from the batch's outcome, which is
derived from the readings once the batch has plateaued: the finish time is the first
time the (median-smoothed) gravity comes within a tolerance of the plateau. A batch whose
plateau sits far above what yeast achieves is *stuck*: it never finishes (negative label,
no hours-remaining target). Splits go by batch pitch time, so no batch is on both sides
and the test split is the most recent data, as in production.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brewcast.schema import FEATURES, READING_VALUE_RANGES, REGRESSION_TARGET, season_of

log = logging.getLogger(__name__)

#: A plateau at an apparent attenuation below this is a stuck fermentation (strains reach
#: 0.63-0.80, DOMAIN.md).
STUCK_ATTENUATION_BELOW = 0.60
#: An open batch's flat gravity only counts as a plateau after this much attenuation; before
#: it, flat gravity is the lag phase. A closed frame needs no such evidence.
PLATEAU_MIN_ATTENUATION = 0.2
SLOPE_WINDOW_HOURS = 24.0
#: Without a valid recorded OG it is derived from the readings of the batch's first this many
#: hours (from its first reading): see :func:`derived_og`.
OG_WINDOW_HOURS = 12.0
#: A batch whose gravity never falls by this share of where its readings started did not
#: ferment (a hydrometer on the bench or in water): it gets no outcome, so no labels. Kept
#: below the stuck range (a stall at 25-55 % attenuation is a stuck batch, which is labelled).
MIN_FERMENTATION_DROP = 0.2
#: A batch with fewer plausible gravity readings than this share of its gravity readings has
#: mostly impossible ones (a hydrometer out of liquid): no outcome either.
MIN_PLAUSIBLE_SHARE = 0.5
SPLITS = ("train", "validation", "test")

OUTCOME_COLUMNS = ("batch_id", "status", "finish_time", "terminal_gravity_plato")


@dataclass(frozen=True)
class LabelRules:
    """How outcomes and snapshots are derived (values come from :class:`Settings`)."""

    horizon_hours: float = 24.0
    snapshot_every_hours: float = 6.0
    terminal_tolerance_plato: float = 0.3
    plateau_hours: float = 36.0

    @classmethod
    def from_settings(cls, settings) -> LabelRules:
        return cls(
            settings.horizon_hours,
            settings.snapshot_every_hours,
            settings.terminal_tolerance_plato,
            settings.plateau_hours,
        )


def _plausible(readings: pd.DataFrame, tag: str) -> pd.DataFrame:
    """One tag's readings inside the schema's physical range, sorted by batch and time."""
    low, high = READING_VALUE_RANGES[tag]
    rows = readings[(readings["tag"] == tag) & readings["value"].between(low, high)]
    return rows.sort_values(["batch_id", "timestamp"], kind="mergesort")


def _hours(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as float hours since the epoch (the arithmetic unit of this module)."""
    return np.asarray(pd.DatetimeIndex(ts).as_unit("us").asi8, dtype="float64") / 3.6e9


def _hour(stamp) -> float:
    """:func:`_hours` of one timestamp, without building a Series for it."""
    return float(pd.Timestamp(stamp).value // 1000) / 3.6e9  # value: always nanoseconds


def derived_og(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The OG known after each of a batch's first readings (sorted by time), derived from
    the readings: ``out[m]`` uses the first ``m`` readings of its first
    :data:`OG_WINDOW_HOURS`, and ``out[-1]`` is the batch's derived OG.

    It is the maximum of the rolling-3 medians (full windows) of those readings: a median of
    three ignores a single noisy reading (a first reading alone can be a hydrometer still
    settling), and the maximum takes the wort before the yeast starts on it. With fewer than
    three readings it is their median. Index by readings so far, never later ones: a
    snapshot's OG must not see its future (NaN before any reading).
    """
    k = int(np.searchsorted(times, times[0] + OG_WINDOW_HOURS, side="right")) if len(times) else 0
    w = np.asarray(values[:k], dtype="float64")
    out = np.full(k + 1, np.nan)
    if k >= 1:
        out[1] = w[0]
    if k >= 2:
        out[2] = (w[0] + w[1]) / 2.0
    if k >= 3:
        medians = np.median(np.lib.stride_tricks.sliding_window_view(w, 3), axis=1)
        out[3:] = np.maximum.accumulate(medians)
    return out


def _original_gravity(batch: Mapping, derived: float) -> tuple[float, bool]:
    """The batch's recorded OG when it is valid, else ``derived`` (from its readings); and
    whether it was derived."""
    og = batch["original_gravity_plato"]
    low, high = FEATURES["original_gravity_plato"].min, FEATURES["original_gravity_plato"].max
    if pd.notna(og) and low <= og <= high:
        return float(og), False
    return float(derived), True


def derive_outcomes(
    batches: pd.DataFrame, readings: pd.DataFrame, rules: LabelRules
) -> pd.DataFrame:
    """Per batch: ``finished`` / ``stuck`` once the plateau is established, else ``running``.

    The plateau counts as established when the batch's frame is closed (``end_time`` known)
    or when gravity has stayed at it for ``rules.plateau_hours``. A batch that never
    fermented (its gravity never fell by :data:`MIN_FERMENTATION_DROP` of where its readings
    started, or most of its gravity readings are impossible) stays ``running``: no labels.
    """
    gravity = _plausible(readings, "gravity_plato")
    groups = dict(tuple(gravity.groupby("batch_id", sort=False)))
    recorded = readings.loc[readings["tag"] == "gravity_plato", "batch_id"].value_counts()
    rows = []
    for batch in batches.itertuples(index=False):
        g = groups.get(batch.batch_id)
        row = (batch.batch_id, "running", pd.NaT, np.nan)
        if g is not None and len(g) >= 3:
            row = _outcome(batch, g, rules)
            if len(g) < MIN_PLAUSIBLE_SHARE * recorded.get(batch.batch_id, 0):
                row = (batch.batch_id, "running", pd.NaT, row[3])
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS))
    out["finish_time"] = pd.to_datetime(out["finish_time"], utc=True).astype("datetime64[us, UTC]")
    return out


def _outcome(batch, g: pd.DataFrame, rules: LabelRules) -> tuple:
    """One batch's outcome row from its plausible gravity readings ``g`` (3 or more)."""
    times = _hours(g["timestamp"])
    values = g["value"].to_numpy(dtype="float64")
    smooth = g["value"].rolling(3, center=True, min_periods=1).median().to_numpy()
    last = times[-1]
    terminal = float(np.median(smooth[times >= last - 24.0]))
    running = (batch.batch_id, "running", pd.NaT, terminal)
    start_gravity = derived_og(times, values)[-1]
    if not start_gravity > 0 or start_gravity - terminal < MIN_FERMENTATION_DROP * start_gravity:
        return running  # never fermented: no outcome, whatever the frame says
    reached = np.flatnonzero(smooth <= terminal + rules.terminal_tolerance_plato)
    first_reached = times[reached[0]]
    og, _ = _original_gravity(batch._asdict(), start_gravity)
    attenuation = (og - terminal) / og if og > 0 else np.nan
    closed = pd.notna(batch.end_time)
    if not closed and (
        last - first_reached < rules.plateau_hours or not attenuation >= PLATEAU_MIN_ATTENUATION
    ):
        return running
    if attenuation < STUCK_ATTENUATION_BELOW:
        return (batch.batch_id, "stuck", pd.NaT, terminal)
    return (batch.batch_id, "finished", g["timestamp"].iloc[reached[0]], terminal)


def build_snapshots(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    rules: LabelRules,
    outcomes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Labelled snapshots of every batch whose outcome is known, conformed to ``FEATURES``.

    Snapshots run every ``rules.snapshot_every_hours`` from pitch until the last reading,
    or until ``horizon`` after the finish for finished batches.
    """
    if outcomes is None:
        outcomes = derive_outcomes(batches, readings, rules)
    known = outcomes[outcomes["status"] != "running"].set_index("batch_id")
    gravity = dict(tuple(_plausible(readings, "gravity_plato").groupby("batch_id", sort=False)))
    temperature = dict(tuple(_plausible(readings, "temperature_c").groupby("batch_id", sort=False)))
    parts: list[tuple[object, dict[str, np.ndarray]]] = []
    for batch in batches[batches["batch_id"].isin(known.index)].itertuples(index=False):
        g = gravity.get(batch.batch_id)
        if g is None:
            continue
        columns = _batch_snapshots(
            batch, g, temperature.get(batch.batch_id), known.loc[batch.batch_id], rules
        )
        if columns is not None:
            parts.append((batch, columns))
    if not parts:
        return FEATURES.empty()
    # One frame from all batches' columns: a DataFrame per batch and their concat were
    # half of this function's time at 3,800 batches.
    counts = [len(columns["hours_since_pitch"]) for _, columns in parts]
    frame = pd.DataFrame(
        {
            **{
                name: np.repeat([getattr(b, name) for b, _ in parts], counts) for name in _PER_BATCH
            },
            **{name: np.concatenate([c[name] for _, c in parts]) for name in parts[0][1]},
        }
    )
    frame["season"] = season_of(pd.Series(np.repeat([b.start_time for b, _ in parts], counts)))
    hours = frame.pop("snapshot_hours")
    frame["snapshot_time"] = pd.to_datetime(
        np.round(hours.to_numpy() * 3.6e9).astype("int64"), unit="us", utc=True
    )
    return FEATURES.conform(frame, source="dataset builder")


#: Snapshot columns that are the batch's own attributes, the same for all its snapshots.
_PER_BATCH = (
    "batch_id",
    "fermenter",
    "brand",
    "yeast_strain",
    "pitch_temperature_c",
    "pitch_rate_million_cells_per_ml_plato",
    "dissolved_oxygen_ppm",
    "ambient_temperature_c",
    "yeast_generation",
)


def _snapshot_og(
    batch, times: np.ndarray, values: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Each snapshot's OG (``known``: gravity readings at or before it): the recorded one,
    else derived from the readings known then (never later ones); and whether derived."""
    og, derived = _original_gravity(batch._asdict(), np.nan)
    if not derived:
        return np.full(known.size, og), False
    path = derived_og(times, values)
    return path[np.minimum(known, len(path) - 1)], True


def _batch_snapshots(
    batch,
    gravity: pd.DataFrame,
    temperature: pd.DataFrame | None,
    outcome: pd.Series,
    rules: LabelRules,
) -> dict[str, np.ndarray] | None:
    """One batch's snapshot columns (those that vary between its snapshots), or None when
    it has no snapshot yet."""
    start = _hour(batch.start_time)
    g_t = _hours(gravity["timestamp"])
    g_v = gravity["value"].to_numpy()
    finish = np.nan if pd.isna(outcome["finish_time"]) else _hour(outcome["finish_time"])
    until = g_t[-1] if np.isnan(finish) else min(g_t[-1], finish + rules.horizon_hours)
    t = start + np.arange(
        rules.snapshot_every_hours, until - start + 1e-9, rules.snapshot_every_hours
    )
    if t.size == 0:
        return None

    # Gravity known at t: readings with time <= t (searchsorted side="right").
    n = np.searchsorted(g_t, t, side="right")
    has = n > 0
    last = np.where(has, n - 1, 0)
    current = np.where(has, g_v[last], np.nan)
    og, derived = _snapshot_og(batch, g_t, g_v, n)
    # Least-squares slope over readings in (t - window, t], from cumulative sums.
    lo = np.searchsorted(g_t, t - SLOPE_WINDOW_HOURS, side="right")
    x = g_t - start
    cs = {
        k: np.concatenate([[0.0], np.cumsum(v)])
        for k, v in {"1": np.ones_like(x), "x": x, "y": g_v, "xx": x * x, "xy": x * g_v}.items()
    }
    w = {k: v[n] - v[lo] for k, v in cs.items()}
    denom = w["1"] * w["xx"] - w["x"] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(
            (w["1"] >= 2) & (denom > 1e-9),
            (w["1"] * w["xy"] - w["x"] * w["y"]) / denom * 24.0,
            np.nan,
        )

    if temperature is not None and len(temperature):
        tt = _hours(temperature["timestamp"])
        tv = temperature["value"].to_numpy()
        m = np.searchsorted(tt, t, side="right")
        csum = np.concatenate([[0.0], np.cumsum(tv)])
        with np.errstate(invalid="ignore", divide="ignore"):
            current_temp = np.where(m > 0, tv[np.maximum(m - 1, 0)], np.nan)
            mean_temp = np.where(m > 0, csum[m] / np.maximum(m, 1), np.nan)
    else:
        current_temp = mean_temp = np.full(t.size, np.nan)

    if np.isnan(finish):
        finished = np.zeros(t.size, bool)
        remaining = np.full(t.size, np.nan)
    else:
        finished = finish <= t + rules.horizon_hours
        remaining = np.maximum(finish - t, 0.0)

    return {
        "snapshot_hours": t,
        "hours_since_pitch": t - start,
        "original_gravity_plato": og,
        "original_gravity_derived": np.full(t.size, derived),
        "current_gravity_plato": current,
        "apparent_attenuation": (og - current) / og,
        "gravity_slope_plato_per_day": slope,
        "hours_since_last_gravity": np.where(has, t - g_t[last], np.nan),
        "gravity_readings_count": n.astype("float64"),
        "current_temperature_c": current_temp,
        "mean_temperature_c": mean_temp,
        "finished_within_horizon": finished,
        "hours_remaining": remaining,
    }


def before_finish(frame: pd.DataFrame) -> np.ndarray:
    """Snapshots taken before their batch finished (a stuck batch's included): the rows a
    decision depends on. A snapshot at or after the finish (they run to finish + horizon)
    is a sure positive with 0 h left; counted in a headline, it flatters every metric."""
    return ~(frame[REGRESSION_TARGET] <= 0.0).to_numpy()


def unseen_in_training(
    train: pd.DataFrame, other: pd.DataFrame, columns: list[str]
) -> dict[str, dict[str, int]]:
    """Per categorical model input: the values of ``other`` (a later split) that the
    training split never has, with their row counts.

    The coverage rule of the split: a model input's categories are learned from training
    only (``models.inputs``), so a value outside it is served through the trained
    out-of-vocabulary bucket and reported here, never given an untrained embedding. An input
    that a split by time cannot cover (a season: a year's data split by time leaves one
    out of training) is not a model input (``brewcast.schema``).
    """
    out = {}
    for column in columns:
        known = set(train[column].dropna().astype(str))
        values = other[column].dropna().astype(str)
        counts = values[~values.isin(known)].value_counts()
        if len(counts):
            out[column] = {str(k): int(v) for k, v in counts.items()}
    return out


def split_by_batch_time(
    features: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> pd.Series:
    """``train``/``validation``/``test`` per row: batches ordered by pitch, oldest first.

    Every snapshot of a batch lands in the same split, and later batches are evaluated on
    what earlier ones taught, as they will be in production.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    pitch = features["snapshot_time"] - pd.to_timedelta(features["hours_since_pitch"], unit="h")
    first = pitch.groupby(features["batch_id"]).min().sort_values(kind="mergesort")
    order = np.arange(len(first)) / max(len(first), 1)
    edges = np.cumsum(fractions)
    names = np.array(SPLITS)[np.searchsorted(edges[:-1], order, side="right")]
    by_batch = pd.Series(names, index=first.index)
    return features["batch_id"].map(by_batch).rename("split")

"""The one features function: what was known about a batch at time ``t``, from its
metadata and the readings with ``timestamp <= t`` only.

Training (``models.dataset.build_snapshots``, on the lake) and the service (forecasts from
the readings it stores) both call :func:`snapshot_columns` and :func:`snapshot_frame`, so
a forecast's features at ``t`` are the training snapshot's at ``t`` by construction (a
test checks it on simulated batches and real Tilt logs). It lives in the foundation
because neither side may import the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from brewcast.schema import FEATURES, READING_VALUE_RANGES, season_of

#: The gravity slope is fitted over the readings of the last this many hours, or over the
#: last :data:`SLOPE_MIN_READINGS` readings where those reach further back (a hand log read
#: once a working day has one reading in 24 h, none on a weekend), but never over readings
#: older than :data:`SLOPE_MAX_HOURS`: the slope is defined at any cadence.
SLOPE_WINDOW_HOURS = 24.0
SLOPE_MIN_READINGS = 3
SLOPE_MAX_HOURS = 168.0
#: Without a valid recorded OG it is derived from the readings of the batch's first this many
#: hours (from its first reading): see :func:`derived_og`.
OG_WINDOW_HOURS = 12.0

#: Snapshot columns that are the batch's own attributes, the same for all its snapshots.
PER_BATCH = (
    "batch_id",
    "fermenter",
    "brand",
    "style",
    "yeast_strain",
    "pitch_temperature_c",
    "pitch_rate_million_cells_per_ml_plato",
    "dissolved_oxygen_ppm",
    "ambient_temperature_c",
    "yeast_generation",
)


def plausible(readings: pd.DataFrame, tag: str) -> pd.DataFrame:
    """One tag's readings inside the schema's physical range, sorted by batch and time."""
    low, high = READING_VALUE_RANGES[tag]
    rows = readings[(readings["tag"] == tag) & readings["value"].between(low, high)]
    return rows.sort_values(["batch_id", "timestamp"], kind="mergesort")


class Series(NamedTuple):
    """One tag's plausible readings of one batch, sorted by time: what a snapshot reads.
    Arrays rather than a frame, so the service can keep a running batch's in memory and
    extend them as readings arrive."""

    hours: np.ndarray  # float hours since the epoch (:func:`hours_of`)
    values: np.ndarray


def series_of(readings: pd.DataFrame) -> Series:
    """A :class:`Series` from one batch's rows of :func:`plausible` (sorted by time)."""
    return Series(hours_of(readings["timestamp"]), readings["value"].to_numpy(dtype="float64"))


def hours_of(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as float hours since the epoch (the arithmetic unit of the snapshots)."""
    return np.asarray(pd.DatetimeIndex(ts).as_unit("us").asi8, dtype="float64") / 3.6e9


def hour_of(stamp) -> float:
    """:func:`hours_of` of one timestamp, without building a Series for it."""
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


def original_gravity(batch: Mapping, derived: float) -> tuple[float, bool]:
    """The batch's recorded OG when it is valid, else ``derived`` (from its readings); and
    whether it was derived."""
    og = batch["original_gravity_plato"]
    low, high = FEATURES["original_gravity_plato"].min, FEATURES["original_gravity_plato"].max
    if pd.notna(og) and low <= og <= high:
        return float(og), False
    return float(derived), True


def _snapshot_og(
    batch, times: np.ndarray, values: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Each snapshot's OG (``known``: gravity readings at or before it): the recorded one,
    else derived from the readings known then (never later ones); and whether derived."""
    og, derived = original_gravity(batch._asdict(), np.nan)
    if not derived:
        return np.full(known.size, og), False
    path = derived_og(times, values)
    return path[np.minimum(known, len(path) - 1)], True


def snapshot_columns(
    batch, gravity: Series, temperature: Series | None, t: np.ndarray
) -> dict[str, np.ndarray]:
    """The features of ``batch`` (a named tuple of its batch row) at the times ``t`` (float
    hours, :func:`hours_of`) from its gravity readings (at least one) and temperature
    readings: the columns that vary between its snapshots, with ``snapshot_hours``."""
    start = hour_of(batch.start_time)
    g_t, g_v = gravity
    # Gravity known at t: readings with time <= t (searchsorted side="right").
    n = np.searchsorted(g_t, t, side="right")
    has = n > 0
    last = np.where(has, n - 1, 0)
    current = np.where(has, g_v[last], np.nan)
    og, derived = _snapshot_og(batch, g_t, g_v, n)
    # Least-squares slope over readings in (t - window, t], or the last few readings
    # (within the longest lookback), from cumulative sums.
    lo = np.minimum(
        np.searchsorted(g_t, t - SLOPE_WINDOW_HOURS, side="right"),
        np.maximum(n - SLOPE_MIN_READINGS, np.searchsorted(g_t, t - SLOPE_MAX_HOURS, side="right")),
    )
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
    if temperature is not None and len(temperature.hours):
        tt, tv = temperature
        m = np.searchsorted(tt, t, side="right")
        csum = np.concatenate([[0.0], np.cumsum(tv)])
        with np.errstate(invalid="ignore", divide="ignore"):
            current_temp = np.where(m > 0, tv[np.maximum(m - 1, 0)], np.nan)
            mean_temp = np.where(m > 0, csum[m] / np.maximum(m, 1), np.nan)
    else:
        current_temp = mean_temp = np.full(t.size, np.nan)
    return {
        "snapshot_hours": t,
        "hours_since_pitch": t - start,
        "original_gravity_plato": og,
        "original_gravity_derived": np.full(t.size, derived),
        "current_gravity_plato": current,
        "apparent_attenuation": (og - current) / og,
        "gravity_slope_plato_per_day": slope,
        "gravity_slope_span_hours": np.where(
            np.isfinite(slope),
            g_t[last] - g_t[np.minimum(lo, len(g_t) - 1)],
            np.nan,
        ),
        "hours_since_last_gravity": np.where(has, t - g_t[last], np.nan),
        "gravity_readings_count": n.astype("float64"),
        "current_temperature_c": current_temp,
        "mean_temperature_c": mean_temp,
    }


def snapshot_table(parts: Sequence[tuple[object, dict[str, np.ndarray]]]) -> dict[str, object]:
    """:func:`snapshot_frame`'s columns before they become a frame (arrays, in its order):
    the service reads a few rows straight from them, where the frame and its records would
    cost most of a forecast."""
    counts = [len(columns["hours_since_pitch"]) for _, columns in parts]
    table: dict[str, object] = {
        **{name: np.repeat([getattr(b, name) for b, _ in parts], counts) for name in PER_BATCH},
        **{name: np.concatenate([c[name] for _, c in parts]) for name in parts[0][1]},
    }
    table["season"] = season_of(pd.Series(np.repeat([b.start_time for b, _ in parts], counts)))
    hours = table.pop("snapshot_hours")
    table["snapshot_time"] = pd.to_datetime(
        np.round(hours * 3.6e9).astype("int64"), unit="us", utc=True
    )
    return table


def snapshot_frame(parts: Sequence[tuple[object, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """One frame from (batch row, :func:`snapshot_columns` and any label columns) pairs:
    each batch's own attributes repeated, its season, ``snapshot_time`` in UTC. A
    DataFrame per batch and their concat were half of training's snapshot time at 3,800
    batches: the columns are joined once."""
    return pd.DataFrame(snapshot_table(parts))

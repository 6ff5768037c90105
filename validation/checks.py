"""Derived check columns: facts about a row that need context (its batch, its neighbours).

Great Expectations validates one frame at a time, so what a row means in context is
computed here first, as plain columns the suites can put expectations on: how far a
reading lies from its batch's window, how much gravity rose since the previous reading of
the batch, how far a timestamp lies in the future. Pure pandas; no GX import.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brewcast.schema import BATCHES, READING_VALUE_RANGES, READINGS, Table
from brewcast.units import CANONICAL, QUANTITY_OF, likely_unit

HOURS_AFTER_PITCH = "check_hours_after_pitch"
HOURS_AFTER_END = "check_hours_after_end"
HOURS_IN_FUTURE = "check_hours_in_future"
GRAVITY_RISE = "check_gravity_rise_plato"
GRAVITY_RISE_SINCE_MIN = "check_gravity_rise_since_min_plato"
GRAVITY_DIP = "check_gravity_dip_plato"
LIKELY_UNIT = "check_likely_unit"

CHECK_COLUMNS: dict[str, tuple[str, ...]] = {
    "readings": (
        HOURS_AFTER_PITCH,
        HOURS_AFTER_END,
        HOURS_IN_FUTURE,
        GRAVITY_RISE,
        GRAVITY_RISE_SINCE_MIN,
        GRAVITY_DIP,
        LIKELY_UNIT,
    ),
    "batches": (HOURS_IN_FUTURE,),
    "features": (),
}


def _hours(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 3600.0


def add_checks(
    frame: pd.DataFrame,
    table: Table,
    now: pd.Timestamp,
    batches: pd.DataFrame | None = None,
    previous_gravity: pd.DataFrame | None = None,
    dip_bound: float = float("inf"),
) -> pd.DataFrame:
    """``frame`` plus the check columns of ``table`` (a fresh RangeIndex: row numbers).

    ``batches`` gives readings their batch window; ``previous_gravity`` (batch_id,
    timestamp, value) gives each batch's last earlier gravity reading already validated,
    so a rise across partition files is still seen. Readings that dip more than
    ``dip_bound`` below both neighbours are left out as neighbours of the rise checks.
    """
    out = frame.reset_index(drop=True).copy()
    if table is READINGS:
        windows = (batches if batches is not None else BATCHES.empty()).drop_duplicates(
            "batch_id", keep="last"
        )
        windows = windows.set_index("batch_id")
        start = pd.Series(windows["start_time"].reindex(out["batch_id"]).array, index=out.index)
        end = pd.Series(windows["end_time"].reindex(out["batch_id"]).array, index=out.index)
        out[HOURS_AFTER_PITCH] = _hours(out["timestamp"] - start)
        out[HOURS_AFTER_END] = _hours(out["timestamp"] - end)
        out[HOURS_IN_FUTURE] = _hours(out["timestamp"] - now)
        in_window = (out[HOURS_AFTER_PITCH] >= 0) & ~(out[HOURS_AFTER_END] > 0)
        out[GRAVITY_DIP] = gravity_dip(out, previous_gravity, in_window)
        # A dip (a truncated value) is flagged by its own rule; as a neighbour it would make
        # the next good reading look like a rise and drag the running minimum down.
        steady = in_window & ~(out[GRAVITY_DIP] > dip_bound)
        out[GRAVITY_RISE], out[GRAVITY_RISE_SINCE_MIN] = gravity_rises(
            out, previous_gravity, steady
        )
        out[LIKELY_UNIT] = likely_units(out, previous_gravity)
    elif table is BATCHES:
        out[HOURS_IN_FUTURE] = _hours(out["start_time"] - now)
    return out


def _gravity_sequence(
    readings: pd.DataFrame, previous: pd.DataFrame | None, candidates: pd.Series | None
) -> pd.DataFrame:
    """The plausible gravity readings of ``readings`` (``_own``) and ``previous`` per batch,
    in time order: the neighbours the context checks compare a reading with."""
    low, high = READING_VALUE_RANGES["gravity_plato"]
    is_gravity = readings["tag"] == "gravity_plato"
    plausible = is_gravity & readings["value"].between(low, high)
    if candidates is not None:
        plausible &= candidates
    seq = readings.loc[plausible, ["batch_id", "timestamp", "value"]].assign(_own=True)
    if previous is not None and len(previous):
        seq = pd.concat([previous[["batch_id", "timestamp", "value"]].assign(_own=False), seq])
    return seq.sort_values(["batch_id", "timestamp"], kind="mergesort")


def _own_values(readings: pd.DataFrame, seq: pd.DataFrame, values: pd.Series) -> pd.Series:
    own = seq["_own"].to_numpy(dtype=bool)
    out = pd.Series(np.nan, index=readings.index, dtype="float64")
    out.loc[seq.index[own]] = values.to_numpy()[own]
    return out


def gravity_rises(
    readings: pd.DataFrame,
    previous: pd.DataFrame | None = None,
    candidates: pd.Series | None = None,
) -> tuple[pd.Series, pd.Series]:
    """Per gravity reading: its value minus the batch's previous plausible gravity reading,
    and minus the lowest earlier one (so a creep of small rises that each pass the step rule
    still adds up to a failure); both from one ordered sequence of the batch's readings.

    Implausible values (outside the schema range, missing, or not ``candidates``, e.g.
    outside the batch window) are skipped as neighbours, so a single bad reading is flagged
    once (by its own check) and does not make its successor look like a rise. Rows that are
    not gravity readings, or have no predecessor, get NaN.
    """
    seq = _gravity_sequence(readings, previous, candidates)
    by_batch = seq.groupby("batch_id", sort=False)["value"]
    step = seq["value"] - by_batch.shift(1)
    lowest = by_batch.cummin().groupby(seq["batch_id"], sort=False).shift(1)
    return _own_values(readings, seq, step), _own_values(readings, seq, seq["value"] - lowest)


def gravity_dip(
    readings: pd.DataFrame,
    previous: pd.DataFrame | None = None,
    candidates: pd.Series | None = None,
) -> pd.Series:
    """Per gravity reading: how far it lies below both its batch neighbours (0 when it lies
    between them or above one). A field cut short (18.0 read as 1) drops to a fraction of
    its neighbours and comes back: a real fermentation never does. NaN without both."""
    seq = _gravity_sequence(readings, previous, candidates)
    groups = seq.groupby("batch_id", sort=False)["value"]
    before, after = groups.shift(1), groups.shift(-1)
    dip = (np.minimum(before, after) - seq["value"]).clip(lower=0.0)
    return _own_values(readings, seq, dip)


def likely_units(readings: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.Series:
    """Per reading: the unit its batch's values of that tag look recorded in, when they make
    no sense in the lake's unit (SG read as °P, °F read as °C), else None. Judged per batch
    and tag over the batch's history (``previous``: its gravity readings already validated),
    so a dry batch's last days alone do not look like specific gravity."""
    out = pd.Series(None, index=readings.index, dtype=object)
    history = {}
    if previous is not None and len(previous):
        history = {b: g["value"].to_numpy() for b, g in previous.groupby("batch_id", sort=False)}
    for (batch, tag), rows in readings.groupby(["batch_id", "tag"], sort=False).groups.items():
        quantity = QUANTITY_OF.get(tag)
        if quantity is None:
            continue
        values = readings.loc[rows, "value"].to_numpy(dtype="float64")
        if tag == "gravity_plato" and batch in history:
            values = np.concatenate([values, history[batch]])
        unit = likely_unit(values, CANONICAL[quantity])
        if unit is not None:
            out.loc[rows] = unit
    return out

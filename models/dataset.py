"""From raw batches and readings to labelled snapshots, without peeking into the future.

A *snapshot* is what was known about a batch at time ``t``: its pitch metadata and the
readings with ``timestamp <= t`` only. Its labels come from the batch's outcome: the
finish is the start of its gravity plateau (:mod:`brewcast.plateau`: the same rule for
any cadence and any log length), taken at the middle of the two readings it lies between.
A batch whose plateau sits far above what yeast leaves is *stuck*: it never finishes
(negative label, no hours-remaining target). A batch whose plateau is not confirmed is
right-censored: its early snapshots are sure negatives. Splits go by batch pitch time, so
no batch is on both sides and the test split is the most recent data, as in production.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brewcast.plateau import LOW_ALCOHOL_OG_PLATO, PlateauRule, find_plateau
from brewcast.schema import FEATURES, REGRESSION_TARGET
from brewcast.snapshots import (
    derived_og,
    hour_of,
    hours_of,
    original_gravity,
    plausible,
    series_of,
    snapshot_columns,
    snapshot_frame,
)

log = logging.getLogger(__name__)

#: A plateau at an apparent attenuation below this is a stuck fermentation (strains reach
#: 0.63-0.80, DOMAIN.md).
STUCK_ATTENUATION_BELOW = 0.60
#: A batch whose gravity never falls by this share of where its readings started did not
#: ferment (a hydrometer on the bench or in water): it gets no outcome, so no labels. Kept
#: below the stuck range (a stall at 25-55 % attenuation is a stuck batch, which is labelled).
MIN_FERMENTATION_DROP = 0.2
#: A batch with fewer plausible gravity readings than this share of its gravity readings has
#: mostly impossible ones (a hydrometer out of liquid): no outcome either.
MIN_PLAUSIBLE_SHARE = 0.5
SPLITS = ("train", "validation", "test")

OUTCOME_COLUMNS = (
    "batch_id",
    "status",
    # a finished batch: its plateau started after finish_earliest (the reading before the
    # first plateau reading) and by finish_latest (that reading); finish_time is the middle
    "finish_time",
    "finish_earliest",
    "finish_latest",
    "terminal_gravity_plato",
    # a running or censored batch: until when it had surely not finished
    "unfinished_until",
)
#: Outcomes that give a batch's labels; ``running`` and ``censored`` (a closed log whose
#: plateau no reading confirms) are right-censored at ``unfinished_until``.
KNOWN_OUTCOMES = ("finished", "stuck")


@dataclass(frozen=True)
class LabelRules:
    """How outcomes and snapshots are derived (values come from :class:`Settings`)."""

    horizon_hours: float = 24.0
    snapshot_every_hours: float = 6.0
    plateau: PlateauRule = field(default_factory=PlateauRule)

    @classmethod
    def from_settings(cls, settings) -> LabelRules:
        return cls(
            settings.horizon_hours,
            settings.snapshot_every_hours,
            PlateauRule.from_settings(settings),
        )


def derive_outcomes(
    batches: pd.DataFrame, readings: pd.DataFrame, rules: LabelRules
) -> pd.DataFrame:
    """Per batch (:data:`OUTCOME_COLUMNS`): ``finished`` at the start of its plateau
    (:mod:`brewcast.plateau`), ``stuck`` when that plateau sits below
    :data:`STUCK_ATTENUATION_BELOW` (a beer of at least :data:`LOW_ALCOHOL_OG_PLATO`),
    ``running`` while its plateau is not confirmed, ``censored`` when its log closed
    without one. A batch that never fermented (its gravity never fell by
    :data:`MIN_FERMENTATION_DROP` of where its readings started, or most of its gravity
    readings are impossible) stays ``running`` with no ``unfinished_until``: no labels.
    """
    gravity = plausible(readings, "gravity_plato")
    groups = dict(tuple(gravity.groupby("batch_id", sort=False)))
    recorded = readings.loc[readings["tag"] == "gravity_plato", "batch_id"].value_counts()
    rows = []
    for batch in batches.itertuples(index=False):
        g = groups.get(batch.batch_id)
        row = (batch.batch_id, "running", pd.NaT, pd.NaT, pd.NaT, np.nan, pd.NaT)
        if g is not None and len(g) >= 3:
            row = _outcome(batch, g, rules)
            if len(g) < MIN_PLAUSIBLE_SHARE * recorded.get(batch.batch_id, 0):
                row = (batch.batch_id, "running", pd.NaT, pd.NaT, pd.NaT, row[5], pd.NaT)
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS))
    for column in ("finish_time", "finish_earliest", "finish_latest", "unfinished_until"):
        out[column] = pd.to_datetime(out[column], utc=True).astype("datetime64[us, UTC]")
    return out


def _outcome(batch, g: pd.DataFrame, rules: LabelRules) -> tuple:
    """One batch's outcome row from its plausible gravity readings ``g`` (3 or more)."""
    times = hours_of(g["timestamp"])
    values = g["value"].to_numpy(dtype="float64")
    smooth = g["value"].rolling(3, center=True, min_periods=1).median().to_numpy()
    stamps = g["timestamp"]
    start_gravity = derived_og(times, values)[-1]
    # where the readings have settled (their last day): a passing dip is no fermentation
    lately = float(np.median(smooth[times >= times[-1] - 24.0]))
    running = (batch.batch_id, "running", pd.NaT, pd.NaT, pd.NaT, lately, pd.NaT)
    if not start_gravity > 0 or start_gravity - lately < MIN_FERMENTATION_DROP * start_gravity:
        return running  # never fermented: no outcome, whatever the frame says
    og, _ = original_gravity(batch._asdict(), start_gravity)
    closed = pd.notna(batch.end_time)
    # the centred median of the last reading changes with the next one: not final yet
    plateau = find_plateau(times, smooth, og, rules.plateau, closed, settled=len(smooth) - 1)
    before = pd.NaT if plateau.before is None else stamps.iloc[plateau.before]
    if plateau.status != "finished":
        status = "censored" if plateau.status == "unconfirmed" else "running"
        return (batch.batch_id, status, pd.NaT, pd.NaT, pd.NaT, lately, before)
    at = stamps.iloc[plateau.index]
    plateau_gravity = float(smooth[plateau.index])
    if og >= LOW_ALCOHOL_OG_PLATO and (og - plateau_gravity) / og < STUCK_ATTENUATION_BELOW:
        return (batch.batch_id, "stuck", pd.NaT, pd.NaT, pd.NaT, lately, pd.NaT)
    earliest = at if pd.isna(before) else before
    middle = earliest + (at - earliest) / 2
    # the terminal gravity is where the beer ends (its last day), below the plateau's start
    return (batch.batch_id, "finished", middle, earliest, at, lately, pd.NaT)


def build_snapshots(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    rules: LabelRules,
    outcomes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Labelled snapshots of every batch with an outcome, conformed to ``FEATURES``.

    Snapshots run every ``rules.snapshot_every_hours`` from pitch until the last reading,
    or until ``horizon`` after the finish for finished batches. A running or censored
    batch gives the snapshots whose horizon ends before it had surely not finished
    (``unfinished_until``): sure negatives, marked ``censored``, with no hours target.
    """
    if outcomes is None:
        outcomes = derive_outcomes(batches, readings, rules)
    usable = outcomes["status"].isin(KNOWN_OUTCOMES) | outcomes["unfinished_until"].notna()
    known = outcomes[usable].set_index("batch_id")
    gravity = dict(tuple(plausible(readings, "gravity_plato").groupby("batch_id", sort=False)))
    temperature = dict(tuple(plausible(readings, "temperature_c").groupby("batch_id", sort=False)))
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
    return FEATURES.conform(snapshot_frame(parts), source="dataset builder")


def _batch_snapshots(
    batch,
    gravity: pd.DataFrame,
    temperature: pd.DataFrame | None,
    outcome: pd.Series,
    rules: LabelRules,
) -> dict[str, np.ndarray] | None:
    """One batch's snapshot columns (those that vary between its snapshots), every
    ``rules.snapshot_every_hours`` from pitch until its last reading, ``horizon`` after its
    finish, or (censored) ``horizon`` before it had surely not finished, with their
    labels; None when it has no snapshot yet."""
    start = hour_of(batch.start_time)
    g = series_of(gravity)
    g_t = g.hours
    finish = np.nan if pd.isna(outcome["finish_time"]) else hour_of(outcome["finish_time"])
    censored = outcome["status"] not in KNOWN_OUTCOMES
    if censored:
        until = hour_of(outcome["unfinished_until"]) - rules.horizon_hours
    else:
        until = g_t[-1] if np.isnan(finish) else min(g_t[-1], finish + rules.horizon_hours)
    t = start + np.arange(
        rules.snapshot_every_hours, until - start + 1e-9, rules.snapshot_every_hours
    )
    if t.size == 0:
        return None
    columns = snapshot_columns(batch, g, None if temperature is None else series_of(temperature), t)
    columns["censored"] = np.full(t.size, censored)
    if np.isnan(finish):
        columns["finished_within_horizon"] = np.zeros(t.size, bool)
        columns["hours_remaining"] = np.full(t.size, np.nan)
    else:
        columns["finished_within_horizon"] = finish <= t + rules.horizon_hours
        columns["hours_remaining"] = np.maximum(finish - t, 0.0)
    return columns


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

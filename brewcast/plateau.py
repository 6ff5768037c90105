"""When a fermentation finished, as a brewer means it: the start of the gravity plateau.

One rule (DOMAIN.md, "What finished means to a brewer"), used for the training labels
(``models.dataset``), the simulator's truth (``ingest.simulator``) and through them
monitoring and the board. A reading starts the plateau when

- the beer has really fermented there: apparent attenuation at least
  :attr:`PlateauRule.min_attenuation` (before it, flat gravity is the lag phase);
- no reading in the ``window_hours`` after it falls more than ``tolerance_plato`` below it
  (rises are ignored: a dry hop or a crash lifts apparent gravity, it does not ferment);
- and a later reading confirms it: one at least ``confirm_hours`` after it, inside that
  window or, across a gap in the log, the first reading after the window.

The finish is the first such reading's time, as a brewer reading the log would see it,
and it lies between that reading and the one before it (interval-censored: a daily hand
log knows it to a day, a probe to minutes). Readings after the window never move it, so
the same fermentation logged a week longer, with its slow conditioning drift and readings
taken after the transfer, or read hourly instead of daily, gets the same finish to within
its readings' spacing. A batch whose plateau is not confirmed yet is right-censored: it
surely had not finished by the reading before its first undecided one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PlateauStatus = Literal["finished", "undecided", "unconfirmed"]
#: Below this OG (°P) a beer is low-alcohol: its yeast or its wort stops it early on purpose,
#: so a plateau at low attenuation is its finish, not a stuck fermentation.
LOW_ALCOHOL_OG_PLATO = 7.0
#: Readings are quantised (0.1 °P by hand, 0.001 SG): a fall of exactly the tolerance is
#: within it, whatever the float arithmetic makes of 3.1 - 0.3.
ROUND_OFF = 1e-9


@dataclass(frozen=True)
class PlateauRule:
    """The rule's parameters, in the cellar's units (values from ``LabelSettings``)."""

    tolerance_plato: float = 0.3
    window_hours: float = 48.0
    #: "a day later": the next day's round, which may come a little earlier in the day
    confirm_hours: float = 20.0
    #: before this apparent attenuation, flat gravity is the lag phase, not a plateau
    min_attenuation: float = 0.2

    @classmethod
    def from_settings(cls, settings) -> PlateauRule:
        """The rule of ``LabelSettings`` (any settings object with its fields)."""
        return cls(
            settings.terminal_tolerance_plato,
            settings.plateau_hours,
            settings.plateau_confirm_hours,
        )


@dataclass(frozen=True)
class Plateau:
    """Where a batch's plateau starts, as far as its readings tell.

    ``status``: ``finished`` (``index`` is the first plateau reading), ``undecided`` (the
    readings so far neither confirm nor rule out the reading at ``index``: more may come),
    or ``unconfirmed`` (the log is closed and no reading confirms one; ``index`` is None).
    ``before`` is the index of the last reading before ``index`` (or before the end, for
    ``unconfirmed``) at which the batch had surely not finished; None when there is none.
    """

    status: PlateauStatus
    index: int | None
    before: int | None


def find_plateau(
    hours: np.ndarray,
    gravity: np.ndarray,
    og: float,
    rule: PlateauRule,
    closed: bool,
    settled: int | None = None,
) -> Plateau:
    """The plateau of one batch from its gravity readings (°P, sorted by ``hours``), its OG
    in °P, and whether its log is ``closed`` (no reading will follow: a reading with no
    later one can then never be confirmed).

    ``settled``: how many of the first values are final. A caller that smooths with a
    centred window passes ``len - 1`` for an open log: the last value changes when the
    next reading arrives, so nothing is decided on it (a batch surely unfinished at a
    reading stays so whatever comes next).
    """
    hours = np.asarray(hours, dtype="float64")
    gravity = np.asarray(gravity, dtype="float64")
    n = hours.size
    settled = n if closed or settled is None else min(settled, n)
    attenuated = (og - gravity) >= rule.min_attenuation * og if og > 0 else np.zeros(n, bool)
    window_end = np.searchsorted(hours, hours + rule.window_hours, side="right")
    last_failed: int | None = None
    for i in range(settled):
        if not attenuated[i]:
            last_failed = i
            continue
        floor = gravity[i] - rule.tolerance_plato - ROUND_OFF
        stop = window_end[i]
        known = min(stop, settled)
        if np.any(gravity[i + 1 : known] < floor):
            last_failed = i
            continue
        if known < stop:  # part of its window is not final yet
            return Plateau("undecided", i, last_failed)
        confirmed = stop > i + 1 and hours[stop - 1] >= hours[i] + rule.confirm_hours
        if not confirmed and stop < settled:  # a gap spans the window: the next reading decides
            if gravity[stop] < floor:
                last_failed = i
                continue
            confirmed = True
        if confirmed:
            return Plateau("finished", i, i - 1 if i > 0 else None)
        if not closed:
            return Plateau("undecided", i, last_failed)
        # closed, nothing after it confirms: a later reading might still start a plateau
        # confirmed by a reading after it; if none does, the batch is unconfirmed
    if settled < n:
        return Plateau("undecided", settled, last_failed)
    return Plateau("unconfirmed", None, last_failed)


#: A batch with fewer than :data:`DEVICE_READINGS` gravity readings in the last this many
#: hours is read by hand (or by a device that stopped sending): its "ready" needs a reading
#: that confirms it. A probe sends one every few minutes.
DEVICE_WINDOW_HOURS = 6.0
DEVICE_READINGS = 4

CellarState = Literal["fermenting", "take a reading", "ready"]

#: A gravity falling faster than this (°P a day), or rising faster than the next, is a slope
#: no fermentation has: the most vigorous ales fall about 5 °P a day at their peak, and a
#: fermenting batch rises only when its device moves or leaves the liquid.
MAX_PLAUSIBLE_FALL_PER_DAY = 10.0
MAX_PLAUSIBLE_RISE_PER_DAY = 2.0


def implausible_slope(slope_per_day: float | None) -> bool:
    """Whether a gravity slope (°P a day; None: unknown) is one no fermentation has."""
    if slope_per_day is None or not np.isfinite(slope_per_day):
        return False
    return not -MAX_PLAUSIBLE_FALL_PER_DAY <= slope_per_day <= MAX_PLAUSIBLE_RISE_PER_DAY


def cellar_state(
    hours: np.ndarray,
    gravity: np.ndarray,
    decision: bool,
    rule: PlateauRule,
    slope_per_day: float | None = None,
    likely: bool | None = None,
) -> tuple[CellarState, str]:
    """What the cellar should do now, from a batch's gravity readings so far (°P, sorted by
    ``hours``) and the model's decision (finished within the horizon): ``ready`` (act on
    it), ``take a reading`` (the model says finished, or likely, but the batch is read by
    hand and no reading confirms the plateau yet: the reading to take, and what it would
    settle), or
    ``fermenting``; with the sentence the board shows.

    A probe read every few minutes confirms its own plateau, so its decision is the ready
    call. A hand log is ready once its last reading, taken at least ``confirm_hours`` after
    an earlier one, is within ``tolerance_plato`` of it: a brewer's two readings a day
    apart that agree. ``likely``: the model's probability is past the prompt threshold, lower
    than the decision's because a reading is cheap (None: the decision); a hand log is asked
    for a reading, and made ready by one that agrees, from there. Readings whose
    ``slope_per_day`` no fermentation has (a device moved, a probe out of the liquid)
    confirm nothing: the cellar is asked for a reading instead.
    """
    hours = np.asarray(hours, dtype="float64")
    gravity = np.asarray(gravity, dtype="float64")
    likely = decision if likely is None else (likely or decision)
    if not likely or gravity.size == 0:
        return "fermenting", "still fermenting"
    last = gravity[-1]
    device = np.sum(hours > hours[-1] - DEVICE_WINDOW_HOURS) >= DEVICE_READINGS
    if device and not decision:
        return "fermenting", "still fermenting"
    if implausible_slope(slope_per_day):
        return "take a reading", (
            f"take a gravity reading: the readings {'fall' if slope_per_day < 0 else 'rise'} "
            f"{abs(slope_per_day):.1f} °P a day, faster than any fermentation, so they "
            "cannot confirm the finish"
        )
    if device:
        return "ready", "the model's decision, on a device's readings"
    earlier = np.flatnonzero(hours <= hours[-1] - rule.confirm_hours)
    if earlier.size and gravity[earlier[-1]] - last <= rule.tolerance_plato + ROUND_OFF:
        return "ready", (
            f"confirmed by hand: {last:.1f} °P, within {rule.tolerance_plato:g} °P of "
            f"{gravity[earlier[-1]]:.1f} °P read {hours[-1] - hours[earlier[-1]]:.0f} h before"
        )
    return "take a reading", (
        f"take a gravity reading: {last - rule.tolerance_plato:.1f} °P or above confirms "
        f"the finish (the last read {last:.1f} °P); lower means it is still fermenting"
    )

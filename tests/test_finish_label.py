"""What "finished" means does not depend on how the log was kept: the plateau-start label
(``brewcast.plateau``) is the same, to within the readings' spacing, for a batch read every
15 minutes or once a weekday, logged a week longer, or read on after its transfer; on
simulated curves and on real Tilt logs (``tests/fixtures/realdata``, MIT)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brewcast import lake
from brewcast.plateau import PlateauRule, find_plateau
from brewcast.schema import BATCHES, READINGS
from brewcast.settings import Settings
from ingest.simulator import logistic_gravity
from models.dataset import LabelRules, derive_outcomes
from tests.test_devices import MEAD, SAISON, _ingest_and_validate, _settings

RULES = LabelRules()
T0 = pd.Timestamp("2026-03-02 08:00", tz="UTC")  # a Monday


def _batch(og: float = 12.0, end_time=None) -> pd.DataFrame:
    row = dict.fromkeys(BATCHES.names)
    row.update(batch_id="B1", brand="house_ipa", original_gravity_plato=og, start_time=T0)
    row["end_time"] = end_time
    return BATCHES.conform(pd.DataFrame([row]), "test")


def _gravity(hours: np.ndarray, values: np.ndarray, batch_id: str = "B1") -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "batch_id": batch_id,
            "tag": "gravity_plato",
            "timestamp": T0 + pd.to_timedelta(hours, unit="h"),
            "value": np.round(values, 1),
        }
    )
    return READINGS.conform(rows, "test")


def _curve(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A logistic fermentation with a slow conditioning drift after it (DOMAIN.md's tails:
    0.5-1 °P over one to two weeks)."""
    og, pe = rng.uniform(11, 16), rng.uniform(2.0, 3.5)
    midpoint, slope = rng.uniform(40, 90), rng.uniform(0.04, 0.09)
    drift = rng.uniform(0.0, 0.06) / 24.0 * np.maximum(t - midpoint - 60.0, 0.0)
    return logistic_gravity(t, og, pe, slope, midpoint, slope * 0.5) - drift, og


def _weekday_mornings(t: np.ndarray) -> np.ndarray:
    """Indexes of one reading per working day near 9 h (the hand log's habit)."""
    stamps = T0 + pd.to_timedelta(t, unit="h")
    day = stamps.normalize()
    keep = (stamps.hour == 9) & (stamps.minute == 0) & (day.day_of_week < 5)
    return np.flatnonzero(keep)


def _finish(hours, values, og, closed=True) -> tuple[str, float]:
    frame = _gravity(hours, values)
    outcome = derive_outcomes(_batch(og, T0 if closed else None), frame, RULES).iloc[0]
    if outcome.status != "finished":
        return outcome.status, np.nan
    return outcome.status, (outcome.finish_time - T0) / pd.Timedelta(hours=1)


def test_the_same_fermentations_logged_every_15_minutes_and_once_a_weekday_agree():
    """Cadence invariance on 60 simulated fermentations: the median difference between the
    finish of the probe log and of the weekday hand log is within 12 h (the goal)."""
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 24.0 * 21, 0.25)
    gaps = []
    for _ in range(60):
        values, og = _curve(rng, t)
        values = values + rng.normal(0, 0.05, t.size)
        dense = _finish(t, values, og)
        hand = _weekday_mornings(t)
        daily = _finish(t[hand], values[hand], og)
        assert dense[0] == daily[0] == "finished"
        gaps.append(daily[1] - dense[1])
    gaps = np.abs(gaps)
    assert np.median(gaps) <= 12.0, np.percentile(gaps, [50, 90])
    assert np.percentile(gaps, 90) <= 60.0  # a weekend between two readings, at worst


def test_a_longer_log_a_slow_tail_and_readings_after_transfer_do_not_move_the_finish():
    rng = np.random.default_rng(11)
    t = np.arange(0.0, 24.0 * 30, 6.0)
    values, og = _curve(rng, t)
    status, finish = _finish(t, values, og)
    assert status == "finished"
    # the same log stopped three days after the plateau started
    short = t <= finish + 72.0
    assert _finish(t[short], values[short], og) == (status, finish)
    # read on in the bright tank after the transfer: cold and carbonated, lower again
    after = np.concatenate([values, values[-1] - 0.4 - 0.02 * np.arange(t.size)])
    longer = np.concatenate([t, t[-1] + 12.0 + 12.0 * np.arange(t.size)])
    assert _finish(longer, after, og) == (status, finish)


def test_a_dry_hop_or_a_crash_lifting_gravity_does_not_break_the_plateau():
    t = np.arange(0.0, 24.0 * 12, 4.0)
    values = logistic_gravity(t, 12.0, 2.5, 0.08, 50.0, 0.05)
    base = _finish(t, values, 12.0)
    lifted = values + np.where((t >= base[1] + 20) & (t < base[1] + 40), 0.6, 0.0)
    assert _finish(t, lifted, 12.0) == base


def test_a_finish_lies_between_two_readings_and_a_gap_widens_it():
    """Friday's reading is off the plateau, Monday's is on it: the finish is somewhere in
    the weekend, labelled at its middle; Tuesday's reading confirms it."""
    hours = np.array([0, 24, 48, 72, 96, 168, 192, 216, 240], float)  # Mon..Fri, Mon..Thu
    values = np.array([12, 10.5, 8.0, 5.5, 3.6, 2.6, 2.6, 2.5, 2.5])
    outcome = derive_outcomes(_batch(), _gravity(hours, values), RULES).iloc[0]
    assert outcome.status == "finished"
    assert outcome.finish_earliest == T0 + pd.Timedelta(hours=96)
    assert outcome.finish_latest == T0 + pd.Timedelta(hours=168)
    assert outcome.finish_time == T0 + pd.Timedelta(hours=132)


def test_the_rule_by_hand():
    """find_plateau on bare arrays: a fall inside the window fails a reading; a gap across
    the window is decided by the next reading; an open log waits for its confirmation."""
    rule = PlateauRule(tolerance_plato=0.3, window_hours=48.0, confirm_hours=24.0)
    hours = np.array([0.0, 24.0, 48.0, 60.0, 144.0])
    values = np.array([12.0, 6.0, 3.4, 3.0, 2.9])
    found = find_plateau(hours, values, 12.0, rule, closed=False)
    assert (found.status, found.index, found.before) == ("finished", 3, 2)  # via the gap
    found = find_plateau(hours[:4], values[:4], 12.0, rule, closed=False)
    assert (found.status, found.index, found.before) == ("undecided", 3, 2)
    found = find_plateau(hours[:4], values[:4], 12.0, rule, closed=True)
    assert (found.status, found.index, found.before) == ("unconfirmed", None, 2)
    flat = find_plateau(hours, np.full(5, 12.0), 12.0, rule, closed=True)
    assert flat.status == "unconfirmed"  # flat at OG: a lag phase, never a plateau


@pytest.fixture(scope="module")
def real_logs(tmp_path_factory) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """The real Tilt saison and mead, ingested and validated: (batches, readings) each."""
    out = {}
    for name, files in {"saison": (SAISON,), "mead": (MEAD,)}.items():
        settings: Settings = _settings(tmp_path_factory.mktemp(name), *files)
        _ingest_and_validate(settings)
        out[name] = (
            lake.read_table(settings.paths.lake, "validated", BATCHES),
            lake.read_table(settings.paths.lake, "validated", READINGS),
        )
    return out


@pytest.mark.parametrize("name", ["saison", "mead"])
def test_real_tilt_logs_keep_their_finish_at_a_hand_cadence_and_any_log_length(real_logs, name):
    batches, readings = real_logs[name]
    batches = batches.head(1)
    readings = readings[readings["batch_id"] == batches["batch_id"].iloc[0]]
    closed = batches.assign(end_time=readings["timestamp"].max())
    full = derive_outcomes(closed, readings, RULES).iloc[0]
    assert full.status == "finished", full
    gravity = readings[readings["tag"] == "gravity_plato"]
    # once a day, at the first reading after 9 h
    stamps = gravity["timestamp"]
    morning = stamps[stamps.dt.hour >= 9].groupby(stamps.dt.normalize()).idxmin()
    daily = derive_outcomes(closed, gravity.loc[morning.to_numpy()], RULES).iloc[0]
    assert daily.status == "finished"
    assert abs(daily.finish_time - full.finish_time) <= pd.Timedelta(hours=24)
    assert daily.finish_earliest <= full.finish_latest  # the daily interval holds it
    # the log cut three days after the plateau began: the same finish
    cut = gravity[gravity["timestamp"] <= full.finish_latest + pd.Timedelta(days=3)]
    shorter = derive_outcomes(closed.assign(end_time=cut["timestamp"].max()), cut, RULES)
    assert shorter.iloc[0].finish_time == full.finish_time

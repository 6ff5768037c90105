"""Snapshots see only the past; labels match the simulator's hidden truth; splits by batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brewcast.plateau import PlateauRule
from brewcast.schema import BATCHES, FEATURES, LABEL, READINGS
from models.dataset import LabelRules, build_snapshots, derive_outcomes, split_by_batch_time
from tests.conftest import SMALL_WORLD

RULES = LabelRules(
    horizon_hours=24.0,
    snapshot_every_hours=6.0,
    plateau=PlateauRule(tolerance_plato=0.3, window_hours=48.0, confirm_hours=24.0),
)
T0 = pd.Timestamp("2026-05-01 06:00", tz="UTC")
GRAVITY = {0: 12.0, 12: 11.0, 24: 9.0, 36: 6.0, 48: 4.0, 60: 3.1, 72: 3.0, 96: 3.0, 120: 3.0}


def _hand_batch():
    batches = BATCHES.conform(
        pd.DataFrame(
            [
                {
                    "batch_id": "B1",
                    "fermenter": "FV01",
                    "brand": "golden_pilsner",
                    "yeast_strain": "german_lager",
                    "original_gravity_plato": 12.0,
                    "pitch_temperature_c": 10.0,
                    "pitch_rate_million_cells_per_ml_plato": 1.5,
                    "dissolved_oxygen_ppm": 9.0,
                    "ambient_temperature_c": 14.0,
                    "yeast_generation": 2.0,
                    "start_time": T0,
                    "end_time": None,
                }
            ]
        ),
        "hand",
    )
    rows = [("B1", "gravity_plato", T0 + pd.Timedelta(hours=h), v) for h, v in GRAVITY.items()]
    rows += [
        ("B1", "temperature_c", T0 + pd.Timedelta(hours=h), 20.0 if h == 30 else 18.0)
        for h in range(0, 121, 3)
    ]
    readings = READINGS.conform(pd.DataFrame(rows, columns=READINGS.names), "hand")
    return batches, readings


def test_hand_example_outcome_and_features():
    """The plateau starts at the 60 h reading (3.1 °P: nothing in the 48 h after it falls
    more than 0.3 °P below, and the 96 h reading confirms it); the 48 h reading (4.0 °P)
    is not on it. So the finish lies in (48 h, 60 h], labelled at the middle, 54 h."""
    batches, readings = _hand_batch()
    outcome = derive_outcomes(batches, readings, RULES).iloc[0]
    assert outcome.status == "finished"
    assert outcome.finish_earliest == T0 + pd.Timedelta(hours=48)
    assert outcome.finish_latest == T0 + pd.Timedelta(hours=60)
    assert outcome.finish_time == T0 + pd.Timedelta(hours=54)
    assert outcome.terminal_gravity_plato == 3.0  # where it ends: its last day
    snaps = build_snapshots(batches, readings, RULES).set_index("hours_since_pitch")
    assert list(snaps.index) == [float(h) for h in range(6, 79, 6)]  # until finish + horizon
    assert not snaps["censored"].any()
    at30 = snaps.loc[30.0]
    assert at30.current_gravity_plato == 9.0
    assert at30.gravity_readings_count == 3
    assert at30.hours_since_last_gravity == pytest.approx(6.0)
    assert at30.apparent_attenuation == pytest.approx(0.25)
    # two readings in the last 24 h: the slope takes the last three, 0 h to 24 h (least
    # squares through 12, 11, 9 °P: -36 / 288 °P/h = -3 °P/day)
    assert at30.gravity_slope_plato_per_day == pytest.approx(-3.0)
    assert at30.gravity_slope_span_hours == pytest.approx(24.0)
    assert at30.current_temperature_c == 20.0
    assert at30.mean_temperature_c == pytest.approx((18.0 * 10 + 20.0) / 11)
    assert at30.season == "spring"
    assert at30[LABEL] and at30.hours_remaining == pytest.approx(24.0)
    assert not snaps.loc[24.0, LABEL] and snaps.loc[24.0, "hours_remaining"] == pytest.approx(30.0)
    assert snaps.loc[78.0, "hours_remaining"] == 0.0


def test_an_unconfirmed_plateau_is_censored_and_its_early_snapshots_are_sure_negatives():
    """Cut at 72 h, the 60 h and 72 h readings are 12 h apart: no confirmation yet. The
    batch is running, surely unfinished at its 48 h reading (its last one off the
    plateau); snapshots whose horizon ends by then are negatives, marked censored."""
    batches, readings = _hand_batch()
    early = readings[readings["timestamp"] <= T0 + pd.Timedelta(hours=72)]
    outcome = derive_outcomes(batches, early, RULES).iloc[0]
    assert outcome.status == "running"
    assert outcome.unfinished_until == T0 + pd.Timedelta(hours=48)
    snaps = build_snapshots(batches, early, RULES)
    assert list(snaps["hours_since_pitch"]) == [6.0, 12.0, 18.0, 24.0]
    assert snaps["censored"].all() and not snaps[LABEL].any()
    assert snaps["hours_remaining"].isna().all()
    closed = batches.assign(end_time=T0 + pd.Timedelta(hours=80))
    outcome = derive_outcomes(closed, early, RULES).iloc[0]
    assert outcome.status == "censored" and pd.isna(outcome.finish_time)
    assert outcome.unfinished_until == T0 + pd.Timedelta(hours=48)
    assert pd.isna(derive_outcomes(batches, readings, RULES).iloc[0].unfinished_until)  # finished


def test_stuck_batch_never_finishes():
    batches, readings = _hand_batch()
    stuck = readings.copy()
    grav = stuck["tag"] == "gravity_plato"
    stuck.loc[grav, "value"] = np.maximum(stuck.loc[grav, "value"], 7.5)  # plateau at ADF 0.375
    outcome = derive_outcomes(batches, stuck, RULES).iloc[0]
    assert outcome.status == "stuck" and pd.isna(outcome.finish_time)
    snaps = build_snapshots(batches, stuck, RULES)
    assert not snaps[LABEL].any() and snaps["hours_remaining"].isna().all()
    assert not snaps["censored"].any()


def test_a_low_alcohol_beer_finishing_at_low_attenuation_is_not_stuck():
    """A 5 °P wort that its yeast takes to 3.5 °P (30 %) is finished, not stuck."""
    batches, readings = _hand_batch()
    low = readings.copy()
    grav = low["tag"] == "gravity_plato"
    low.loc[grav, "value"] = 3.5 + (low.loc[grav, "value"] - 3.0) * 1.5 / 9.0
    outcome = derive_outcomes(batches.assign(original_gravity_plato=5.0), low, RULES).iloc[0]
    assert outcome.status == "finished"


def assert_early_negatives_never_cover_a_finish(
    batches: pd.DataFrame, readings: pd.DataFrame, rules: LabelRules, every_hours: float = 12.0
) -> int:
    """Monitoring as it runs live: at every cutoff, outcomes from the readings so far (the
    frames still open). A running batch's ``unfinished_until`` must never pass the finish
    its complete readings give it, so no early negative is a snapshot that finished within
    its horizon. Returns how many (cutoff, batch) early labels were checked."""
    final = derive_outcomes(batches, readings, rules).set_index("batch_id")
    first, last = readings["timestamp"].min(), readings["timestamp"].max()
    checked = 0
    for cutoff in pd.date_range(
        first, last + pd.Timedelta(hours=every_hours), freq=f"{every_hours}h"
    ):
        seen = readings[readings["timestamp"] <= cutoff]
        started = batches[batches["start_time"] <= cutoff]
        still_open = started.assign(
            end_time=started["end_time"].where(started["end_time"] <= cutoff)
        )
        now = derive_outcomes(still_open, seen, rules)
        early = now[now["unfinished_until"].notna()]
        for row in early.itertuples(index=False):
            truth = final.loc[row.batch_id]
            assert row.unfinished_until <= cutoff
            if truth.status == "finished":
                assert row.unfinished_until <= truth.finish_time, (row, cutoff, truth)
            checked += 1
    return checked


def test_early_negatives_are_sure_in_a_world_with_bad_readings():
    """The simulator's noisy, typo-ridden world: checked every 12 h of its life."""
    from ingest.simulator import SimulationConfig, simulate

    world = simulate(SimulationConfig(days=90, fermenters=6, seed=21, bad_reading_rate=0.02))
    assert assert_early_negatives_never_cover_a_finish(world.batches, world.readings, RULES) > 200


@pytest.fixture(scope="module")
def world_snapshots(small_world):
    outcomes = derive_outcomes(small_world.batches, small_world.readings, RULES)
    return outcomes, build_snapshots(small_world.batches, small_world.readings, RULES, outcomes)


def test_snapshots_conform_to_the_schema(world_snapshots):
    _, snaps = world_snapshots
    assert list(snaps.columns) == FEATURES.names
    assert not snaps.duplicated(list(FEATURES.key)).any()
    assert 0.2 < snaps[LABEL].mean() < 0.6


def test_no_leakage_from_the_future(small_world, world_snapshots):
    """Features at t are the same whether the readings after t exist, or are different."""
    outcomes, snaps = world_snapshots
    cut = SMALL_WORLD.start + pd.Timedelta(days=20)
    readings = small_world.readings
    future = readings["timestamp"] > cut
    altered = readings.copy()
    altered.loc[future, "value"] = altered.loc[future, "value"] + 3.0
    features = [c.name for c in FEATURES.columns if c.role == "feature"]
    for variant in (readings[~future], altered):
        again = build_snapshots(small_world.batches, variant, RULES, outcomes)
        past = snaps[snaps["snapshot_time"] <= cut].set_index(list(FEATURES.key))
        mine = again[again["snapshot_time"] <= cut].set_index(list(FEATURES.key))
        both = past.index.intersection(mine.index)
        assert len(both) > 0.9 * len(past) > 100  # snapshots stop at a batch's last reading
        pd.testing.assert_frame_equal(mine.loc[both, features], past.loc[both, features])


def test_outcomes_agree_with_the_simulators_truth(small_world, world_snapshots):
    outcomes, _ = world_snapshots
    merged = outcomes.merge(small_world.truth, on="batch_id")
    finished = merged[merged["status"] == "finished"]
    assert len(finished) >= 15
    error_h = (finished["finish_time_x"] - finished["finish_time_y"]).dt.total_seconds() / 3600
    assert error_h.abs().median() < 8.0  # within a cellar round of the true finish
    known = merged[merged["status"] != "running"]
    assert ((known["status"] == "stuck") == known["stuck"]).mean() > 0.95


def test_split_keeps_batches_whole_and_time_ordered(world_snapshots):
    _, snaps = world_snapshots
    split = split_by_batch_time(snaps)
    assert set(split) == {"train", "validation", "test"}
    assert (split.groupby(snaps["batch_id"]).nunique() == 1).all()
    pitch = snaps["snapshot_time"] - pd.to_timedelta(snaps["hours_since_pitch"], unit="h")
    first = pitch.groupby(split).min()
    last = pitch.groupby(split).max()
    assert last["train"] <= first["validation"] and last["validation"] <= first["test"]
    share = split.groupby(snaps["batch_id"]).first().value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.05)
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_batch_time(snaps, (0.5, 0.2, 0.2))

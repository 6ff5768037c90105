"""The simulator's statistics follow DOMAIN.md's physics, reproducibly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from brewcast.schema import PLATO_RANGE, TEMPERATURE_RANGE
from ingest.simulator import (
    STRAINS,
    Drift,
    SimulationConfig,
    hours_to_terminal,
    logistic_gravity,
    simulate,
)
from tests.conftest import SMALL_WORLD

LONG_WORLD = SimulationConfig(
    days=240.0, fermenters=12, seed=11, bad_reading_rate=0.0, bad_batch_rate=0.0
)


@pytest.fixture(scope="module")
def long_world():
    return simulate(LONG_WORLD)


def test_logistic_hand_example():
    # P0 = 12, Pe = 3: at the midpoint gravity is halfway; far before, P0; far after, Pe.
    g = logistic_gravity(np.array([-1000.0, 50.0, 1000.0]), 12.0, 3.0, 0.1, 50.0)
    np.testing.assert_allclose(g, [12.0, 7.5, 3.0])
    t = hours_to_terminal(12.0, 3.0, 0.1, 50.0, 0.3)
    assert logistic_gravity(np.array([t]), 12.0, 3.0, 0.1, 50.0)[0] == pytest.approx(3.3)


def test_same_seed_same_world_other_seed_other_world(small_world):
    again = simulate(SMALL_WORLD)
    pd.testing.assert_frame_equal(again.batches, small_world.batches)
    pd.testing.assert_frame_equal(again.readings, small_world.readings)
    other = simulate(dataclasses.replace(SMALL_WORLD, seed=8))
    assert not other.readings["value"].equals(small_world.readings["value"])


def test_attenuation_stays_in_each_strains_range(long_world):
    truth = long_world.truth.merge(long_world.batches[["batch_id", "yeast_strain"]], on="batch_id")
    healthy = truth[~truth["stuck"]]
    for strain, rows in healthy.groupby("yeast_strain"):
        low, high = STRAINS[strain].attenuation
        assert rows["attenuation"].between(low, high).all(), strain
    # Observed: the final gravity readings of finished batches give the same attenuation.
    readings = long_world.readings[long_world.readings["tag"] == "gravity_plato"]
    last = (
        readings.sort_values("timestamp")
        .groupby("batch_id")["value"]
        .apply(lambda v: v.tail(3).median())
    )
    done = healthy[healthy["end_time"] <= LONG_WORLD.end].set_index("batch_id")
    og = long_world.batches.set_index("batch_id")["original_gravity_plato"]
    observed = (og[done.index] - last[done.index]) / og[done.index]
    assert (observed - done["attenuation"]).abs().median() < 0.02


def test_lagers_ferment_slower_and_warm_fermenters_faster(long_world):
    truth = long_world.truth.merge(long_world.batches, on="batch_id")
    truth = truth[~truth["stuck"]]
    by_strain = truth.groupby("yeast_strain")["hours_to_finish"].median()
    assert by_strain["german_lager"] > 1.5 * by_strain["american_ale"]
    ales = truth[truth["yeast_strain"] == "american_ale"]
    weak = ales[ales["fermenter"].isin(["FV05", "FV08"])]["hours_to_finish"].median()
    strong = ales[ales["fermenter"].isin(["FV01", "FV02", "FV06", "FV10"])][
        "hours_to_finish"
    ].median()
    assert weak < strong


def test_yeast_generation_has_no_effect(long_world):
    truth = long_world.truth.merge(long_world.batches, on="batch_id")
    truth = truth[~truth["stuck"] & (truth["yeast_strain"] == "german_lager")]
    corr = np.corrcoef(truth["yeast_generation"], truth["hours_to_finish"])[0, 1]
    assert abs(corr) < 0.2


def test_stuck_batches_plateau_high(long_world):
    truth = long_world.truth
    share = truth["stuck"].mean()
    assert 0.005 < share < 0.08
    assert truth.loc[truth["stuck"], "attenuation"].max() < 0.62
    assert truth.loc[truth["stuck"], "finish_time"].isna().all()


def test_gravity_is_sparse_and_temperature_fine(small_world):
    r = small_world.readings
    per_day = r.groupby(["batch_id", "tag"]).size().unstack() / (
        r.groupby("batch_id")["timestamp"]
        .agg(lambda t: (t.max() - t.min()).total_seconds() / 86400.0)
        .to_frame()
        .values
    )
    assert 1.5 < per_day["gravity_plato"].median() < 3.2  # three rounds a day, some skipped
    assert per_day["temperature_c"].median() > 40


def test_bad_records_exist_but_are_rare(small_world):
    r = small_world.readings
    grav = r[r["tag"] == "gravity_plato"]["value"]
    temp = r[r["tag"] == "temperature_c"]["value"]
    impossible = (~grav.between(*PLATO_RANGE)).sum() + (~temp.between(*TEMPERATURE_RANGE)).sum()
    assert 0 < impossible < 0.02 * len(r)  # NaN counts as outside the range too
    assert r["value"].isna().sum() > 0
    clean = simulate(dataclasses.replace(SMALL_WORLD, bad_reading_rate=0.0, bad_batch_rate=0.0))
    assert clean.readings["value"].notna().all()
    assert clean.readings["value"].between(-2, 40).all()


def test_drift_changes_only_its_slice_after_its_start():
    drift = Drift("yeast_strain", "german_lager", pd.Timestamp("2026-04-01", tz="UTC"))
    base = simulate(LONG_WORLD)
    drifted = simulate(dataclasses.replace(LONG_WORLD, drift=drift))
    a = base.truth.merge(base.batches[["batch_id", "yeast_strain", "start_time"]], on="batch_id")
    b = drifted.truth.set_index("batch_id")
    # Until the first drifted batch the two worlds are identical, batch for batch.
    first = b.index[b["drifted"]][0]
    before = a[a["start_time"] < drifted.batches.set_index("batch_id").loc[first, "start_time"]]
    np.testing.assert_allclose(
        b.loc[before["batch_id"], "midpoint_hours"], before["midpoint_hours"]
    )
    assert b["drifted"].sum() > 5
    merged = drifted.truth.merge(drifted.batches, on="batch_id")
    assert (merged.loc[merged["drifted"], "yeast_strain"] == "german_lager").all()
    assert (merged.loc[merged["drifted"], "start_time"] >= drift.start).all()
    # The first drifted batch is the same batch in both worlds up to its midpoint; after it,
    # the sluggish finish (half the slope) nearly doubles the time from midpoint to the
    # plateau (not exactly: the plateau's window is a fixed 48 h).
    same = a.set_index("batch_id").loc[first]
    assert b.loc[first, "midpoint_hours"] == pytest.approx(same["midpoint_hours"])
    slowed = (b.loc[first, "hours_to_finish"] - b.loc[first, "midpoint_hours"]) / (
        same["hours_to_finish"] - same["midpoint_hours"]
    )
    assert 1.5 < slowed < 2.05
    # Drifted lagers finish days later than lagers of the same world before the drift.
    lagers = merged[(merged["yeast_strain"] == "german_lager") & ~merged["stuck"]]
    slower = (
        lagers[lagers["drifted"]]["hours_to_finish"].median()
        - lagers[~lagers["drifted"]]["hours_to_finish"].median()
    )
    assert 40 < slower < 120
    ales = merged[(merged["yeast_strain"] == "american_ale") & ~merged["stuck"]]
    late = ales["start_time"] >= drift.start
    assert (
        abs(ales[late]["hours_to_finish"].median() - ales[~late]["hours_to_finish"].median()) < 10
    )


def test_sluggish_finish_is_the_same_curve_until_its_midpoint():
    t = np.linspace(0, 200, 401)
    healthy = logistic_gravity(t, 12.0, 3.0, 0.05, 80.0)
    sluggish = logistic_gravity(t, 12.0, 3.0, 0.05, 80.0, late_slope=0.025)
    np.testing.assert_array_equal(sluggish[t <= 80], healthy[t <= 80])
    assert (sluggish[t > 80] > healthy[t > 80]).all()
    # Halfway down at the midpoint in both; the sluggish one is at the healthy one's
    # gravity of (t - M) / 2 later.
    assert sluggish[t == 80][0] == pytest.approx(7.5)
    np.testing.assert_allclose(sluggish[t == 180], healthy[t == 130])
    with pytest.raises(ValueError, match="late_slope_factor"):
        Drift("yeast_strain", "german_lager", pd.Timestamp("2026-01-01", tz="UTC"), 0.0)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="fermenters"):
        SimulationConfig(fermenters=99)
    with pytest.raises(ValueError, match="drift column"):
        SimulationConfig(drift=Drift("season", "summer", pd.Timestamp("2026-01-01", tz="UTC")))

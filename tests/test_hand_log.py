"""The hand-logging brewery (``hand_log`` profile): its figures are DOMAIN.md's ("A
commercial brewery's hand log"), and its ERP export, read through the generic column
mapping like any brewery's own, gives the labels its readings give."""

from __future__ import annotations

import numpy as np
import pytest

from application import stages
from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from brewcast.settings import Settings
from ingest.simulator import SimulationConfig, simulate
from ingest.sources import write_erp_export
from models.dataset import LabelRules, derive_outcomes

YEAR = SimulationConfig(profile="hand_log", days=540.0, fermenters=10, seed=3)


@pytest.fixture(scope="module")
def year():
    return simulate(YEAR)


def test_its_figures_are_a_hand_logs(year):
    batches, readings = year.batches, year.readings
    gravity = readings[readings["tag"] == "gravity_plato"].sort_values(["batch_id", "timestamp"])
    per_batch = gravity.groupby("batch_id").size()
    assert 7 <= per_batch.median() <= 11  # DOMAIN: median 9
    gaps = gravity.groupby("batch_id")["timestamp"].diff().dt.total_seconds() / 3600
    assert np.nanmedian(gaps) == pytest.approx(24.0, abs=2.0)
    assert np.nanpercentile(gaps, 90) == pytest.approx(72.0, abs=6.0)  # a weekend
    assert (gravity["timestamp"].dt.day_of_week >= 5).mean() < 0.05  # the OG at pitch only
    brews = batches["brand"].value_counts()
    assert (brews <= 3).mean() > 0.5 and batches["style"].nunique() == 10
    low = batches["style"] == "low_alcohol"
    assert 0.05 < low.mean() < 0.13
    assert 0.05 < batches["original_gravity_plato"].isna().mean() < 0.15
    no_readings = ~batches["batch_id"].isin(gravity["batch_id"])
    assert no_readings.sum() > 10 and batches.loc[no_readings, "batch_id"].str.endswith(".1").all()
    assert batches["yeast_strain"].isna().all()  # the ERP records no strain


def test_its_labels_find_the_plateau_and_low_alcohol_beers_finish(year):
    outcomes = derive_outcomes(year.batches, year.readings, LabelRules()).merge(
        year.truth, on="batch_id", suffixes=("", "_true")
    )
    finished = outcomes[outcomes["status"] == "finished"]
    late = (finished["finish_time"] - finished["finish_time_true"]).dt.total_seconds() / 3600
    assert late.abs().median() < 24.0  # one reading a working day
    low = outcomes.merge(year.batches[["batch_id", "style"]], on="batch_id")
    low = low[(low["style"] == "low_alcohol") & low["status"].isin(["finished", "stuck"])]
    assert len(low) > 10 and (low["status"] == "finished").all()


def test_its_erp_export_reads_back_through_the_mapping(tmp_path):
    world = simulate(SimulationConfig(profile="hand_log", days=60.0, fermenters=4, seed=8))
    settings = Settings(home=tmp_path / "home")
    transfers = world.truth.set_index("batch_id")["transfer_time"].dropna().to_dict()
    path = write_erp_export(world.batches, world.readings, settings.paths.drop, transfers=transfers)
    text = path.read_text()
    assert "after transfer" in text and ",0.0000," in text
    assert not any(":" in line.split(",")[3] for line in text.splitlines()[1:])  # dates only
    report = stages.ingest(settings, "drop")
    assert "give a date only" in " ".join([*report.warnings, str(report.details)])
    stages.validate(settings)
    batches = lake.read_table(settings.paths.lake, "validated", BATCHES)
    readings = lake.read_table(settings.paths.lake, "validated", READINGS)
    with_readings = world.batches[world.batches["batch_id"].isin(world.readings["batch_id"])]
    assert set(batches["batch_id"]) == set(with_readings["batch_id"])
    assert (batches["time_resolution_h"] == 24.0).all()
    assert set(batches["style"]) == set(with_readings["style"])
    rules = LabelRules()
    ours = derive_outcomes(batches, readings, rules).set_index("batch_id")
    theirs = derive_outcomes(with_readings, world.readings, rules).set_index("batch_id")
    both = ours.join(theirs, rsuffix="_world", how="inner")
    done = both[(both["status"] == "finished") & (both["status_world"] == "finished")]
    assert len(done) >= 5
    gap = (done["finish_time"] - done["finish_time_world"]).abs().dt.total_seconds() / 3600
    assert gap.median() <= 12.0 and gap.max() <= 36.0, gap.describe()


def test_the_slope_is_defined_at_a_hand_logs_cadence(year):
    """Once a working day, the last 24 h hold one reading: the slope takes the last three
    (the issue's real log had it undefined on every snapshot)."""
    from models.dataset import build_snapshots

    snaps = build_snapshots(year.batches, year.readings, LabelRules())
    enough = snaps[snaps["gravity_readings_count"] >= 3]
    defined = enough["gravity_slope_plato_per_day"].notna().mean()
    assert defined > 0.95, defined
    spans = enough["gravity_slope_span_hours"].dropna()
    assert 40.0 <= spans.median() <= 80.0  # three readings a day or a weekend apart

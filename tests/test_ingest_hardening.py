"""Issue 23, ingest and validation: wrong values are not validated as good, re-deliveries
follow one rule, reasons stay small, and nothing in the drop folder is skipped silently."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from application.cli import app
from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from ingest.simulator import simulate
from ingest.sources import ingest_drop_folder
from tests.conftest import SMALL_WORLD
from validation.validate import REASONS_COLUMN, validate_file, validate_lake

CLEAN = dataclasses.replace(
    SMALL_WORLD, bad_reading_rate=0.0, bad_batch_rate=0.0, stuck_probability=0.0
)
NOW = CLEAN.end + pd.Timedelta(days=1)
runner = CliRunner()


@pytest.fixture(scope="module")
def clean_world():
    return simulate(CLEAN)


@pytest.fixture
def with_batches(settings, clean_world):
    lake.write_partitions(clean_world.batches, BATCHES, settings.paths.lake, "raw", "world")
    settings.paths.drop.mkdir(parents=True)
    return settings


def _closed_readings(world) -> pd.DataFrame:
    batch = world.batches.dropna(subset=["end_time"]).iloc[0]
    r = world.readings
    return r[r["batch_id"] == batch.batch_id].reset_index(drop=True)


def _gravity_rows(readings: pd.DataFrame) -> list[int]:
    return readings.index[readings["tag"] == "gravity_plato"].tolist()


def _csv(path, frame: pd.DataFrame):
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    return path


def _quarantined(run) -> pd.DataFrame:
    files = [o.quarantine_file for o in run.outcomes if o.quarantine_file]
    return pd.concat([pq.read_table(f).to_pandas() for f in files]) if files else pd.DataFrame()


# --- 1. wrong values validated as good ---------------------------------------------------


def test_a_parquet_column_of_the_wrong_arrow_kind_is_refused(with_batches, clean_world):
    settings = with_batches
    r = _closed_readings(clean_world).iloc[:20]
    table = pa.Table.from_pandas(r, preserve_index=False)
    flags = pa.array([bool(i % 2) for i in range(len(r))], pa.bool_())
    table = table.set_column(table.schema.get_field_index("value"), "value", flags)
    pq.write_table(table, settings.paths.drop / "readings_bools.parquet")
    report = ingest_drop_folder(settings)
    why = report.rejected["readings_bools.parquet"]
    assert "'value'" in why and "bool" in why and "float64" in why
    assert not lake.partition_files(settings.paths.lake, "raw", READINGS)


def test_a_truncated_gravity_value_is_quarantined_not_its_neighbour(
    with_batches, clean_world, tmp_path
):
    settings = with_batches
    r = _closed_readings(clean_world)
    g = _gravity_rows(r)[6]
    assert r.loc[g, "value"] > 5
    r.loc[g, "value"] = 1.0  # 18.0 cut to its first digit
    run = validate_file(settings, _csv(tmp_path / "readings_cut.csv", r), now=NOW)
    assert set(run.failure_counts()) == {"gravity_not_truncated"}, run.summary()
    held = _quarantined(run)
    assert held["value"].tolist() == [1.0]
    assert held[REASONS_COLUMN].tolist() == ["gravity_not_truncated"]
    t = run.totals()["readings"]
    assert t["rows_in"] == len(r) == t["published"] + t["quarantined"]


def test_gravity_creeping_up_in_small_steps_is_caught(with_batches, clean_world, tmp_path):
    settings = with_batches
    r = _closed_readings(clean_world)
    rows = _gravity_rows(r)[5:11]
    start = r.loc[rows[0], "value"]
    for k, row in enumerate(rows):
        r.loc[row, "value"] = start + 0.9 * k  # each step passes gravity_not_rising (1.0)
    run = validate_file(settings, _csv(tmp_path / "readings_creep.csv", r), now=NOW)
    failures = run.failure_counts()
    assert "gravity_not_rising" not in failures
    assert failures.get("gravity_not_creeping_up", 0) >= 2, run.summary()
    held = _quarantined(run)
    assert set(held["value"]) <= {start + 0.9 * k for k in range(3, 6)}


def test_naive_csv_timestamps_are_refused_by_default(with_batches, clean_world):
    settings = with_batches
    r = _closed_readings(clean_world).iloc[:5]
    naive = r.assign(timestamp=r["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    naive.to_csv(settings.paths.drop / "readings_naive.csv", index=False)
    report = ingest_drop_folder(settings)
    why = report.rejected["readings_naive.csv"]
    assert "timestamp" in why and "offset" in why and "BREWCAST_NAIVE_TIMESTAMPS" in why
    assert not lake.partition_files(settings.paths.lake, "raw", READINGS)


def test_naive_csv_timestamps_read_in_the_local_zone_when_asked(with_batches, clean_world):
    settings = with_batches.model_copy(
        update={"naive_timestamps": "local", "local_timezone": "Europe/Berlin"}
    )
    r = _closed_readings(clean_world).iloc[:5]
    naive = r.assign(timestamp=r["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    naive.to_csv(settings.paths.drop / "readings_naive.csv", index=False)
    report = ingest_drop_folder(settings)
    assert not report.rejected
    assert "Europe/Berlin" in report.notes["local_timezone"]
    got = lake.read_table(settings.paths.lake, "raw", READINGS).sort_values("timestamp")
    expected = r["timestamp"].sort_values() - pd.Timedelta(hours=1)  # winter: UTC+1
    assert got["timestamp"].tolist() == expected.tolist()


# --- 2. re-delivery ----------------------------------------------------------------------


def test_a_file_delivered_twice_under_two_names_is_a_no_op(with_batches, clean_world):
    settings = with_batches
    r = _closed_readings(clean_world)
    _csv(settings.paths.drop / "readings_a.csv", r)
    first = ingest_drop_folder(settings)
    assert first.readings == len(r)
    _csv(settings.paths.drop / "readings_a_copy.csv", r)
    again = ingest_drop_folder(settings)
    assert again.accepted == ["readings_a_copy.csv"] and again.readings == 0
    assert again.notes["redelivered"]["readings_a_copy.csv"] == {"repeated": len(r)}
    assert "nothing new" in again.summary()
    run = validate_lake(settings, now=NOW)
    assert run.success, run.summary()
    assert run.totals()["readings"]["published"] == len(r)
    assert len(lake.read_table(settings.paths.lake, "validated", READINGS)) == len(r)


def test_a_changed_redelivery_is_a_correction_and_the_old_value_is_kept(with_batches, clean_world):
    settings = with_batches
    r = _closed_readings(clean_world)
    b = clean_world.batches[clean_world.batches["batch_id"] == r.loc[0, "batch_id"]]
    _csv(settings.paths.drop / "readings_1.csv", r)
    ingest_drop_folder(settings)
    assert validate_lake(settings, now=NOW).success
    fixed = r.copy()
    gravity = fixed["tag"] == "gravity_plato"
    fixed.loc[gravity, "value"] += 0.5
    os.utime(_csv(settings.paths.drop / "readings_2.csv", fixed), ns=(2**62, 2**62))
    _csv(settings.paths.drop / "batches_2.csv", b.assign(brand="other_brand"))
    report = ingest_drop_folder(settings)
    assert report.notes["redelivered"]["readings_2.csv"] == {
        "repeated": int((~gravity).sum()),
        "corrected": int(gravity.sum()),
    }
    assert report.notes["redelivered"]["batches_2.csv"] == {"corrected": 1}
    run = validate_lake(settings, now=NOW)
    assert run.success, run.summary()
    got = lake.read_table(settings.paths.lake, "validated", READINGS)
    assert len(got) == len(r)
    mine = got[got["tag"] == "gravity_plato"].sort_values("timestamp")["value"]
    assert mine.to_numpy() == pytest.approx(fixed.loc[gravity, "value"].to_numpy())
    brand = lake.read_table(settings.paths.lake, "validated", BATCHES).set_index("batch_id")
    assert brand.loc[b["batch_id"].iloc[0], "brand"] == "other_brand"
    history = pd.concat(
        pq.read_table(f).to_pandas() for f in settings.paths.lake.glob("history/readings/*/*")
    )
    assert len(history) == gravity.sum() and (history["history_reason"] == "superseded").all()
    assert history["value"].sort_values().to_numpy() == pytest.approx(
        r.loc[gravity, "value"].sort_values().to_numpy()
    )
    assert not list(settings.paths.lake.glob("quarantine/readings/*/*"))


# --- 3. size of reasons, and no re-validation of unchanged quarantine -------------------


def test_a_huge_value_is_not_echoed_whole_into_reasons(settings, tmp_path):
    path = tmp_path / "readings_huge.csv"
    path.write_text(
        "batch_id,tag,timestamp,value\n" + "x" * 2_000_000 + ",gravity_plato,2026-01-02T00:00Z,12\n"
    )
    run = validate_file(settings, path, now=NOW)
    assert "known_batch" in run.failure_counts()
    (reason,) = settings.paths.lake.glob("quarantine/readings/*/*.reason.json")
    assert reason.stat().st_size < 20_000
    assert settings.paths.validation_summary.stat().st_size < 20_000
    example = json.loads(reason.read_text())["failed_expectations"][0]["examples"][0]
    assert len(example["batch_id"]) <= 260 and "2000000 characters" in example["batch_id"]


def _one_bad_partition(settings, clean_world):
    r = _closed_readings(clean_world).iloc[[0]].assign(value=45.0)
    return lake.write_partitions(r, READINGS, settings.paths.lake, "raw", "bad")


def test_an_unchanged_quarantined_partition_is_not_a_new_failure(with_batches, clean_world):
    settings = with_batches
    (source,) = _one_bad_partition(settings, clean_world)
    first = validate_lake(settings, now=NOW)
    assert not first.success and first.totals()["readings"]["quarantined"] == 1
    assert not lake.needs_validation(settings.paths.lake, source, READINGS, "validated")
    again = validate_lake(settings, now=NOW)
    assert again.outcomes == [] and again.success
    assert again.still_quarantined == [str(source)]
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "still quarantined" in result.output
    # Changing the raw file makes it new again.
    stamp = time.time_ns() + 10**9
    os.utime(source, ns=(stamp, stamp))
    assert runner.invoke(app, ["validate"]).exit_code == 1


# --- 4. nothing in the drop folder is skipped silently -----------------------------------


def test_every_drop_entry_is_ingested_quarantined_or_reported(with_batches, clean_world, tmp_path):
    settings = with_batches
    drop = settings.paths.drop
    (drop / "notes.txt").write_text("hello")
    (drop / "readings.csv.gz").write_bytes(b"\x1f\x8b\x08\x00")
    (drop / "config.json").write_text('{"a": 1}')
    (drop / "x.csv").mkdir()
    (drop / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    outside = _csv(tmp_path / "readings_outside.csv", _closed_readings(clean_world).iloc[:5])
    (drop / "readings_linked.csv").symlink_to(outside)
    report = ingest_drop_folder(settings)
    assert report.accepted == ["readings_linked.csv"] and report.readings == 5
    assert set(report.rejected) == {"notes.txt", "readings.csv.gz", "config.json", "gone.csv"}
    assert "unsupported" in report.rejected["notes.txt"]
    assert "symlink" in report.rejected["gone.csv"]
    assert set(report.ignored) == {"x.csv"} and "directory" in report.ignored["x.csv"]
    assert "ignored x.csv" in report.summary()
    assert sorted(p.name for p in drop.iterdir()) == ["processed", "x.csv"]
    processed = drop / "processed" / "readings_linked.csv"
    assert not processed.is_symlink() and processed.read_bytes() == outside.read_bytes()
    assert outside.exists()  # the target is not moved
    kept = settings.paths.lake / "quarantine" / "files"
    assert not any(p.is_symlink() for p in kept.iterdir())
    assert (kept / "notes.txt").read_text() == "hello"
    result = runner.invoke(app, ["ingest", "--source", "drop"])
    assert result.exit_code == 1 and "ignored x.csv" in result.output


def test_a_second_file_of_a_processed_name_keeps_both(with_batches, clean_world):
    settings = with_batches
    r = _closed_readings(clean_world)
    first = _csv(settings.paths.drop / "readings_day.csv", r.iloc[:5]).read_bytes()
    ingest_drop_folder(settings)
    second = _csv(settings.paths.drop / "readings_day.csv", r.iloc[5:10]).read_bytes()
    ingest_drop_folder(settings)
    kept = sorted((settings.paths.drop / "processed").iterdir())
    assert len(kept) == 2
    assert (settings.paths.drop / "processed" / "readings_day.csv").read_bytes() == first
    assert {p.read_bytes() for p in kept} == {first, second}

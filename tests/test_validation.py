"""Great Expectations validation: every kind of bad data is caught, with its reason, and no
row is ever lost (rows in = rows validated + rows quarantined)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from application.cli import app
from brewcast import lake
from brewcast.schema import BATCHES, FEATURES, READINGS
from ingest.simulator import simulate
from ingest.sources import ingest_interval
from models.dataset import LabelRules, build_snapshots
from tests.conftest import SMALL_WORLD
from validation.reference import load_reference, save_reference
from validation.validate import REASONS_COLUMN, publish_features, validate_file, validate_lake

CLEAN = dataclasses.replace(
    SMALL_WORLD, bad_reading_rate=0.0, bad_batch_rate=0.0, stuck_probability=0.0
)
NOW = CLEAN.end + pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def clean_world():
    return simulate(CLEAN)


@pytest.fixture
def lake_with_batches(settings, clean_world):
    """A lake whose raw stage knows the clean world's batches (readings are validated
    against their batch's window)."""
    lake.write_partitions(clean_world.batches, BATCHES, settings.paths.lake, "raw", "world")
    return settings


def _batch(clean_world, closed: bool):
    b = clean_world.batches
    return b[b["end_time"].notna() if closed else b["end_time"].isna()].iloc[0]


def _readings_of(clean_world, batch_id: str) -> pd.DataFrame:
    r = clean_world.readings
    return r[r["batch_id"] == batch_id].reset_index(drop=True)


def _write(path, frame: pd.DataFrame):
    if path.suffix == ".csv":
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    else:
        frame.to_parquet(path, index=False)
    return path


def _grav_row(readings: pd.DataFrame, n: int = 5) -> int:
    return int(readings.index[readings["tag"] == "gravity_plato"][n])


def _mutations(clean_world):
    closed = _batch(clean_world, closed=True)
    r = _readings_of(clean_world, closed.batch_id)
    g = _grav_row(r)
    out = {}
    bad = r.copy()
    bad.loc[g, "value"] = 45.0
    out["out_of_range"] = (bad, [g], "range:value[gravity_plato]")
    bad = r.copy()
    bad.loc[g, "tag"] = "pressure_bar"
    out["unknown_category"] = (bad, [g], "vocabulary:tag")
    bad = pd.concat([r, r.loc[[g]]], ignore_index=True)
    out["duplicate_rows"] = (bad, [g, len(r)], "unique_key")
    bad = r.copy()
    bad.loc[g, "value"] = float("nan")
    out["nan_value"] = (bad, [g], "not_null:value")
    bad = r.copy()
    bad.loc[g, "value"] = bad.loc[_grav_row(r, 4), "value"] + 3.0
    out["rising_gravity"] = (bad, [g], "gravity_not_rising")
    bad = r.copy()
    bad.loc[g, "timestamp"] = closed.start_time - pd.Timedelta(hours=5)
    out["before_pitch"] = (bad, [g], "inside_batch_window:start")
    bad = r.copy()
    bad.loc[g, "batch_id"] = "FV99-nobody"
    out["unknown_batch"] = (bad, [g], "known_batch")
    open_batch = _batch(clean_world, closed=False)
    r_open = _readings_of(clean_world, open_batch.batch_id)
    bad = r_open.copy()
    last = int(bad.index[-1])
    bad.loc[last, "timestamp"] = NOW + pd.Timedelta(days=3)
    out["future_timestamp"] = (bad, [last], "not_in_future")
    return out


@pytest.mark.parametrize(
    "kind",
    [
        "out_of_range",
        "unknown_category",
        "duplicate_rows",
        "nan_value",
        "rising_gravity",
        "before_pitch",
        "unknown_batch",
        "future_timestamp",
    ],
)
@pytest.mark.parametrize("fmt", ["csv"])
def test_bad_rows_are_quarantined_with_their_reason(
    lake_with_batches, clean_world, tmp_path, kind, fmt
):
    settings = lake_with_batches
    frame, bad_rows, rule = _mutations(clean_world)[kind]
    path = _write(tmp_path / f"readings_{kind}.{fmt}", frame)
    run = validate_file(settings, path, now=NOW)
    assert not run.success
    totals = run.totals()["readings"]
    assert totals["rows_in"] == len(frame) == totals["published"] + totals["quarantined"]
    assert totals["quarantined"] == len(bad_rows)
    assert rule in run.failure_counts()
    quarantined = pd.concat(
        [pq.read_table(o.quarantine_file).to_pandas() for o in run.outcomes if o.quarantine_file]
    )
    assert quarantined[REASONS_COLUMN].str.contains(rule, regex=False).all()
    published = lake.read_table(settings.paths.lake, "validated", READINGS)
    # Every row is in exactly one place, and the bad ones are not in validated/.
    expected_bad = READINGS.conform(frame.loc[bad_rows], "t")
    assert len(published) + len(quarantined) == len(frame)
    merged = published.merge(expected_bad, how="inner")
    assert merged.empty
    reason = json.loads(
        next(settings.paths.lake.glob("quarantine/readings/*/*.reason.json")).read_text()
    )
    failed = {f["rule"]: f for f in reason["failed_expectations"]}
    assert failed[rule]["unexpected_count"] >= 1 and failed[rule]["examples"]


UNREADABLE = {
    "wrong_type": (
        "readings_wrong_type.csv",
        "batch_id,tag,timestamp,value\nb1,gravity_plato,2026-01-01T00:00:00Z,abc\n",
        "cannot be read as float64",
    ),
    "missing_column": (
        "readings_missing.csv",
        "batch_id,tag,timestamp\nb1,gravity_plato,2026-01-01T00:00:00Z\n",
        "missing column",
    ),
    "empty_file": ("readings_empty.csv", "", "file is empty"),
    "truncated_file": ("readings_truncated.parquet", None, "unreadable .parquet"),
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_files_are_quarantined_whole(settings, clean_world, tmp_path, kind):
    name, content, reason = UNREADABLE[kind]
    path = tmp_path / name
    if content is None:  # a real Parquet file cut in half
        full = _write(tmp_path / "full.parquet", clean_world.readings.iloc[:500])
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    else:
        path.write_text(content)
    run = validate_file(settings, path, now=NOW)
    assert not run.success
    kept = settings.paths.lake / "quarantine" / "files" / name
    assert kept.read_bytes() == path.read_bytes()  # every byte kept
    why = json.loads(kept.with_name(name + ".reason.json").read_text())["reason"]
    assert reason in why
    assert not (settings.paths.lake / "validated").exists()


def test_header_only_file_fails_as_empty(settings, tmp_path):
    path = tmp_path / "readings_header.csv"
    path.write_text("batch_id,tag,timestamp,value\n")
    run = validate_file(settings, path, now=NOW)
    assert not run.success and "not_empty" in run.failure_counts()


def test_bad_batches_rows(settings, clean_world, tmp_path):
    b = clean_world.batches.copy()
    b.loc[0, "brand"] = "mystery_ale"
    b.loc[1, "original_gravity_plato"] = 125.0
    b.loc[2, "end_time"] = b.loc[2, "start_time"] - pd.Timedelta(hours=1)
    b.loc[3, "start_time"] = NOW + pd.Timedelta(days=30)
    run = validate_file(settings, _write(tmp_path / "batches_x.csv", b), now=NOW)
    failures = run.failure_counts()
    for rule in ("range:original_gravity_plato", "end_after_start", "not_in_future"):
        assert rule in failures
    assert not [rule for rule in failures if rule.startswith(("vocabulary:", "new_values:"))]
    t = run.totals()["batches"]  # a new brand is not an error: its batch passes
    assert t["quarantined"] == 3 and t["published"] == len(b) - 3


def test_new_brands_fermenters_and_strains_are_counted_not_quarantined(
    settings, clean_world, tmp_path
):
    """Against the training reference's categories, values never seen are reported per
    table and column (summary, its JSON, Data Docs) and every row passes."""
    snaps = build_snapshots(clean_world.batches, clean_world.readings, LabelRules())
    save_reference(settings, snaps)
    assert set(load_reference(settings)["categories"]["brand"]) == set(snaps["brand"].dropna())
    b = clean_world.batches.copy()
    b.loc[[0, 1], "brand"] = "cascade_crest_ipa"
    b.loc[2, "fermenter"] = "FERM-07"
    b.loc[3, "yeast_strain"] = None  # missing is not new
    run = validate_file(settings, _write(tmp_path / "batches_new.csv", b), now=NOW)
    assert run.success, run.summary()
    assert run.totals()["batches"]["published"] == len(b)
    assert run.new_values() == {
        "batches": {"brand": {"cascade_crest_ipa": 2}, "fermenter": {"FERM-07": 1}}
    }
    assert "new brand in batches (not in the training reference; kept): cascade_crest_ipa (2)" in (
        run.summary()
    )
    assert json.loads(settings.paths.validation_summary.read_text())["new_values"] == (
        run.new_values()
    )
    docs = Path(run.data_docs.removeprefix("file://")).parent
    pages = "".join(p.read_text() for p in docs.rglob("*.html"))
    assert "cascade_crest_ipa" in pages and "FERM-07" in pages


def test_clean_lake_passes_and_revalidation_is_idempotent(settings, clean_world):
    ingest_interval(settings, "simulator", CLEAN.start, CLEAN.end, CLEAN)
    run = validate_lake(settings, now=NOW)
    assert run.success, run.summary()
    totals = run.totals()
    assert totals["readings"]["published"] == len(clean_world.readings)
    assert totals["batches"]["published"] == len(clean_world.batches)
    assert (settings.home / "gx" / "great_expectations.yml").exists()  # created on first use
    docs = run.data_docs.removeprefix("file://")
    assert docs.endswith("index.html") and "brewcast-readings" in Path(docs).read_text()

    def digest():
        return {
            p.relative_to(settings.paths.lake): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in settings.paths.lake.glob("validated/**/*.parquet")
        }

    before = digest()
    assert validate_lake(settings, now=NOW).outcomes == []  # nothing new
    again = validate_lake(settings, everything=True, now=NOW)
    assert again.totals() == totals and digest() == before


def test_lake_files_that_cannot_be_conformed_are_quarantined_whole_and_alone(settings, clean_world):
    """Raw files of one schema are conformed together; when that fails (here a missing key
    in two files), each file is tried alone, and only the culprits go to quarantine, kept
    under names that do not collide (every date partition holds a file of the same name)."""
    ingest_interval(settings, "simulator", CLEAN.start, CLEAN.end, CLEAN)
    files = lake.partition_files(settings.paths.lake, "raw", READINGS)
    bad = [files[0], files[-1]]
    assert bad[0].name == bad[1].name
    for path in bad:
        table = pq.read_table(path)
        ids = table.column("batch_id").to_pylist()
        ids[0] = None
        column = table.schema.get_field_index("batch_id")
        pq.write_table(table.set_column(column, "batch_id", pa.array(ids, pa.string())), path)
    bad_rows = sum(pq.read_metadata(p).num_rows for p in bad)

    run = validate_lake(settings, now=NOW)
    totals = run.totals()["readings"]
    assert totals["published"] == len(clean_world.readings) - bad_rows
    kept = sorted((settings.paths.lake / "quarantine" / "files").glob("*.parquet"))
    assert len(kept) == 2
    for path, copy in zip(bad, kept, strict=True):
        assert copy.read_bytes() == path.read_bytes()  # every byte kept
        reason = json.loads(copy.with_name(copy.name + ".reason.json").read_text())
        assert "batch_id" in reason["reason"] and reason["from"] == str(path)


def _reasons(settings, table: str = "readings") -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(settings.paths.lake.glob(f"quarantine/{table}/*/*.reason.json"))
    ]


def test_readings_of_an_unknown_batch_wait_and_are_published_when_it_arrives(settings, clean_world):
    """Readings whose batch is not known yet wait in quarantine, are tried again every run
    (their raw file unchanged) and are published once the batch arrives."""
    late = _batch(clean_world, closed=True)
    batches, readings = clean_world.batches, clean_world.readings
    mine = readings["batch_id"] == late.batch_id
    lake.write_partitions(
        batches[batches["batch_id"] != late.batch_id], BATCHES, settings.paths.lake, "raw", "world"
    )
    lake.write_partitions(readings, READINGS, settings.paths.lake, "raw", "world")

    first = validate_lake(settings, now=NOW)
    assert set(first.failure_counts()) == {"known_batch"}
    assert first.totals()["readings"]["quarantined"] == mine.sum()
    waiting = {o.source for o in first.outcomes if o.rows_quarantined}
    # Partitions that also published rows: only the marker brings them back next run.
    assert any(o.rows_published for o in first.outcomes if o.rows_quarantined)
    assert _reasons(settings) and all(r["retry"] is True for r in _reasons(settings))

    again = validate_lake(settings, now=NOW)  # still unknown: tried again, still waiting
    assert {o.source for o in again.outcomes} == waiting
    assert again.totals()["readings"]["quarantined"] == mine.sum()

    lake.write_partitions(
        batches[batches["batch_id"] == late.batch_id], BATCHES, settings.paths.lake, "raw", "late"
    )
    arrived = validate_lake(settings, now=NOW)
    assert arrived.success, arrived.summary()
    published = lake.read_table(settings.paths.lake, "validated", READINGS)
    assert len(published) == len(readings)
    assert not list(settings.paths.lake.glob("quarantine/readings/*/*"))  # nothing waits
    assert validate_lake(settings, now=NOW).outcomes == []


def test_a_reason_that_only_mentions_a_retryable_rule_is_not_retried(settings, clean_world):
    """What brings quarantined rows back is the reason file's ``retry`` marker, set when a
    retryable rule failed, not the rule's name appearing in its text: here a batch is named
    like the rule and one of its readings fails another one."""
    named = _batch(clean_world, closed=True).batch_id
    batches = clean_world.batches.replace({"batch_id": {named: "known_batch"}})
    readings = clean_world.readings.replace({"batch_id": {named: "known_batch"}})
    readings.loc[_grav_row(readings[readings["batch_id"] == "known_batch"]), "value"] = 45.0
    lake.write_partitions(batches, BATCHES, settings.paths.lake, "raw", "world")
    lake.write_partitions(readings, READINGS, settings.paths.lake, "raw", "world")

    run = validate_lake(settings, now=NOW)
    assert set(run.failure_counts()) == {"range:value[gravity_plato]"}
    (reason,) = _reasons(settings)
    assert reason["retry"] is False
    assert '"known_batch"' in json.dumps(reason)  # the example names the batch
    assert validate_lake(settings, now=NOW).outcomes == []  # nothing changed: nothing to do


def test_lake_with_simulated_bad_records_loses_nothing(settings, small_world):
    ingest_interval(settings, "simulator", SMALL_WORLD.start, SMALL_WORLD.end, SMALL_WORLD)
    run = validate_lake(settings, now=NOW)
    t = run.totals()["readings"]
    assert t["rows_in"] == len(small_world.readings) == t["published"] + t["quarantined"]
    assert 0 < t["quarantined"] < 0.02 * t["rows_in"]
    validated = lake.read_table(settings.paths.lake, "validated", READINGS)
    quarantined = lake.read_table(settings.paths.lake, "quarantine", READINGS)
    assert len(validated) + len(quarantined) == len(small_world.readings)
    # One checkpoint run spans every partition; each partition's report names only its rows.
    hit = [o for o in run.outcomes if o.rows_quarantined]
    assert len({o.date for o in hit}) > 1
    for outcome in run.outcomes:
        if not outcome.rows_quarantined:
            assert outcome.failures == []
            continue
        reasons = pd.read_parquet(outcome.quarantine_file)[REASONS_COLUMN].str.split("; ")
        assert len(reasons) == outcome.rows_quarantined and reasons.map(len).gt(0).all()
        assert {f.rule for f in outcome.failures} == set(reasons.explode())
        for failure in outcome.failures:
            assert failure.unexpected_count == sum(failure.rule in rs for rs in reasons)
            assert 0 < len(failure.examples) <= failure.unexpected_count


def test_partition_policy_quarantines_the_whole_partition(lake_with_batches, clean_world, tmp_path):
    settings = lake_with_batches.model_copy(update={"validation_policy": "partition"})
    frame, bad_rows, _ = _mutations(clean_world)["out_of_range"]
    run = validate_file(settings, _write(tmp_path / "readings_p.csv", frame), now=NOW)
    hit = [o for o in run.outcomes if o.failures]
    assert len(hit) == 1 and hit[0].partition_rejected
    assert hit[0].rows_quarantined == hit[0].rows_in > len(bad_rows)


def test_gross_drift_in_new_features_fails_loudly(settings, clean_world):
    snaps = build_snapshots(clean_world.batches, clean_world.readings, LabelRules())
    cut = snaps["snapshot_time"].quantile(0.6)
    save_reference(settings, snaps[snaps["snapshot_time"] <= cut])
    assert (
        load_reference(settings)["until"]
        == snaps.loc[snaps["snapshot_time"] <= cut, "snapshot_time"].max().isoformat()
    )
    assert publish_features(settings, snaps, now=NOW).success  # same process: no drift
    drifted = snaps.copy()
    late = drifted["snapshot_time"] > cut
    drifted.loc[late, "mean_temperature_c"] += 12.0  # a sensor re-scaled, say
    warned = publish_features(settings, drifted, now=NOW)  # default: fail loudly, keep rows
    assert not warned.success and "drift:mean:mean_temperature_c" in warned.failure_counts()
    assert len(lake.read_table(settings.paths.lake, "features", FEATURES)) == len(snaps)
    settings = settings.model_copy(update={"drift_policy": "quarantine"})
    run = publish_features(settings, drifted, now=NOW)
    assert "drift:mean:mean_temperature_c" in run.failure_counts()
    rejected = [o for o in run.outcomes if o.partition_rejected]
    assert rejected and all(o.date >= f"{cut:%Y-%m-%d}" for o in rejected)
    published = lake.read_table(settings.paths.lake, "features", FEATURES)
    assert (published["snapshot_time"] <= cut + pd.Timedelta(days=1)).all()
    assert len(published) + sum(o.rows_quarantined for o in run.outcomes) == len(snaps)


def test_cli_validate_exit_codes(settings, clean_world, small_world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0 and "nothing new to validate" in result.output
    ingest_interval(settings, "simulator", SMALL_WORLD.start, SMALL_WORLD.end, SMALL_WORLD)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1, result.output
    assert "QUARANTINED SOME DATA" in result.output and "data docs:" in result.output
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "is not a file" in result.output

"""Lake partitions: by date, atomic, idempotent, deduplicated on read."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brewcast import lake
from brewcast.schema import READINGS


def _digest(files):
    return {f.relative_to(f.parents[2]): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_partitions_by_date_and_rewrites_identically(tmp_path, small_world):
    readings = small_world.readings.iloc[:5000]
    first = lake.write_partitions(readings, READINGS, tmp_path, "raw", "run-1")
    dates = sorted(readings["timestamp"].dt.strftime("%Y-%m-%d").unique())
    assert [f.parent.name for f in first] == [f"date={d}" for d in dates]
    before = _digest(first)
    again = lake.write_partitions(
        readings.sample(frac=1, random_state=0), READINGS, tmp_path, "raw", "run-1"
    )
    assert _digest(again) == before  # same interval, shuffled input: same bytes
    assert sorted(lake.partition_files(tmp_path, "raw", READINGS)) == sorted(first)
    back = lake.read_table(tmp_path, "raw", READINGS)
    assert len(back) == len(readings)
    pd.testing.assert_frame_equal(
        back.sort_values(list(READINGS.key)).reset_index(drop=True),
        readings.sort_values(list(READINGS.key)).reset_index(drop=True),
    )


def test_overlapping_writes_do_not_duplicate_on_read(tmp_path, small_world):
    readings = small_world.readings.iloc[:2000]
    lake.write_partitions(readings.iloc[:1500], READINGS, tmp_path, "raw", "a")
    lake.write_partitions(readings.iloc[1000:], READINGS, tmp_path, "raw", "b")
    assert len(lake.read_table(tmp_path, "raw", READINGS)) == 2000


def test_failed_write_leaves_nothing(tmp_path, small_world, monkeypatch):
    readings = small_world.readings.iloc[:5000]
    real = pq.write_table
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError, match="disk full"):
        lake.write_partitions(readings, READINGS, tmp_path, "raw", "x")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_replace_table_drops_vanished_partitions(tmp_path, small_world):
    readings = small_world.readings.iloc[:5000]
    lake.replace_table(readings, READINGS, tmp_path, "features", "snap")
    keep = readings[readings["timestamp"] < readings["timestamp"].min() + pd.Timedelta(days=1)]
    written = lake.replace_table(keep, READINGS, tmp_path, "features", "snap")
    assert lake.partition_files(tmp_path, "features", READINGS) == written
    assert len(lake.read_table(tmp_path, "features", READINGS)) == len(keep)


def test_unknown_stage_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown lake stage"):
        lake.table_dir(tmp_path, "bronze", READINGS)


def test_empty_read_has_the_schema(tmp_path):
    empty = lake.read_table(tmp_path, "raw", "readings")
    assert list(empty.columns) == READINGS.names and empty.empty


def test_split_by_date_gives_each_partition_its_rows(small_world):
    readings = small_world.readings.iloc[:5000]
    pieces = lake.split_by_date(readings, READINGS)
    assert list(pieces) == sorted(readings["timestamp"].dt.strftime("%Y-%m-%d").unique())
    assert sum(len(p) for p in pieces.values()) == len(readings)
    for date, piece in pieces.items():
        assert (piece["timestamp"].dt.strftime("%Y-%m-%d") == date).all()
    undated = readings.copy()
    undated.loc[undated.index[0], "timestamp"] = pd.NaT
    with pytest.raises(ValueError, match="without timestamp"):  # it would be lost
        lake.split_by_date(undated, READINGS)


def _rows(small_world, n=10):
    frame = small_world.readings.iloc[:n]
    return pa.Table.from_pandas(frame, schema=READINGS.arrow_schema(), preserve_index=False)


def test_write_outputs_splits_rows_and_removes_what_no_longer_applies(tmp_path, small_world):
    rows = _rows(small_world)
    out = lake.Outputs.of(tmp_path, "validated", READINGS, "2026-01-01", "x")
    assert out.quarantined.parent == tmp_path / "quarantine" / "readings" / "date=2026-01-01"
    assert out.reason.name == "part-x.reason.json"
    bad = np.zeros(rows.num_rows, bool)
    bad[[2, 7]] = True
    reasons = ["known_batch" if b else "" for b in bad]
    written = lake.write_outputs(out, rows, bad, reasons, {"rows_quarantined": 2})
    assert written == (out.published, out.quarantined)
    assert pq.read_table(out.published).num_rows == 8
    held = pq.read_table(out.quarantined)
    assert (
        held.num_rows == 2 and held.column(lake.REASONS_COLUMN).to_pylist() == ["known_batch"] * 2
    )
    assert json.loads(out.reason.read_text()) == {"rows_quarantined": 2}

    # All good now: the quarantine and its reason go.
    clean = np.zeros(rows.num_rows, bool)
    assert lake.write_outputs(out, rows, clean, [""] * 10, {}) == (out.published, None)
    assert not out.quarantined.exists() and not out.reason.exists()
    # All bad: the published file goes.
    assert lake.write_outputs(out, rows, ~clean, ["x"] * 10, {}) == (None, out.quarantined)
    assert not out.published.exists() and pq.read_table(out.quarantined).num_rows == 10
    with pytest.raises(ValueError, match="10 rows, 9 mask values"):
        lake.write_outputs(out, rows, clean[:9], [""] * 10, {})


def _validated(tmp_path, small_world, report: dict | None):
    """A raw partition file whose outputs are newer than it, with ``report`` as its reason."""
    raw = lake.write_file(
        lake.table_dir(tmp_path, "raw", READINGS) / "date=2026-01-01" / "part-a.parquet",
        _rows(small_world),
    )
    out = lake.Outputs.of(tmp_path, "validated", READINGS, *lake.partition_of(raw))
    bad = np.zeros(10, bool)
    bad[0] = report is not None
    lake.write_outputs(out, _rows(small_world), bad, [""] * 10, report or {})
    return raw


def _raw_only(tmp_path, small_world):
    return lake.write_file(
        lake.table_dir(tmp_path, "raw", READINGS) / "date=2026-01-02" / "part-b.parquet",
        _rows(small_world),
    )


def test_needs_validation_reads_the_retry_marker_not_the_reasons_text(tmp_path, small_world):
    """Only the structured marker brings a file back: a reason that merely mentions a
    retryable rule's name (here as an example's batch id) does not."""
    assert lake.needs_validation(tmp_path, _raw_only(tmp_path, small_world), READINGS, "validated")
    raw = _validated(tmp_path, small_world, None)
    assert not lake.needs_validation(tmp_path, raw, READINGS, "validated")  # up to date

    mentions = {
        "failed_expectations": [{"rule": "range", "examples": [{"batch_id": "known_batch"}]}],
        "note": '"known_batch"',
        lake.RETRY_FIELD: False,
    }
    raw = _validated(tmp_path, small_world, mentions)
    assert not lake.needs_validation(tmp_path, raw, READINGS, "validated")
    raw = _validated(tmp_path, small_world, {**mentions, lake.RETRY_FIELD: True})
    assert lake.needs_validation(tmp_path, raw, READINGS, "validated")
    # A reason written before the marker existed: validated once more, which rewrites it.
    raw = _validated(tmp_path, small_world, {"failed_expectations": []})
    assert lake.needs_validation(tmp_path, raw, READINGS, "validated")


def test_needs_validation_when_the_source_changed(tmp_path, small_world):
    raw = _validated(tmp_path, small_world, None)
    out = lake.Outputs.of(tmp_path, "validated", READINGS, *lake.partition_of(raw))
    stamp = out.published.stat().st_mtime_ns
    os.utime(raw, ns=(stamp + 1, stamp + 1))
    assert lake.needs_validation(tmp_path, raw, READINGS, "validated")


def test_remove_vanished_keeps_other_labels(tmp_path, small_world):
    readings = small_world.readings.iloc[:5000]
    mine = lake.write_partitions(readings, READINGS, tmp_path, "features", "snap")
    theirs = lake.write_partitions(readings, READINGS, tmp_path, "features", "other")
    gone = lake.remove_vanished(tmp_path, "features", READINGS, "snap", keep=mine[:1])
    assert gone == mine[1:]
    assert lake.partition_files(tmp_path, "features", READINGS) == sorted([mine[0], *theirs])

"""Lake partitions: by date, atomic, idempotent, deduplicated on read."""

from __future__ import annotations

import hashlib

import pandas as pd
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

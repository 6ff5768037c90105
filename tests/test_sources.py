"""The three ingest sources land the same raw tables in the lake; bad input loses nothing."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest
import sqlalchemy as sa

from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from ingest import brewerypi
from ingest.brewerypi import BreweryPiError, read_brewerypi, write_brewerypi
from ingest.sources import (
    IngestError,
    ingest_drop_folder,
    ingest_interval,
    simulator_interval,
    write_drop_files,
)
from tests.conftest import SMALL_WORLD

KEY_R = list(READINGS.key)


def _sorted(frame, key):
    return frame.sort_values(key).reset_index(drop=True)


# --- simulator ---------------------------------------------------------------------------


def test_daily_intervals_add_up_to_the_world_and_rerun_is_idempotent(settings, small_world):
    days = pd.date_range(SMALL_WORLD.start, SMALL_WORLD.end, freq="D")
    for lo, hi in itertools.pairwise(days):
        ingest_interval(settings, "simulator", lo, hi, SMALL_WORLD)
    files = lake.partition_files(settings.paths.lake, "raw", READINGS)
    stamp = {f: f.stat().st_mtime_ns for f in files}
    readings = lake.read_table(settings.paths.lake, "raw", READINGS)
    pd.testing.assert_frame_equal(_sorted(readings, KEY_R), _sorted(small_world.readings, KEY_R))
    batches = lake.read_table(settings.paths.lake, "raw", BATCHES)
    assert sorted(batches["batch_id"]) == sorted(small_world.batches["batch_id"])
    # Re-running one day rewrites its own files with the same bytes and adds none.
    report = ingest_interval(settings, "simulator", days[3], days[4], SMALL_WORLD)
    assert report.readings > 0
    assert lake.partition_files(settings.paths.lake, "raw", READINGS) == files
    assert len(lake.read_table(settings.paths.lake, "raw", READINGS)) == len(readings)
    assert any(stamp[f] != f.stat().st_mtime_ns for f in report.files_written)


def test_batch_end_is_only_known_once_it_happened(small_world):
    batch = small_world.batches.dropna(subset=["end_time"]).iloc[0]
    early, _ = simulator_interval(SMALL_WORLD, batch.start_time, batch.end_time)
    late, _ = simulator_interval(
        SMALL_WORLD, batch.start_time, batch.end_time + pd.Timedelta(seconds=1)
    )
    assert pd.isna(early.set_index("batch_id").loc[batch.batch_id, "end_time"])
    assert late.set_index("batch_id").loc[batch.batch_id, "end_time"] == batch.end_time


def test_bad_interval_and_unknown_source(settings):
    t = pd.Timestamp("2026-01-02", tz="UTC")
    with pytest.raises(IngestError, match="empty interval"):
        ingest_interval(settings, "simulator", t, t)
    with pytest.raises(IngestError, match="unknown interval source 'ftp'"):
        ingest_interval(settings, "ftp", t, t + pd.Timedelta(days=1))
    with pytest.raises(IngestError, match="BREWCAST_BREWERYPI_URL"):
        ingest_interval(settings, "brewerypi", t, t + pd.Timedelta(days=1))


# --- drop folder -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_drop_folder_round_trip(settings, small_world, fmt):
    written = write_drop_files(small_world.batches, small_world.readings, settings.paths.drop, fmt)
    report = ingest_drop_folder(settings)
    assert not report.rejected and len(report.accepted) == len(written)
    assert not list(settings.paths.drop.glob(f"*.{fmt}"))  # moved to processed/
    assert len(list((settings.paths.drop / "processed").glob(f"*.{fmt}"))) == len(written)
    readings = lake.read_table(settings.paths.lake, "raw", READINGS)
    pd.testing.assert_frame_equal(_sorted(readings, KEY_R), _sorted(small_world.readings, KEY_R))
    batches = lake.read_table(settings.paths.lake, "raw", BATCHES)
    pd.testing.assert_frame_equal(
        _sorted(batches, ["batch_id"]), _sorted(small_world.batches, ["batch_id"])
    )
    # The same files dropped again land on the same partition files: no duplicates.
    files = lake.partition_files(settings.paths.lake, "raw", READINGS)
    for path in (settings.paths.drop / "processed").iterdir():
        path.rename(settings.paths.drop / path.name)
    ingest_drop_folder(settings)
    assert lake.partition_files(settings.paths.lake, "raw", READINGS) == files
    assert len(lake.read_table(settings.paths.lake, "raw", READINGS)) == len(readings)


BAD_FILES = {
    "readings_missing_column.csv": (
        "batch_id,tag,timestamp\nb1,gravity_plato,2026-01-01\n",
        "missing column.*'value'",
    ),
    "readings_wrong_type.csv": (
        "batch_id,tag,timestamp,value\nb1,gravity_plato,2026-01-01,twelve\n",
        "'value' cannot be read as float64.*twelve",
    ),
    "readings_bad_time.csv": (
        "batch_id,tag,timestamp,value\nb1,gravity_plato,yesterday,12\n",
        "'timestamp' cannot be read as timestamp",
    ),
    "readings_empty.csv": ("", "file is empty"),
    "mystery.csv": ("a,b\n1,2\n", "cannot tell which table"),
    "readings_truncated.parquet": (b"PAR1\x00\x00garbage", "unreadable .parquet"),
}


def test_bad_drop_files_are_rejected_with_reasons_and_kept(settings, small_world):
    drop = settings.paths.drop
    drop.mkdir(parents=True)
    for name, (content, _) in BAD_FILES.items():
        (drop / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    write_drop_files(small_world.batches.iloc[:3], small_world.readings.iloc[:10], drop)
    report = ingest_drop_folder(settings)
    assert set(report.rejected) == set(BAD_FILES)
    for name, (content, pattern) in BAD_FILES.items():
        kept = settings.paths.lake / "quarantine" / "files" / name
        raw = content if isinstance(content, bytes) else content.encode()
        assert kept.read_bytes() == raw  # every byte kept
        reason = json.loads(kept.with_name(f"{name}.reason.json").read_text())
        assert reason["file"] == name
        assert pd.Series([reason["reason"]]).str.contains(pattern).all(), reason
    assert report.readings == 10 and report.batches == 3  # good files still went through


def test_a_bad_file_dropped_twice_under_one_name_is_kept_twice(settings):
    drop = settings.paths.drop
    drop.mkdir(parents=True)
    first, second = "batch_id,tag\nb1,x\n", "batch_id,tag\nb2,y\n"
    for content in (first, second):
        (drop / "readings_bad.csv").write_text(content)
        assert "readings_bad.csv" in ingest_drop_folder(settings).rejected
    kept = settings.paths.lake / "quarantine" / "files"
    assert (kept / "readings_bad.csv").read_text() == first
    assert (kept / "readings_bad-2.csv").read_text() == second
    assert json.loads((kept / "readings_bad-2.csv.reason.json").read_text())["file"] == (
        "readings_bad.csv"
    )


def test_missing_drop_folder_is_a_clear_error(settings):
    with pytest.raises(IngestError, match=r"drop folder .* does not exist"):
        ingest_drop_folder(settings)


# --- Brewery Pi --------------------------------------------------------------------------


def _expected_readings(world, lo, hi):
    r = world.readings
    r = r[r["value"].notna() & (r["timestamp"] >= lo) & (r["timestamp"] < hi)]
    return _sorted(r, KEY_R)


def test_brewerypi_round_trip_through_sqlite(tmp_path, small_world):
    url = f"sqlite:///{tmp_path / 'brewerypi.db'}"
    write_brewerypi(url, small_world.batches, small_world.readings)
    batches, readings, report = read_brewerypi(url, SMALL_WORLD.start, SMALL_WORLD.end)
    pd.testing.assert_frame_equal(
        _sorted(readings, KEY_R),
        _expected_readings(small_world, SMALL_WORLD.start, SMALL_WORLD.end),
    )
    # Brewery Pi stores only known values; an unknown strain reads back as missing; it has
    # no attribute for a style (the Deschutes streams carry none), so none reads back.
    expected = small_world.batches.assign(style=pd.Series(pd.NA, dtype="string"))
    pd.testing.assert_frame_equal(_sorted(batches, ["batch_id"]), _sorted(expected, ["batch_id"]))
    assert report.frames == len(small_world.batches) and report.readings_outside_frames == 0


def test_brewerypi_interval_takes_frames_started_before_it(tmp_path, small_world):
    url = f"sqlite:///{tmp_path / 'brewerypi.db'}"
    write_brewerypi(url, small_world.batches, small_world.readings)
    lo = SMALL_WORLD.start + pd.Timedelta(days=10)
    hi = lo + pd.Timedelta(days=1)
    batches, readings, _ = read_brewerypi(url, lo, hi)
    started = small_world.batches
    assert sorted(batches["batch_id"]) == sorted(
        started[(started["start_time"] >= lo) & (started["start_time"] < hi)]["batch_id"]
    )
    pd.testing.assert_frame_equal(_sorted(readings, KEY_R), _expected_readings(small_world, lo, hi))
    assert readings["batch_id"].nunique() > batches["batch_id"].nunique()


def _hand_built_brewerypi(url: str, with_plato: bool = True) -> None:
    """A Brewery Pi database as its starter data names things: tags FV01_Plato etc., no
    ElementAttribute rows, a Brands lookup, one closed EventFrame and a reading outside it."""
    engine = sa.create_engine(url)
    brewerypi.metadata.create_all(engine)
    t0 = pd.Timestamp("2026-02-01 08:00").to_pydatetime()
    h = pd.Timedelta(hours=1).to_pytimedelta()
    with engine.begin() as c:
        c.execute(
            brewerypi.Enterprise.insert().values(EnterpriseId=1, Abbreviation="E", Name="Ent")
        )
        c.execute(
            brewerypi.Site.insert().values(SiteId=1, Abbreviation="S", EnterpriseId=1, Name="Site")
        )
        c.execute(brewerypi.Area.insert().values(AreaId=1, Abbreviation="A", Name="A", SiteId=1))
        c.execute(brewerypi.Lookup.insert().values(LookupId=7, EnterpriseId=1, Name="Brands"))
        c.execute(
            brewerypi.LookupValue.insert().values(
                LookupId=7, Value=3, Name="Munich Helles", Selectable=True
            )
        )
        c.execute(
            brewerypi.ElementTemplate.insert().values(ElementTemplateId=1, Name="FV", SiteId=1)
        )
        c.execute(brewerypi.Element.insert().values(ElementId=1, ElementTemplateId=1, Name="FV01"))
        c.execute(
            brewerypi.EventFrameTemplate.insert().values(
                EventFrameTemplateId=1, ElementTemplateId=1, Name="Fermentation", Order=1
            )
        )
        c.execute(
            brewerypi.EventFrame.insert().values(
                EventFrameId=1,
                ElementId=1,
                EventFrameTemplateId=1,
                Name="B-100",
                StartTimestamp=t0,
                EndTimestamp=t0 + 100 * h,
            )
        )
        c.execute(
            brewerypi.UnitOfMeasurement.insert(),
            [
                dict(UnitOfMeasurementId=1, Abbreviation="Plato", Name="Degrees Plato"),
                dict(UnitOfMeasurementId=2, Abbreviation="degC", Name="Degrees Celsius"),
            ],
        )
        tags = [
            (1, "FV01_Plato", None, 1),
            (2, "FV01_Temperature", None, 2),
            (3, "FV01_Brand", 7, None),
            (4, "FV01_State", None, None),
        ]
        for tid, name, lookup, unit in tags:
            if name == "FV01_Plato" and not with_plato:
                continue
            c.execute(
                brewerypi.Tag.insert().values(
                    TagId=tid, AreaId=1, Name=name, LookupId=lookup, UnitOfMeasurementId=unit
                )
            )
        values = [
            (1, t0, 12.0),
            (1, t0 + 24 * h, 9.5),
            (1, t0 + 200 * h, 3.0),
            (2, t0 + h, 11.0),
            (3, t0, 3.0),
            (4, t0, 1.0),
        ]
        if not with_plato:
            values = [v for v in values if v[0] != 1]
        c.execute(
            brewerypi.TagValue.insert(),
            [dict(TagId=t, Timestamp=ts, Value=v) for t, ts, v in values],
        )
    engine.dispose()


def test_brewerypi_starter_naming_without_attributes(tmp_path):
    url = f"sqlite:///{tmp_path / 'starter.db'}"
    _hand_built_brewerypi(url)
    lo, hi = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-03-01", tz="UTC")
    batches, readings, report = read_brewerypi(url, lo, hi)
    row = batches.iloc[0]
    assert (row.batch_id, row.fermenter, row.brand) == ("B-100", "FV01", "munich_helles")
    assert row.end_time == pd.Timestamp("2026-02-05 12:00", tz="UTC")
    assert pd.isna(row.yeast_strain) and pd.isna(row.original_gravity_plato)
    assert readings.sort_values("timestamp")[["tag", "value"]].values.tolist() == [
        ["gravity_plato", 12.0],
        ["temperature_c", 11.0],
        ["gravity_plato", 9.5],
    ]
    assert report.readings_outside_frames == 1  # the 200 h reading is after the frame closed


def test_brewerypi_errors_name_the_problem(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(empty).connect().close()
    lo, hi = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-03-01", tz="UTC")
    with pytest.raises(BreweryPiError, match=r"lacks table\(s\) \['Area'"):
        read_brewerypi(empty, lo, hi)
    no_plato = f"sqlite:///{tmp_path / 'noplato.db'}"
    _hand_built_brewerypi(no_plato, with_plato=False)
    with pytest.raises(BreweryPiError, match="element 'FV01' has no gravity tag"):
        read_brewerypi(no_plato, lo, hi)
    _hand_built_brewerypi(f"sqlite:///{tmp_path / 'ok.db'}")
    with pytest.raises(BreweryPiError, match="no EventFrameTemplate named 'Gärung'"):
        read_brewerypi(f"sqlite:///{tmp_path / 'ok.db'}", lo, hi, "Gärung")
    with pytest.raises(BreweryPiError, match="OperationalError"):
        read_brewerypi("postgresql+psycopg2://nobody:secret@127.0.0.1:1/none", lo, hi)


def test_brewerypi_ingest_via_settings(settings, tmp_path, small_world, monkeypatch):
    url = f"sqlite:///{tmp_path / 'brewerypi.db'}"
    write_brewerypi(url, small_world.batches, small_world.readings)
    settings = settings.model_copy(update={"brewerypi_url": url})
    report = ingest_interval(settings, "brewerypi", SMALL_WORLD.start, SMALL_WORLD.end)
    assert report.batches == len(small_world.batches)
    assert report.notes["readings_outside_frames"] == 0
    assert len(lake.read_table(settings.paths.lake, "raw", READINGS)) == report.readings


def test_brewerypi_on_postgresql(postgres_database, small_world):
    batches = small_world.batches.iloc[:12]
    readings = small_world.readings[small_world.readings["batch_id"].isin(batches["batch_id"])]
    write_brewerypi(postgres_database, batches, readings)
    got_b, got_r, _ = read_brewerypi(postgres_database, SMALL_WORLD.start, SMALL_WORLD.end)
    assert sorted(got_b["batch_id"]) == sorted(batches["batch_id"])
    assert len(got_r) == readings["value"].notna().sum()

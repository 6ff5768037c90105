"""Real hydrometer logs through the drop folder: recognised by content, converted to °P/°C
and UTC, impossible readings quarantined by validation (never dropped), labels only for
batches that fermented; and the units a drop file declares.

The logs are ``tests/fixtures/realdata`` (MIT, their LICENSE files beside them); each test
copies the ones it needs into its own drop folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from application import stages
from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from brewcast.settings import Settings
from brewcast.units import sg_to_plato
from ingest.sources import IngestError, ingest_drop_folder, write_drop_files
from models.dataset import LabelRules, build_snapshots, derive_outcomes, derived_og
from tests.test_dataset import assert_early_negatives_never_cover_a_finish
from validation.validate import REASONS_COLUMN

REALDATA = Path(__file__).parent / "fixtures" / "realdata"
MEAD = "tilt_mead_2024-12.csv"
OUT_OF_LIQUID = "tilt_out_of_liquid.csv"
SAISON = "tilt_saison_2025-11.jsonl"
SAISON_BATCH = "tilt_saison_2025-11_batch.json"
BENCH = "tilt_bench_outliers.jsonl"
UTC = "UTC"


def _settings(tmp_path: Path, *names: str, **overrides: object) -> Settings:
    """Settings whose home is in ``tmp_path``, with the fixtures ``names`` in its drop folder."""
    settings = Settings(home=tmp_path / "home", **overrides)
    settings.paths.drop.mkdir(parents=True)
    for name in names:
        shutil.copy(REALDATA / name, settings.paths.drop / name)
    return settings


def _lake(settings: Settings, stage: str, table=READINGS) -> pd.DataFrame:
    return lake.read_table(settings.paths.lake, stage, table)


def _quarantined(settings: Settings) -> pd.DataFrame:
    """Quarantined readings with their reasons column."""
    files = sorted(settings.paths.lake.glob("quarantine/readings/*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _ingest_and_validate(settings: Settings) -> tuple[dict, dict]:
    ingested = stages.ingest(settings, "drop")
    validated = stages.validate(settings)
    counts = validated.counts
    assert counts["rows_in"] == counts["rows_passed"] + counts["rows_quarantined"]
    return ingested.to_dict(), counts


def _rows(name: str) -> int:
    return len(pd.read_csv(REALDATA / name))


# --- Tilt CSV ----------------------------------------------------------------------------


def test_sg_hand_example_through_a_tilt_csv(tmp_path):
    settings = _settings(tmp_path)
    (settings.paths.drop / "my_tilt.csv").write_text(
        "Timepoint,SG,Temp (°F)\n1/2/2025 8:00:00,1.048,68\n1/2/2025 8:15:00,1.047,50\n",
        encoding="utf-8",
    )
    report = ingest_drop_folder(settings)
    assert report.accepted == ["my_tilt.csv"] and report.notes["devices"] == {
        "my_tilt.csv": "tilt_csv"
    }
    readings = _lake(settings, "raw").set_index(["tag", "timestamp"])["value"]
    first = pd.Timestamp("2025-01-02 08:00", tz="UTC")
    assert readings["gravity_plato", first] == pytest.approx(11.9, abs=0.05)  # SG 1.048
    assert readings["temperature_c", first] == pytest.approx(20.0)  # 68 °F
    assert readings["temperature_c", first + pd.Timedelta(minutes=15)] == pytest.approx(10.0)


def test_a_tilt_csv_from_a_phone_whose_clock_was_not_set_is_refused_naming_its_line(tmp_path):
    """Serial day 1 (1899-12-31) was read as a date; the service refused it, the drop
    folder did not. Now both read Timepoints with one function and its bounds."""
    settings = _settings(tmp_path)
    (settings.paths.drop / "phone.csv").write_text(
        "Timepoint,SG,Temp (°F)\n46023.5,1.048,68\n1,1.047,68\n", encoding="utf-8"
    )
    report = ingest_drop_folder(settings)
    assert report.accepted == []
    (reason,) = report.rejected.values()
    assert "Timepoint on line(s) 3 is not an Excel serial day since 2000" in reason


def test_mead_csv_newest_first_ingests_every_row_in_canonical_units(tmp_path):
    settings = _settings(tmp_path, MEAD)
    ingested, counts = _ingest_and_validate(settings)
    rows = _rows(MEAD)
    assert ingested["counts"]["reading_rows"] == 2 * rows  # gravity and temperature per row
    assert counts["rows_quarantined"] == 0 and counts["rows_in"] == 2 * rows + 1
    assert ingested["details"]["units"] == {"gravity_plato": ["SG"], "temperature_c": ["°C"]}
    assert "UTC (BREWCAST_LOCAL_TIMEZONE)" in ingested["details"]["local_timezone"]
    assert (settings.paths.drop / "processed" / MEAD).exists()
    gravity = _lake(settings, "validated").query("tag == 'gravity_plato'").sort_values("timestamp")
    assert gravity["value"].iloc[0] == pytest.approx(20.2, abs=0.05)  # SG 1.084, oldest row
    assert gravity["value"].iloc[-1] == pytest.approx(float(sg_to_plato(1.001)))
    batch = _lake(settings, "validated", BATCHES).iloc[0]
    assert batch.batch_id == "tilt_mead_2024-12" and pd.isna(batch.original_gravity_plato)
    assert batch.start_time == pd.Timestamp("2024-12-14 19:50:21", tz="UTC")  # oldest row
    assert pd.isna(batch.fermenter) and pd.isna(batch.brand)


def test_local_times_are_read_in_the_configured_zone(tmp_path):
    settings = _settings(tmp_path, MEAD, local_timezone="America/New_York")
    report = ingest_drop_folder(settings)
    assert "America/New_York" in report.notes["local_timezone"]
    batch = _lake(settings, "raw", BATCHES).iloc[0]
    assert batch.start_time == pd.Timestamp("2024-12-15 00:50:21", tz="UTC")  # EST = UTC-5


def test_an_unknown_time_zone_stops_the_ingest_and_touches_nothing(tmp_path):
    settings = _settings(tmp_path, MEAD, local_timezone="Mars/Olympus_Mons")
    with pytest.raises(IngestError, match="not an IANA time zone"):
        ingest_drop_folder(settings)
    assert (settings.paths.drop / MEAD).exists()


def test_out_of_liquid_readings_are_quarantined_by_validation_with_reasons(tmp_path):
    settings = _settings(tmp_path, OUT_OF_LIQUID)
    ingested, counts = _ingest_and_validate(settings)
    assert ingested["counts"]["reading_rows"] == 2 * _rows(OUT_OF_LIQUID)  # nothing dropped
    quarantined = _quarantined(settings)
    impossible = quarantined[quarantined["value"] > 30.0]
    assert len(impossible) == 10  # SG 1.152..1.524: 35..94 °P
    assert impossible[REASONS_COLUMN].str.contains("range:value[gravity_plato]", regex=False).all()
    validated = _lake(settings, "validated")
    assert validated.query("tag == 'gravity_plato'")["value"].between(0, 30).all()
    mead = validated[validated["timestamp"] < pd.Timestamp("2025-01-01", tz="UTC")]
    assert len(mead) == 2 * 5  # the five mead rows (gravity and temperature) pass
    assert counts["rows_passed"] + counts["rows_quarantined"] == 2 * _rows(OUT_OF_LIQUID) + 1


# --- RabbitFarmer JSON lines ---------------------------------------------------------------


def _samples(name: str) -> pd.DataFrame:
    lines = (REALDATA / name).read_text().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return pd.DataFrame([e["payload"] for e in events if e["event"] == "sample"])


def test_saison_log_with_its_batch_history(tmp_path):
    settings = _settings(tmp_path, SAISON, SAISON_BATCH)
    ingested, counts = _ingest_and_validate(settings)
    assert ingested["counts"]["files_rejected"] == 0
    assert sorted(p.name for p in (settings.paths.drop / "processed").iterdir()) == sorted(
        [SAISON, SAISON_BATCH]
    )  # the history went with its log
    assert counts["rows_quarantined"] == 0
    samples = _samples(SAISON)
    repeats = samples.drop(columns=["rssi", "current_temp"]).duplicated().sum()
    assert ingested["counts"]["reading_rows"] == 2 * (len(samples) - repeats)
    assert any("repeated reading(s) kept once" in n for n in ingested["details"]["device_notes"])
    assert any("803 - BLONDE ALE" in n for n in ingested["details"]["device_notes"])

    batch = _lake(settings, "validated", BATCHES).iloc[0]
    assert batch.batch_id == "cf38d0a8" and batch.brand == "holiday_spiced_saison"
    assert batch.start_time == pd.Timestamp("2025-10-30", tz="UTC")  # ferm_start_date
    assert batch.original_gravity_plato == pytest.approx(float(sg_to_plato(1.053)))  # actual_og
    assert pd.isna(batch.fermenter)
    readings = _lake(settings, "validated")
    temps = readings.query("tag == 'temperature_c'")["value"]
    assert temps.round(6).isin([round((f - 32) / 1.8, 6) for f in range(66, 72)]).all()
    assert (temps.round(9) == 20.0).any()  # 68 °F

    rules = LabelRules.from_settings(settings)
    batches = _lake(settings, "validated", BATCHES)
    outcome = derive_outcomes(batches, readings, rules).iloc[0]
    assert outcome.status == "finished"
    # 2.3 °P on 4 Nov at noon, 82% apparent; the next 48 h read 2.05 at the lowest (one
    # 0.001 SG step), a day later confirms it: the plateau's start, as a brewer's rule
    # ("every reading for 48 h within 0.3 °P") has it. The slow fall after (0.25 °P a
    # day or two, to 1.5 °P by 11 Nov) is the tail, which no longer pulls the finish.
    assert pd.Timestamp("2025-11-04", tz="UTC") < outcome.finish_time
    assert outcome.finish_time < pd.Timestamp("2025-11-05", tz="UTC")
    assert outcome.terminal_gravity_plato == pytest.approx(float(sg_to_plato(1.005)), abs=0.3)
    snaps = build_snapshots(batches, readings, rules)
    assert len(snaps) and snaps["finished_within_horizon"].any()
    assert not snaps["original_gravity_derived"].any()  # recorded OG
    # a real hydrometer, replayed every 6 h: no early negative covers its finish
    assert assert_early_negatives_never_cover_a_finish(batches, readings, rules, 6.0) >= 10


def test_bench_log_is_no_fermentation_and_its_sentinel_is_quarantined(tmp_path):
    settings = _settings(tmp_path, BENCH)
    ingested, _ = _ingest_and_validate(settings)
    assert "local_timezone" not in ingested["details"]  # every time carried its zone
    quarantined = _quarantined(settings)
    sentinel = quarantined[quarantined["value"] > 500]  # 999 °F = 537 °C
    assert len(sentinel) == 1 and sentinel["value"].iloc[0] == pytest.approx(537.2222, abs=1e-3)
    assert sentinel[REASONS_COLUMN].str.contains("range:value[temperature_c]", regex=False).all()
    impossible = quarantined.query("tag == 'gravity_plato' and value > 30")  # SG 1.276
    assert len(impossible) == 1
    assert impossible[REASONS_COLUMN].str.contains("range:value[gravity_plato]", regex=False).all()
    rules = LabelRules.from_settings(settings)
    batches = _lake(settings, "validated", BATCHES)
    assert batches.start_time.iloc[0] == pd.Timestamp("2025-11-04 13:44:20", tz="UTC")
    for readings in (_lake(settings, "validated"), _lake(settings, "raw")):
        for frame in (batches, batches.assign(end_time=readings["timestamp"].max())):
            assert derive_outcomes(frame, readings, rules).iloc[0].status == "running"
            assert build_snapshots(frame, readings, rules).empty


def test_unrecognised_json_is_quarantined_and_a_lone_history_waits(tmp_path):
    settings = _settings(tmp_path, SAISON_BATCH)
    (settings.paths.drop / "notes.json").write_text('{"hello": 1}')
    (settings.paths.drop / "log.jsonl").write_text('{"a": 1}\n')
    report = ingest_drop_folder(settings)
    assert set(report.rejected) == {"notes.json", "log.jsonl"}
    assert all("not a recognised hydrometer export" in why for why in report.rejected.values())
    assert (settings.paths.drop / SAISON_BATCH).exists() and SAISON_BATCH in report.notes["waiting"]


# --- derived OG ----------------------------------------------------------------------------


def test_derived_og_ignores_one_noisy_reading_and_never_sees_the_future():
    hours = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 13.0])
    values = np.array([15.0, 12.1, 12.0, 12.2, 11.9, 5.0])  # a settling spike first
    path = derived_og(hours, values)
    assert path[-1] == pytest.approx(12.1)  # max of the 3-medians of the first 12 h
    assert path[1] == 15.0 and np.isnan(path[0])  # what one reading alone says
    again = derived_og(hours[:4], values[:4])
    assert np.array_equal(
        again, path[:5], equal_nan=True
    )  # the same, known from the first readings only


# --- units of brewcast's own drop files ---------------------------------------------------


def _readings_csv(
    path: Path, values, tag: str, unit: str | None = None, start: str = "2026-01-01"
) -> Path:
    times = pd.date_range(start, periods=len(values), freq="6h", tz="UTC")
    frame = pd.DataFrame({"batch_id": "B1", "tag": tag, "timestamp": times, "value": values})
    if unit is not None:
        frame["unit"] = unit
    frame.to_csv(path, index=False)
    return path


def _batches_csv(path: Path, og: float, pitch: float) -> Path:
    frame = BATCHES.empty().astype(object)
    frame.loc[0] = None
    frame["batch_id"] = "B1"
    frame["original_gravity_plato"] = og
    frame["pitch_temperature_c"] = pitch
    frame["start_time"] = "2026-01-01T00:00:00+0000"
    frame.to_csv(path, index=False)
    return path


def test_unit_column_and_units_json_convert(settings):
    drop = settings.paths.drop
    drop.mkdir(parents=True)
    _readings_csv(drop / "readings_sg.csv", [1.050, 1.030, 1.010], "gravity_plato", "SG")
    _readings_csv(drop / "readings_f.csv", [50.0, 59.0, 68.0], "temperature_c", "degF")
    _batches_csv(drop / "batches_1.csv", 1.050, 59.0)
    _readings_csv(
        drop / "readings_mapped.csv", [1.040, 1.020, 1.008], "gravity_plato", None, "2026-01-02"
    )
    units = {"original_gravity_plato": "SG", "pitch_temperature_c": "°F", "gravity_plato": "sg"}
    (drop / "units.json").write_text(json.dumps(units))
    report = ingest_drop_folder(settings)
    assert not report.rejected, report.rejected
    assert (drop / "units.json").exists()  # the folder's mapping stays
    assert report.notes["units"] == {
        "gravity_plato": ["SG"],
        "original_gravity_plato": ["SG"],
        "pitch_temperature_c": ["°F"],
        "temperature_c": ["°F"],
    }
    readings = _lake(settings, "raw")
    temps = readings.query("tag == 'temperature_c'")["value"].sort_values()
    assert temps.to_numpy() == pytest.approx([10.0, 15.0, 20.0])
    gravity = readings.query("tag == 'gravity_plato'")["value"]
    assert gravity.max() == pytest.approx(float(sg_to_plato(1.050)))
    assert gravity.min() == pytest.approx(float(sg_to_plato(1.008)))
    batch = _lake(settings, "raw", BATCHES).iloc[0]
    assert batch.original_gravity_plato == pytest.approx(12.39, abs=0.02)
    assert batch.pitch_temperature_c == pytest.approx(15.0)


@pytest.mark.parametrize(
    ("values", "tag", "unit", "expected"),
    [
        (
            [1.050, 1.030, 1.010],
            "gravity_plato",
            "°P",
            "gravity_plato is declared °P.*look like SG",
        ),
        (
            [1.050, 1.030, 1.010],
            "gravity_plato",
            None,
            "gravity_plato is declared °P.*look like SG",
        ),
        ([50.0, 59.0, 68.0], "temperature_c", "°C", "temperature_c is declared °C.*look like °F"),
        ([12.0, 8.0, 3.0], "gravity_plato", "furlongs", "unknown gravity unit 'furlongs'"),
        ([12.0, 8.0, 3.0], "gravity_plato", "°F", "'°F' is a temperature unit"),
        ([14.0, 9.0, 4.0], "gravity_plato", "Brix", "BREWCAST_BRIX_WORT_CORRECTION"),
    ],
)
def test_units_that_do_not_fit_quarantine_the_file_with_a_reason(
    settings, values, tag, unit, expected
):
    drop = settings.paths.drop
    drop.mkdir(parents=True)
    _readings_csv(drop / "readings_x.csv", values, tag, unit)
    report = ingest_drop_folder(settings)
    assert list(report.rejected) == ["readings_x.csv"]
    assert pd.Series(report.rejected["readings_x.csv"]).str.contains(expected).all()
    kept = settings.paths.lake / "quarantine" / "files" / "readings_x.csv.reason.json"
    assert pd.Series(json.loads(kept.read_text())["reason"]).str.contains(expected).all()
    assert not lake.partition_files(settings.paths.lake, "raw", READINGS)


def test_brix_converts_with_its_correction_factor(tmp_path):
    settings = _settings(tmp_path, brix_wort_correction=1.04)
    _readings_csv(settings.paths.drop / "readings_bx.csv", [14.56, 10.4], "gravity_plato", "°Bx")
    assert not ingest_drop_folder(settings).rejected
    assert sorted(_lake(settings, "raw")["value"]) == pytest.approx([10.0, 14.0])


def test_a_broken_units_json_stops_the_ingest_and_touches_nothing(settings):
    drop = settings.paths.drop
    drop.mkdir(parents=True)
    path = _readings_csv(drop / "readings_1.csv", [12.0, 8.0, 3.0], "gravity_plato")
    (drop / "units.json").write_text(json.dumps({"gravity_plato": "stones"}))
    with pytest.raises(IngestError, match=r"units\.json: gravity_plato: unknown gravity unit"):
        ingest_drop_folder(settings)
    assert path.exists()


def test_simulated_brewery_delivers_sg_and_fahrenheit_and_ingest_restores_them(
    settings, small_world
):
    units = {"gravity": "SG", "temperature": "°F"}
    write_drop_files(small_world.batches, small_world.readings, settings.paths.drop, units=units)
    sample = next(settings.paths.drop.glob("readings_*.csv"))
    assert set(pd.read_csv(sample)["unit"]) <= {"SG", "°F"}
    report = ingest_drop_folder(settings)
    assert not report.rejected, report.rejected
    assert report.notes["units"]["temperature_c"] == ["°F"]
    key = list(READINGS.key)
    got = _lake(settings, "raw").sort_values(key).reset_index(drop=True)
    want = small_world.readings.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-9, atol=1e-9)
    batches = _lake(settings, "raw", BATCHES).sort_values("batch_id").reset_index(drop=True)
    expected = small_world.batches.sort_values("batch_id").reset_index(drop=True)
    for column in ("original_gravity_plato", "pitch_temperature_c", "ambient_temperature_c"):
        np.testing.assert_allclose(batches[column], expected[column], rtol=1e-9, atol=1e-9)


def test_the_repeated_dst_hour_is_read_in_file_order_and_a_missing_one_refused(tmp_path):
    settings = _settings(tmp_path, local_timezone="Europe/Berlin")
    rows = ["3:15", "2:45", "2:15", "2:45", "2:15", "1:45"]  # newest first, across DST's end
    text = "".join(f"10/26/2025 {t}:00,1.0{40 - i},64\n" for i, t in enumerate(rows))
    (settings.paths.drop / "fall.csv").write_text("Timepoint,SG,Temp (°F)\n" + text)
    (settings.paths.drop / "spring.csv").write_text(
        "Timepoint,SG,Temp (°F)\n3/30/2025 2:30:00,1.040,64\n"
    )
    report = ingest_drop_folder(settings)
    assert report.accepted == ["fall.csv"]
    assert "nonexistent time" in report.rejected["spring.csv"]
    times = _lake(settings, "raw").query("tag == 'gravity_plato'")["timestamp"].sort_values()
    assert times.diff().dropna().eq(pd.Timedelta(minutes=30)).all()  # six distinct half hours
    assert times.iloc[0] == pd.Timestamp("2025-10-25 23:45", tz="UTC")

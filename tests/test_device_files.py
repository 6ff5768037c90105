"""Device and brewery-software exports in the drop folder, one file per format of
``DEVICES.md`` (rows written from its documented examples): recognised by content,
converted to °P / °C / UTC by what the file or the folder's ``units.json`` declares, empty
cells said and left out, sentinels kept for validation to quarantine with a reason, and a
generic CSV read through a column mapping beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from application import stages
from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from brewcast.settings import Settings
from brewcast.units import sg_to_plato
from ingest.sources import ingest_drop_folder
from validation.validate import REASONS_COLUMN


def _drop(
    tmp_path: Path, files: dict[str, str], units: dict | None = None, **overrides
) -> Settings:
    settings = Settings(home=tmp_path / "home", **overrides)
    settings.paths.drop.mkdir(parents=True)
    for name, text in files.items():
        (settings.paths.drop / name).write_text(text, encoding="utf-8")
    if units is not None:
        (settings.paths.drop / "units.json").write_text(json.dumps(units))
    return settings


def _readings(settings: Settings) -> pd.DataFrame:
    return lake.read_table(settings.paths.lake, "raw", READINGS)


def _value(readings: pd.DataFrame, tag: str, at: str) -> float:
    rows = readings[
        (readings["tag"] == tag) & (readings["timestamp"] == pd.Timestamp(at, tz="UTC"))
    ]
    assert len(rows) == 1, rows
    return float(rows["value"].iloc[0])


ISPINDEL = (
    "timestamp,gravity,angle,temperature,temp_units,battery,interval,name,ID,RSSI,token\n"
    "2025-02-11 18:59:19,1.05,74.48,27.81,C,4.10,1800,SpinHydro,6548473,-56,\n"
    "2025-02-11 19:29:19,1.049,74.1,68.0,F,4.10,1800,SpinHydro,6548473,-56,\n"
)


def test_ispindel_localserver_csv_needs_its_gravity_unit_declared(tmp_path):
    """The iSpindel's gravity is whatever its owner calibrated: SG-looking values in an
    undeclared file are refused with the fix, and read once units.json says SG; each row's
    temp_units is its own (C, then F)."""
    settings = _drop(tmp_path, {"spin.csv": ISPINDEL})
    report = ingest_drop_folder(settings)
    assert "spin.csv" in report.rejected and "look like SG" in report.rejected["spin.csv"]
    settings = _drop(tmp_path / "again", {"spin.csv": ISPINDEL}, {"gravity_plato": "SG"})
    report = ingest_drop_folder(settings)
    assert report.accepted == ["spin.csv"] and report.notes["devices"] == {
        "spin.csv": "ispindel_csv"
    }
    readings = _readings(settings)
    assert _value(readings, "gravity_plato", "2025-02-11 18:59:19") == pytest.approx(
        sg_to_plato(1.05)
    )
    assert _value(readings, "temperature_c", "2025-02-11 18:59:19") == pytest.approx(27.81)
    assert _value(readings, "temperature_c", "2025-02-11 19:29:19") == pytest.approx(20.0)


def test_plaato_report_keeps_its_missing_density_sentinel_for_quarantine(tmp_path):
    utc = "GMT+0000 (Coordinated Universal Time)"
    text = (
        "timestamp,isoTime,density,temperature\n"
        f"Wed Sep 20 2023 21:13:42 {utc},2023-09-20T21:13:42.000Z,14.35,19.33356475830078\n"
        f"Wed Sep 20 2023 21:28:42 {utc},2023-09-20T21:28:42.000Z,-616.87,19.3\n"
        f"Wed Sep 20 2023 21:43:42 {utc},2023-09-20T21:43:42.000Z,14.30,19.2\n"
    )
    settings = _drop(tmp_path, {"plaato_fv3.csv": text})
    ingested = stages.ingest(settings, "drop").to_dict()
    assert ingested["details"]["devices"] == {"plaato_fv3.csv": "plaato_csv"}
    assert any("-616.87" in note for note in ingested["details"]["device_notes"])
    readings = _readings(settings)
    assert len(readings) == 6  # every row kept: 3 densities (the sentinel too), 3 temperatures
    assert _value(readings, "gravity_plato", "2023-09-20 21:13:42") == pytest.approx(14.35)
    stages.validate(settings)
    quarantined = pd.concat(
        pd.read_parquet(f) for f in settings.paths.lake.glob("quarantine/readings/*/*.parquet")
    )
    assert quarantined["value"].tolist() == [pytest.approx(-616.87)]
    assert "gravity_plato" in quarantined[REASONS_COLUMN].iloc[0]


def test_brewfather_export_newest_first_with_readings_without_gravity(tmp_path):
    text = (
        "type,time,id,temp,comment,sg,__acc_reading_doc_id,__acc_reading_data_id,timepoint,"
        "pressure,ph\n"
        "manual,1590080424552,manual,21.5,,1.052,d2,r2,2020-05-21T17:00:24.552Z,,\n"
        "manual,1590076824552,manual,22,,NaN,d1,r1,2020-05-21T16:00:24.552Z,,\n"
        "manual,1590073224552,manual,22,,1.06,d0,r0,2020-05-21T15:00:24.552Z,,\n"
    )
    settings = _drop(tmp_path, {"brewfather_batch_12.csv": text})
    report = ingest_drop_folder(settings)
    assert report.accepted == ["brewfather_batch_12.csv"], report.rejected
    assert any("1 gravity_plato cell(s) empty" in n for n in report.notes["device_notes"])
    readings = _readings(settings)
    assert (readings["tag"] == "gravity_plato").sum() == 2 and (
        readings["tag"] == "temperature_c"
    ).sum() == 3
    assert _value(readings, "gravity_plato", "2020-05-21 15:00:24.552") == pytest.approx(
        sg_to_plato(1.06)
    )
    batch = lake.read_table(settings.paths.lake, "raw", BATCHES).iloc[0]
    assert batch["start_time"] == pd.Timestamp("2020-05-21 15:00:24.552", tz="UTC")  # the oldest


def test_brewfathers_json_export_reads_as_its_csv_does(tmp_path):
    """The JSON form of the same export (``sg: null`` where no gravity): it was "not a
    recognised hydrometer export"; now the same readings as the CSV, by the same reader."""
    records = [
        {"type": "manual", "time": 1590080424552, "id": "manual", "temp": 21.5, "comment": "",
         "sg": 1.052, "__acc_reading_doc_id": "d2", "__acc_reading_data_id": "r2"},
        {"type": "manual", "time": 1590076824552, "id": "manual", "temp": 22, "comment": None,
         "sg": None, "__acc_reading_doc_id": "d1", "__acc_reading_data_id": "r1"},
        {"type": "manual", "time": 1590073224552, "id": "manual", "temp": 22, "comment": "",
         "sg": 1.06, "__acc_reading_doc_id": "d0", "__acc_reading_data_id": "r0"},
    ]  # fmt: skip
    settings = _drop(tmp_path, {"brewfather_batch_12.json": json.dumps(records)})
    report = ingest_drop_folder(settings)
    assert report.accepted == ["brewfather_batch_12.json"], report.rejected
    readings = _readings(settings)
    assert (readings["tag"] == "gravity_plato").sum() == 2
    assert (readings["tag"] == "temperature_c").sum() == 3
    assert _value(readings, "gravity_plato", "2020-05-21 15:00:24.552") == pytest.approx(
        sg_to_plato(1.06)
    )


def test_brewpi_beer_log_gives_temperatures_only_in_local_time(tmp_path):
    text = (
        'Dec 03 2018 22:28:21;18.56;18.5;"Beer temp set to 18.7 in web interface";'
        "17.94;14.82;null;4;19.38\n"
        "Dec 03 2018 22:29:21;null;18.7;null;17.9;14.8;null;4;19.38\n"
        "Dec 03 2018 22:30:21;18.60;18.7;null;17.9;14.8;null;4;19.4\n"
    )
    settings = _drop(tmp_path, {"beer-2018.csv": text}, local_timezone="Europe/Paris")
    report = ingest_drop_folder(settings)
    assert report.notes["devices"] == {"beer-2018.csv": "brewpi_log"}, report.rejected
    readings = _readings(settings)
    assert set(readings["tag"]) == {"temperature_c"} and len(readings) == 2
    assert _value(readings, "temperature_c", "2018-12-03 21:28:21") == pytest.approx(18.56)  # CET


def test_fermentrack_full_gravity_log_says_its_temperature_unit(tmp_path):
    text = (
        "log_time,gravity,temp,temp_format,temp_is_estimate,gravity_latest,temp_latest,"
        "extra_data,log_id\n"
        "2024/03/01 10:00:00Z,1.048,68.0,F,False,True,True,45.2,7\n"
        "2024/03/01 10:15:00Z,1.047,68.5,F,False,True,True,45.0,7\n"
    )
    settings = _drop(tmp_path, {"Gravity Device 2 - L7 - pils_full.csv": text})
    report = ingest_drop_folder(settings)
    assert list(report.notes["devices"].values()) == ["fermentrack_csv"], report.rejected
    readings = _readings(settings)
    assert _value(readings, "temperature_c", "2024-03-01 10:00:00") == pytest.approx(20.0)
    assert _value(readings, "gravity_plato", "2024-03-01 10:15:00") == pytest.approx(
        sg_to_plato(1.047)
    )


EKOS = (
    "Status,Start Date,Product,Style,Batch Number,Turn Count,Original Gravity,Date,Created By,Task,"
    "Temperature,Gravity,pH,Yeast Attenuation,ABV,Actual ABV,Taste Aroma Notes,Batch Locations\n"
    "Completed,25/10/2022,Lagerbier #3 | Choix du brasseur,Lager,1773,1,11.6000,10/11/2022 ,"
    '"Brasseurs JC, Dépôt",Fermentation Log / Thu Nov 10,13.00,2.40,4.51,86.79%,4.91%,0.00,'
    '"notes, with a comma",FV12\n'
    "Completed,25/10/2022,Lagerbier #3 | Choix du brasseur,Lager,1773,1,11.6000,27/10/2022 ,JC,"
    "Fermentation Log / Thu Oct 27,0.00,9.80,5.1,,,,,FV12\n"
)
EKOS_MAPPING = {
    "batch": "Batch Number",
    "time": "Date",
    "time_format": "%d/%m/%Y",
    "gravity": "Gravity",
    "gravity_unit": "°P",
    "temperature": "Temperature",
    "temperature_unit": "°C",
    "original_gravity": "Original Gravity",
    "original_gravity_unit": "°P",
    "start": "Start Date",
    "start_format": "%d/%m/%Y",
    "brand": "Product",
    "fermenter": "Batch Locations",
    "missing": {"temperature": ["0.00"]},
}


def test_a_brewery_erp_export_through_a_column_mapping(tmp_path):
    """An Ekos fermentation report (day-first dates with a trailing space, °P and °C, a
    temperature of 0.00 meaning "not measured", commas inside quoted notes) read through
    ``ekos.mapping.json``; the mapping goes with it into processed/."""
    settings = _drop(
        tmp_path,
        {"ekos.csv": EKOS, "ekos.mapping.json": json.dumps(EKOS_MAPPING)},
        local_timezone="America/Montreal",
    )
    report = ingest_drop_folder(settings)
    assert report.accepted == ["ekos.csv"], report.rejected
    assert (settings.paths.drop / "processed" / "ekos.mapping.json").exists()
    batch = lake.read_table(settings.paths.lake, "raw", BATCHES).iloc[0]
    assert batch["batch_id"] == "1773" and batch["fermenter"] == "FV12"
    assert batch["brand"] == "lagerbier_3_choix_du_brasseur"
    assert batch["original_gravity_plato"] == pytest.approx(11.6)
    assert batch["start_time"] == pd.Timestamp("2022-10-25 04:00", tz="UTC")  # EDT midnight
    readings = _readings(settings)
    assert (readings["tag"] == "temperature_c").sum() == 1  # the 0.00 was no measurement
    assert _value(readings, "gravity_plato", "2022-10-27 04:00") == pytest.approx(9.8)


@pytest.mark.parametrize(
    ("mapping", "says"),
    [
        ({**EKOS_MAPPING, "gravity_unit": None}, "'gravity' is mapped without 'gravity_unit'"),
        ({**EKOS_MAPPING, "gravity": "Gravité"}, "['Gravité']"),
        ({**EKOS_MAPPING, "colour": "x"}, "unknown mapping key(s) ['colour']"),
        ({k: v for k, v in EKOS_MAPPING.items() if k != "batch"}, "needs one of 'batch'"),
    ],
)
def test_a_bad_mapping_quarantines_the_file_with_its_reason(tmp_path, mapping, says):
    settings = _drop(tmp_path, {"ekos.csv": EKOS, "ekos.mapping.json": json.dumps(mapping)})
    report = ingest_drop_folder(settings)
    assert says in report.rejected["ekos.csv"]
    assert list(settings.paths.lake.glob("quarantine/files/*/ekos.csv*")) or any(
        settings.paths.lake.glob("quarantine/**/ekos.csv*")
    )


#: A hand-kept ERP fermentation log as delivered: a header row per batch without a date,
#: a note typed with Enter in an unquoted text column, "not entered" written as 0.0000 and
#: 0.00, a low-alcohol brand (OG 3.5 °P), and two readings on one day (a date-only log).
ERP = (
    "Batch No,Date,Note,Gravity,Temp,OG,Brand\n"
    "2026-101,,Brewday Pils,,,11.8000,Pils\n"
    "2026-101,02/03/2026,pitched,11.80,10.5,11.8000,Pils\n"
    "2026-101,04/03/2026,dry hop\n"
    "added today,7.20,11.0,11.8000,Pils\n"
    "2026-101,06/03/2026,,0.00,11.5,11.8000,Pils\n"
    "2026-101,09/03/2026,,2.40,11.0,11.8000,Pils\n"
    "2026-102,,Brewday Zero,,,0.0000,Zero\n"
    "2026-102,03/03/2026,,3.50,12.0,0.0000,Zero\n"
    "2026-102,05/03/2026,,1.90,12.5,0.0000,Zero\n"
    "2026-103,,Brewday Light,,,3.5000,Light\n"
    "2026-103,03/03/2026,,3.50,12.0,3.5000,Light\n"
    "2026-103,03/03/2026,afternoon,3.10,12.5,3.5000,Light\n"
)
ERP_MAPPING = {
    "batch": "Batch No",
    "time": "Date",
    "time_format": "%d/%m/%Y",
    "gravity": "Gravity",
    "gravity_unit": "°P",
    "temperature": "Temp",
    "temperature_unit": "°C",
    "original_gravity": "OG",
    "original_gravity_unit": "°P",
    "brand": "Brand",
    "missing": {"gravity": ["0.00"], "original_gravity": ["0.0000"]},
}


def test_a_hand_kept_erp_log_ingests_as_delivered_every_row_accounted_for(tmp_path):
    """The README's ERP mapping on a real export's habits: the whole file was refused (rows
    without a date), a line break in a note split a row in two, OG 0.0000 and gravity 0.00
    were read as numbers, a low-alcohol brand's OG was outside the schema, a day's second
    reading was held back as a duplicate key. Now every physical line is a reading, a
    skipped header row (named by its line) or a re-joined part of a row, the low-alcohol
    batch passes validation, and no reading is lost to ``unique_key``."""
    settings = _drop(tmp_path, {"erp.csv": ERP, "erp.mapping.json": json.dumps(ERP_MAPPING)})
    report = ingest_drop_folder(settings)
    assert report.accepted == ["erp.csv"], report.rejected
    notes = " ".join(report.notes["device_notes"])
    assert "3 row(s) without a time in 'Date' (lines 2, 8, 11) skipped" in notes
    assert "1 record(s) cut by a line break inside a text field joined again (lines 4-5)" in notes
    readings = _readings(settings)
    gravity = readings[readings["tag"] == "gravity_plato"]
    # 7 dated gravity cells with a value (the 0.00 was "not entered"), 8 temperatures
    assert len(gravity) == 7 and (readings["tag"] == "temperature_c").sum() == 8
    assert _value(readings, "gravity_plato", "2026-03-04") == pytest.approx(7.2)
    batches = lake.read_table(settings.paths.lake, "raw", BATCHES).set_index("batch_id")
    assert pd.isna(batches.loc["2026-102", "original_gravity_plato"])  # 0.0000: not entered
    assert batches.loc["2026-103", "original_gravity_plato"] == pytest.approx(3.5)
    stages.validate(settings)
    validated = lake.read_table(settings.paths.lake, "validated", BATCHES)
    assert "2026-103" in set(validated["batch_id"])  # a 3.5 °P wort is a real product
    kept = lake.read_table(settings.paths.lake, "validated", READINGS)
    assert len(kept) == len(readings)  # every reading validated: none lost to unique_key


def test_a_date_only_log_keeps_every_reading_of_a_day_in_its_order(tmp_path):
    """Two hand readings on one day got one midnight time and both were quarantined as
    ``unique_key`` (17% of a real ERP log). Now each day's readings are spread over it in
    their order (the file's, or reversed where the file lists a batch newest first), and
    the batch says its times are only days."""
    log = (
        "Batch,Date,Plato\n"
        "B1,02/03/2026,12.0\n"
        "B1,03/03/2026,10.5\n"
        "B1,03/03/2026,9.8\n"
        "B1,04/03/2026,8.0\n"
        "B2,05/03/2026,6.0\n"  # newest first: 6.0 is the day's later reading
        "B2,05/03/2026,6.2\n"
        "B2,04/03/2026,9.0\n"
    )
    mapping = {"batch": "Batch", "time": "Date", "time_format": "%d/%m/%Y",
               "gravity": "Plato", "gravity_unit": "°P"}  # fmt: skip
    settings = _drop(tmp_path, {"log.csv": log, "log.mapping.json": json.dumps(mapping)})
    report = ingest_drop_folder(settings)
    assert report.accepted == ["log.csv"], report.rejected
    assert "7 reading row(s) give a date only" in " ".join(report.notes["device_notes"])
    readings = _readings(settings).sort_values(["batch_id", "timestamp"])
    assert len(readings) == 7
    for batch, values in (("B1", [12.0, 10.5, 9.8, 8.0]), ("B2", [9.0, 6.2, 6.0])):
        assert readings.loc[readings["batch_id"] == batch, "value"].tolist() == values
    b1 = readings[readings["batch_id"] == "B1"].set_index("value")["timestamp"]
    assert b1[9.8] - b1[10.5] == pd.Timedelta(hours=12)  # the day's second reading: noon
    assert b1[12.0] - b1[10.5] == pd.Timedelta(days=-1)  # a lone reading keeps its midnight
    batches = lake.read_table(settings.paths.lake, "raw", BATCHES)
    assert batches["time_resolution_h"].tolist() == [24.0, 24.0]
    stages.validate(settings)
    validated = lake.read_table(settings.paths.lake, "validated", READINGS)
    assert len(validated) == 7  # none held back as unique_key


def test_a_dry_cider_below_sg_1000_keeps_the_end_of_its_curve(tmp_path):
    """SG 1.000 is -0.003 °P and a dry cider ends at 0.994 (-1.56 °P): the range (0, 30)
    quarantined the end of every such curve, and a NEIPA attenuated past 100%."""
    log = "Batch,Date,SG\nC1,2026-03-02 08:00,1.050\nC1,2026-03-09 08:00,1.000\n" + (
        "C1,2026-03-16 08:00,0.994\n"
    )
    mapping = {"batch": "Batch", "time": "Date", "gravity": "SG", "gravity_unit": "SG"}
    settings = _drop(tmp_path, {"cider.csv": log, "cider.mapping.json": json.dumps(mapping)})
    assert ingest_drop_folder(settings).accepted == ["cider.csv"]
    stages.validate(settings)
    kept = lake.read_table(settings.paths.lake, "validated", READINGS)["value"]
    assert sorted(kept) == pytest.approx(sorted(sg_to_plato(np.array([1.050, 1.000, 0.994]))))


def test_a_probe_curve_and_the_hand_log_of_one_fermentation_are_one_batch(tmp_path):
    """A probe's export named with the brewery's batch number and the ERP's hand log of the
    same fermentation landed as two batches (training saw it twice). With the batch-number
    pattern they are one: the ERP's record (brand, OG), both sources' readings."""
    probe = (
        "Timepoint,SG,Temp (°C),Beer\n"
        "46084.25,1.0470,10.6,Pils\n"  # 2026-03-03 06:00 (local, UTC here)
        "46084.5,1.0440,10.8,Pils\n"
    )
    files = {"erp.csv": ERP, "erp.mapping.json": json.dumps(ERP_MAPPING),
             "FV3 2026-101 tilt.csv": probe}  # fmt: skip
    apart = _drop(tmp_path / "apart", files)
    ingest_drop_folder(apart)
    batches = lake.read_table(apart.paths.lake, "raw", BATCHES)
    assert {"2026-101", "FV3 2026-101 tilt"} <= set(batches["batch_id"])  # one brew, twice
    linked = _drop(tmp_path / "linked", files, batch_number_pattern=r"(\d{4}-\d{3})")
    report = ingest_drop_folder(linked)
    assert sorted(report.accepted) == ["FV3 2026-101 tilt.csv", "erp.csv"], report.rejected
    assert any("linked to batch 2026-101" in n for n in report.notes["device_notes"])
    stages.validate(linked)
    batches = lake.read_table(linked.paths.lake, "validated", BATCHES).set_index("batch_id")
    assert "FV3 2026-101 tilt" not in batches.index
    assert batches.loc["2026-101", "brand"] == "pils"
    assert batches.loc["2026-101", "original_gravity_plato"] == pytest.approx(11.8)
    readings = lake.read_table(linked.paths.lake, "validated", READINGS)
    gravity = readings[(readings["batch_id"] == "2026-101") & (readings["tag"] == "gravity_plato")]
    assert len(gravity) == 3 + 2  # the hand log's three, the probe's two
    with pytest.raises(ValueError, match="needs a group"):
        Settings(batch_number_pattern=r"\d{4}-\d{3}")


def test_epoch_times_and_whitespace_separated_logs_are_mappable(tmp_path):
    """An iSpindel InfluxDB export's epoch-nanosecond ``time`` and a controller's
    whitespace-separated log, each through a mapping."""
    influx = (
        "name,time,gravity,temp_units,temperature\n"
        "spindel,1772524800000000000,1.048,C,18.5\n"
        "spindel,1772528400000000000,1.046,C,18.6\n"
    )
    mapping = {
        "batch": "name",
        "time": "time",
        "time_format": "epoch_ns",
        "gravity": "gravity",
        "gravity_unit": "SG",
        "temperature": "temperature",
        "temperature_unit": "°C",
    }
    logged = "batch  time  plato  celsius\nB7  1772524800  12.1  19.0\nB7  1772528400  12.0  19.1\n"
    whitespace = {"batch": "batch", "time": "time", "time_format": "epoch_s",
                  "delimiter": "whitespace", "gravity": "plato", "gravity_unit": "°P",
                  "temperature": "celsius", "temperature_unit": "°C"}  # fmt: skip
    settings = _drop(
        tmp_path,
        {
            "influx.csv": influx,
            "influx.mapping.json": json.dumps(mapping),
            "controller.csv": logged,
            "controller.mapping.json": json.dumps(whitespace),
        },
    )
    report = ingest_drop_folder(settings)
    assert sorted(report.accepted) == ["controller.csv", "influx.csv"], report.rejected
    readings = _readings(settings)
    at = pd.Timestamp("2026-03-03 08:00", tz="UTC")  # 1772524800 s after the epoch
    first = readings[(readings["timestamp"] == at) & (readings["tag"] == "gravity_plato")]
    by_batch = dict(zip(first["batch_id"], first["value"], strict=True))
    assert by_batch == pytest.approx({"spindel": float(sg_to_plato(1.048)), "B7": 12.1})
    assert len(readings) == 8


def test_a_gnuplot_fermentation_log_is_mappable_as_delivered(tmp_path):
    """lambert/TTO's ``fermentation.data`` (DEVICES.md §10): a ``#`` header, date and time in
    two columns, no batch column, most rows only a temperature. It needed hand edits; now
    its mapping reads it as it is (``time`` from two columns, ``batch_id`` for the file)."""
    log = (
        "# Date Time  Temperature  Pressure  Gravity  pH\n"
        "16-09-2024 18:30:00  17.6  0  1.032  5.24\n"
        "16-09-2024 18:40:00  17.7\n"
        "16-09-2024 18:50:00  17.8\n"
        "20-09-2024 08:00:00  18.0  0  1.008  4.40\n"
    )
    mapping = {"batch_id": "TTO-10", "time": ["Date", "Time"], "time_format": "%d-%m-%Y %H:%M:%S",
               "delimiter": "whitespace", "temperature": "Temperature", "temperature_unit": "°C",
               "gravity": "Gravity", "gravity_unit": "SG"}  # fmt: skip
    files = {"fermentation.data": log, "fermentation.mapping.json": json.dumps(mapping)}
    settings = _drop(tmp_path, files)
    report = ingest_drop_folder(settings)
    assert report.accepted == ["fermentation.data"], report.rejected
    readings = _readings(settings)
    assert set(readings["batch_id"]) == {"TTO-10"}
    assert (readings["tag"] == "temperature_c").sum() == 4
    gravity = readings[readings["tag"] == "gravity_plato"].sort_values("timestamp")["value"]
    assert gravity.tolist() == pytest.approx(sg_to_plato(np.array([1.032, 1.008])).tolist())
    assert _value(readings, "temperature_c", "2024-09-16 18:40") == pytest.approx(17.7)


def test_short_rows_stay_rows_and_only_a_cut_row_is_joined():
    """Lines join only when together they make exactly one row of the header's width: rows
    short of trailing cells stay rows (as pandas reads them), a note cut by Enter joins."""
    from ingest.devices import _records

    frame, notes = _records("a,b,c,d\n1,2\n3,4\n5,6,7,8\nx,note\nmore,y,z\n", ",", "t.csv")
    assert list(frame.index) == [2, 3, 4, 5]  # each row named by the line it starts on
    assert frame.loc[2].tolist() == ["1", "2", "", ""] and frame.loc[3].tolist() == [
        "3",
        "4",
        "",
        "",
    ]
    assert frame.loc[5].tolist() == ["x", "note more", "y", "z"]
    assert notes == [
        "t.csv: 1 record(s) cut by a line break inside a text field joined again (lines 5-6)"
    ]
    # a whitespace log's short rows are rows: two of them made one "whole" row and a real
    # log (TTO's fermentation.data) silently lost 983 of its 2,054 readings
    log = "batch time temp_c sg note x\nb1 15:29 19.4 1.040 a b\nb1 16:00 19.5\nb1 16:30 19.6\n"
    frame, notes = _records(log, "whitespace", "log.csv")
    assert list(frame.index) == [2, 3, 4] and notes == []
    assert frame.loc[3].tolist() == ["b1", "16:00", "19.5", "", "", ""]

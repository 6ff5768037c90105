"""Hydrometer exports in the drop folder, recognised by their content, read as brewcast's raw
``batches`` and ``readings`` in the canonical units (°P, °C, UTC).

Device and brewery-software exports (``DEVICES.md``), each recognised by its header (or,
for BrewPi's header-less log, its first line): iSpindel LocalServer CSV, Plaato report,
Brewfather readings export, Fermentrack gravity log, BrewPi beer log (temperatures only),
and any CSV with a ``<name>.mapping.json`` beside it (:func:`read_mapped_csv`: an ERP's
export, a hand-kept sheet). Empty cells are no reading and are said in the notes. Two formats
of real Tilt logs (fixtures in ``tests/fixtures/realdata``):

* a **Tilt CSV** (its own log, or the Tilt app's): header ``Timepoint,SG,Temp (°C)`` or
  ``Temp (°F)``, the temperature unit from the header; ``Timepoint`` is local time
  ``m/d/YYYY H:MM:SS`` (or the app's Excel serial day), in any order;
* the **RabbitFarmer Fermenter-Temp-Controller** JSON lines (``sample`` and
  ``batch_metadata`` events), with its batch history ``*_batch.json`` when it lies beside.

Nothing is dropped here: a sentinel (``temp_f`` 999) or an impossible gravity is converted
like any value and left to validation's range rules, which quarantine it with a reason.
Naive local times are read in ``BREWCAST_LOCAL_TIMEZONE`` (default UTC), and the report
says so. The same unit rules serve brewcast's own drop files (:func:`convert_readings`,
:func:`convert_batches`): a declared unit is parsed, values that only make sense in another
unit refuse the file, and nothing is converted on a guess.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from brewcast.schema import BATCHES, READINGS, SchemaError
from brewcast.units import CANONICAL, QUANTITY_OF, UnitError, likely_unit, parse_unit, to_canonical

TILT_CSV = "tilt_csv"
RABBITFARMER_JSONL = "rabbitfarmer_jsonl"
ISPINDEL_CSV = "ispindel_csv"
PLAATO_CSV = "plaato_csv"
BREWFATHER_CSV = "brewfather_csv"
BREWFATHER_JSON = "brewfather_json"
BREWPI_LOG = "brewpi_log"
FERMENTRACK_CSV = "fermentrack_csv"
MAPPED_CSV = "mapped_csv"
#: A RabbitFarmer batch history lies beside its log under this suffix.
COMPANION_SUFFIX = "_batch.json"
#: A generic CSV's column mapping lies beside it: ``<name>.csv`` + ``<name>.mapping.json``.
MAPPING_SUFFIX = ".mapping.json"
#: Headers (their first columns) that say which export a CSV is (``DEVICES.md``).
CSV_HEADERS = {
    ISPINDEL_CSV: ("timestamp", "gravity", "angle", "temperature", "temp_units"),
    PLAATO_CSV: ("timestamp", "isoTime", "density", "temperature"),
    BREWFATHER_CSV: ("type", "time", "id", "temp", "comment", "sg"),
    FERMENTRACK_CSV: ("log_time", "gravity", "temp"),
}
#: A BrewPi beer log line: ``Dec 03 2018 22:28:21;18.56;...`` (no header, semicolons).
BREWPI_LINE = re.compile(r"^[A-Z][a-z]{2} \d\d \d{4} \d\d:\d\d:\d\d;")
#: What Plaato writes for "no density" (``DEVICES.md`` §7): kept, and quarantined by range.
PLAATO_NO_DENSITY = -616.87
#: The Tilt app's Excel serial days count from this date (``DEVICES.md`` §3).
EXCEL_ORIGIN = pd.Timestamp("1899-12-30")
#: The serial days a Tilt can really have sent: from 2000-01-01 (a phone whose clock or app
#: is not set sends day 1, 1899-12-31) to 2200.
EARLIEST_SERIAL = (pd.Timestamp("2000-01-01") - EXCEL_ORIGIN).days
LATEST_SERIAL = (pd.Timestamp("2200-01-01") - EXCEL_ORIGIN).days
TILT_SERIAL_HELP = (
    f"an Excel serial day since 2000 ({EARLIEST_SERIAL}: 2000-01-01): a phone whose clock "
    "or app is not set"
)


def tilt_local_times(serial: pd.Series) -> pd.Series:
    """The Tilt app's ``Timepoint`` (Excel serial days, the phone's local time) as naive
    local times to the second, for the service's pushes and the drop folder's files alike;
    NaT where a serial is not a day since 2000 (not finite, day 1, beyond 2200)."""
    days = pd.to_numeric(serial, errors="coerce").astype("float64")
    days = days.where(days.between(EARLIEST_SERIAL, LATEST_SERIAL))
    return (EXCEL_ORIGIN + pd.to_timedelta(days, unit="D")).dt.round("s")


#: A timestamp that says its offset (ends in Z or +hh:mm): brewcast's own files need one.
TIME_WITH_ZONE = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")

#: Which units each quantity column saw: {tag or batch column: {unit, ...}}.
UnitsSeen = dict[str, set[str]]


@dataclass
class DeviceRead:
    """What one device export held, conformed, and what reading it assumed."""

    kind: str
    batches: pd.DataFrame
    readings: pd.DataFrame
    units: UnitsSeen = field(default_factory=dict)
    #: Whether naive local times were read in the configured zone.
    local_times: bool = False
    #: Companion files read with it (consumed together).
    consumed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Readings the export held twice (same batch, tag, time and value), kept once.
    repeats: int = 0
    #: The unit of the batches' original gravity (device batch records give SG).
    og_unit: str = "SG"


def zone_of(name: str) -> ZoneInfo:
    """The IANA zone ``name``; a ValueError naming the setting when it is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"BREWCAST_LOCAL_TIMEZONE={name!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from exc


def is_companion(path: Path) -> bool:
    """A file read with another: a batch history, or a generic CSV's column mapping."""
    name = path.name.lower()
    return name.endswith(COMPANION_SUFFIX) or name.endswith(MAPPING_SUFFIX)


def mapping_of(path: Path) -> Path:
    return path.with_name(path.stem + MAPPING_SUFFIX)


def sniff(path: Path) -> str | None:
    """Which device format ``path`` holds, judged by its first line, or None (not one)."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            first = next((line.strip() for line in f if line.strip()), "")
    except OSError:
        return None
    if mapping_of(path).is_file() and not is_companion(path):
        return MAPPED_CSV  # any text log with its mapping beside it (a gnuplot .data file)
    if path.suffix.lower() == ".csv":
        if BREWPI_LINE.match(first):
            return BREWPI_LOG
        columns = [c.strip() for c in first.split(",")]
        for kind, header in CSV_HEADERS.items():
            if tuple(columns[: len(header)]) == header:
                return kind
        has_temp = any(c.lower().startswith("temp") for c in columns)
        return TILT_CSV if {"Timepoint", "SG"} <= set(columns) and has_temp else None
    if path.suffix.lower() == ".jsonl":
        try:
            record = json.loads(first)
        except ValueError:
            return None
        if isinstance(record, dict) and {"event", "payload"} <= set(record):
            return RABBITFARMER_JSONL
    if path.suffix.lower() == ".json" and first.startswith("["):
        records = _brewfather_records(path)
        if records is not None:
            return BREWFATHER_JSON
    return None


def _brewfather_records(path: Path) -> list[dict] | None:
    """A Brewfather readings export's JSON form (a list of ``{type, time, id, temp, sg,
    ...}``), or None when ``path`` holds something else."""
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    keys = set(CSV_HEADERS[BREWFATHER_CSV]) - {"comment"}
    if (
        isinstance(records, list)
        and records
        and all(isinstance(r, dict) and keys <= set(r) for r in records)
    ):
        return records
    return None


def snake_key(name: object) -> str | None:
    """A brand key from a beer name (``HOLIDAY SPICED SAISON`` -> ``holiday_spiced_saison``)."""
    if not isinstance(name, str):
        return None
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return key or None


def local_times(
    values: pd.Series, zone: ZoneInfo, source: str, fmt: str = "mixed"
) -> tuple[pd.Series, bool]:
    """UTC times of ``values`` (strings); naive ones (in ``fmt``) are local times in ``zone``.
    Also says whether any was naive. The hour repeated when DST ends is told apart by the
    file's order (oldest or newest first); an ambiguous or missing local time that order
    cannot resolve refuses the file rather than shifting it silently."""
    text = values.astype("string").str.strip()
    aware = text.str.contains(TIME_WITH_ZONE, na=False)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    try:
        if aware.any():
            parsed = pd.to_datetime(text[aware], utc=True, format="ISO8601")
            out[aware] = parsed.astype("datetime64[us, UTC]")
        naive = ~aware & text.notna()
        if naive.any():
            parsed = pd.to_datetime(text[naive], format=fmt)
            if len(parsed) > 1 and parsed.iloc[0] > parsed.iloc[-1]:
                parsed = parsed.iloc[::-1]  # newest first: a repeated DST hour in file order
            localised = parsed.dt.tz_localize(zone, ambiguous="infer", nonexistent="raise")
            out[localised.index] = localised.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    except (ValueError, TypeError) as exc:  # pytz/zoneinfo errors are ValueErrors
        raise SchemaError(f"{source}: timestamps cannot be read in {zone.key}: {exc}") from exc
    return out, bool((~aware & text.notna()).any())


def _batch_row(
    batch_id: str, start: pd.Timestamp, brand: str | None, og_sg: float | None
) -> dict[str, object]:
    return {
        "batch_id": batch_id,
        "fermenter": None,
        "brand": brand,
        "style": None,
        "yeast_strain": None,
        "original_gravity_plato": np.nan if og_sg is None else og_sg,
        "pitch_temperature_c": np.nan,
        "pitch_rate_million_cells_per_ml_plato": np.nan,
        "dissolved_oxygen_ppm": np.nan,
        "ambient_temperature_c": np.nan,
        "yeast_generation": np.nan,
        "start_time": start,
        "end_time": pd.NaT,
        "time_resolution_h": np.nan,
    }


def _long_readings(
    batch_id: pd.Series, times: pd.Series, gravity: pd.Series, temperature: pd.Series, units
) -> pd.DataFrame:
    """Wide device rows as long readings with a ``unit`` column (gravity, then temperature)."""
    parts = [
        pd.DataFrame(
            {"batch_id": batch_id, "tag": tag, "timestamp": times, "value": values, "unit": unit}
        )
        for tag, values, unit in (
            ("gravity_plato", gravity, units[0]),
            ("temperature_c", temperature, units[1]),
        )
    ]
    return pd.concat(parts, ignore_index=True)


def read_tilt_csv(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A Tilt CSV: one batch named after the file, pitched at its first reading."""
    frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skipinitialspace=True)
    frame.columns = [c.strip() for c in frame.columns]
    temp_column = next(c for c in frame.columns if c.lower().startswith("temp"))
    match = re.search(r"\((.+)\)", temp_column)
    temp_unit = match.group(1) if match else units.get("temperature_c")
    if temp_unit is None:
        raise SchemaError(
            f"{path.name}: column {temp_column!r} names no unit; write it as 'Temp (°F)' or "
            f"'Temp (°C)', or declare temperature_c in the drop folder's units.json"
        )
    stamps, fmt = frame["Timepoint"], "%m/%d/%Y %H:%M:%S"
    if pd.to_numeric(stamps, errors="coerce").notna().all():  # the app's Excel serial days
        local = tilt_local_times(stamps)
        if local.isna().any():
            lines = [str(i + 2) for i in np.flatnonzero(local.isna())[:10]]
            raise SchemaError(
                f"{path.name}: Timepoint on line(s) {', '.join(lines)} is not {TILT_SERIAL_HELP}"
            )
        stamps, fmt = local.dt.strftime("%Y-%m-%d %H:%M:%S"), "ISO8601"
    times, naive = local_times(stamps.astype("string"), zone, path.name, fmt)
    if times.isna().any():
        raise SchemaError(f"{path.name}: {int(times.isna().sum())} row(s) without a Timepoint")
    batch_id = path.stem
    brand = None
    if "Beer" in frame.columns:
        names = [b for b in frame["Beer"].dropna() if b.strip().lower() != "untitled"]
        brand = snake_key(names[0].split(",")[0]) if names else None
    ids = pd.Series(batch_id, index=frame.index)
    readings = _long_readings(ids, times, frame["SG"], frame[temp_column], ("SG", temp_unit))
    batches = pd.DataFrame([_batch_row(batch_id, times.min(), brand, None)])
    return DeviceRead(TILT_CSV, batches, readings, local_times=naive)


def _declared(units: Mapping[str, str], tag: str, default: str) -> str:
    """The unit a file's ``tag`` is in: the drop folder's ``units.json`` says, else the
    format's own (canonical where the format does not say: its values are then checked
    against it, and a file that looks like another unit is refused, never converted)."""
    return units.get(tag, default)


def _one_batch(
    path: Path, kind: str, times: pd.Series, gravity, temperature, gravity_unit, temp_unit, notes=()
):
    """A file of one batch, named after the file and pitched at its first reading."""
    batch_id = path.stem
    ids = pd.Series(batch_id, index=times.index)
    readings = _long_readings(ids, times, gravity, temperature, (gravity_unit, temp_unit))
    readings, absent = _absent_values(readings, path.name)
    read = DeviceRead(kind, pd.DataFrame([_batch_row(batch_id, times.min(), None, None)]), readings)
    read.notes += [*notes, *absent]
    return read


def _absent_values(readings: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """Readings without a value (a device's empty cell: no measurement at that time) left
    out, and said so per tag; an absent cell is no reading, a sentinel is (validation)."""
    empty = pd.to_numeric(readings["value"], errors="coerce").isna() & (
        readings["value"].isna()
        | readings["value"].astype("string").str.strip().isin(["", "NaN", "nan", "None", "null"])
    )
    notes = [
        f"{source}: {int(n)} {tag} cell(s) empty (no measurement then): no reading"
        for tag, n in readings.loc[empty, "tag"].value_counts().items()
    ]
    return readings[~empty].reset_index(drop=True), notes


def read_ispindel_csv(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """An iSpindel LocalServer CSV: local times, a ``temp_units`` per row; its gravity is
    what the owner calibrated, SG or °P, unlabelled: ``units.json`` says which (default °P,
    and SG-looking values then refuse the file)."""
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    times, naive = local_times(frame["timestamp"], zone, path.name)
    temp_units = frame["temp_units"].fillna("").str.strip()
    read = _one_batch(
        path,
        ISPINDEL_CSV,
        times,
        frame["gravity"],
        frame["temperature"],
        _declared(units, "gravity_plato", "°P"),
        "°C",
    )
    # each temperature row's own unit (C, F or K)
    temperature = read.readings["tag"] == "temperature_c"
    read.readings.loc[temperature, "unit"] = temp_units.to_numpy()
    read.local_times = naive
    return read


def read_plaato_csv(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A Plaato Pro report: ``isoTime`` in UTC, density in the unit the report asked for
    (``units.json``, default °P) and °C. Its no-density sentinel (-616.87) is kept as a
    reading: validation's range rule quarantines it with its reason."""
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    times, _ = local_times(frame["isoTime"], zone, path.name)
    density = pd.to_numeric(frame["density"], errors="coerce")
    sentinels = int(np.isclose(density, PLAATO_NO_DENSITY).sum())
    notes = (
        [
            f"{path.name}: {sentinels} missing-density sentinel(s) {PLAATO_NO_DENSITY}: "
            "kept, for validation to quarantine"
        ]
        if sentinels
        else []
    )
    gravity_unit = _declared(units, "gravity_plato", "°P")
    if sentinels:  # the sentinel is no gravity: judge the unit on the real densities only
        real = density[~np.isclose(density, PLAATO_NO_DENSITY)].to_numpy()
        hint = likely_unit(real, gravity_unit)
        if hint:
            raise SchemaError(
                f"{path.name}: density declared {gravity_unit} looks like {hint}: declare "
                "gravity_plato in units.json"
            )
    return _one_batch(
        path,
        PLAATO_CSV,
        times,
        frame["density"],
        frame["temperature"],
        gravity_unit,
        _declared(units, "temperature_c", "°C"),
        notes,
    )


def read_brewfather_csv(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A Brewfather readings export (CSV): see :func:`_brewfather_export`."""
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    return _brewfather_export(frame, path, BREWFATHER_CSV, zone, units)


def read_brewfather_json(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A Brewfather readings export in its JSON form: the CSV's records (``sg: null`` for
    a reading without gravity), read as the CSV is."""
    records = _brewfather_records(path)
    if records is None:
        raise SchemaError(f"{path.name}: not a list of Brewfather readings")
    frame = pd.DataFrame(records).map(lambda v: "" if v is None else str(v)).astype(str)
    return _brewfather_export(frame, path, BREWFATHER_JSON, zone, units)


def _brewfather_export(
    frame: pd.DataFrame, path: Path, kind: str, zone: ZoneInfo, units: Mapping[str, str]
) -> DeviceRead:
    """A Brewfather readings export, either form: ``timepoint`` ISO UTC (else ``time``,
    epoch ms), ``sg`` in SG (empty or NaN: a reading without gravity), ``temp`` in °C
    unless ``units.json`` says; newest first is fine."""
    if "timepoint" in frame and frame["timepoint"].str.strip().ne("").all():
        times, _ = local_times(frame["timepoint"], zone, path.name)
    else:
        ms = pd.to_numeric(frame["time"], errors="coerce")
        if ms.isna().any():
            raise SchemaError(f"{path.name}: {int(ms.isna().sum())} row(s) without a time")
        times = pd.to_datetime(ms, unit="ms", utc=True).astype("datetime64[us, UTC]")
    return _one_batch(
        path,
        kind,
        times,
        frame["sg"],
        frame["temp"],
        _declared(units, "gravity_plato", "SG"),
        _declared(units, "temperature_c", "°C"),
    )


def read_fermentrack_csv(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A Fermentrack gravity log: ``log_time`` in UTC (``%Y/%m/%d %H:%M:%SZ``), gravity in
    SG, temperature in its ``temp_format`` column (the full log) or as ``units.json`` says."""
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    times = pd.to_datetime(
        frame["log_time"].str.strip(), format="%Y/%m/%d %H:%M:%SZ", utc=True, errors="coerce"
    )
    if times.isna().any():
        raise SchemaError(
            f"{path.name}: {int(times.isna().sum())} log_time value(s) are not %Y/%m/%d %H:%M:%SZ"
        )
    read = _one_batch(
        path,
        FERMENTRACK_CSV,
        times.astype("datetime64[us, UTC]"),
        frame["gravity"],
        frame["temp"],
        _declared(units, "gravity_plato", "SG"),
        _declared(units, "temperature_c", "°C"),
    )
    if "temp_format" in frame:
        temperature = read.readings["tag"] == "temperature_c"
        read.readings.loc[temperature, "unit"] = frame["temp_format"].str.strip().to_numpy()
    return read


def read_brewpi_log(path: Path, zone: ZoneInfo, units: Mapping[str, str]) -> DeviceRead:
    """A BrewPi beer log (no header, ``;``): the beer temperature, in the controller's unit
    (``units.json``, default °C); local times. BrewPi logs no gravity: a batch of
    temperatures, to join the gravity of a hydrometer logged apart."""
    frame = pd.read_csv(path, sep=";", header=None, dtype=str, keep_default_na=False, quotechar='"')
    times, naive = local_times(frame[0], zone, path.name, "%b %d %Y %H:%M:%S")
    batch_id = path.stem
    readings = pd.DataFrame(
        {
            "batch_id": batch_id,
            "tag": "temperature_c",
            "timestamp": times,
            "value": frame[1],
            "unit": _declared(units, "temperature_c", "°C"),
        }
    )
    readings, absent = _absent_values(readings, path.name)
    read = DeviceRead(
        BREWPI_LOG,
        pd.DataFrame([_batch_row(batch_id, times.min(), None, None)]),
        readings,
        local_times=naive,
    )
    read.notes += [f"{path.name}: a BrewPi log holds temperatures only (no gravity)", *absent]
    return read


#: What a generic CSV's mapping may name: brewcast's meaning -> the file's column.
MAPPING_COLUMNS = (
    "batch",
    "time",
    "gravity",
    "temperature",
    "original_gravity",
    "start",
    "brand",
    "style",
    "yeast_strain",
    "fermenter",
)
#: And how to read them.
MAPPING_OPTIONS = (
    "time_format",
    "start_format",
    "gravity_unit",
    "temperature_unit",
    "original_gravity_unit",
    "missing",
    "delimiter",
    "rows_without_time",
    "batch_id",
)
#: ``time_format`` values for numeric epoch times, and the unit each counts in.
EPOCH_FORMATS = {"epoch_s": "s", "epoch_ms": "ms", "epoch_us": "us", "epoch_ns": "ns"}


def _records(text: str, delimiter: str, source: str) -> tuple[pd.DataFrame, list[str]]:
    """A delimited text's records as strings, each indexed by the file line it starts on,
    with notes: a record that a line break inside an unquoted text field (a note typed
    with Enter) cut in two is joined again, when the next line completes it to the header's
    width, instead of becoming a phantom row. ``delimiter`` "whitespace": runs of blanks."""
    lines = text.splitlines()
    if not lines:
        raise SchemaError(f"{source}: empty file")

    def fields(line: str) -> list[str]:
        if delimiter == "whitespace":
            return line.split()
        return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])

    header = [c.strip() for c in fields(lines[0])]
    if header and header[0].startswith("#"):  # a commented header: "# Date Time ..."
        header = header[1:] if header[0] == "#" else [header[0][1:].strip(), *header[1:]]
    width = len(header)
    rows, starts, joined = [], [], []
    number = 2
    while number <= len(lines):
        record, first = lines[number - 1], number
        cells = fields(record)
        # cut by a line break, or a row short of cells? (in a whitespace log, short rows
        # are rows: blanks cannot tell a cut text field from the next record)
        if 0 < len(cells) < width and delimiter != "whitespace":
            together, last, longer = record, number, cells
            while len(longer) < width and last < len(lines):
                together, last = together + " " + lines[last], last + 1  # the break: a blank
                longer = fields(together)
            if len(longer) == width:  # only lines that make exactly one whole row join
                record, cells, number = together, longer, last
        if number > first:
            joined.append(f"{first}-{number}")
        number += 1
        if not any(c.strip() for c in cells):
            continue  # a blank line
        rows.append([*cells, *[""] * (width - len(cells))][:width])
        starts.append(first)
    frame = pd.DataFrame(rows, columns=header, index=pd.Index(starts, name="line"), dtype=str)
    notes = []
    if joined:
        notes.append(
            f"{source}: {len(joined)} record(s) cut by a line break inside a text field "
            f"joined again (lines {', '.join(joined[:10])}{', ...' if len(joined) > 10 else ''})"
        )
    return frame, notes


def _mapped_times(
    values: pd.Series, zone: ZoneInfo, source: str, fmt: str
) -> tuple[pd.Series, bool]:
    """The mapped time column in UTC: epoch numbers (``epoch_s`` .. ``epoch_ns``), else
    :func:`local_times`; an empty cell is no time (NaT)."""
    if fmt in EPOCH_FORMATS:
        numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
        times = pd.to_datetime(numbers, unit=EPOCH_FORMATS[fmt], utc=True)
        return times.astype("datetime64[us, UTC]"), False
    present = values != ""
    times = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    parsed, naive = local_times(values[present], zone, source, fmt)
    times[present] = parsed
    return times, naive


def _date_only(values: pd.Series, fmt: str) -> pd.Series:
    """Which time cells give a day and no clock time (a hand log's "04/03/2026")."""
    if fmt in EPOCH_FORMATS:
        return pd.Series(False, index=values.index)
    return ~values.str.contains(r"\d:\d\d", regex=True)


def _spread_over_their_day(ids: pd.Series, times: pd.Series, dated: pd.Series) -> pd.Series:
    """A date-only log's readings of one batch and day (all at that day's midnight) spread
    over the day in the order they happened: the k-th of n at k·24/n h, so a day with two
    readings keeps both (one at midnight, one at noon) instead of two at one time. The
    order is the file's, reversed for a batch the file lists newest first."""
    if not dated.any():
        return times
    frame = pd.DataFrame({"batch": ids, "time": times, "row": np.arange(len(ids))})[dated]
    steps = frame.groupby("batch", sort=False)["time"].diff().dt.total_seconds()
    newest_first = (steps < 0).groupby(frame["batch"]).sum() > (steps > 0).groupby(
        frame["batch"]
    ).sum()
    day = frame.groupby(["batch", "time"], sort=False)["row"]
    count, rank = day.transform("size"), day.cumcount()
    reverse = frame["batch"].map(newest_first).astype(bool)
    rank = rank.where(~reverse, count - 1 - rank)
    spread = times.copy()
    spread[dated] = frame["time"] + pd.to_timedelta(rank * 24.0 / count, unit="h")
    return spread


def load_mapping(path: Path) -> dict:
    """A generic CSV's ``<name>.mapping.json``, checked: the keys it may have, a unit for
    every quantity it maps (nothing is assumed), the columns it needs."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path.name}: unreadable column mapping: {exc}") from exc
    if not isinstance(mapping, dict):
        raise SchemaError(f"{path.name}: a column mapping is a JSON object")
    unknown = sorted(set(mapping) - {*MAPPING_COLUMNS, *MAPPING_OPTIONS})
    if unknown:
        raise SchemaError(
            f"{path.name}: unknown mapping key(s) {unknown}; it takes "
            f"{[*MAPPING_COLUMNS, *MAPPING_OPTIONS]}"
        )
    if not mapping.get("time"):
        raise SchemaError(f"{path.name}: the mapping needs 'time' (the column holding it)")
    if bool(mapping.get("batch")) == bool(mapping.get("batch_id")):
        raise SchemaError(
            f"{path.name}: the mapping needs one of 'batch' (the column naming each row's "
            "batch) or 'batch_id' (one batch for the whole file)"
        )
    time = mapping["time"]
    if isinstance(time, list) and not (time and all(isinstance(c, str) for c in time)):
        raise SchemaError(f"{path.name}: 'time' is a column or a list of columns (date, time)")
    if not (mapping.get("gravity") or mapping.get("temperature")):
        raise SchemaError(f"{path.name}: the mapping names neither 'gravity' nor 'temperature'")
    for quantity in ("gravity", "temperature", "original_gravity"):
        if mapping.get(quantity) and not mapping.get(f"{quantity}_unit"):
            raise SchemaError(
                f"{path.name}: {quantity!r} is mapped without '{quantity}_unit' (°P, SG, "
                "Brix; °C, °F, K): no unit is assumed"
            )
    return mapping


def read_mapped_csv(path: Path, zone: ZoneInfo) -> DeviceRead:
    """A CSV of any layout (a brewery ERP's export such as Ekos', a hand-kept sheet) read
    through the ``<name>.mapping.json`` beside it: which column is the batch, the time, the
    gravity and temperature (each with its unit), and optionally the OG, the start, brand, style,
    strain and fermenter. One batch per value of the batch column."""
    mapping_path = mapping_of(path)
    mapping = load_mapping(mapping_path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    frame, notes = _records(text, mapping.get("delimiter", ","), path.name)
    named = {key: mapping[key] for key in MAPPING_COLUMNS if mapping.get(key)}
    parts = named["time"] if isinstance(named["time"], list) else [named["time"]]
    absent = sorted(
        v for v in [*parts, *(v for k, v in named.items() if k != "time")] if v not in frame
    )
    if absent:
        raise SchemaError(
            f"{path.name}: column(s) {absent} of {mapping_path.name} are not in the file "
            f"(it has {list(frame.columns)})"
        )
    frame = frame.apply(lambda c: c.str.strip())
    if len(parts) > 1:  # a date column and a time column: read as one time
        named["time"] = " ".join(parts)
        frame[named["time"]] = frame[parts].agg(" ".join, axis=1).str.strip()
    if "batch_id" in mapping:  # one batch for the whole file
        named["batch"] = "(batch_id)"
        frame[named["batch"]] = str(mapping["batch_id"])
    missing = mapping.get("missing") or {}
    for quantity, values in missing.items():
        if quantity in named:
            frame.loc[frame[named[quantity]].isin([str(v) for v in values]), named[quantity]] = ""
    times, naive = _mapped_times(
        frame[named["time"]], zone, path.name, mapping.get("time_format", "mixed")
    )
    untimed = times.isna()
    if untimed.any():
        lines = [str(n) for n in frame.index[untimed]]
        said = (
            f"{path.name}: {len(lines)} row(s) without a time in {named['time']!r} (lines "
            f"{', '.join(lines[:20])}{', ...' if len(lines) > 20 else ''})"
        )
        if mapping.get("rows_without_time", "skip") == "error":
            raise SchemaError(said + ": rows_without_time is 'error' in the mapping")
        notes.append(said + " skipped: an ERP's header rows, not readings")
        frame, times = frame[~untimed], times[~untimed]
    ids = frame[named["batch"]].astype("string")
    if (ids == "").any():
        raise SchemaError(
            f"{path.name}: {int((ids == '').sum())} row(s) without a batch in {named['batch']!r}"
        )
    dated = _date_only(frame[named["time"]], mapping.get("time_format", "mixed"))
    times = _spread_over_their_day(ids, times, dated)
    if dated.any():
        notes.append(
            f"{path.name}: {int(dated.sum())} reading row(s) give a date only: each day's "
            "readings are spread over it in their order (time resolution 24 h)"
        )
    parts = [
        pd.DataFrame(
            {
                "batch_id": ids,
                "tag": tag,
                "timestamp": times,
                "value": frame[named[key]],
                "unit": mapping[f"{key}_unit"],
            }
        )
        for key, tag in (("gravity", "gravity_plato"), ("temperature", "temperature_c"))
        if key in named
    ]
    readings, absent = _absent_values(pd.concat(parts, ignore_index=True), path.name)
    notes += absent
    rows = []
    for batch_id, index in ids.groupby(ids, sort=False).indices.items():
        first = frame.iloc[index[0]]
        start = times.iloc[index].min()
        if "start" in named and first[named["start"]]:
            start, _ = local_times(
                pd.Series([first[named["start"]]]),
                zone,
                path.name,
                mapping.get("start_format", "mixed"),
            )
            start = start.iloc[0]
        row = _batch_row(
            str(batch_id),
            start,
            snake_key(first[named["brand"]]) if "brand" in named else None,
            None,
        )
        if "style" in named and first[named["style"]]:
            row["style"] = snake_key(first[named["style"]])
        for key in ("yeast_strain", "fermenter"):
            if key in named and first[named[key]]:
                row[key] = first[named[key]]
        if "original_gravity" in named:
            og = _number(first[named["original_gravity"]])
            row["original_gravity_plato"] = np.nan if og is None else og
        if dated.iloc[index].any():
            row["time_resolution_h"] = 24.0
        rows.append(row)
    read = DeviceRead(
        MAPPED_CSV, pd.DataFrame(rows), readings, local_times=naive, consumed=[mapping_path]
    )
    read.notes += notes
    read.og_unit = mapping.get("original_gravity_unit", "SG")
    return read


def link_by_batch_number(read: DeviceRead, path: Path, pattern: str | None) -> DeviceRead:
    """A device's export of one batch whose file name holds the brewery's batch number
    (``pattern``'s first group: ``BREWCAST_BATCH_NUMBER_PATTERN``) joins that batch: its
    readings take the number as their batch, and it brings no batch record of its own (the
    brewery's log has it; until it arrives the readings wait, as any readings of a batch
    not yet known). A probe's curve and the hand log of one fermentation are then one
    batch, not two that training would see as two fermentations. A mapped log names its
    batches in its own column and is left as it is."""
    if pattern is None or read.kind == MAPPED_CSV or read.batches["batch_id"].nunique() != 1:
        return read
    found = re.search(pattern, path.name)
    if found is None:
        return read
    number = found.group(1)
    read.readings = read.readings.assign(batch_id=number)
    read.batches = read.batches.iloc[0:0]
    read.notes.append(
        f"{path.name}: linked to batch {number} by its file name "
        "(BREWCAST_BATCH_NUMBER_PATTERN): its readings join that batch, whose record comes "
        "from the brewery's own log"
    )
    return read


SIMPLE_READERS = {
    ISPINDEL_CSV: read_ispindel_csv,
    PLAATO_CSV: read_plaato_csv,
    BREWFATHER_CSV: read_brewfather_csv,
    BREWFATHER_JSON: read_brewfather_json,
    FERMENTRACK_CSV: read_fermentrack_csv,
    BREWPI_LOG: read_brewpi_log,
}


def _events(path: Path) -> tuple[list[dict], list[dict]]:
    """The samples and batch-metadata payloads of a JSON-lines log."""
    samples, metadata = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SchemaError(f"{path.name}: line {number} is not JSON: {exc}") from exc
        payload = record.get("payload") if isinstance(record, dict) else None
        if not isinstance(payload, dict):
            raise SchemaError(f"{path.name}: line {number} has no payload object")
        event = record.get("event")
        if event == "sample":
            samples.append(payload)
        elif event == "batch_metadata":
            metadata.append(payload)
    return samples, metadata


def load_companion(path: Path) -> list[dict]:
    """A batch history: a JSON list of batch records (one record is accepted too)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path.name}: unreadable batch history: {exc}") from exc
    records = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in records):
        raise SchemaError(f"{path.name}: a batch history is a list of JSON objects")
    return records


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _batch_record(
    records: list[dict], first: pd.Timestamp, zone: ZoneInfo, source: str
) -> tuple[pd.Timestamp | None, float | None, str | None, list[str]]:
    """Start, OG (SG) and brand of the batch whose first sample is ``first``, from its records.

    A brewid is reused: a record starting after the first sample describes a later batch
    (its readings are not in this log) and is passed over, with a note. Of the rest, the
    latest start wins, and of its records the last one with a measured OG: a history's
    later entries correct earlier ones (the OG is often entered a day late).
    """
    dated = [r for r in records if str(r.get("ferm_start_date") or "").strip()]
    if not dated:
        return None, None, None, []
    starts, _ = local_times(pd.Series([str(r["ferm_start_date"]) for r in dated]), zone, source)
    notes = sorted(
        {
            f"batch record {r.get('beer_name') or '?'!r} from {r['ferm_start_date']} starts "
            f"after the first sample ({first:%Y-%m-%d %H:%M} UTC): a later batch, ignored"
            for r, when in zip(dated, starts, strict=True)
            if when > first
        }
    )
    fitting = [(when, r) for r, when in zip(dated, starts, strict=True) if when <= first]
    if not fitting:
        return None, None, None, notes
    start = max(when for when, _ in fitting)
    latest = [r for when, r in fitting if when == start]
    with_og = [_number(r.get("actual_og")) for r in latest]
    og = next((v for v in reversed(with_og) if v is not None), None)
    brand = next(
        (snake_key(r.get("beer_name")) for r in reversed(latest) if r.get("beer_name")), None
    )
    return start, og, brand, notes


def read_rabbitfarmer(
    path: Path,
    zone: ZoneInfo,
    companions: Sequence[Path] = (),
) -> DeviceRead:
    """RabbitFarmer JSON lines: a batch per brewid, described by its batch record."""
    samples, metadata = _events(path)
    if not samples:
        raise SchemaError(f"{path.name}: no sample events")
    frame = pd.DataFrame(samples)
    for needed in ("timestamp", "gravity"):
        if needed not in frame.columns:
            raise SchemaError(f"{path.name}: sample events have no {needed!r}")
    temp_key, temp_unit = ("temp_f", "°F") if "temp_f" in frame.columns else ("temp_c", "°C")
    if temp_key not in frame.columns:
        raise SchemaError(f"{path.name}: sample events have no temp_f or temp_c")
    ids = frame.get("brewid", pd.Series(None, index=frame.index)).astype("string")
    ids = ids.where(ids.notna() & (ids.str.strip() != ""), path.stem)
    times, naive = local_times(frame["timestamp"], zone, path.name)
    history: list[dict] = []
    consumed = []
    for companion in companions:
        found = [r for r in load_companion(companion) if str(r.get("brewid")) in set(ids)]
        if found:
            history += found
            consumed.append(companion)
    read = DeviceRead(RABBITFARMER_JSONL, BATCHES.empty(), READINGS.empty(), consumed=consumed)
    rows = []
    for batch_id in ids.unique():
        mine = [r for r in (*history, *metadata) if str(r.get("brewid")) == batch_id]
        first = times[ids == batch_id].min()
        start, og, brand, notes = _batch_record(mine, first, zone, path.name)
        read.notes += [f"{path.name}: {batch_id}: {n}" for n in notes]
        rows.append(_batch_row(str(batch_id), first if start is None else start, brand, og))
        naive = naive or start is not None  # a start date is a local date
    read.batches = pd.DataFrame(rows)
    read.readings = _long_readings(ids, times, frame["gravity"], frame[temp_key], ("SG", temp_unit))
    read.local_times = naive
    return read


def read_device(
    path: Path,
    kind: str,
    zone: ZoneInfo,
    units: Mapping[str, str] | None = None,
    companions: Sequence[Path] = (),
    brix_correction: float | None = None,
    batch_number: str | None = None,
) -> DeviceRead:
    """Read a device export of ``kind`` (from :func:`sniff`), conformed, in canonical units;
    ``batch_number``: see :func:`link_by_batch_number`."""
    try:
        if kind == TILT_CSV:
            read = read_tilt_csv(path, zone, units or {})
        elif kind == RABBITFARMER_JSONL:
            read = read_rabbitfarmer(path, zone, companions)
        elif kind == MAPPED_CSV:
            read = read_mapped_csv(path, zone)
        elif kind in SIMPLE_READERS:
            read = SIMPLE_READERS[kind](path, zone, units or {})
        else:
            raise SchemaError(f"{path.name}: unknown device format {kind!r}")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path.name}: unreadable {kind} export: {exc}") from exc
    read = link_by_batch_number(read, path, batch_number)
    batches = BATCHES.conform(read.batches, source=path.name)
    og = batches["original_gravity_plato"]
    if og.notna().any():  # batch records give OG in SG, a mapping says its unit
        unit = parse_unit(read.og_unit, "gravity", f"{path.name}: original_gravity_unit")
        hint = likely_unit(og.to_numpy(), unit)
        if hint:
            raise SchemaError(
                f"{path.name}: original gravity values {og.dropna().tolist()[:3]} are not "
                f"{unit}; they look like {hint}"
            )
        batches["original_gravity_plato"] = to_canonical(
            og.to_numpy(), unit, "gravity", "og", brix_correction
        )
    read.batches = batches
    readings, seen = convert_readings(read.readings, path.name, {}, brix_correction)
    # Loggers write some samples twice: an exact repeat (same time, same value) is kept once;
    # differing values at one time both stay, for validation's unique-key rule.
    repeated = readings.duplicated(["batch_id", "tag", "timestamp", "value"])
    if repeated.any():
        read.notes.append(f"{path.name}: {int(repeated.sum())} repeated reading(s) kept once")
    read.readings, read.repeats = readings[~repeated].reset_index(drop=True), int(repeated.sum())
    read.units = {**read.units, **seen}
    if og.notna().any():
        read.units.setdefault("original_gravity_plato", set()).add(read.og_unit)
    return read


# ---------------------------------------------------------------------------------------------
# Units: one set of rules for device exports and brewcast's own drop files.
# ---------------------------------------------------------------------------------------------


#: Columns whose values are not judged by :func:`likely_unit`: a cellar's ambient temperature
#: (-20..45 °C) overlaps the Fahrenheit values of a cold day, so it cannot tell the unit.
UNJUDGED = frozenset({"ambient_temperature_c"})


def _convert(
    values: pd.Series, unit: str, column: str, source: str, brix: float | None
) -> tuple[np.ndarray, str]:
    """``values`` of ``column`` (a tag or batch column) declared in ``unit``, as canonical.

    Refuses (SchemaError) an unknown unit, Brix without its correction factor, and values
    that only make sense in another unit: the reason names the column and that unit."""
    quantity = QUANTITY_OF[column]
    try:
        name = parse_unit(unit, quantity, f"{source}: {column}")
        v = values.to_numpy(dtype="float64", na_value=np.nan)
        hint = None if column in UNJUDGED else likely_unit(v, name)
        if hint is not None:
            finite = v[np.isfinite(v)]
            raise UnitError(
                f"{source}: {column} is declared {name}, but its values (median "
                f"{np.median(finite):.4g}, {finite.min():.4g}..{finite.max():.4g}) look like "
                f"{hint}: declare {hint} (a unit column or units.json) if that is what it is"
            )
        return to_canonical(v, name, quantity, f"{source}: {column}", brix), name
    except UnitError as exc:
        raise SchemaError(str(exc)) from exc


def convert_readings(
    frame: pd.DataFrame,
    source: str,
    units: Mapping[str, str],
    brix: float | None = None,
) -> tuple[pd.DataFrame, UnitsSeen]:
    """Readings (with an optional per-row ``unit`` column) conformed and in canonical units.

    Without a ``unit`` column, ``units`` (the folder's ``units.json``: tag -> unit) applies,
    else the canonical unit. A row of a known tag with an empty unit cell refuses the file.
    """
    unit_column = frame["unit"].astype("string").str.strip() if "unit" in frame else None
    readings = READINGS.conform(frame.drop(columns=["unit"], errors="ignore"), source=source)
    if unit_column is not None:
        unit_column = unit_column.reset_index(drop=True)
    seen: UnitsSeen = {}
    values = readings["value"].to_numpy(dtype="float64", copy=True)
    for tag in readings["tag"].dropna().unique():
        if tag not in QUANTITY_OF:
            continue  # an unknown tag is validation's to quarantine, unit and all
        rows = (readings["tag"] == tag).to_numpy()
        if unit_column is None:
            declared = pd.Series(units.get(tag, CANONICAL[QUANTITY_OF[tag]]), index=readings.index)
        else:
            declared = unit_column
            empty = rows & (declared.isna() | (declared == "")).to_numpy()
            if empty.any():
                raise SchemaError(f"{source}: {int(empty.sum())} {tag} row(s) have no unit")
        for unit in declared[rows].unique():
            mine = rows & (declared == unit).to_numpy()
            converted, name = _convert(readings.loc[mine, "value"], unit, tag, source, brix)
            values[mine] = converted
            seen.setdefault(tag, set()).add(name)
    readings["value"] = values
    return readings, seen


def convert_batches(
    frame: pd.DataFrame, source: str, units: Mapping[str, str], brix: float | None = None
) -> tuple[pd.DataFrame, UnitsSeen]:
    """Batches conformed, their gravity and temperature columns in canonical units: the
    folder's ``units.json`` says which unit a column is in (default canonical)."""
    batches = BATCHES.conform(frame, source=source)
    seen: UnitsSeen = {}
    for column in (c for c in BATCHES.names if c in QUANTITY_OF):
        values = batches[column]
        if values.notna().any():
            unit = units.get(column, CANONICAL[QUANTITY_OF[column]])
            converted, name = _convert(values, unit, column, source, brix)
            batches[column] = converted
            seen.setdefault(column, set()).add(name)
    return batches, seen

"""Hydrometer exports in the drop folder, recognised by their content, read as brewcast's raw
``batches`` and ``readings`` in the canonical units (°P, °C, UTC).

Two formats of real Tilt logs (``DEVICES.md`` §3, fixtures in ``tests/fixtures/realdata``):

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
#: A RabbitFarmer batch history lies beside its log under this suffix.
COMPANION_SUFFIX = "_batch.json"
#: The Tilt app's Excel serial days count from this date (``DEVICES.md`` §3).
EXCEL_ORIGIN = pd.Timestamp("1899-12-30")
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


def zone_of(name: str) -> ZoneInfo:
    """The IANA zone ``name``; a ValueError naming the setting when it is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"BREWCAST_LOCAL_TIMEZONE={name!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from exc


def is_companion(path: Path) -> bool:
    return path.name.lower().endswith(COMPANION_SUFFIX)


def sniff(path: Path) -> str | None:
    """Which device format ``path`` holds, judged by its first line, or None (not one)."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            first = next((line.strip() for line in f if line.strip()), "")
    except OSError:
        return None
    if path.suffix.lower() == ".csv":
        columns = [c.strip() for c in first.split(",")]
        has_temp = any(c.lower().startswith("temp") for c in columns)
        return TILT_CSV if {"Timepoint", "SG"} <= set(columns) and has_temp else None
    if path.suffix.lower() == ".jsonl":
        try:
            record = json.loads(first)
        except ValueError:
            return None
        if isinstance(record, dict) and {"event", "payload"} <= set(record):
            return RABBITFARMER_JSONL
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
        "yeast_strain": None,
        "original_gravity_plato": np.nan if og_sg is None else og_sg,
        "pitch_temperature_c": np.nan,
        "pitch_rate_million_cells_per_ml_plato": np.nan,
        "dissolved_oxygen_ppm": np.nan,
        "ambient_temperature_c": np.nan,
        "yeast_generation": np.nan,
        "start_time": start,
        "end_time": pd.NaT,
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
    serial = pd.to_numeric(stamps, errors="coerce")
    if serial.notna().all():  # the Tilt app's Excel serial day, local time
        stamps = (EXCEL_ORIGIN + pd.to_timedelta(serial, unit="D")).dt.round("s")
        stamps, fmt = stamps.dt.strftime("%Y-%m-%d %H:%M:%S"), "ISO8601"
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
) -> DeviceRead:
    """Read a device export of ``kind`` (from :func:`sniff`), conformed, in canonical units."""
    try:
        if kind == TILT_CSV:
            read = read_tilt_csv(path, zone, units or {})
        elif kind == RABBITFARMER_JSONL:
            read = read_rabbitfarmer(path, zone, companions)
        else:
            raise SchemaError(f"{path.name}: unknown device format {kind!r}")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path.name}: unreadable {kind} export: {exc}") from exc
    batches = BATCHES.conform(read.batches, source=path.name)
    og = batches["original_gravity_plato"]
    if og.notna().any():  # batch records give OG in SG
        hint = likely_unit(og.to_numpy(), "SG")
        if hint:
            raise SchemaError(
                f"{path.name}: actual_og values {og.dropna().tolist()[:3]} are not SG; "
                f"they look like {hint}"
            )
        batches["original_gravity_plato"] = to_canonical(og.to_numpy(), "SG", "gravity", "og")
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
        read.units.setdefault("original_gravity_plato", set()).add("SG")
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

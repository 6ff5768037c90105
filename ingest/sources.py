"""The three ingest sources, each producing brewcast's raw ``batches`` and ``readings`` tables.

* the fermentation simulator (an interval of a seeded world),
* a drop folder of CSV or Parquet files (each file one table, in canonical units or in
  the units its ``unit`` column or the folder's ``units.json`` declares), and hydrometer
  exports recognised by their content (``ingest.devices``: Tilt CSV, RabbitFarmer JSON lines),
* a Brewery Pi database (an interval of its EventFrames and TagValues).

Raw data lands in ``lake/raw`` with files named after the interval or the source file, so
re-running an ingest replaces its own files and never duplicates rows. A drop file that
cannot be read is moved to ``lake/quarantine/files/`` untouched, next to a JSON reason;
nothing of it reaches the raw stage. Every entry of the drop folder is ingested,
quarantined with a reason, or reported as ignored (a directory, a hidden file). A drop
file's rows follow the lake's re-delivery rule (:func:`brewcast.lake.land`): rows the lake
already holds are skipped, changed ones correct the older delivery.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from brewcast.lake import clip, land, part_label, quarantine_file, write_partitions
from brewcast.plateau import PlateauRule
from brewcast.schema import BATCHES, READINGS, SchemaError, Table
from brewcast.settings import Settings
from brewcast.units import CANONICAL, QUANTITY_OF, UnitError, from_canonical, parse_unit
from ingest import devices
from ingest.brewerypi import read_brewerypi
from ingest.simulator import Drift, Simulation, SimulationConfig, simulate

DROP_SUFFIXES = (".csv", ".parquet", ".jsonl", ".json")
#: The drop folder's unit mapping (a tag or batch column -> its unit); it stays in the folder.
UNITS_FILE = "units.json"


class IngestError(RuntimeError):
    """A source cannot be read; the message names the source and what is wrong."""


@dataclass
class IngestReport:
    source: str
    batches: int = 0
    readings: int = 0
    files_written: list[Path] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # drop file -> reason
    #: Drop folder entries left where they are, and why (a directory, a hidden file).
    ignored: dict[str, str] = field(default_factory=dict)
    #: Accepted drop files whose every row the lake already held: a no-op re-delivery.
    unchanged: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.source}: {self.batches} batch rows, {self.readings} reading rows, "
            f"{len(self.files_written)} partition file(s) written"
        )
        if self.accepted or self.rejected or self.ignored:
            text += (
                f"; {len(self.accepted)} file(s) accepted, {len(self.rejected)} rejected, "
                f"{len(self.ignored)} ignored"
            )
        for name, why in self.rejected.items():
            text += f"\n  rejected {name}: {why}"
        for name, why in self.ignored.items():
            text += f"\n  ignored {name}: {why}"
        for name in self.unchanged:
            text += f"\n  unchanged {name}: every row already in the lake: nothing new"
        for key, value in self.notes.items():
            text += f"\n  {key}: {value}"
        return text


def simulation_config(settings: Settings, **overrides: object) -> SimulationConfig:
    """The simulated world the settings describe (``overrides`` win)."""
    values: dict[str, object] = dict(
        start=pd.Timestamp(settings.simulation_start, tz="UTC"),
        days=float(settings.simulation_days),
        fermenters=settings.simulation_fermenters,
        seed=settings.seed,
        plateau=PlateauRule.from_settings(settings),
        profile=settings.simulation_profile,
    )
    if settings.drift_value:
        values["drift"] = Drift(
            settings.drift_column,
            settings.drift_value,
            pd.Timestamp(settings.drift_start, tz="UTC"),
            late_slope_factor=settings.drift_late_slope_factor,
            midpoint_shift_hours=settings.drift_midpoint_hours,
        )
    values.update(overrides)
    return SimulationConfig(**values)  # type: ignore[arg-type]


@lru_cache(maxsize=4)
def simulated_world(config: SimulationConfig) -> Simulation:
    """The world ``config`` describes, simulated once per process (every interval of an
    ingest, and a benchmark that times the simulation apart, share it)."""
    return simulate(config, progress=True)


def simulator_interval(
    config: SimulationConfig, start: pd.Timestamp, end: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the simulated cellar recorded in ``[start, end)``, as seen at ``end``."""
    world = simulated_world(config)
    b = world.batches
    batches = b[(b["start_time"] >= start) & (b["start_time"] < end)].copy()
    batches.loc[batches["end_time"] >= end, "end_time"] = pd.NaT
    r = world.readings
    readings = r[(r["timestamp"] >= start) & (r["timestamp"] < end)]
    return batches.reset_index(drop=True), readings.reset_index(drop=True)


def ingest_interval(
    settings: Settings,
    source: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    config: SimulationConfig | None = None,
) -> IngestReport:
    """Pull ``[start, end)`` from the simulator, Brewery Pi or the service's pushed
    readings into ``lake/raw``."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise IngestError(f"empty interval: start {start} is not before end {end}")
    report = IngestReport(source=source)
    if source == "simulator":
        batches, readings = simulator_interval(config or simulation_config(settings), start, end)
    elif source == "brewerypi":
        if not settings.brewerypi_url:
            raise IngestError("source brewerypi needs BREWCAST_BREWERYPI_URL (a SQLAlchemy URL)")
        batches, readings, bp = read_brewerypi(
            settings.brewerypi_url,
            start,
            end,
            settings.brewerypi_event_frame_template,
            settings.brewerypi_units,
            settings.brewerypi_attributes,
        )
        report.notes.update(
            units={column: sorted(units) for column, units in sorted(bp.units.items())},
            event_frames=bp.frames,
            readings_outside_frames=bp.readings_outside_frames,
            unknown_lookup_values=bp.unknown_lookup_values,
            ignored_attributes=sorted(bp.ignored_attributes),
        )
    elif source == "service":
        batches, readings, unassigned = service_interval(settings.prediction_log, start, end)
        report.notes["unassigned_readings"] = unassigned
    else:
        raise IngestError(
            f"unknown interval source {source!r}; use simulator, brewerypi or service "
            f"(the drop folder is ingested with ingest_drop_folder)"
        )
    label = part_label(source, f"{start:%Y%m%dT%H%M%S}", f"{end:%Y%m%dT%H%M%S}")
    written = write_partitions(batches, BATCHES, settings.paths.lake, "raw", label)
    written += write_partitions(readings, READINGS, settings.paths.lake, "raw", label)
    report.batches, report.readings, report.files_written = len(batches), len(readings), written
    return report


def service_interval(
    url: str, start: pd.Timestamp, end: pd.Timestamp
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The readings devices pushed to the service with a time in ``[start, end)`` and a
    batch, as raw readings, with their batches; and how many readings of the interval are
    unassigned (kept in the service until a device is assigned; not flushed). A flush of
    the same interval again gives the same partition: late pushes land when it is re-run."""
    import sqlalchemy as sa

    from brewcast.readings_store import batches as batch_table
    from brewcast.readings_store import metadata
    from brewcast.readings_store import readings as reading_table

    engine = sa.create_engine(url)
    try:
        metadata.create_all(engine)  # a service that never started has no tables yet
        window = (reading_table.c.timestamp >= start.to_pydatetime()) & (
            reading_table.c.timestamp < end.to_pydatetime()
        )
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    reading_table.c.batch_id,
                    reading_table.c.tag,
                    reading_table.c.timestamp,
                    reading_table.c.value,
                ).where(window, reading_table.c.batch_id.is_not(None))
            ).all()
            unassigned = conn.execute(
                sa.select(sa.func.count()).where(window, reading_table.c.batch_id.is_(None))
            ).scalar_one()
            ids = sorted({r.batch_id for r in rows})
            batch_rows = (
                conn.execute(sa.select(batch_table).where(batch_table.c.batch_id.in_(ids)))
                .mappings()
                .all()
            )
    finally:
        engine.dispose()
    readings = pd.DataFrame(rows, columns=["batch_id", "tag", "timestamp", "value"])
    readings["timestamp"] = pd.to_datetime(readings["timestamp"], utc=True)
    batches = pd.DataFrame([dict(r) for r in batch_rows], columns=BATCHES.names)
    for column in ("start_time", "end_time"):
        batches[column] = pd.to_datetime(batches[column], utc=True)
    return (
        BATCHES.conform(batches, source="service"),
        READINGS.conform(readings, source="service"),
        int(unassigned),
    )


def ingest(
    settings: Settings,
    source: str,
    start: pd.Timestamp | str | None = None,
    end: pd.Timestamp | str | None = None,
    config: SimulationConfig | None = None,
) -> IngestReport:
    """The one source dispatch: the pending drop files for ``drop``, else ``[start, end)``
    of an interval source. Without ``start`` the interval starts at the simulated world's
    start; without ``end`` it ends at the world's end (simulator) or now (Brewery Pi)."""
    if source == "drop":
        return ingest_drop_folder(settings)
    world = config or simulation_config(settings)
    lo = _utc(start) if start is not None else world.start
    if end is not None:
        hi = _utc(end)
    else:
        hi = world.end if source == "simulator" else pd.Timestamp.now("UTC")
    return ingest_interval(settings, source, lo, hi, config)


def _utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def identify_table(path: Path, columns: list[str]) -> Table:
    """Which raw table a drop file holds: by its name prefix, else by its exact columns."""
    for table in (BATCHES, READINGS):
        if path.name.lower().startswith(table.name):
            return table
    for table in (BATCHES, READINGS):
        if set(columns) == set(table.names):
            return table
    raise SchemaError(
        f"{path.name}: cannot tell which table it holds: name it batches*/readings* "
        f"or give exactly the columns of one; got {columns}"
    )


@dataclass
class DropRead:
    """The tables one drop file held (a device export holds two), and what reading assumed."""

    tables: list[tuple[Table, pd.DataFrame]]
    units: devices.UnitsSeen = field(default_factory=dict)
    kind: str = "brewcast"
    local_times: bool = False
    consumed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_folder_units(folder: Path) -> dict[str, str]:
    """The drop folder's ``units.json`` (reading tag or batch column -> unit), checked; {}
    without one. Raises :class:`SchemaError` saying what is wrong with it."""
    path = folder / UNITS_FILE
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{UNITS_FILE}: not JSON: {exc}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise SchemaError(f"{UNITS_FILE}: must map column names to unit strings")
    unknown = sorted(set(mapping) - set(QUANTITY_OF))
    if unknown:
        raise SchemaError(
            f"{UNITS_FILE}: unknown column(s) {unknown}; known: {sorted(QUANTITY_OF)}"
        )
    try:
        for column, unit in mapping.items():
            parse_unit(unit, QUANTITY_OF[column], f"{UNITS_FILE}: {column}")
    except UnitError as exc:
        raise SchemaError(str(exc)) from exc
    return dict(mapping)


def _read_table_file(path: Path) -> tuple[pd.DataFrame, pa.Schema | None]:
    """A brewcast drop file as a frame (CSV: all strings), and its Arrow schema (Parquet)."""
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=True), None
        arrow = pq.read_table(path)
        return arrow.to_pandas(), arrow.schema
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        pa.ArrowException,
        OSError,
        UnicodeDecodeError,
    ) as exc:
        raise SchemaError(f"{path.name}: unreadable {path.suffix} file: {exc}") from exc


#: Which Arrow types hold each schema dtype in a Parquet drop file: a bool column where a
#: number is expected (True read as 1.0) or numbers where a bool is, is refused, not cast.
_ARROW_KINDS = {
    "float64": (pa.types.is_floating, pa.types.is_integer, pa.types.is_decimal),
    "int64": (pa.types.is_integer,),
    "string": (pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary),
    "timestamp": (pa.types.is_timestamp, pa.types.is_date),
    "bool": (pa.types.is_boolean,),
}


def _check_arrow_kinds(name: str, schema: pa.Schema, table: Table) -> None:
    """Refuse a Parquet column whose Arrow type is not its schema dtype's kind."""
    wrong = [
        f"{f.name!r} is {f.type}, not {table[f.name].dtype}"
        for f in schema
        if f.name in table.names
        and not pa.types.is_null(f.type)
        and not any(kind(f.type) for kind in _ARROW_KINDS[table[f.name].dtype])
    ]
    if wrong:
        raise SchemaError(f"{name}: column(s) of the wrong type: {'; '.join(wrong)}")


def _naive_times(
    name: str, raw: pd.DataFrame, converted: pd.DataFrame, table: Table, policy: str, zone: str
) -> bool:
    """Timestamps without a UTC offset in brewcast's own file: refused (``policy`` refuse),
    or read in ``zone`` into ``converted`` (``local``). Whether any was naive."""
    found = False
    for col in (c for c in table.columns if c.dtype == "timestamp" and c.name in raw):
        values = raw[col.name]
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            naive = values.notna() if values.dt.tz is None else pd.Series(False, values.index)
        else:
            text = values.astype("string").str.strip()
            aware = text.str.contains(devices.TIME_WITH_ZONE, na=False)
            naive = (text.notna() & (text != "") & ~aware).fillna(False).astype(bool)
        if not naive.any():
            continue
        if policy != "local":
            example = clip(str(values[naive].iloc[0]))
            raise SchemaError(
                f"{name}: {int(naive.sum())} {col.name!r} value(s) without a UTC offset "
                f"(e.g. {example!r}): write them with one (2026-01-01T06:00:00+01:00), or set "
                f"BREWCAST_NAIVE_TIMESTAMPS=local to read them in BREWCAST_LOCAL_TIMEZONE"
            )
        text = values
        if pd.api.types.is_datetime64_any_dtype(values.dtype):  # naive Parquet timestamps
            text = values.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").where(values.notna())
        local, _ = devices.local_times(text, devices.zone_of(zone), name)
        converted[col.name] = local.to_numpy()
        found = True
    return found


def read_drop_tables(
    path: Path,
    units: Mapping[str, str] | None = None,
    brix_correction: float | None = None,
    zone: str = "UTC",
    companions: Sequence[Path] = (),
    naive: str = "refuse",
    batch_number: str | None = None,
) -> DropRead:
    """Read one drop file, recognised by its content: a hydrometer export (two tables) or
    one of brewcast's tables, conformed and in canonical units. ``units`` is the folder's
    ``units.json`` (for files without a ``unit`` column); ``zone`` the local time zone of
    naive timestamps; ``companions`` the batch histories that may describe a JSON-lines log;
    ``naive`` what a brewcast file's timestamps without offset get (refuse | local).
    Raises :class:`SchemaError` saying what is wrong."""
    if path.suffix.lower() not in DROP_SUFFIXES and not devices.mapping_of(path).is_file():
        raise SchemaError(
            f"{path.name}: unsupported file type {path.suffix or '(no suffix)'}: the drop "
            f"folder takes {', '.join(DROP_SUFFIXES)} (unpack a compressed file first)"
        )
    if path.is_symlink() and not path.exists():
        raise SchemaError(f"{path.name}: a dangling symlink (to {os.readlink(path)})")
    if path.stat().st_size == 0:
        raise SchemaError(f"{path.name}: file is empty")
    kind = devices.sniff(path)
    if kind is not None:
        try:
            tz = devices.zone_of(zone)
        except ValueError as exc:
            raise SchemaError(f"{path.name}: {exc}") from exc
        read = devices.read_device(
            path, kind, tz, units, list(companions), brix_correction, batch_number
        )
        return DropRead(
            [(BATCHES, read.batches), (READINGS, read.readings)],
            read.units,
            kind,
            read.local_times,
            read.consumed,
            read.notes,
        )
    if path.suffix.lower() in (".json", ".jsonl"):
        raise SchemaError(
            f"{path.name}: not a recognised hydrometer export (RabbitFarmer JSON lines of "
            f"sample events, or a *{devices.COMPANION_SUFFIX} batch history beside one)"
        )
    frame, arrow_schema = _read_table_file(path)
    table = identify_table(path, [c for c in frame.columns if c != "unit"])
    if arrow_schema is not None:
        _check_arrow_kinds(path.name, arrow_schema, table)
    if table is READINGS:
        own = {} if "unit" in frame.columns else (units or {})
        converted, seen = devices.convert_readings(frame, path.name, own, brix_correction)
    elif "unit" in frame.columns:
        raise SchemaError(
            f"{path.name}: a unit column is for readings; declare batch columns' units "
            f"in the drop folder's {UNITS_FILE}"
        )
    else:
        converted, seen = devices.convert_batches(frame, path.name, units or {}, brix_correction)
    local = _naive_times(path.name, frame.reset_index(drop=True), converted, table, naive, zone)
    return DropRead([(table, converted)], seen, local_times=local)


def read_drop_file(
    path: Path,
    units: Mapping[str, str] | None = None,
    brix_correction: float | None = None,
    zone: str = "UTC",
) -> tuple[Table, pd.DataFrame]:
    """Read and conform a drop file of one table, or raise :class:`SchemaError` saying what is
    wrong (a hydrometer export holds two tables: :func:`read_drop_tables` reads it)."""
    read = read_drop_tables(path, units, brix_correction, zone)
    if len(read.tables) != 1:
        raise SchemaError(
            f"{path.name}: a {read.kind} export holds batches and readings; drop it into "
            f"the drop folder to ingest it"
        )
    return read.tables[0]


def _scan(drop: Path) -> tuple[list[Path], dict[str, str]]:
    """The drop folder's entries to read, oldest delivery first (by modification time: the
    newest delivery of a key wins), and those left in place with why. ``units.json`` and
    ``processed/`` are the folder's own; any other entry is one or the other, never
    skipped silently (an unsupported type is read, and so quarantined with its reason)."""
    pending, ignored = [], {}
    for entry in sorted(drop.iterdir()):
        if entry.name == UNITS_FILE or (entry.name == "processed" and not entry.is_symlink()):
            continue
        if entry.name.startswith("."):
            ignored[entry.name] = "a hidden file (an upload in progress?): not read"
        elif entry.is_dir():
            ignored[entry.name] = "a directory: drop files, not folders"
        elif entry.is_file() or entry.is_symlink():  # a dangling link is refused with a reason
            pending.append(entry)
        else:
            ignored[entry.name] = "not a regular file"
    pending.sort(key=lambda p: (p.lstat().st_mtime_ns, p.name))
    return pending, ignored


def ingest_drop_folder(settings: Settings) -> IngestReport:
    """Move every pending drop file into the lake, or into quarantine with its reason.

    ``units.json`` stays (it describes the folder); a batch history ``*_batch.json`` goes
    with the log it describes, and waits in the folder until one arrives."""
    drop = settings.paths.drop
    report = IngestReport(source=f"drop folder {drop}")
    if not drop.is_dir():
        raise IngestError(f"drop folder {drop} does not exist (set BREWCAST_DROP_DIR)")
    try:
        devices.zone_of(settings.local_timezone)
        units = load_folder_units(drop)
    except (ValueError, SchemaError) as exc:  # the folder's settings: nothing is touched
        raise IngestError(f"drop folder {drop}: {exc}") from exc
    pending, report.ignored = _scan(drop)
    companions = [p for p in pending if devices.is_companion(p) and p.is_file()]
    seen: devices.UnitsSeen = {}
    local, consumed, kinds, device_notes = [], set(), {}, []
    for path in (p for p in pending if p not in companions):
        try:
            read = read_drop_tables(
                path,
                units,
                settings.brix_wort_correction,
                settings.local_timezone,
                companions,
                settings.naive_timestamps,
                settings.batch_number_pattern,
            )
        except SchemaError as exc:
            quarantine_file(settings.paths.lake, path, str(exc))
            report.rejected[path.name] = str(exc)
            continue
        _land(settings, report, path, read)
        for column, names in read.units.items():
            seen.setdefault(column, set()).update(names)
        local += [path.name] if read.local_times else []
        consumed.update(read.consumed)
        if read.kind != "brewcast":
            kinds[path.name] = read.kind
        device_notes += read.notes
        report.accepted.append(path.name)
        _move(path, drop / "processed")
    for companion in sorted(consumed):  # after the loop: one history may serve several logs
        _move(companion, drop / "processed")
    _drop_notes(report, settings, seen, local, kinds, device_notes)
    waiting = [p.name for p in companions if p not in consumed and p.exists()]
    if waiting:
        report.notes["waiting"] = f"batch histories without their log yet: {waiting}"
    return report


def _land(settings: Settings, report: IngestReport, path: Path, read: DropRead) -> None:
    """One read drop file into the raw stage by the lake's re-delivery rule, counted."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    label = part_label("drop", path.stem, digest)
    counts = {"repeated": 0, "corrected": 0}
    for table, frame in read.tables:
        landed = land(frame, table, settings.paths.lake, label)
        report.files_written += landed.written
        counts["repeated"] += landed.repeated
        counts["corrected"] += landed.corrected
        if table is BATCHES:
            report.batches += landed.rows
        else:
            report.readings += landed.rows
    counts = {k: n for k, n in counts.items() if n}
    if counts:
        report.notes.setdefault("redelivered", {})[path.name] = counts  # type: ignore[union-attr]
    total = sum(len(frame) for _, frame in read.tables)
    if total and counts.get("repeated", 0) == total:
        report.unchanged.append(path.name)


def _drop_notes(
    report: IngestReport,
    settings: Settings,
    seen: devices.UnitsSeen,
    local: list[str],
    kinds: dict[str, str],
    device_notes: list[str],
) -> None:
    """What a drop ingest assumed, for its report: units, the local time zone, devices."""
    if seen:
        report.notes["units"] = {column: sorted(names) for column, names in sorted(seen.items())}
    if local:
        report.notes["local_timezone"] = (
            f"naive local times read as {settings.local_timezone} "
            f"(BREWCAST_LOCAL_TIMEZONE) in: {', '.join(local)}"
        )
    if kinds:
        report.notes["devices"] = kinds
    if device_notes:
        report.notes["device_notes"] = device_notes


def _move(path: Path, folder: Path) -> Path:
    """Move a processed drop file into ``folder``. A symlink leaves its target alone: the
    bytes it points to are copied. An earlier original of the same name is never
    overwritten: a file of other content gets its content hash in its name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        if hashlib.sha256(target.read_bytes()).hexdigest()[:12] != digest:
            target = folder / f"{path.stem}.{digest}{path.suffix}"
    if path.is_symlink():
        shutil.copyfile(path, target)
        path.unlink()
    else:
        shutil.move(str(path), target)
    return target


def write_drop_files(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    folder: Path,
    file_format: str = "csv",
    units: dict[str, str] | None = None,
) -> list[Path]:
    """Write raw tables as daily drop files (how a brewery export would arrive).

    ``units`` (quantity ``gravity``/``temperature`` -> unit, e.g. ``{"temperature": "°F"}``)
    writes the values in those units, as a brewery that works in them would deliver:
    readings with a ``unit`` column, batches with their columns' units in the folder's
    ``units.json``."""
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, not {file_format!r}")
    folder.mkdir(parents=True, exist_ok=True)
    if units:
        batches, readings = _in_units(batches, readings, folder, units)
    paths = []
    for table, frame in ((BATCHES, batches), (READINGS, readings)):
        days = frame[table.partition_by].dt.strftime("%Y-%m-%d")
        for day, part in frame.groupby(days, sort=True):
            path = folder / f"{table.name}_{day}.{file_format}"
            if file_format == "csv":
                part.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
            else:
                part.to_parquet(path, index=False)
            paths.append(path)
    return paths


#: How an ERP's fermentation export reads (an Ekos-like hand log): the mapping
#: :func:`write_erp_export` writes beside its file, read back by the generic mapped CSV.
ERP_EXPORT_MAPPING: dict[str, object] = {
    "batch": "Batch",
    "time": "Date",
    "time_format": "%d/%m/%Y",
    "gravity": "Gravity",
    "gravity_unit": "°P",
    "temperature": "Temperature",
    "temperature_unit": "°C",
    "original_gravity": "OG",
    "original_gravity_unit": "°P",
    "brand": "Brand",
    "style": "Style",
    # the ERP's blanks: a temperature not measured, an OG not entered
    "missing": {"temperature": ["0.00"], "original_gravity": ["0.0000"]},
}


def write_erp_export(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    folder: Path,
    zone: str = "UTC",
    transfers: Mapping[str, pd.Timestamp] | None = None,
) -> Path:
    """The world as a brewery's ERP exports its fermentation log: one CSV with a header row
    per batch (no date: its brand, style and OG, ``0.0000`` where none was entered), then a
    row per day a gravity was read, with a date and no time (``dd/mm/YYYY`` in the
    brewery's ``zone``), that day's temperature (``0.00``: not measured) and the step
    (``after transfer`` from the batch's time in ``transfers``); a sub-batch without
    readings is its header row alone. The mapping that reads it goes
    beside it, so the drop folder ingests it as any brewery's own export."""
    folder.mkdir(parents=True, exist_ok=True)
    local = ZoneInfo(zone)
    gravity = readings[readings["tag"] == "gravity_plato"].sort_values(["batch_id", "timestamp"])
    temperature = readings[readings["tag"] == "temperature_c"]

    def day_of(times: pd.Series) -> pd.Series:
        return times.dt.tz_convert(local).dt.strftime("%d/%m/%Y")

    temps = (
        temperature.assign(day=day_of(temperature["timestamp"]))
        .groupby(["batch_id", "day"])["value"]
        .first()
    )
    by_batch = dict(tuple(gravity.groupby("batch_id", sort=False)))
    rows = []
    for batch in batches.sort_values("start_time", kind="mergesort").itertuples(index=False):
        og = batch.original_gravity_plato
        og_text = "0.0000" if pd.isna(og) else f"{og:.4f}"
        head = {"Batch": batch.batch_id, "Brand": batch.brand, "Style": batch.style}
        rows.append({**head, "Date": "", "OG": og_text, "Task": "brew"})
        g = by_batch.get(batch.batch_id)
        if g is None:
            continue
        days = day_of(g["timestamp"])
        moved = (transfers or {}).get(batch.batch_id, pd.NaT)
        for value, at, day in zip(g["value"], g["timestamp"], days, strict=True):
            t = temps.get((batch.batch_id, day), np.nan)
            rows.append(
                {
                    **head,
                    "Date": day,
                    "Gravity": f"{value:.2f}",
                    "Temperature": "0.00" if pd.isna(t) else f"{t:.2f}",
                    "OG": og_text,
                    "Task": "after transfer"
                    if pd.notna(moved) and at >= moved
                    else "fermentation log",
                }
            )
    path = folder / "erp_fermentation_export.csv"
    columns = ["Batch", "Brand", "Style", "Date", "Gravity", "Temperature", "OG", "Task"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    devices.mapping_of(path).write_text(
        json.dumps(ERP_EXPORT_MAPPING, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path


def _in_units(
    batches: pd.DataFrame, readings: pd.DataFrame, folder: Path, units: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The canonical tables converted to ``units`` (quantity -> unit); the batch columns'
    units are merged into ``folder``'s ``units.json`` (a conflict is a ValueError)."""
    unknown = sorted(set(units) - set(CANONICAL))
    if unknown:
        raise ValueError(f"units: unknown quantities {unknown}; use {sorted(CANONICAL)}")
    names = {q: parse_unit(u, q, f"units[{q!r}]") for q, u in units.items()}  # type: ignore[arg-type]
    quantity = readings["tag"].map(QUANTITY_OF)
    values = readings["value"].to_numpy(dtype="float64", copy=True)
    for q, name in names.items():
        rows = (quantity == q).to_numpy()
        values[rows] = from_canonical(values[rows], name, q)  # type: ignore[arg-type]
    unit = quantity.map(lambda q: names.get(q, CANONICAL[q]) if isinstance(q, str) else None)
    readings = readings.assign(value=values, unit=unit)
    batches, mapping = batches.copy(), {}
    for column in (c for c in BATCHES.names if QUANTITY_OF.get(c) in names):
        q = QUANTITY_OF[column]
        batches[column] = from_canonical(batches[column].to_numpy(dtype="float64"), names[q], q)
        mapping[column] = names[q]
    try:
        existing = load_folder_units(folder)
    except SchemaError as exc:
        raise ValueError(str(exc)) from exc
    clash = sorted(
        c
        for c, u in existing.items()
        if c in mapping and parse_unit(u, QUANTITY_OF[c], UNITS_FILE) != mapping[c]
    )
    if clash:
        raise ValueError(f"{folder / UNITS_FILE} declares other units for {clash}")
    if mapping:
        text = json.dumps({**existing, **mapping}, indent=2, ensure_ascii=False)
        (folder / UNITS_FILE).write_text(text + "\n", encoding="utf-8")
    return batches, readings

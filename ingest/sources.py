"""The three ingest sources, each producing brewcast's raw ``batches`` and ``readings`` tables.

* the fermentation simulator (an interval of a seeded world),
* a drop folder of CSV or Parquet files (each file one table),
* a Brewery Pi database (an interval of its EventFrames and TagValues).

Raw data lands in ``lake/raw`` with files named after the interval or the source file, so
re-running an ingest replaces its own files and never duplicates rows. A drop file that
cannot be read is moved to ``lake/quarantine/files/`` untouched, next to a JSON reason;
nothing of it reaches the raw stage.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pyarrow as pa

from brewcast.lake import part_label, quarantine_file, write_partitions
from brewcast.schema import BATCHES, READINGS, SchemaError, Table
from brewcast.settings import Settings
from ingest.brewerypi import read_brewerypi
from ingest.simulator import Drift, Simulation, SimulationConfig, simulate

DROP_SUFFIXES = (".csv", ".parquet")


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
    notes: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.source}: {self.batches} batch rows, {self.readings} reading rows, "
            f"{len(self.files_written)} partition file(s) written"
        )
        if self.accepted or self.rejected:
            text += f"; {len(self.accepted)} file(s) accepted, {len(self.rejected)} rejected"
        for name, why in self.rejected.items():
            text += f"\n  rejected {name}: {why}"
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
        terminal_tolerance_plato=settings.terminal_tolerance_plato,
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
    """Pull ``[start, end)`` from the simulator or Brewery Pi into ``lake/raw``."""
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
            settings.brewerypi_url, start, end, settings.brewerypi_event_frame_template
        )
        report.notes.update(
            event_frames=bp.frames,
            readings_outside_frames=bp.readings_outside_frames,
            unknown_lookup_values=bp.unknown_lookup_values,
            ignored_attributes=sorted(bp.ignored_attributes),
        )
    else:
        raise IngestError(
            f"unknown interval source {source!r}; use simulator or brewerypi "
            f"(the drop folder is ingested with ingest_drop_folder)"
        )
    label = part_label(source, f"{start:%Y%m%dT%H%M%S}", f"{end:%Y%m%dT%H%M%S}")
    written = write_partitions(batches, BATCHES, settings.paths.lake, "raw", label)
    written += write_partitions(readings, READINGS, settings.paths.lake, "raw", label)
    report.batches, report.readings, report.files_written = len(batches), len(readings), written
    return report


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


def read_drop_file(path: Path) -> tuple[Table, pd.DataFrame]:
    """Read and conform one drop file, or raise :class:`SchemaError` saying what is wrong."""
    if path.stat().st_size == 0:
        raise SchemaError(f"{path.name}: file is empty")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=True)
        else:
            frame = pd.read_parquet(path)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        pa.ArrowException,
        OSError,
        UnicodeDecodeError,
    ) as exc:
        raise SchemaError(f"{path.name}: unreadable {path.suffix} file: {exc}") from exc
    table = identify_table(path, list(frame.columns))
    return table, table.conform(frame, source=path.name)


def ingest_drop_folder(settings: Settings) -> IngestReport:
    """Move every pending drop file into the lake, or into quarantine with its reason."""
    drop = settings.paths.drop
    report = IngestReport(source=f"drop folder {drop}")
    if not drop.is_dir():
        raise IngestError(f"drop folder {drop} does not exist (set BREWCAST_DROP_DIR)")
    for path in sorted(
        p for p in drop.iterdir() if p.is_file() and p.suffix.lower() in DROP_SUFFIXES
    ):
        try:
            table, frame = read_drop_file(path)
        except SchemaError as exc:
            quarantine_file(settings.paths.lake, path, str(exc))
            report.rejected[path.name] = str(exc)
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        report.files_written += write_partitions(
            frame, table, settings.paths.lake, "raw", part_label("drop", path.stem, digest)
        )
        if table is BATCHES:
            report.batches += len(frame)
        else:
            report.readings += len(frame)
        report.accepted.append(path.name)
        _move(path, drop / "processed")
    return report


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    shutil.move(str(path), target)
    return target


def write_drop_files(
    batches: pd.DataFrame, readings: pd.DataFrame, folder: Path, file_format: str = "csv"
) -> list[Path]:
    """Write raw tables as daily drop files (how a brewery export would arrive)."""
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, not {file_format!r}")
    folder.mkdir(parents=True, exist_ok=True)
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

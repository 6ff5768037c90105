"""The data lake: Parquet partitions by date under ``HOME/lake/{stage}/{table}/date=YYYY-MM-DD``.

Writes are atomic (every file of a write goes to a temporary name first and is renamed
only once all of them are written) and idempotent: a write names its files after the
interval or source it came from, so re-running it replaces the same files with the same
bytes instead of adding duplicates. Readers also drop duplicate keys, so overlapping
intervals never double-count a reading.

A validated partition has two outputs of the same name, its good rows in a publish stage and
its bad rows in ``quarantine/`` next to a ``.reason.json`` (:class:`Outputs`); the lake
writes them and tells which raw files need validating again, while the verdicts are
``validation``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from brewcast.schema import TABLES, Table

T = TypeVar("T")
R = TypeVar("R")

Stage = Literal["raw", "validated", "quarantine", "features", "history"]
#: ``history`` keeps raw rows a later delivery corrected (:func:`land`): never read as data.
STAGES: tuple[str, ...] = ("raw", "validated", "quarantine", "features", "history")


def table_dir(lake_dir: Path, stage: str, table: Table | str) -> Path:
    name = table if isinstance(table, str) else table.name
    if stage not in STAGES:
        raise ValueError(f"unknown lake stage {stage!r}; expected one of {STAGES}")
    return Path(lake_dir) / stage / name


def part_label(*parts: object) -> str:
    """A file-name-safe label for a write (e.g. its interval), so re-runs hit the same file."""
    text = "_".join(str(p) for p in parts)
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-")


#: Threads for reading and writing many small Parquet files: Arrow releases the GIL while
#: it encodes, compresses and does file I/O, so a few threads overlap that work.
IO_THREADS = 4


def io_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(item) for item in items]`` on :data:`IO_THREADS` threads, in order; the
    first exception is raised."""
    items = list(items)
    if len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="lake-io") as pool:
        return list(pool.map(function, items))


def write_partitions(
    frame: pd.DataFrame, table: Table, lake_dir: Path, stage: str, label: str
) -> list[Path]:
    """Write ``frame`` (already conformed to ``table``) as one file per date partition.

    The file in each partition is ``part-{label}.parquet``; rows are sorted by the
    table's key so identical input gives identical bytes.
    """
    if frame.empty:
        return []
    base = table_dir(lake_dir, stage, table)
    # Sorted by (day, key) and converted to Arrow once; each partition is a zero-copy slice
    # (a groupby, sort and conversion per partition cost 1M readings ~20 s).
    days = frame[table.partition_by].dt.floor("D")
    if days.isna().any():  # conform refuses these; a row without a date has no partition
        raise ValueError(f"{int(days.isna().sum())} row(s) without {table.partition_by}")
    ordered = frame.assign(_day=days).sort_values(["_day", *table.key], kind="mergesort")
    day_index = pd.DatetimeIndex(ordered.pop("_day"))
    arrow = pa.Table.from_pandas(ordered, schema=table.arrow_schema(), preserve_index=False)
    _, starts = np.unique(day_index.asi8, return_index=True)  # sorted: each day's first row
    ends = [*starts[1:], len(ordered)]
    slices = [
        (date, arrow.slice(int(start), int(end - start)))
        for date, start, end in zip(
            day_index[starts].strftime("%Y-%m-%d"), starts, ends, strict=True
        )
    ]

    def write_temp(item: tuple[str, pa.Table]) -> tuple[Path, Path] | BaseException:
        date, part = item
        final = base / f"date={date}" / f"part-{label}.parquet"
        try:
            return _write_temp(final, part), final
        except BaseException as exc:  # raised once every thread is done, see below
            return exc

    written = io_map(write_temp, slices)
    pending = [w for w in written if not isinstance(w, BaseException)]
    if len(pending) < len(written):  # all or nothing: no partition is renamed into place
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise next(w for w in written if isinstance(w, BaseException))
    for tmp, final in pending:
        os.replace(tmp, final)
    return [final for _, final in pending]


def _write_temp(final: Path, arrow: pa.Table) -> Path:
    """Write ``arrow`` next to ``final`` under a temporary name; the caller renames it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(arrow, tmp, compression="zstd")
    return tmp


def write_file(final: Path, arrow: pa.Table) -> Path:
    """Atomically write one Parquet file (temporary name, then rename)."""
    os.replace(_write_temp(final, arrow), final)
    return final


def write_bytes(final: Path, data: bytes) -> Path:
    """Atomically write a file (temporary name, then rename): whole or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, final)
    return final


def write_text(final: Path, text: str) -> Path:
    """Atomically write a small text file (a reason, a summary)."""
    return write_bytes(final, text.encode())


def partition_files(
    lake_dir: Path, stage: str, table: Table | str, dates: Iterable[str] | None = None
) -> list[Path]:
    """Parquet files of a table, oldest partition first; only ``dates`` when given."""
    base = table_dir(lake_dir, stage, table)
    if not base.exists():
        return []
    wanted = None if dates is None else {f"date={d}" for d in dates}
    return sorted(
        f
        for d in sorted(base.iterdir())
        if d.is_dir() and (wanted is None or d.name in wanted)
        for f in sorted(d.glob("part-*.parquet"))
    )


def read_file(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """One Parquet file, as ``schema`` when given. ``ParquetFile.read`` takes half the time
    of ``pq.read_table`` on the lake's small files (no dataset discovery per file)."""
    table = pq.ParquetFile(path).read()
    if schema is None:
        return table
    if table.schema.names != schema.names:  # columns missing or reordered: let Arrow align
        return pq.read_table(path, schema=schema)
    return table.cast(schema)


def read_table(
    lake_dir: Path, stage: str, table: Table | str, dates: Iterable[str] | None = None
) -> pd.DataFrame:
    """Read a table's partitions into one frame, one row per key (the latest file wins)."""
    spec = TABLES[table] if isinstance(table, str) else table
    files = partition_files(lake_dir, stage, spec, dates)
    if not files:
        return spec.empty()
    schema = spec.arrow_schema()  # one conversion to pandas, not one per file
    frame = pa.concat_tables(io_map(lambda f: read_file(f, schema), files)).to_pandas()
    frame = frame.drop_duplicates(list(spec.key), keep="last")
    return spec.conform(frame, source=str(table_dir(lake_dir, stage, spec)))


def replace_table(
    frame: pd.DataFrame, table: Table, lake_dir: Path, stage: str, label: str
) -> list[Path]:
    """Write a table that is rebuilt whole each time: the new files first, then the ones the
    new build no longer has are removed (:func:`remove_vanished`)."""
    written = write_partitions(frame, table, lake_dir, stage, label)
    remove_vanished(lake_dir, stage, table, label, keep=written)
    return written


def remove_vanished(
    lake_dir: Path, stage: str, table: Table | str, label: str, keep: Iterable[Path]
) -> list[Path]:
    """After a whole rebuild of ``label`` wrote ``keep``, remove its other files: partitions
    the new build no longer has (or, for a validated build, now holds back whole). Files of
    other labels are left alone, so a rebuild never touches another writer's files."""
    kept = {Path(k) for k in keep}
    gone = [
        old
        for old in partition_files(lake_dir, stage, table)
        if old.name == f"part-{label}.parquet" and old not in kept
    ]
    for old in gone:
        old.unlink()
    return gone


def split_by_date(frame: pd.DataFrame, table: Table) -> dict[str, pd.DataFrame]:
    """``frame``'s rows by the date partition they belong to (``YYYY-MM-DD``, in order),
    for writers that treat each partition on its own. A row without a date would belong to
    no partition and be lost, so it is an error (as in :func:`write_partitions`)."""
    when = frame[table.partition_by]
    if when.isna().any():
        raise ValueError(f"{int(when.isna().sum())} row(s) without {table.partition_by}")
    dates = when.dt.strftime("%Y-%m-%d")
    return {str(date): piece for date, piece in frame.groupby(dates, sort=True)}


def partition_of(path: Path) -> tuple[str, str]:
    """(date, label) of a partition file ``.../date=YYYY-MM-DD/part-{label}.parquet``."""
    date = path.parent.name.removeprefix("date=")
    return date, path.name.removeprefix("part-").removesuffix(".parquet")


#: The most characters of one value a reason or report echoes: a 50 MB cell must not make a
#: 50 MB reason file (nor a summary that every run and MLflow run carries).
MAX_VALUE_CHARS = 200
#: The most characters of a whole reason text (a message that quotes several values).
MAX_REASON_CHARS = 2000


def clip(value: object, limit: int = MAX_VALUE_CHARS) -> object:
    """``value`` with a string longer than ``limit`` cut, saying how long it was."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}… [{len(value)} characters]"
    return value


#: The column that quarantined rows carry: why each row was held back.
REASONS_COLUMN = "quarantine_reasons"
#: The reason file's field that says a partition's verdict can change while its source file
#: stays the same (its rows wait for data that arrives later), so it is checked every run.
RETRY_FIELD = "retry"


@dataclass(frozen=True)
class Outputs:
    """Where one validated partition's outputs go: its good rows in the publish stage, its bad
    rows in quarantine under the same name, and the report on them next to those."""

    published: Path
    quarantined: Path
    reason: Path

    @classmethod
    def of(
        cls, lake_dir: Path, publish_stage: str, table: Table | str, date: str, label: str
    ) -> Outputs:
        name, date_dir = f"part-{label}.parquet", f"date={date}"
        published = table_dir(lake_dir, publish_stage, table) / date_dir / name
        quarantined = table_dir(lake_dir, "quarantine", table) / date_dir / name
        return cls(published, quarantined, quarantined.with_name(f"part-{label}.reason.json"))


def write_outputs(
    outputs: Outputs, rows: pa.Table, bad: np.ndarray, reasons: Sequence[str], report: dict
) -> tuple[Path | None, Path | None]:
    """Split ``rows`` by the mask ``bad``: the good ones to ``outputs.published``, the bad ones
    with their ``reasons`` (one per row of ``rows``) as :data:`REASONS_COLUMN` to
    ``outputs.quarantined``, and ``report`` as JSON next to them. An output that no longer
    applies (no good rows, no bad rows) is removed, so a re-run leaves no stale file.
    Returns (published, quarantined), None for the ones not written."""
    bad = np.asarray(bad, dtype=bool)
    if len(bad) != rows.num_rows or len(reasons) != rows.num_rows:
        raise ValueError(f"{rows.num_rows} rows, {len(bad)} mask values, {len(reasons)} reasons")
    good_count, bad_count = int((~bad).sum()), int(bad.sum())
    if good_count:
        write_file(outputs.published, rows if not bad_count else rows.filter(pa.array(~bad)))
    else:
        outputs.published.unlink(missing_ok=True)
    if not bad_count:
        outputs.quarantined.unlink(missing_ok=True)
        outputs.reason.unlink(missing_ok=True)
        return (outputs.published if good_count else None), None
    bad_rows = rows if not good_count else rows.filter(pa.array(bad))
    why = pa.array(np.asarray(reasons, dtype=object)[bad], pa.string())
    write_file(
        outputs.quarantined, bad_rows.append_column(pa.field(REASONS_COLUMN, pa.string()), why)
    )
    write_text(outputs.reason, json.dumps(report, indent=2, default=str))
    return (outputs.published if good_count else None), outputs.quarantined


def needs_validation(lake_dir: Path, source: Path, table: Table | str, publish_stage: str) -> bool:
    """Whether the partition file ``source`` (in the raw stage) must be validated (again):
    it changed since its outputs were written (or has none), or its quarantined rows asked
    to be retried (:data:`RETRY_FIELD`). A partition held back whole and unchanged since is
    not: checking it again costs a run and can only give the same verdict."""
    outputs = Outputs.of(lake_dir, publish_stage, table, *partition_of(source))
    return wants_retry(outputs.reason) or validated_at(lake_dir, source, outputs) is None


def validated_at(lake_dir: Path, source: Path, outputs: Outputs) -> int | None:
    """When ``source``'s latest outputs were written (ns), or None when it has none newer
    than itself: its published or quarantined rows, or its copy in ``quarantine/files``."""
    stamps = [
        p.stat().st_mtime_ns
        for p in (outputs.published, outputs.reason, file_reason(lake_dir, source))
        if p.exists()
    ]
    newest = max(stamps, default=None)
    return newest if newest is not None and newest >= source.stat().st_mtime_ns else None


def still_quarantined(lake_dir: Path, source: Path, table: Table | str, stage: str) -> bool:
    """Whether an up-to-date ``source`` holds rows back (or was quarantined whole)."""
    outputs = Outputs.of(lake_dir, stage, table, *partition_of(source))
    return outputs.reason.exists() or file_reason(lake_dir, source).exists()


def file_reason(lake_dir: Path, source: Path) -> Path:
    """The reason file a lake file quarantined whole gets (:func:`quarantine_file`)."""
    target = _lake_copy(lake_dir, source)
    return target.with_name(target.name + ".reason.json")


def _lake_copy(lake_dir: Path, source: Path) -> Path:
    lake_root = Path(lake_dir).resolve()
    name = "__".join((source.parent.resolve() / source.name).relative_to(lake_root).parts)
    return Path(lake_dir) / "quarantine" / "files" / name


def wants_retry(reason: Path) -> bool:
    """Whether a partition's reason file asks for its rows to be checked again next run.
    A file without the field (written before it existed) or that cannot be parsed asks too:
    validating again costs one run and rewrites it, while ignoring it could strand rows."""
    try:
        report = json.loads(reason.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return not isinstance(report, dict) or bool(report.get(RETRY_FIELD, True))


@dataclass
class Landed:
    """What :func:`land` did with a delivery: the files it wrote, the rows it skipped as
    already in the lake (same key, same values), and the rows it corrected."""

    written: list[Path]
    rows: int = 0
    repeated: int = 0
    corrected: int = 0


def land(frame: pd.DataFrame, table: Table, lake_dir: Path, label: str) -> Landed:
    """Write a delivery (conformed) into the raw stage by the re-delivery rule: a row whose
    key another raw file holds with the same values is skipped (a re-delivery is a no-op);
    one with other values is a correction: the newest delivery wins, and the older row
    leaves its file for ``history/`` (``history_reason`` ``superseded``). So one key is in
    one raw file, and validation never sees it twice. The delivery's own earlier files
    (``label``) are simply replaced."""
    older = _older_rows(frame, table, lake_dir, label)
    if older.empty:
        return Landed(write_partitions(frame, table, lake_dir, "raw", label), len(frame))
    key, values = list(table.key), [c for c in table.names if c not in table.key]
    both = frame.reset_index().merge(older, on=key, how="inner", suffixes=("", "_old"))
    same = pd.Series(True, index=both.index)
    for c in values:
        a, b = both[c], both[f"{c}_old"]
        same &= (a == b).fillna(False).astype(bool) | (a.isna() & b.isna())
    repeated = both.loc[same, "index"].unique()
    changed = both.loc[~same]
    keep = frame.drop(index=repeated)
    if len(changed):
        stale = older.merge(changed[key].drop_duplicates(), on=key)
        _supersede(stale, table, lake_dir, label)
    written = write_partitions(keep, table, lake_dir, "raw", label)
    return Landed(written, len(keep), len(repeated), int(changed["index"].nunique()))


def _older_rows(frame: pd.DataFrame, table: Table, lake_dir: Path, label: str) -> pd.DataFrame:
    """The rows of other raw files with a key of ``frame``, with their file (``_file``)."""
    when = table.partition_by
    dates = sorted(set(frame[when].dt.strftime("%Y-%m-%d"))) if when in table.key else None
    files = [
        f for f in partition_files(lake_dir, "raw", table, dates) if partition_of(f)[1] != label
    ]
    if not files or frame.empty:
        return pd.DataFrame()
    schema = table.arrow_schema()
    pieces = [
        table.conform(read_file(f, schema).to_pandas(), str(f)).assign(_file=str(f)) for f in files
    ]
    keys = frame[list(table.key)].drop_duplicates()
    return pd.concat(pieces, ignore_index=True).merge(keys, on=list(table.key))


def _supersede(stale: pd.DataFrame, table: Table, lake_dir: Path, label: str) -> None:
    """Move the ``stale`` rows (with ``_file``) out of their raw files into ``history/``;
    a raw file left empty goes with its outputs (nothing of it is valid any more)."""
    now = pd.Timestamp.now("UTC").isoformat()
    kept = stale.drop(columns="_file").assign(
        history_reason="superseded", superseded_by=label, superseded_at=now, raw_file=stale["_file"]
    )
    days = kept[table.partition_by].dt.strftime("%Y-%m-%d")
    for date, rows in kept.groupby(days, sort=True):
        final = table_dir(lake_dir, "history", table) / f"date={date}" / f"part-{label}.parquet"
        write_file(final, pa.Table.from_pandas(rows, preserve_index=False))
    schema = table.arrow_schema()
    for name, rows in stale.groupby("_file", sort=True):
        path = Path(str(name))
        current = table.conform(read_file(path, schema).to_pandas(), str(path))
        marked = current.merge(
            rows[list(table.key)], on=list(table.key), how="left", indicator=True
        )
        left = current[(marked["_merge"] == "left_only").to_numpy()]
        if len(left):
            write_file(path, pa.Table.from_pandas(left, schema=schema, preserve_index=False))
            continue
        path.unlink()
        out = Outputs.of(lake_dir, "validated", table, *partition_of(path))
        for old in (out.published, out.quarantined, out.reason):
            old.unlink(missing_ok=True)


def quarantine_file(lake_dir: Path, path: Path, reason: str, move: bool = True) -> Path:
    """Keep a file that cannot be read as a table, byte for byte, with a JSON reason, in
    ``quarantine/files/``. Moves it (a drop file) or copies it (a lake file).

    Names never collide: a lake file is kept under its whole lake path (each date partition
    holds files of the same names; quarantining it again replaces its own copy), and a drop
    file whose name is already there gets a numbered one (the same name dropped twice)."""
    folder = Path(lake_dir) / "quarantine" / "files"
    source, lake_root = path.parent.resolve() / path.name, Path(lake_dir).resolve()
    if source.is_relative_to(lake_root):
        target = _lake_copy(lake_dir, path)
    else:
        target, n = folder / path.name, 1
        while target.exists():
            n += 1
            target = folder / f"{path.stem}-{n}{path.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    facts = {"file": path.name, "from": str(path), "reason": clip(reason, MAX_REASON_CHARS)}
    if path.is_symlink():  # keep the bytes it points to, never the link (nor move its target)
        facts["symlink_to"] = os.readlink(path)
        if path.exists():
            shutil.copyfile(path, target)
        if move:
            path.unlink()
    else:
        (shutil.move if move else shutil.copy2)(str(path), target)
    write_text(target.with_name(target.name + ".reason.json"), json.dumps(facts, indent=2))
    return target

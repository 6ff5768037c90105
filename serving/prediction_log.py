"""The durable prediction log: every served row, and the labels that arrive later.

SQLite in WAL mode by default (PostgreSQL by URL in production), through SQLAlchemy Core;
groups of rows go in through the driver (SQLite's executemany, PostgreSQL's COPY).

Two durability modes:

* ``sync`` (default): :meth:`PredictionLog.write` returns only once the rows are committed,
  so a response is sent only for logged rows. Concurrent requests share transactions
  (group commit): one writer thread commits everything pending in one go and wakes every
  waiter, so throughput does not pay one fsync per request.
* ``async``: rows go to a bounded queue and the call returns at once; a crash can lose at
  most the queue's contents, and rows refused by a full queue are counted as dropped
  (exported as a metric), never silently.

One client's bad rows fail only that client: when a grouped insert fails on a data error
(a value the database refuses, a duplicate key), each request's rows are retried on their
own, the others are committed, and the offender gets :class:`RowsRefusedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson
import pandas as pd
import sqlalchemy as sa

from brewcast.intervals import LEVELS
from brewcast.schema import slice_keys

log = logging.getLogger(__name__)

SLICE_KEYS = slice_keys()
#: How long a writer waits for its rows' commit before giving up (and answering an error).
COMMIT_TIMEOUT_S = 30.0
metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("served_at", sa.DateTime(timezone=True), nullable=False, index=True),
    # No index on model_version or batch_id: no query looks rows up by them, and every
    # insert would pay for them.
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("batch_id", sa.String(64)),
    sa.Column("snapshot_time", sa.DateTime(timezone=True)),
    *(sa.Column(key, sa.String(64)) for key in SLICE_KEYS),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("decision", sa.Boolean, nullable=False),
    sa.Column("hours_remaining", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("unknown_categories", sa.Text, nullable=False, default=""),
    # How far the snapshot lies from the model's training data, and whether that is beyond
    # the model's threshold (NULL: the model carries no familiarity).
    sa.Column("familiarity_distance", sa.Float),
    sa.Column("out_of_distribution", sa.Boolean),
    # The finish forecast (NULL: the model gives none): hours from the snapshot to each
    # interval's bounds (a NULL high under a set low: open-ended, may never finish), its
    # P(finished by t) per horizon as JSON, and the calibration group it came from.
    *(
        sa.Column(f"interval_{round(level * 100)}_{side}", sa.Float)
        for level in LEVELS
        for side in ("low", "high")
    ),
    sa.Column("finish_probabilities", sa.Text),
    sa.Column("forecast_group", sa.String(64)),
    # P(never finishes): the group's stuck share (NULL: no answer, or an earlier release)
    sa.Column("never_probability", sa.Float),
)
labels = sa.Table(
    "labels",
    metadata,
    sa.Column("label_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("prediction_id", sa.String(36), index=True),
    sa.Column("batch_id", sa.String(64), index=True),
    sa.Column("finished_within_horizon", sa.Boolean),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("source", sa.String(32), nullable=False),
    # One label per prediction, enforced by the database: two /feedback requests that check
    # at the same moment cannot both store opposite labels (batch labels are not bound).
    sa.Index(
        "uq_labels_prediction_id",
        "prediction_id",
        unique=True,
        sqlite_where=sa.text("prediction_id IS NOT NULL"),
        postgresql_where=sa.text("prediction_id IS NOT NULL"),
    ),
)

Mode = Literal["sync", "async"]


class RowsRefusedError(ValueError):
    """The database refused these rows for what they hold (the client's fault: a 4xx)."""


#: What a queued write waits on: a thread's future, an event loop's future, or nothing (async).
Waiter = Future | asyncio.Future | None


#: The RFC 9562 variant nibble (binary 10xx) for each random hex digit.
_VARIANT_NIBBLE = "89ab" * 4


def new_prediction_ids(count: int, now_ms: int | None = None) -> list[str]:
    """``count`` time-ordered (version 7, RFC 9562) UUIDs as strings: 48 bits of Unix
    milliseconds, then random bits from one ``os.urandom`` call. Time order puts each
    insert at the right edge of the primary-key index instead of on a random page: at
    6 rows a commit, half the SQLite time per row of random (version 4) ids, and the gap
    widens as the log outgrows the page cache."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    head = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
    text = os.urandom(10 * count).hex()
    return [
        f"{head}{r[1:4]}-{_VARIANT_NIBBLE[int(r[4], 16)]}{r[5:8]}-{r[8:20]}"
        for r in (text[i : i + 20] for i in range(0, 20 * count, 20))
    ]


@dataclass
class LogStats:
    rows_written: int = 0
    rows_dropped: int = 0
    commits: int = 0
    queue_depth: int = 0
    write_errors: int = 0


def make_engine(url: str) -> sa.Engine:
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # A server connection can go stale (ping it on checkout); a SQLite file cannot, and the
    # ping was a tenth of the writer's time under load.
    engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            cursor.execute("PRAGMA busy_timeout=10000")  # several workers share the file
            cursor.close()

    return engine


def create_tables(engine: sa.Engine, tables: sa.MetaData = metadata, attempts: int = 5) -> None:
    """Create the log's tables if missing, and bring a log an earlier release wrote up to
    this one (:func:`upgrade_tables`). Workers starting together race to do it: the loser's
    "already exists" is retried, and the retry finds the work done."""
    for attempt in range(attempts):
        try:
            tables.create_all(engine)
            upgrade_tables(engine, tables)
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def upgrade_tables(engine: sa.Engine, tables: sa.MetaData = metadata) -> list[str]:
    """Add what a log written by an earlier release lacks: its missing columns (nullable
    ones only: old rows get NULL, "the model did not say") and indexes. Without it, every
    insert into an old log would fail and the service answer 503. A unique index the old
    rows break (two labels for one prediction) is left out, with a warning naming it.
    Returns what it changed."""
    inspector = sa.inspect(engine)
    changed = []
    for table in tables.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"prediction log table {table.name} lacks the required column "
                    f"{column.name}: migrate it by hand"
                )
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
            changed.append(f"{table.name}.{column.name}")
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in indexes:
                continue
            try:
                with engine.begin() as conn:
                    index.create(conn)
                changed.append(f"index {index.name}")
            except sa.exc.IntegrityError as exc:
                log.warning("prediction log: index %s not created: %s", index.name, exc)
    if changed:
        log.warning("prediction log upgraded: added %s", ", ".join(changed))
    return changed


def _memoized(process):
    """``process`` remembering its answers: each distinct value is converted once."""
    seen: dict = {}

    def run(value):
        try:
            return seen[value]
        except KeyError:
            seen[value] = out = process(value)
            return out

    return run


class _SqliteInserter:
    """SQLite: the writer thread keeps one driver connection and calls its ``executemany``
    on tuples built with the columns' own bind processors. SQLAlchemy's per-row parameter
    handling was a third of a 64-row commit, and a pool checkout with its reset another
    ~140 us per commit.

    Writers in several processes (BentoML workers) take turns through an ``flock`` on a
    file beside the database: the kernel wakes the next one as soon as a commit ends.
    Left to SQLite's busy handler, a waiting worker slept 1, 2, 5, 10... ms between tries
    and lost the lock again and again (p99 over a second at 64 rows, two workers)."""

    def __init__(self, engine: sa.Engine) -> None:
        compiled = predictions.insert().compile(dialect=engine.dialect)
        columns = {c.name: c for c in predictions.columns}
        names = list(compiled.positiontup or ())
        processors = [
            columns[n].type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
            for n in names
        ]
        self._plan = list(zip(names, processors, strict=True))
        #: Columns whose values repeat within a commit (a request's rows share one served_at)
        #: and whose processor is slow Python (SQLAlchemy formats a datetime through a dict).
        self._memoized = {n for n in names if isinstance(columns[n].type, sa.DateTime)}
        self._sql = str(compiled)
        database = engine.url.database
        self._turns = (
            open(f"{database}-writers.lock", "a")  # noqa: SIM115 (held as long as we write)
            if database and database != ":memory:"
            else None
        )
        self._connection = engine.raw_connection()

    def __call__(self, rows: list[dict]) -> None:
        plan = [
            (name, _memoized(process) if name in self._memoized else process)
            for name, process in self._plan
        ]
        parameters = [
            tuple(
                row.get(name) if process is None else process(row.get(name))
                for name, process in plan
            )
            for row in rows
        ]
        if self._turns is not None:
            fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            self._connection.cursor().executemany(self._sql, parameters)
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            if self._turns is not None:
                fcntl.flock(self._turns, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            if self._turns is not None:
                self._turns.close()


#: PostgreSQL COPY's text format: these characters are written escaped, and NULL as \N.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value) -> str:
    """One value in PostgreSQL COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return float.__repr__(value)  # numpy's floats too; PostgreSQL reads nan and inf
    if hasattr(value, "isoformat"):
        return value.isoformat()  # a timestamp with its offset
    return str(value).translate(_COPY_ESCAPES)


class _PostgresCopyInserter:
    """PostgreSQL through psycopg2: one held driver connection and ``COPY ... FROM STDIN``.
    A 64-row commit took 12.8 ms as SQLAlchemy's multi-row INSERT (the server parsing ~1,000
    parameters) and takes 4.2 ms as COPY."""

    def __init__(self, engine: sa.Engine) -> None:
        self._columns = [c.name for c in predictions.columns]
        self._sql = f"COPY predictions ({', '.join(self._columns)}) FROM STDIN"
        self._connection = engine.raw_connection()

    def __call__(self, rows: list[dict]) -> None:
        text = "".join(
            "\t".join(_copy_text(row.get(name)) for name in self._columns) + "\n" for row in rows
        )
        try:
            self._connection.cursor().copy_expert(self._sql, io.StringIO(text))
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise

    def close(self) -> None:
        self._connection.close()


class _SqlAlchemyInserter:
    """Other databases: one held connection; SQLAlchemy's "insertmanyvalues" batches the
    rows into multi-row INSERTs."""

    def __init__(self, engine: sa.Engine) -> None:
        self._connection = engine.connect()

    def __call__(self, rows: list[dict]) -> None:
        with self._connection.begin():
            self._connection.execute(predictions.insert(), rows)

    def close(self) -> None:
        self._connection.close()


def _inserter_for(engine: sa.Engine):
    """The fastest way this database takes a group of rows."""
    if engine.dialect.name == "sqlite":
        return _SqliteInserter(engine)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2":
        return _PostgresCopyInserter(engine)
    return _SqlAlchemyInserter(engine)


class PredictionLog:
    def __init__(
        self,
        url: str,
        mode: Mode = "sync",
        queue_limit: int = 10_000,
        max_rows_per_commit: int = 5_000,
    ):
        if mode not in ("sync", "async"):
            raise ValueError(f"prediction log mode must be sync or async, not {mode!r}")
        self.url, self.mode = url, mode
        self.engine = make_engine(url)
        create_tables(self.engine)
        # The writer thread's own connection, opened on its first commit and dropped after a
        # failed one (the next commit reconnects).
        self._inserter: _SqliteInserter | _PostgresCopyInserter | _SqlAlchemyInserter | None = None
        self.queue_limit, self.max_rows_per_commit = queue_limit, max_rows_per_commit
        self.stats = LogStats()
        self._pending: deque[tuple[list[dict], Waiter]] = deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._writer.start()

    # -- writing -------------------------------------------------------------------------
    def write(self, rows: list[dict], timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Log ``rows``. Sync: returns once committed (raises if the commit failed).
        Async: returns at once; rows a full queue cannot take are counted as dropped."""
        committed = self.submit(rows)
        if committed is not None:
            committed.result(timeout=timeout)

    def submit(self, rows: list[dict]) -> Future | None:
        """Queue ``rows`` without waiting. Sync mode: a future that completes when they are
        committed; async mode: None (rows a full queue cannot take are counted as
        dropped)."""
        if not rows:
            return None
        done: Future | None = Future() if self.mode == "sync" else None
        self._enqueue(rows, done)
        return done

    async def write_async(self, rows: list[dict]) -> None:
        """:meth:`write` for an event loop: waits for the commit (sync mode) holding no
        thread. The writer wakes the loop once per commit for all its waiters, where
        ``asyncio.wrap_future`` would wake it once per request. The caller bounds the wait
        (BentoML's traffic timeout cancels the request; a cancelled waiter is skipped)."""
        if not rows:
            return
        if self.mode == "async":
            self._enqueue(rows, None)
            return
        done = asyncio.get_running_loop().create_future()
        self._enqueue(rows, done)
        await done

    def _enqueue(self, rows: list[dict], done: Waiter) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("prediction log is closed")
            if self.mode == "async" and self._pending_rows + len(rows) > self.queue_limit:
                self.stats.rows_dropped += len(rows)
                return
            self._pending.append((rows, done))
            self._pending_rows += len(rows)
            self.stats.queue_depth = self._pending_rows
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    self._drop_inserter()  # in the thread that opened it
                    return
                group, count = [], 0
                while self._pending and count < self.max_rows_per_commit:
                    rows, done = self._pending.popleft()
                    group.append((rows, done))
                    count += len(rows)
                self._pending_rows -= count
                self.stats.queue_depth = self._pending_rows
            self._commit(group, count)

    def _insert(self, rows: list[dict]) -> None:
        if self._inserter is None:
            self._inserter = _inserter_for(self.engine)
        try:
            self._inserter(rows)
        except Exception:
            self._drop_inserter()
            raise

    def _is_data_error(self, exc: Exception) -> bool:
        """A refusal of the rows' values (retrying them alone isolates the offender), not of
        the database itself (down, table missing: every retry would fail the same way)."""
        dbapi = self.engine.dialect.dbapi
        kinds = tuple(
            kind
            for kind in (getattr(dbapi, "DataError", None), getattr(dbapi, "IntegrityError", None))
            if kind is not None
        )
        return isinstance(exc, (sa.exc.DataError, sa.exc.IntegrityError, ValueError, *kinds))

    def _commit(self, group: list[tuple[list[dict], Waiter]], count: int) -> None:
        flat = [row for rows, _ in group for row in rows]
        errors: list[Exception | None] = [None] * len(group)
        try:
            if flat:
                self._insert(flat)
                self.stats.rows_written += count
                self.stats.commits += 1
        except Exception as exc:
            if self._is_data_error(exc) and sum(bool(rows) for rows, _ in group) > 1:
                log.warning("prediction log: grouped commit refused (%s); retrying alone", exc)
                errors = self._commit_each(group)
            else:
                self.stats.write_errors += 1
                log.exception("prediction log: commit of %d rows failed", count)
                error = RowsRefusedError(str(exc)) if self._is_data_error(exc) else exc
                errors = [error if rows else None for rows, _ in group]
        self._settle_group(group, errors)

    def _commit_each(self, group: list[tuple[list[dict], Waiter]]) -> list[Exception | None]:
        """Each request's rows in a commit of their own: only an offender fails. A failure
        that is not a data error (the database went away) fails the rest unretried."""
        errors: list[Exception | None] = []
        broken: Exception | None = None
        for rows, _ in group:
            if not rows or broken is not None:
                errors.append(broken if rows else None)
                continue
            try:
                self._insert(rows)
            except Exception as exc:
                self.stats.write_errors += 1
                if self._is_data_error(exc):
                    log.info("prediction log: refused %d rows of one request: %s", len(rows), exc)
                    errors.append(RowsRefusedError(str(exc)))
                else:
                    log.exception("prediction log: commit of %d rows failed", len(rows))
                    broken = exc
                    errors.append(exc)
                continue
            self.stats.rows_written += len(rows)
            self.stats.commits += 1
            errors.append(None)
        return errors

    def _settle_group(
        self, group: list[tuple[list[dict], Waiter]], errors: list[Exception | None]
    ) -> None:
        """Wake every waiter of a group with its own outcome."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Exception | None]]]
        by_loop = {}
        for (rows, done), error in zip(group, errors, strict=True):
            if done is None:
                if error is not None:
                    self.stats.rows_dropped += len(rows)
            elif isinstance(done, Future):
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
            else:
                by_loop.setdefault(done.get_loop(), []).append((done, error))
        for loop, waiting in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, waiting)

    def _drop_inserter(self) -> None:
        if self._inserter is not None:
            try:
                self._inserter.close()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                log.warning("prediction log: closing a failed connection", exc_info=True)
            self._inserter = None

    def flush(self, timeout: float = COMMIT_TIMEOUT_S) -> None:
        """Wait until everything queued before this call is committed (in either mode)."""
        marker: Future = Future()
        with self._cond:
            self._pending.append(([], marker))
            self._cond.notify()
        marker.result(timeout=timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(timeout=30)
        self.engine.dispose()

    # -- labels and reads ------------------------------------------------------------------
    def add_labels(self, rows: list[dict], source: str) -> int:
        """Store labels; none is a no-op (an INSERT of no rows would insert an empty one)."""
        if not rows:
            return 0
        now = pd.Timestamp.now("UTC").to_pydatetime()
        with self.engine.begin() as conn:
            conn.execute(
                labels.insert(), [{**r, "received_at": now, "source": source} for r in rows]
            )
        return len(rows)

    def known_prediction_ids(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(predictions.c.prediction_id).where(predictions.c.prediction_id.in_(ids))
            ).scalars()
            return set(found)

    def known_batch_ids(self, ids: list[str]) -> set[str]:
        """The batches among ``ids`` with a served prediction. No index on ``batch_id`` (every
        insert would pay for it): a scan, on /feedback only."""
        if not ids:
            return set()
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(predictions.c.batch_id).where(predictions.c.batch_id.in_(ids)).distinct()
            ).scalars()
            return set(found)

    def stored_outcomes(self, ids: list[str]) -> dict[str, set[bool]]:
        """The outcomes already stored for each labelled prediction among ``ids``."""
        if not ids:
            return {}
        out: dict[str, set[bool]] = {}
        with self.engine.connect() as conn:
            for prediction_id, outcome in conn.execute(
                sa.select(labels.c.prediction_id, labels.c.finished_within_horizon).where(
                    labels.c.prediction_id.in_(ids)
                )
            ):
                out.setdefault(prediction_id, set()).add(bool(outcome))
        return out

    def batch_finishes(self, batch_ids: list[str] | None = None) -> dict[str, datetime]:
        """When each batch finished, as ``/feedback`` said (the latest label of each)."""
        query = sa.select(labels.c.batch_id, labels.c.finished_at).where(
            labels.c.finished_at.is_not(None)
        )
        if batch_ids is not None:
            query = query.where(labels.c.batch_id.in_(batch_ids))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(labels.c.received_at)).all()
        return {
            b: (t.replace(tzinfo=UTC) if t.tzinfo is None else t) for b, t in rows if b is not None
        }

    def read_predictions(self, since: pd.Timestamp | None = None) -> pd.DataFrame:
        query = sa.select(predictions)
        if since is not None:
            query = query.where(predictions.c.served_at >= since.to_pydatetime())
        with self.engine.connect() as conn:
            return pd.DataFrame(
                conn.execute(query).mappings().all(), columns=[c.name for c in predictions.columns]
            )

    def read_labels(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.DataFrame(
                conn.execute(sa.select(labels)).mappings().all(),
                columns=[c.name for c in labels.columns],
            )


def _settle(waiting: list[tuple[asyncio.Future, Exception | None]]) -> None:
    """On the waiters' event loop: complete each (one that timed out is already done)."""
    for done, error in waiting:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


def prediction_row(
    prediction_id: str,
    served_at,
    model_version: str,
    threshold: float,
    features: dict,
    probability: float,
    decision: bool,
    hours: float,
    unknown: list[str],
    distance: float | None = None,
    out_of_distribution: bool | None = None,
    forecast: dict | None = None,
) -> dict:
    """One log row; the features are kept whole (JSON) and the slice keys as columns;
    ``forecast``: the finish forecast's columns (:data:`NO_FORECAST` without one)."""
    return {
        "prediction_id": prediction_id,
        "served_at": served_at,
        "model_version": model_version,
        "batch_id": features.get("batch_id"),
        "snapshot_time": features.get("snapshot_time"),
        **{key: features.get(key) for key in SLICE_KEYS},
        # orjson: 15x faster than json.dumps here; datetimes as ISO 8601, NaN as null
        "features": orjson.dumps(features, default=str).decode(),
        "probability": probability,
        "decision": decision,
        "hours_remaining": hours,
        "threshold": threshold,
        "unknown_categories": ",".join(unknown),
        "familiarity_distance": distance,
        "out_of_distribution": out_of_distribution,
        **(forecast or NO_FORECAST),
    }


#: The finish-forecast columns of a row whose model gives none.
NO_FORECAST = {
    **{
        f"interval_{round(level * 100)}_{side}": None
        for level in LEVELS
        for side in ("low", "high")
    },
    "finish_probabilities": None,
    "forecast_group": None,
    "never_probability": None,
}

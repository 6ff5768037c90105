"""The durable prediction log: every served row, and the labels that arrive later.

SQLite in WAL mode by default (PostgreSQL by URL in production), through SQLAlchemy Core.

Two durability modes:

* ``sync`` (default): :meth:`PredictionLog.write` returns only once the rows are committed,
  so a response is sent only for logged rows. Concurrent requests share transactions
  (group commit): one writer thread commits everything pending in one go and wakes every
  waiter, so throughput does not pay one fsync per request.
* ``async``: rows go to a bounded queue and the call returns at once; a crash can lose at
  most the queue's contents, and rows refused by a full queue are counted as dropped
  (exported as a metric), never silently.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import pandas as pd
import sqlalchemy as sa

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
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("batch_id", sa.String(64), index=True),
    sa.Column("snapshot_time", sa.DateTime(timezone=True)),
    *(sa.Column(key, sa.String(64)) for key in SLICE_KEYS),
    sa.Column("features", sa.Text, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("decision", sa.Boolean, nullable=False),
    sa.Column("hours_remaining", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("unknown_categories", sa.Text, nullable=False, default=""),
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
)

Mode = Literal["sync", "async"]


def new_prediction_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as strings, from one ``os.urandom`` call: a
    64-row request spent more on 64 ``uuid.uuid4()`` than on onnxruntime."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [
        f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        for h in (text[i : i + 32] for i in range(0, 32 * count, 32))
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


def _row_inserter(engine: sa.Engine) -> Callable[[sa.Connection, list[dict]], None]:
    """How log rows are inserted. SQLite: the driver's ``executemany`` on tuples built with
    the columns' own bind processors (SQLAlchemy's per-row parameter handling was a third
    of a 64-row commit). Other databases: SQLAlchemy, whose "insertmanyvalues" batches
    rows into multi-row INSERTs."""
    if engine.dialect.name != "sqlite":
        return lambda conn, rows: conn.execute(predictions.insert(), rows)
    compiled = predictions.insert().compile(dialect=engine.dialect)
    columns = {c.name: c for c in predictions.columns}
    names = list(compiled.positiontup or ())
    processors = [
        columns[n].type.dialect_impl(engine.dialect).bind_processor(engine.dialect) for n in names
    ]
    plan = list(zip(names, processors, strict=True))
    sql = str(compiled)

    def insert(conn: sa.Connection, rows: list[dict]) -> None:
        conn.exec_driver_sql(
            sql,
            [
                tuple(
                    row.get(name) if process is None else process(row.get(name))
                    for name, process in plan
                )
                for row in rows
            ],
        )

    return insert


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
        metadata.create_all(self.engine)
        self._insert = _row_inserter(self.engine)
        self.queue_limit, self.max_rows_per_commit = queue_limit, max_rows_per_commit
        self.stats = LogStats()
        self._pending: deque[tuple[list[dict], Future | None]] = deque()
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
        committed (an event loop awaits it with ``asyncio.wrap_future``); async mode: None
        (rows a full queue cannot take are counted as dropped)."""
        if not rows:
            return None
        with self._cond:
            if self._closed:
                raise RuntimeError("prediction log is closed")
            if self.mode == "async" and self._pending_rows + len(rows) > self.queue_limit:
                self.stats.rows_dropped += len(rows)
                return None
            done: Future | None = Future() if self.mode == "sync" else None
            self._pending.append((rows, done))
            self._pending_rows += len(rows)
            self.stats.queue_depth = self._pending_rows
            self._cond.notify()
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                group, count = [], 0
                while self._pending and count < self.max_rows_per_commit:
                    rows, done = self._pending.popleft()
                    group.append((rows, done))
                    count += len(rows)
                self._pending_rows -= count
                self.stats.queue_depth = self._pending_rows
            self._commit(group, count)

    def _commit(self, group: list[tuple[list[dict], Future | None]], count: int) -> None:
        flat = [row for rows, _ in group for row in rows]
        try:
            if flat:
                with self.engine.begin() as conn:
                    self._insert(conn, flat)
        except Exception as exc:
            self.stats.write_errors += 1
            log.exception("prediction log: commit of %d rows failed", count)
            for _, done in group:
                if done is not None:
                    done.set_exception(exc)
                else:
                    self.stats.rows_dropped += count
            return
        if flat:
            self.stats.rows_written += count
            self.stats.commits += 1
        for _, done in group:
            if done is not None:
                done.set_result(None)

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
) -> dict:
    """One log row; the features are kept whole (JSON) and the slice keys as columns."""
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
    }

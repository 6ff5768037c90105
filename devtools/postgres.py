"""Scratch databases on this machine's PostgreSQL server, for tests and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

#: This machine's PostgreSQL server, as the tests and benchmarks reach it.
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@contextlib.contextmanager
def scratch_postgres_database(prefix: str, server: str = LOCAL_POSTGRES) -> Iterator[str]:
    """A new, empty database on ``server`` for the duration: its URL. Dropped afterwards,
    connections and all. Raises sqlalchemy's OperationalError when the server is not there."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"{server}/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()

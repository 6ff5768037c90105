"""The tables of the service's readings store: batches, devices and the readings they push.

A contract between the service, which writes them (``serving.readings``), and ingest, which
flushes them into the lake's raw stage (``ingest.sources``, source ``service``) so that
validation, features and training see the readings the devices sent. They live in the
prediction log's database (``BREWCAST_PREDICTION_LOG_URL``).
"""

from __future__ import annotations

import sqlalchemy as sa

from brewcast.schema import BATCHES

metadata = sa.MetaData()


def _column(name: str) -> sa.Column:
    """A stored batch's column, typed from the one schema."""
    dtype = BATCHES[name].dtype
    if name == "batch_id":
        return sa.Column(name, sa.String(64), primary_key=True)
    if dtype.startswith("float"):
        return sa.Column(name, sa.Float)
    if dtype.startswith(("datetime", "timestamp")):
        return sa.Column(name, sa.DateTime(timezone=True), nullable=name != "start_time")
    return sa.Column(name, sa.String(64))


#: The batches as the lake's ``batches`` table has them (what a snapshot reads).
batches = sa.Table("batches", metadata, *(_column(name) for name in BATCHES.names))
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("fermenter", sa.String(64), nullable=False),
    # the unit of an iSpindel's unlabelled gravity (its owner's calibration): SG or °P
    sa.Column("gravity_unit", sa.String(16)),
)
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("tag", sa.String(32), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("batch_id", sa.String(64)),  # NULL: unassigned
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # a forecast reads one batch's readings up to a time
    sa.Index("ix_readings_batch_time", "batch_id", "timestamp"),
)
#: How many committed pushes added readings to each batch: a worker's in-memory copy of a
#: batch's readings is current while it was made at the stored revision (readings are only
#: ever added, so a revision names one set of them, whichever worker wrote it).
batch_revisions = sa.Table(
    "batch_revisions",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
)

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
    # the device's calibration: added to every reading it sends from then on
    sa.Column("gravity_offset_plato", sa.Float),
    sa.Column("temperature_offset_c", sa.Float),
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
    # why the reading is kept out of its batch's curve (a gravity jump: a device moved, a
    # probe out of the liquid); NULL: in the curve
    sa.Column("held_out", sa.String(300)),
    # the value as the device sent it and the unit it was read in (re-declaring a device's
    # unit re-reads them); NULL: stored before this was kept, in the canonical unit
    sa.Column("sent_value", sa.Float),
    sa.Column("sent_unit", sa.String(16)),
    # a forecast reads one batch's readings up to a time
    sa.Index("ix_readings_batch_time", "batch_id", "timestamp"),
)
# a card's troubles without a scan of every reading: those held out of a batch's curve, and
# a device's readings that found no batch (both few, so the partial indexes stay small)
sa.Index(
    "ix_readings_held_out",
    readings.c.batch_id,
    sqlite_where=readings.c.held_out.is_not(None),
    postgresql_where=readings.c.held_out.is_not(None),
)
sa.Index(
    "ix_readings_unassigned",
    readings.c.device_id,
    readings.c.timestamp,
    sqlite_where=readings.c.batch_id.is_(None),
    postgresql_where=readings.c.batch_id.is_(None),
)
#: Every reading a later push corrected (another value at the same device, time and tag:
#: the newest wins, as in the drop folder), with the value it replaced: nothing is lost.
reading_corrections = sa.Table(
    "reading_corrections",
    metadata,
    sa.Column("correction_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("tag", sa.String(32), nullable=False),
    sa.Column("old_value", sa.Float, nullable=False),
    sa.Column("new_value", sa.Float, nullable=False),
    sa.Column("old_received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("corrected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_reading_corrections_device", "device_id", "timestamp"),
)
#: How many committed pushes added readings to each batch: a worker's in-memory copy of a
#: batch's readings is current while it was made at the stored revision (every change to a
#: batch's readings, an addition, a correction or a re-attachment, counts one more, so a
#: revision names one set of them, whichever worker wrote it).
batch_revisions = sa.Table(
    "batch_revisions",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
)
#: Every forecast the service made from stored readings, as it answered it: the board's
#: latest forecast per batch and a batch's forecast history (how the predicted finish moved).
forecasts = sa.Table(
    "forecasts",
    metadata,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("made_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the answer's JSON
    sa.Index("ix_forecasts_batch_at", "batch_id", "at"),
)
#: A batch's "ready" event: one per batch and model version, by its key (a restart, a
#: second worker or a repeated forecast cannot emit it again), with its delivery and the
#: operator's answer (acknowledged, or overridden with a reason).
ready_events = sa.Table(
    "ready_events",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("prediction_id", sa.String(36), nullable=False),
    sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("forecast", sa.Text, nullable=False),  # the forecast that caused it (JSON)
    sa.Column("webhook_delivered_at", sa.DateTime(timezone=True)),
    sa.Column("asset_delivered_at", sa.DateTime(timezone=True)),
    sa.Column("delivery_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("delivery_error", sa.Text),
    sa.Column("answer", sa.String(16)),  # NULL, "acknowledged" or "overridden"
    sa.Column("answered_at", sa.DateTime(timezone=True)),
    sa.Column("answered_by", sa.String(64)),
    sa.Column("reason", sa.Text),
)
#: Every push the service refused (a 4xx), kept with its reason: a device's owner cannot see
#: the answer, so the cellar board shows them on the batch their device was in.
refused_pushes = sa.Table(
    "refused_pushes",
    metadata,
    sa.Column("refusal_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("device_id", sa.String(64)),  # NULL: the body named none
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # its first 2,000 characters
    sa.Index("ix_refused_pushes_device", "device_id", "received_at"),
)

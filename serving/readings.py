"""Batches, devices and the readings they push, stored by the service, and the forecast
built from them with the training code (:mod:`brewcast.snapshots`).

Three tables beside the prediction log (same database: SQLite WAL by default, PostgreSQL by
URL). A reading is committed before the push is answered, in canonical units (°P, °C,
UTC), once per (device, timestamp, tag): the same reading again changes nothing and is
counted as a duplicate. A device is assigned to a fermenter; its readings go to the batch
running there at the reading's time; a device nobody assigned, or a fermenter with no batch
running, keeps its readings with no batch (``unassigned``), never drops them.

The push formats are the devices' own (``DEVICES.md``): iSpindel / GravityMon JSON, a
Brewfather custom stream, the Tilt app's cloud-URL form post, and brewcast's own JSON list.
A body in the wrong shape, a value outside physics, a time in the future: a
:class:`ReadingError` naming the field (a 4xx), and nothing of that body is stored.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from brewcast.readings_store import batches, devices, metadata, readings
from brewcast.schema import BATCHES, READING_VALUE_RANGES
from brewcast.snapshots import hour_of, plausible, snapshot_columns, snapshot_frame
from brewcast.units import UnitError, parse_unit, to_canonical

#: The Tilt app's Excel serial days count from this date, in the phone's local time.
EXCEL_ORIGIN = datetime(1899, 12, 30)
#: How far ahead of the server's clock a device's timestamp may be (clock skew).
FUTURE_TOLERANCE = timedelta(minutes=10)


class ReadingError(ValueError):
    """A push or a batch the service refuses; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class Push:
    """One push's readings, canonical: (timestamp, tag, value) of one device."""

    device_id: str
    rows: list[tuple[datetime, str, float]] = field(default_factory=list)


def _number(body: Mapping, key: str, where: str) -> float | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ReadingError(f"{where}.{key}: must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ReadingError(f"{where}.{key}: must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ReadingError(f"{where}.{key}: must be finite, got {value!r}")
    return number


def _canonical(value: float, unit: str | None, tag: str, where: str) -> float:
    quantity = "gravity" if tag == "gravity_plato" else "temperature"
    try:
        name = parse_unit(unit, quantity, where)
        converted = float(to_canonical(np.array([value]), name, quantity, where)[0])
    except UnitError as exc:
        raise ReadingError(str(exc)) from exc
    low, high = READING_VALUE_RANGES[tag]
    if not low <= converted <= high:
        raise ReadingError(
            f"{where}: {value:g} {name} is {converted:.4g} in canonical units, outside the "
            f"physical range {low:g}..{high:g} of {tag}"
        )
    return converted


def _device_name(body: Mapping, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int | str) and str(value).strip():
            return str(value).strip()[:48]
    raise ReadingError(f"{where}: give the device's {' or '.join(repr(k) for k in keys)}")


def parse_ispindel(body: object, now: datetime, gravity_unit: str | None = None) -> Push:
    """iSpindel / GravityMon JSON: ``name`` (or ``ID``), ``gravity`` in the owner's unit
    (GravityMon's ``gravity-unit``: G or P; an iSpindel says nothing: the device's assigned
    ``gravity_unit``), ``temperature`` in ``temp_units`` (C, F, K). It carries no time: the
    reading is at ``now``."""
    if not isinstance(body, dict):
        raise ReadingError("body: an iSpindel posts a JSON object")
    name = _device_name(body, ("name", "ID"), "body")
    push = Push(f"ispindel:{name}")
    stated = {"G": "SG", "P": "°P"}.get(str(body.get("gravity-unit", "")).upper())
    gravity = _number(body, "gravity", "body")
    if gravity is not None:
        unit = stated or gravity_unit
        if unit is None:
            raise ReadingError(
                "body.gravity: an iSpindel does not say its gravity unit; assign the device "
                "with gravity_unit SG or °P (PUT /devices/...), or send GravityMon's gravity-unit"
            )
        push.rows.append(
            (now, "gravity_plato", _canonical(gravity, unit, "gravity_plato", "body.gravity"))
        )
    temperature = _number(body, "temperature", "body")
    if temperature is not None:
        unit = str(body.get("temp_units") or body.get("temp-units") or "C")
        push.rows.append(
            (
                now,
                "temperature_c",
                _canonical(temperature, unit, "temperature_c", "body.temperature"),
            )
        )
    if not push.rows:
        raise ReadingError("body: neither gravity nor temperature")
    return push


def parse_brewfather(body: object, now: datetime) -> Push:
    """A Brewfather custom stream: ``name``, ``gravity`` in ``gravity_unit`` (G or P),
    ``temp`` in ``temp_unit`` (C, F, K); at ``now``."""
    if not isinstance(body, dict):
        raise ReadingError("body: a Brewfather stream posts a JSON object")
    push = Push(f"brewfather:{_device_name(body, ('name',), 'body')}")
    gravity = _number(body, "gravity", "body")
    if gravity is not None:
        unit = {"G": "SG", "P": "°P"}.get(str(body.get("gravity_unit", "G")).upper())
        if unit is None:
            raise ReadingError(f"body.gravity_unit: G or P, got {body.get('gravity_unit')!r}")
        push.rows.append(
            (now, "gravity_plato", _canonical(gravity, unit, "gravity_plato", "body.gravity"))
        )
    temperature = _number(body, "temp", "body")
    if temperature is not None:
        unit = str(body.get("temp_unit") or "C")
        push.rows.append(
            (now, "temperature_c", _canonical(temperature, unit, "temperature_c", "body.temp"))
        )
    if not push.rows:
        raise ReadingError("body: a stream needs gravity or temp")
    return push


def parse_tilt(form: Mapping[str, str], zone, now: datetime | None = None) -> Push:
    """The Tilt app's cloud-URL post (form fields): ``Timepoint`` (an Excel serial day in
    the phone's local time, read in ``zone``), ``SG``, ``Temp`` in °F, ``Color``. In the
    hour a clock change repeats, the local time is the one nearer ``now`` (the post
    arrives as it is made)."""
    colour = str(form.get("Color") or "").split(":")[0].strip().lower()
    if not colour:
        raise ReadingError("Color: the Tilt's colour is missing")
    try:
        serial = float(form.get("Timepoint", ""))
    except ValueError as exc:
        raise ReadingError(
            f"Timepoint: an Excel serial day, got {form.get('Timepoint')!r}"
        ) from exc
    local = EXCEL_ORIGIN + timedelta(days=serial)
    local = local.replace(microsecond=0) + timedelta(seconds=round(local.microsecond / 1e6))
    candidates = {
        pd.Timestamp(local).tz_localize(zone, ambiguous=dst, nonexistent="shift_forward")
        for dst in (True, False)
    }
    reference = pd.Timestamp(now or datetime.now(UTC))
    at = min(candidates, key=lambda c: abs(c - reference))
    push = Push(f"tilt:{colour}")
    when = at.tz_convert("UTC").to_pydatetime()
    for key, tag, unit in (("SG", "gravity_plato", "SG"), ("Temp", "temperature_c", "°F")):
        value = _number(form, key, "form")
        if value is None:
            raise ReadingError(f"{key}: missing")
        push.rows.append((when, tag, _canonical(value, unit, tag, key)))
    return push


def parse_readings(body: object) -> list[Push]:
    """brewcast's own JSON: ``{"readings": [{"device", "timestamp" (ISO 8601 with offset),
    "gravity"?, "gravity_unit"?, "temperature"?, "temperature_unit"?}, ...]}``."""
    items = body.get("readings") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ReadingError('body: a JSON object with a non-empty list "readings"', 400)
    pushes: dict[str, Push] = {}
    for i, item in enumerate(items):
        where = f"readings[{i}]"
        if not isinstance(item, dict):
            raise ReadingError(f"{where}: an object")
        device = _device_name(item, ("device",), where)
        stamp = item.get("timestamp")
        try:
            at = pd.Timestamp(stamp)
        except (TypeError, ValueError) as exc:
            raise ReadingError(f"{where}.timestamp: ISO 8601, got {stamp!r}") from exc
        if not isinstance(stamp, str) or at.tzinfo is None:
            raise ReadingError(
                f"{where}.timestamp: ISO 8601 with an offset (Z or +hh:mm), got {stamp!r}"
            )
        push = pushes.setdefault(device, Push(device))
        when = at.tz_convert("UTC").to_pydatetime()
        found = False
        for key, tag, default in (
            ("gravity", "gravity_plato", "°P"),
            ("temperature", "temperature_c", "°C"),
        ):
            value = _number(item, key, where)
            if value is not None:
                unit = str(item.get(f"{key}_unit") or default)
                push.rows.append((when, tag, _canonical(value, unit, tag, f"{where}.{key}")))
                found = True
        if not found:
            raise ReadingError(f"{where}: neither gravity nor temperature")
    return list(pushes.values())


def _check(push: Push, now: datetime) -> None:
    """Refuse a push holding a value that is no number or a time in the future (checked for
    every push of a request before any is stored: nothing half-stored)."""
    for at, tag, value in push.rows:
        if not math.isfinite(value):
            raise ReadingError(f"{tag}: {value} is no number")
        if at > now + FUTURE_TOLERANCE:
            raise ReadingError(
                f"timestamp: {at.isoformat()} is in the future (now {now.isoformat()})"
            )


@dataclass
class Stored:
    device_id: str
    stored: int
    duplicates: int
    batch_id: str | None  # None: unassigned

    def to_dict(self) -> dict:
        return {
            "device": self.device_id,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "batch_id": self.batch_id,
            "status": "assigned" if self.batch_id else "unassigned",
        }


class ReadingsStore:
    """The service's batches, devices and readings (see the module's text)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine)

    # -- batches ---------------------------------------------------------------------------
    def start_batch(self, batch: dict) -> dict:
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(batches.c.batch_id).where(batches.c.batch_id == batch["batch_id"])
            ).first()
            if found:
                raise ReadingError(
                    f"batch_id: {batch['batch_id']!r} exists already (PATCH it)", 409
                )
            conn.execute(batches.insert().values(**batch))
        return self.batch(batch["batch_id"])

    def update_batch(self, batch_id: str, changes: dict) -> dict:
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update().where(batches.c.batch_id == batch_id).values(**changes)
            )
        if done.rowcount == 0:
            raise ReadingError(f"batch {batch_id!r} does not exist", 404)
        return self.batch(batch_id)

    def batch(self, batch_id: str) -> dict:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(batches).where(batches.c.batch_id == batch_id))
                .mappings()
                .first()
            )
        if row is None:
            raise ReadingError(f"batch {batch_id!r} does not exist", 404)
        return _utc(dict(row))

    def batches(self, active: bool | None = None) -> list[dict]:
        query = sa.select(batches).order_by(batches.c.start_time)
        if active is True:
            query = query.where(batches.c.end_time.is_(None))
        elif active is False:
            query = query.where(batches.c.end_time.is_not(None))
        with self.engine.connect() as conn:
            return [_utc(dict(r)) for r in conn.execute(query).mappings()]

    # -- devices -----------------------------------------------------------------------------
    def assign(self, device_id: str, fermenter: str, gravity_unit: str | None = None) -> dict:
        values = {"device_id": device_id, "fermenter": fermenter, "gravity_unit": gravity_unit}
        with self.engine.begin() as conn:
            conn.execute(devices.delete().where(devices.c.device_id == device_id))
            conn.execute(devices.insert().values(**values))
        return values

    def device(self, device_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(devices).where(devices.c.device_id == device_id))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    def unassigned(self) -> list[dict]:
        """Devices whose readings found no batch: what to assign."""
        query = (
            sa.select(readings.c.device_id, sa.func.count(), sa.func.max(readings.c.timestamp))
            .where(readings.c.batch_id.is_(None))
            .group_by(readings.c.device_id)
        )
        with self.engine.connect() as conn:
            return [
                {"device": d, "readings": int(n), "last_reading": _as_utc(t)}
                for d, n, t in conn.execute(query)
            ]

    # -- readings ----------------------------------------------------------------------------
    def store(self, push: Push, now: datetime) -> Stored:
        """:meth:`store_all` of one push."""
        return self.store_all([push], now)[0]

    def store_all(self, pushes: list[Push], now: datetime) -> list[Stored]:
        """Commit the pushes' readings in one transaction (before the request is answered:
        all of them or none), each to the batch running in its device's fermenter at its
        time, or to none (a device nobody assigned, a reading before any batch there)."""
        for push in pushes:
            _check(push, now)
        with self.engine.begin() as conn:
            return [self._store(conn, push, now) for push in pushes]

    def _store(self, conn, push: Push, now: datetime) -> Stored:
        device = (
            conn.execute(sa.select(devices).where(devices.c.device_id == push.device_id))
            .mappings()
            .first()
        )
        batch_id = None
        if device is not None:
            batch_id = self._running(conn, device["fermenter"], min(at for at, _, _ in push.rows))
        existing = {
            (_as_utc(t), tag)
            for t, tag in conn.execute(
                sa.select(readings.c.timestamp, readings.c.tag).where(
                    readings.c.device_id == push.device_id,
                    readings.c.timestamp.in_([at for at, _, _ in push.rows]),
                )
            )
        }
        new = [
            {
                "device_id": push.device_id,
                "timestamp": at,
                "tag": tag,
                "value": value,
                "batch_id": batch_id,
                "received_at": now,
            }
            for at, tag, value in push.rows
            if (at, tag) not in existing
        ]
        if new:
            conn.execute(readings.insert(), new)
        return Stored(push.device_id, len(new), len(push.rows) - len(new), batch_id)

    @staticmethod
    def _running(conn, fermenter: str, at: datetime) -> str | None:
        query = (
            sa.select(batches.c.batch_id)
            .where(
                batches.c.fermenter == fermenter,
                batches.c.start_time <= at,
                sa.or_(batches.c.end_time.is_(None), batches.c.end_time >= at),
            )
            .order_by(batches.c.start_time.desc())
        )
        return conn.execute(query).scalars().first()

    def batch_readings(self, batch_id: str, until: datetime | None = None) -> pd.DataFrame:
        """The batch's readings (``batch_id``, ``tag``, ``timestamp``, ``value``), up to
        ``until``, in the lake's raw-readings shape. Read as the driver returns them and
        parsed in one vectorised step: SQLAlchemy's typed rows cost 6x more at 30 days of
        15-minute readings (``benchmarks/README.md``)."""
        query = sa.text(
            "SELECT tag, timestamp, value FROM readings WHERE batch_id = :batch "
            "AND timestamp <= :until"
        ).bindparams(sa.bindparam("until", type_=readings.c.timestamp.type))
        bound = {"batch": batch_id, "until": until or datetime(9999, 1, 1, tzinfo=UTC)}
        with self.engine.connect() as conn:
            rows = conn.execute(query, bound).fetchall()
        tags, stamps, values = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [])
        return pd.DataFrame(
            {
                "batch_id": batch_id,
                "tag": pd.Series(tags, dtype=object),
                "timestamp": pd.to_datetime(
                    pd.Series(stamps, dtype=object), utc=True, format="ISO8601"
                ),
                "value": np.asarray(values, dtype=float),
            }
        )


def _as_utc(value):
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return (
        stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    ).to_pydatetime()


def _utc(row: dict) -> dict:
    return {k: _as_utc(v) if k.endswith("_time") else v for k, v in row.items()}


#: A stored batch as the snapshot code reads it (the lake's batch row: attributes, _asdict).
BatchRow = namedtuple("BatchRow", BATCHES.names)
_FLOAT_COLUMNS = frozenset(c.name for c in BATCHES.columns if c.dtype.startswith("float"))


def snapshot_record(batch: dict, frame: pd.DataFrame, at: datetime) -> dict | None:
    """The snapshot of ``batch`` (a stored batch) at ``at`` from its readings ``frame``,
    built by the training code (:func:`brewcast.snapshots.snapshot_columns`), as a request
    row; None while the batch has no gravity reading at all."""
    row = BatchRow(
        **{
            name: np.nan if batch.get(name) is None and name in _FLOAT_COLUMNS else batch.get(name)
            for name in BATCHES.names
        }
    )
    # the readings after ``at`` may be there: the function never looks past its time
    gravity = plausible(frame, "gravity_plato")
    if gravity.empty:
        return None
    temperature = plausible(frame, "temperature_c")
    columns = snapshot_columns(row, gravity, temperature, np.array([hour_of(at)]))
    record = snapshot_frame([(row, columns)]).iloc[0].to_dict()
    out = {}
    for key, value in record.items():
        if isinstance(value, pd.Timestamp):
            out[key] = value.to_pydatetime()
        elif isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = None if value is pd.NA else value
    return out


def now_utc() -> datetime:
    return datetime.now(UTC)

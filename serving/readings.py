"""Batches, devices and the readings they push, stored by the service, and the forecast
built from them with the training code (:mod:`brewcast.snapshots`).

Three tables beside the prediction log (same database: SQLite WAL by default, PostgreSQL by
URL). A reading is committed before the push is answered, in canonical units (°P, °C,
UTC), once per (device, timestamp, tag): the same reading again changes nothing and is
counted as a duplicate; another value there corrects it (the newest wins, the old one is
kept in ``reading_corrections``). A device is assigned to a fermenter; each reading goes to
the batch running there at that reading's time; a device nobody assigned, or a fermenter
with no batch running, keeps its readings with no batch (``unassigned``), never drops them,
and they join their batch when the device is assigned or a batch's window comes to hold
them.

The push formats are the devices' own (``DEVICES.md``): iSpindel / GravityMon JSON, a
Brewfather custom stream, the Tilt app's cloud-URL form post, and brewcast's own JSON list.
A body in the wrong shape, a value outside physics, a time in the future: a
:class:`ReadingError` naming the field (a 4xx), and nothing of that body is stored.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from brewcast.plateau import PlateauRule, cellar_state
from brewcast.readings_store import (
    batch_revisions,
    batches,
    devices,
    metadata,
    reading_corrections,
    readings,
    refused_pushes,
)
from brewcast.schema import BATCHES, READING_VALUE_RANGES
from brewcast.settings import ValidationSettings
from brewcast.snapshots import Series, hour_of, hours_of, snapshot_columns, snapshot_table
from brewcast.units import (
    SG_SPAN,
    UnitError,
    from_canonical,
    likely_unit,
    parse_unit,
    to_canonical,
)
from ingest.devices import TILT_SERIAL_HELP, tilt_local_times
from serving.api_models import BATCH_CHANGES, CONTROL_CHARACTERS, REQUEST_FIELDS
from serving.prediction_log import create_tables

#: How far ahead of the server's clock a device's timestamp may be (clock skew).
FUTURE_TOLERANCE = timedelta(minutes=10)
#: No reading is older: a time before it is a device clock never set (year 1, or a Tilt's
#: serial day 1, 1899-12-31).
EARLIEST_READING = datetime(2000, 1, 1, tzinfo=UTC)
#: How far back a device's stored readings inform the judgement of a push's unit, and how
#: many of its latest ones are read for it (with the extremes of them all).
UNIT_HISTORY = timedelta(days=21)
UNIT_SAMPLE = 50
#: A forecast ``at`` a time its batch has readings this much after is a back-cast.
BACKCAST_SLACK_HOURS = 0.25
#: A fermenter's device's readings that found no batch this long before a pitch belong on
#: that batch's card (a pitch time typed too late holds its first readings back).
PRE_PITCH_WINDOW = timedelta(days=7)


class ReadingError(ValueError):
    """A push or a batch the service refuses; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class UnitPending(ReadingError):
    """A push kept but not stored yet: its device's unit is unknown (an iSpindel never says
    its gravity's). Answered 202; stored when the device is assigned its unit."""

    def __init__(self, message: str):
        super().__init__(message, 202)


@dataclass
class Push:
    """One push's readings, canonical: (timestamp, tag, value) of one device; ``units``:
    the unit each row was declared in (empty: rows made in canonical units, not judged)."""

    device_id: str
    rows: list[tuple[datetime, str, float]] = field(default_factory=list)
    units: list[str | None] = field(default_factory=list)
    #: each row's value as sent and the unit it was read in
    sent: list[tuple[float, str]] = field(default_factory=list)

    def add(
        self, at: datetime, tag: str, value: float, unit: str, where: str, judge: bool = True
    ) -> None:
        """A reading in the unit its sender declared, stored canonical. ``judge``: whether
        the unit is a sender's choice that its values may contradict (a Tilt's is fixed by
        its protocol)."""
        converted, name = _canonical(value, unit, tag, where)
        self.rows.append((at, tag, converted))
        self.units.append(name if judge else None)
        self.sent.append((value, name))


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


def _quantity(tag: str) -> str:
    return "gravity" if tag == "gravity_plato" else "temperature"


def _canonical(value: float, unit: str | None, tag: str, where: str) -> tuple[float, str]:
    """``value`` in ``unit`` converted to ``tag``'s canonical unit, and the unit's name; a
    value outside physics is refused, naming the unit it looks like where one fits."""
    quantity = _quantity(tag)
    try:
        name = parse_unit(unit, quantity, where)
        converted = float(to_canonical(np.array([value]), name, quantity, where)[0])
    except UnitError as exc:
        raise ReadingError(str(exc)) from exc
    low, high = READING_VALUE_RANGES[tag]
    if not low <= converted <= high:
        likely = likely_unit(np.array([value]), name)
        hint = f"; it looks like {likely}: declare that unit" if likely else ""
        raise ReadingError(
            f"{where}: {value:g} {name} is {converted:.4g} in canonical units, outside the "
            f"physical range {low:g}..{high:g} of {tag}{hint}"
        )
    return converted, name


#: The keys the devices declare their units under (DEVICES.md): iSpindel's ``temp_units``,
#: GravityMon's form ``temp-units``, its Brewfather format ``temp-unit``, its own firmware's
#: ``temp_unit``, InfluxDB's ``temp-format``, Fermentrack's ``temp_format``, BrewPi-ESP's
#: ``tempUnit``; ``gravity-unit``, ``gravity_unit``, ``gravity-format``, ``gravity_format``.
UNIT_KEYS = {
    "temperature": (
        "temp_units",
        "temp-units",
        "temp_unit",
        "temp-unit",
        "temp-format",
        "temp_format",
        "tempUnit",
    ),
    "gravity": ("gravity_unit", "gravity-unit", "gravity_format", "gravity-format"),
}


def _declared(body: Mapping, quantity: str, where: str) -> str | None:
    """The unit ``body`` declares for ``quantity`` under any of its device keys (None:
    none); keys that disagree, or a unit of another quantity, are a 422 naming them."""
    names = {}
    for key in UNIT_KEYS[quantity]:
        text = body.get(key)
        if text is None or text == "":
            continue
        try:
            names[key] = parse_unit(str(text), quantity, f"{where}.{key}")
        except UnitError as exc:
            raise ReadingError(str(exc)) from exc
    if len(set(names.values())) > 1:
        said = ", ".join(f"{key}={body[key]!r}" for key in names)
        raise ReadingError(f"{where}: the {quantity} unit keys disagree ({said})")
    return next(iter(names.values()), None)


#: How each device route's JSON body names its device: the id's prefix and the keys.
NAMED_BY = {
    "/readings/ispindel": ("ispindel:", ("name", "ID")),
    "/readings/brewfather": ("brewfather:", ("name",)),
}


#: The longest device name kept whole: a longer one is refused, never cut (two names cut
#: to one would mix two devices' readings).
MAX_DEVICE_NAME = 48


def _named(body: Mapping, keys: tuple[str, ...]) -> str | None:
    """The device name a body gives under the first of ``keys`` it has (None: none): a
    string, or a whole number (an iSpindel's chip ``ID``); never true/false."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _device_name(body: Mapping, keys: tuple[str, ...], where: str) -> str:
    name = _named(body, keys)
    if name is None:
        said = " or ".join(repr(k) for k in keys)
        raise ReadingError(f"{where}: give the device's {said} (a text or a whole number)")
    control = CONTROL_CHARACTERS.search(name)
    if len(name) > MAX_DEVICE_NAME or control:
        raise ReadingError(
            f"{where}: a device name is at most {MAX_DEVICE_NAME} printable characters, got "
            f"{len(name)} characters{' with control characters' if control else ''}"
        )
    return name


def _device_id(body: Mapping, route: str, where: str) -> str:
    """The id a device route's body names (its prefix and name), or a 422 naming the keys."""
    prefix, keys = NAMED_BY[route]
    return prefix + _device_name(body, keys, where)


def _tilt_colour(form: Mapping) -> str:
    """A Tilt post's colour as its device id names it ("" when missing)."""
    return str(form.get("Color") or "").split(":")[0].strip().lower()


def push_schemas() -> dict[str, tuple[str, dict]]:
    """What each push route takes, as OpenAPI request bodies (media type, JSON schema),
    written beside the parsers they describe; the devices' other fields are ignored."""
    number = {"type": "number"}
    name = {"type": "string", "minLength": 1, "maxLength": MAX_DEVICE_NAME}
    unit_keys = {key: {"type": "string"} for keys in UNIT_KEYS.values() for key in keys}
    spindel = {
        "type": "object",
        "description": "An iSpindel or GravityMon HTTP post, as the firmware sends it.",
        "properties": {
            "name": name,
            "ID": {"oneOf": [{"type": "integer"}, name]},
            "gravity": number,
            "temperature": number,
            "angle": number,
            "battery": number,
            "interval": {"type": "integer"},
            **unit_keys,
        },
        "anyOf": [{"required": ["name"]}, {"required": ["ID"]}],
    }
    stream = {
        "type": "object",
        "description": "A Brewfather custom stream post.",
        "properties": {"name": name, "gravity": number, "temp": number, **unit_keys},
        "required": ["name"],
    }
    tilt = {
        "type": "object",
        "description": "The Tilt app's cloud-URL form (Timepoint: an Excel serial day in the "
        "phone's local time; SG; Temp in °F; Color).",
        "properties": {
            "Timepoint": {"type": "string", "pattern": r"^[0-9]{5}(\.[0-9]{1,10})?$"},
            "SG": {"type": "string", "pattern": r"^[0-9]\.[0-9]{3,4}$"},
            "Temp": {"type": "string", "pattern": r"^-?[0-9]{1,3}(\.[0-9])?$"},
            "Color": {"type": "string", "minLength": 1, "maxLength": 16},
            "Beer": {"type": "string"},
            "Comment": {"type": "string"},
        },
        "required": ["Timepoint", "SG", "Temp", "Color"],
    }
    reading = {
        "type": "object",
        "properties": {
            "device": name,
            "timestamp": {"type": "string", "format": "date-time"},
            "gravity": number,
            "gravity_unit": {"type": "string"},
            "temperature": number,
            "temperature_unit": {"type": "string"},
        },
        "required": ["device", "timestamp"],
    }
    own = {
        "type": "object",
        "description": "brewcast's own JSON: readings of any devices, each with its time.",
        "properties": {"readings": {"type": "array", "items": reading, "minItems": 1}},
        "required": ["readings"],
    }
    return {
        "/readings/ispindel": ("application/json", spindel),
        "/readings/brewfather": ("application/json", stream),
        "/readings/tilt": ("application/x-www-form-urlencoded", tilt),
        "/readings": ("application/json", own),
    }


def parse_ispindel(body: object, now: datetime, gravity_unit: str | None = None) -> Push:
    """iSpindel / GravityMon JSON: ``name`` (or ``ID``), ``gravity`` in the owner's unit
    (GravityMon's ``gravity-unit``: G or P; an iSpindel says nothing: the device's assigned
    ``gravity_unit``), ``temperature`` in ``temp_units`` (C, F, K). It carries no time: the
    reading is at ``now``."""
    if not isinstance(body, dict):
        raise ReadingError("body: an iSpindel posts a JSON object")
    push = Push(_device_id(body, "/readings/ispindel", "body"))
    gravity = _number(body, "gravity", "body")
    if gravity is not None:
        unit = _declared(body, "gravity", "body") or gravity_unit
        if unit is None:
            raise UnitPending(
                "body.gravity: an iSpindel does not say its gravity unit; the push is kept "
                "and stored when the device is assigned its gravity_unit, SG or °P "
                "(PUT /devices/...), or send GravityMon's gravity-unit"
            )
        push.add(now, "gravity_plato", gravity, unit, "body.gravity")
    temperature = _number(body, "temperature", "body")
    if temperature is not None:
        # the firmware's own default: an invalid or missing scale is Celsius
        unit = _declared(body, "temperature", "body") or "°C"
        push.add(now, "temperature_c", temperature, unit, "body.temperature")
    if not push.rows:
        raise ReadingError("body: neither gravity nor temperature")
    return push


def parse_brewfather(body: object, now: datetime) -> Push:
    """A Brewfather custom stream: ``name``, ``gravity`` in ``gravity_unit`` (G or P),
    ``temp`` in ``temp_unit`` (C, F, K); at ``now``."""
    if not isinstance(body, dict):
        raise ReadingError("body: a Brewfather stream posts a JSON object")
    push = Push(_device_id(body, "/readings/brewfather", "body"))
    gravity = _number(body, "gravity", "body")
    if gravity is not None:
        unit = _declared(body, "gravity", "body") or "SG"  # the stream's default: G
        push.add(now, "gravity_plato", gravity, unit, "body.gravity")
    temperature = _number(body, "temp", "body")
    if temperature is not None:
        unit = _declared(body, "temperature", "body") or "°C"
        push.add(now, "temperature_c", temperature, unit, "body.temp")
    if not push.rows:
        raise ReadingError("body: a stream needs gravity or temp")
    return push


def parse_tilt(form: Mapping[str, str], zone, now: datetime | None = None) -> Push:
    """The Tilt app's cloud-URL post (form fields): ``Timepoint`` (an Excel serial day in
    the phone's local time, read in ``zone``), ``SG``, ``Temp`` in °F, ``Color``. In the
    hour a clock change repeats, the local time is the one nearer ``now`` (the post
    arrives as it is made)."""
    colour = _tilt_colour(form)
    if not colour:
        raise ReadingError("Color: the Tilt's colour is missing")
    local = tilt_local_times(pd.Series([form.get("Timepoint", "")], dtype=object)).iloc[0]
    if pd.isna(local):
        raise ReadingError(f"Timepoint: {TILT_SERIAL_HELP}; got {form.get('Timepoint')!r}")
    candidates = {
        local.tz_localize(zone, ambiguous=dst, nonexistent="shift_forward") for dst in (True, False)
    }
    reference = pd.Timestamp(now or datetime.now(UTC))
    at = min(candidates, key=lambda c: abs(c - reference))
    push = Push(f"tilt:{colour}")
    when = at.tz_convert("UTC").to_pydatetime()
    for key, tag, unit in (("SG", "gravity_plato", "SG"), ("Temp", "temperature_c", "°F")):
        value = _number(form, key, "form")
        if value is None:
            raise ReadingError(f"{key}: missing")
        push.add(when, tag, value, unit, key, judge=False)
    return push


def parse_readings(body: object, max_rows: int | None = None) -> list[Push]:
    """brewcast's own JSON: ``{"readings": [{"device", "timestamp" (ISO 8601 with offset),
    "gravity"?, "gravity_unit"?, "temperature"?, "temperature_unit"?}, ...]}``, at most
    ``max_rows`` readings (a 413 beyond: send them in several requests)."""
    items = body.get("readings") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ReadingError('body: a JSON object with a non-empty list "readings"', 400)
    if max_rows is not None and len(items) > max_rows:
        raise ReadingError(
            f"readings: {len(items)} in one request, at most {max_rows} "
            "(BREWCAST_SERVING_MAX_ROWS): send them in several requests",
            413,
        )
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
                push.add(when, tag, value, unit, f"{where}.{key}")
                found = True
        if not found:
            raise ReadingError(f"{where}: neither gravity nor temperature")
    return list(pushes.values())


def _check(push: Push, now: datetime) -> None:
    """Refuse a push holding a value that is no number, a time in the future or before
    2000, or two values for one (time, tag); the same reading twice is kept once (checked
    for every push of a request before any is stored: nothing half-stored)."""
    seen: dict[tuple[datetime, str], float] = {}
    for at, tag, value in push.rows:
        if not math.isfinite(value):
            raise ReadingError(f"{tag}: {value} is no number")
        if at > now + FUTURE_TOLERANCE:
            raise ReadingError(
                f"timestamp: {at.isoformat()} is in the future (now {now.isoformat()})"
            )
        if at < EARLIEST_READING:
            raise ReadingError(
                f"timestamp: {at.isoformat()} is before 2000: the device's clock is not set"
            )
        if seen.setdefault((at, tag), value) != value:
            raise ReadingError(
                f"{push.device_id}: two {tag} values at {at.isoformat()} in one push "
                f"({seen[(at, tag)]:g} and {value:g}): send one"
            )
    if len(seen) < len(push.rows):  # repeats within the push: the first of each
        keep = {}
        for i, (at, tag, _) in enumerate(push.rows):
            keep.setdefault((at, tag), i)
        order = sorted(keep.values())
        push.rows[:] = [push.rows[i] for i in order]
        if push.units:
            push.units[:] = [push.units[i] for i in order]
        if push.sent:
            push.sent[:] = [push.sent[i] for i in order]


def unit_contradiction(values: np.ndarray, unit: str, history: np.ndarray, tag: str) -> str | None:
    """The unit a push's ``values`` (canonical, declared in ``unit``) were more likely sent
    in, judged with the device's recent ``history`` (canonical) as :func:`likely_unit`
    judges a file: one dry reading of a batch that started at 12 °P is °P, a device that
    never left 0.985..1.13 is SG. None: no contradiction (or a unit it cannot judge)."""
    quantity = _quantity(tag)
    try:
        raw = from_canonical(np.concatenate([history, values]), unit, quantity)
    except UnitError:
        return None
    return likely_unit(raw, unit)


def _correct(
    conn, key: Mapping, changes: dict, old_value: float, old_received: datetime, now: datetime
) -> None:
    """Change the stored reading at ``key``'s (device, time, tag), keeping the value it had
    in ``reading_corrections``: a correction loses nothing."""
    conn.execute(
        readings.update()
        .where(
            readings.c.device_id == key["device_id"],
            readings.c.timestamp == key["timestamp"],
            readings.c.tag == key["tag"],
        )
        .values(**changes, received_at=now)
    )
    conn.execute(
        reading_corrections.insert().values(
            device_id=key["device_id"],
            timestamp=key["timestamp"],
            tag=key["tag"],
            old_value=old_value,
            new_value=changes["value"],
            old_received_at=old_received,
            corrected_at=now,
        )
    )


def _offsets(device: Mapping | None) -> dict[str, float]:
    """A device's calibration offsets by tag (none for a device nobody assigned)."""
    if device is None:
        return {}
    found = {
        "gravity_plato": device.get("gravity_offset_plato"),
        "temperature_c": device.get("temperature_offset_c"),
    }
    return {tag: float(offset) for tag, offset in found.items() if offset}


#: How many of a batch's latest readings a new gravity reading is compared with.
JUMP_REFERENCE = 3


def gravity_jump(recent: Sequence[float], value: float, limit: float) -> str | None:
    """Why ``value`` (°P) is held out of its batch's curve, or None: it lies more than
    ``limit`` °P above the median of the batch's ``recent`` readings (a median, so one
    glitch among them does not hold out every reading after it)."""
    if not recent:
        return None
    reference = float(np.median(recent))
    if value - reference <= limit:
        return None
    return (
        f"gravity {value:.2f} °P is {value - reference:.2f} °P above the batch's last "
        f"readings ({reference:.2f} °P): held out of the curve (a device moved to another "
        "fermenter, a probe out of the liquid?)"
    )


@dataclass
class Stored:
    """What one push did: readings new, repeated (no-ops) and corrected (another value at
    a stored key: the newest wins, the old one is kept in ``reading_corrections``); the
    batch of its latest reading, and how many of its readings found no batch."""

    device_id: str
    stored: int
    duplicates: int
    batch_id: str | None  # the latest reading's batch; None: unassigned
    corrected: int = 0
    unassigned: int = 0
    #: why readings were stored but kept out of their batch's curve (gravity jumps)
    held_out: list[str] = field(default_factory=list)
    #: per batch changed: (its revision after this push, the readings it added, whether
    #: stored values changed: a copy of the batch cannot just be extended then)
    changed: dict[str, tuple[int, list[tuple[datetime, str, float]], bool]] = field(
        default_factory=dict, repr=False
    )

    def to_dict(self) -> dict:
        return {
            "device": self.device_id,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "corrected": self.corrected,
            "unassigned": self.unassigned,
            "held_out": len(self.held_out),
            "batch_id": self.batch_id,
            "status": "assigned" if not self.unassigned else "unassigned",
            **({"warnings": self.held_out[:20]} if self.held_out else {}),
        }


class ReadingsStore:
    """The service's batches, devices and readings (see the module's text)."""

    def __init__(
        self,
        engine: sa.Engine,
        cached_batches: int = 1000,
        max_gravity_jump_plato: float = ValidationSettings.model_fields[
            "max_gravity_cumulative_rise_plato"
        ].default,
    ):
        self.engine = engine
        self.max_gravity_jump_plato = max_gravity_jump_plato
        create_tables(engine, metadata)  # and a store an earlier release wrote, upgraded
        self.cache = ReadingsCache(cached_batches)
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._count_push = (
            insert(batch_revisions)
            .values(batch_id=sa.bindparam("batch_id"), revision=1)
            .on_conflict_do_update(
                index_elements=["batch_id"], set_={"revision": batch_revisions.c.revision + 1}
            )
            .returning(batch_revisions.c.revision)
        )

    # -- batches ---------------------------------------------------------------------------
    def start_batch(self, batch: dict, now: datetime | None = None) -> dict:
        """A new batch; a pitch in the future is refused (its readings cannot exist yet)."""
        _pitched(batch["start_time"], now or now_utc())
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(batches.c.batch_id).where(batches.c.batch_id == batch["batch_id"])
            ).first()
            if found:
                raise ReadingError(
                    f"batch_id: {batch['batch_id']!r} exists already (PATCH it)", 409
                )
            conn.execute(batches.insert().values(**batch))
            if batch.get("fermenter"):
                self._reattach(conn, fermenter=batch["fermenter"])
        return self.batch(batch["batch_id"])

    def update_batch(self, batch_id: str, changes: dict, now: datetime | None = None) -> dict:
        """Edit a batch. A corrected pitch time (``start_time``) moves its readings with it:
        those now before it are the batch's no more (unassigned), those a device in its
        fermenter took since it join; in the future, it is refused as at the start."""
        if not changes:
            raise ReadingError(f"body: nothing to change; give one or more of {BATCH_CHANGES}", 422)
        if "start_time" in changes:
            if changes["start_time"] is None:
                raise ReadingError(
                    "start_time: a batch's pitch time cannot be removed (give the right one)",
                    422,
                )
            _pitched(changes["start_time"], now or now_utc())
        with self.engine.begin() as conn:
            done = conn.execute(
                batches.update().where(batches.c.batch_id == batch_id).values(**changes)
            )
            if done.rowcount == 0:
                raise ReadingError(f"batch {batch_id!r} does not exist", 404)
            if changes.get("start_time") is not None:
                early = (readings.c.batch_id == batch_id) & (
                    readings.c.timestamp < changes["start_time"]
                )
                if conn.execute(readings.update().where(early).values(batch_id=None)).rowcount:
                    self._next_revision(conn, batch_id)
            fermenter = conn.execute(
                sa.select(batches.c.fermenter).where(batches.c.batch_id == batch_id)
            ).scalar_one()
            if fermenter:
                self._reattach(conn, fermenter=fermenter)
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
    def assign(
        self,
        device_id: str,
        fermenter: str,
        gravity_unit: str | None = None,
        gravity_offset_plato: float | None = None,
        temperature_offset_c: float | None = None,
        correct_gravity_since: datetime | None = None,
        now: datetime | None = None,
    ) -> dict:
        """Put a device in a fermenter with its settings: the unit of its unlabelled
        gravity and its calibration offsets (added to what it sends from now on). With
        ``correct_gravity_since``, its gravity readings stored since then are read again
        in ``gravity_unit`` (from the value as sent; with today's offset): a device declared
        in the wrong unit is corrected, each old value kept in ``reading_corrections``."""
        values = {
            "device_id": device_id,
            "fermenter": fermenter,
            "gravity_unit": gravity_unit,
            "gravity_offset_plato": gravity_offset_plato,
            "temperature_offset_c": temperature_offset_c,
        }
        if correct_gravity_since is not None and gravity_unit is None:
            raise ReadingError("correct_gravity_since: give the gravity_unit to read them in")
        correct_gravity_since = _as_utc(correct_gravity_since)
        with self.engine.begin() as conn:
            conn.execute(devices.delete().where(devices.c.device_id == device_id))
            conn.execute(devices.insert().values(**values))
            corrected, touched = (
                self._redeclare(conn, values, correct_gravity_since, now or now_utc())
                if correct_gravity_since is not None
                else (0, set())
            )
            replayed = self._replay_pending(conn, device_id, gravity_unit)
            reattached = self._reattach(conn, device_id=device_id)
        for batch_id in {*replayed, *touched}:  # changed in this transaction: read again
            self.cache.drop(batch_id)
        return {
            **values,
            "reattached": reattached,
            "pending_stored": len(replayed),
            "corrected": corrected,
        }

    def _redeclare(
        self, conn, device: dict, since: datetime, now: datetime
    ) -> tuple[int, set[str]]:
        """Re-read the device's gravity readings since ``since`` in its ``gravity_unit``:
        each changed value updated and its old one kept; how many changed, and their
        batches. A reading stored before its sent value was kept is taken as
        sent in °P, the unit it was stored in. Refused whole when one would leave physics."""
        unit = device["gravity_unit"]
        mine = sa.and_(
            readings.c.device_id == device["device_id"],
            readings.c.tag == "gravity_plato",
            readings.c.timestamp >= since,
        )
        rows = conn.execute(sa.select(readings).where(mine)).mappings().all()
        offset = _offsets(device).get("gravity_plato", 0.0)
        changed = []
        for row in rows:
            sent_value = row["sent_value"] if row["sent_value"] is not None else row["value"]
            value, name = _canonical(
                sent_value, unit, "gravity_plato", f"the reading at {row['timestamp']}"
            )
            value += offset
            if value == row["value"]:
                continue
            changes = {"value": value, "sent_value": sent_value, "sent_unit": name}
            _correct(conn, row, changes, row["value"], row["received_at"], now)
            changed.append(row["batch_id"])
        touched = {b for b in changed if b}
        for batch_id in touched:
            self._next_revision(conn, batch_id)
        return len(changed), touched

    def _replay_pending(self, conn, device_id: str, gravity_unit: str | None) -> list[str]:
        """Store the pushes kept while ``device_id``'s gravity unit was unknown, each at the
        time it arrived, now that it is known; each kept push says what became of it. The
        batches they reached."""
        if gravity_unit is None or not device_id.startswith("ispindel:"):
            return []
        waiting = conn.execute(
            sa.select(refused_pushes).where(
                refused_pushes.c.device_id == device_id, refused_pushes.c.status == 202
            )
        ).mappings()
        reached: list[str] = []
        for kept in list(waiting):
            arrived = _as_utc(kept["received_at"])
            try:
                push = parse_ispindel(json.loads(kept["body"]), arrived, gravity_unit)
                _check(push, now_utc())
                result = self._store(conn, push, arrived)
                status, reason = 200, f"stored when the device was assigned {gravity_unit}"
                reached += [b for b in result.changed]
            except (ReadingError, ValueError) as exc:
                status = exc.status if isinstance(exc, ReadingError) else 400
                reason = f"refused when the device was assigned {gravity_unit}: {exc}"
            conn.execute(
                refused_pushes.update()
                .where(refused_pushes.c.refusal_id == kept["refusal_id"])
                .values(status=status, reason=reason[:1000])
            )
        return reached

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

    # -- refused pushes ----------------------------------------------------------------------
    def refuse(self, route: str, body: str, error: ReadingError, now: datetime) -> None:
        """Keep a refused push with its reason (the device named in it, if any)."""
        row = {
            "received_at": now,
            "route": route,
            "device_id": named_device(route, body),
            "status": error.status,
            "reason": str(error)[:1000],
            "body": body[:2000],
        }
        with self.engine.begin() as conn:
            conn.execute(refused_pushes.insert().values(**row))

    def refused(self, batch: dict) -> list[dict]:
        """The pushes refused from the devices now in ``batch``'s fermenter while it ran."""
        named = sa.select(devices.c.device_id).where(devices.c.fermenter == batch["fermenter"])
        query = (
            sa.select(refused_pushes)
            .where(
                refused_pushes.c.device_id.in_(named),
                refused_pushes.c.received_at >= batch["start_time"],
                refused_pushes.c.status >= 400,  # not the kept ones stored since (200)
            )
            .order_by(refused_pushes.c.received_at)
        )
        if batch.get("end_time") is not None:
            query = query.where(refused_pushes.c.received_at <= batch["end_time"])
        with self.engine.connect() as conn:
            return [_utc(dict(r)) for r in conn.execute(query).mappings()]

    def held_out(self, batch_id: str) -> list[dict]:
        """The batch's readings kept out of its curve, with why."""
        query = (
            sa.select(
                readings.c.device_id,
                readings.c.timestamp,
                readings.c.tag,
                readings.c.value,
                readings.c.held_out.label("reason"),
            )
            .where(readings.c.batch_id == batch_id, readings.c.held_out.is_not(None))
            .order_by(readings.c.timestamp)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**r, "timestamp": _as_utc(r["timestamp"])} for r in rows]

    def troubles(self, running: Sequence[dict]) -> dict[str, dict]:
        """What went wrong with each running batch's readings, for its card: ``held_out``
        (readings kept out of its curve: count, the latest's reason), ``refused`` (pushes
        refused from the devices now in its fermenter since its pitch: count, the latest's
        reason) and ``unassigned`` (readings of those devices that found no batch, taken
        in the week before its pitch or since: count, the devices). Three grouped queries,
        however many batches; a batch with no trouble is absent."""
        out: dict[str, dict] = {}
        if not running:
            return out
        by_id = {b["batch_id"]: b for b in running}
        newest_held = (
            sa.select(
                readings.c.batch_id,
                sa.func.count().label("count"),
                sa.func.max(readings.c.timestamp).label("last"),
            )
            .where(readings.c.batch_id.in_(list(by_id)), readings.c.held_out.is_not(None))
            .group_by(readings.c.batch_id)
            .subquery()
        )
        held = sa.select(newest_held.c.batch_id, newest_held.c.count, readings.c.held_out).join(
            readings,
            (readings.c.batch_id == newest_held.c.batch_id)
            & (readings.c.timestamp == newest_held.c.last)
            & readings.c.held_out.is_not(None),
        )
        fermenters = {b["fermenter"] for b in running if b.get("fermenter")}
        with self.engine.connect() as conn:
            for batch_id, count, reason in conn.execute(held):
                out.setdefault(batch_id, {})["held_out"] = {"count": int(count), "reason": reason}
            owners = dict(
                conn.execute(
                    sa.select(devices.c.device_id, devices.c.fermenter).where(
                        devices.c.fermenter.in_(fermenters)
                    )
                ).all()
            )
            earliest = min(b["start_time"] for b in running) - PRE_PITCH_WINDOW
            refusals = conn.execute(
                sa.select(
                    refused_pushes.c.device_id,
                    refused_pushes.c.received_at,
                    refused_pushes.c.reason,
                )
                .where(
                    refused_pushes.c.device_id.in_(list(owners)),
                    refused_pushes.c.status >= 400,
                    refused_pushes.c.received_at >= earliest,
                )
                .order_by(refused_pushes.c.received_at)
            ).all()
            loose = conn.execute(
                sa.select(readings.c.device_id, readings.c.timestamp).where(
                    readings.c.device_id.in_(list(owners)),
                    readings.c.batch_id.is_(None),
                    readings.c.timestamp >= earliest,
                )
            ).all()
        for batch in running:
            mine = {d for d, f in owners.items() if f == batch.get("fermenter")}
            start = batch["start_time"]
            refused = [
                r for r in refusals if r[0] in mine and _as_utc(r[1]) >= start
            ]  # oldest first
            if refused:
                out.setdefault(batch["batch_id"], {})["refused"] = {
                    "count": len(refused),
                    "reason": refused[-1][2],
                }
            orphans = [d for d, t in loose if d in mine and _as_utc(t) >= start - PRE_PITCH_WINDOW]
            if orphans:
                out.setdefault(batch["batch_id"], {})["unassigned"] = {
                    "count": len(orphans),
                    "devices": sorted(set(orphans)),
                }
        return out

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
            results = [self._store(conn, push, now) for push in pushes]
        for result in results:  # committed: this worker's copies learn them
            for batch_id, (revision, added, rewritten) in result.changed.items():
                if rewritten:
                    self.cache.drop(batch_id)
                else:
                    self.cache.added(batch_id, revision, added)
        return results

    def _judge_units(self, conn, push: Push) -> None:
        """Refuse a push whose values contradict their declared unit, judged with the
        device's readings of the last :data:`UNIT_HISTORY` (a 422 naming the likely unit)."""
        if not push.units:
            return
        first = min(at for at, _, _ in push.rows)
        groups: dict[tuple[str, str], list[float]] = {}
        for (_, tag, value), unit in zip(push.rows, push.units, strict=True):
            if unit is not None:
                groups.setdefault((tag, unit), []).append(value)
        for (tag, unit), values in groups.items():
            mine = (
                readings.c.device_id == push.device_id,
                readings.c.tag == tag,
                readings.c.timestamp >= first - UNIT_HISTORY,
            )
            # what likely_unit reads, without reading a busy device's whole history: the
            # latest readings for its medians, and for a °P gravity (judged by its range)
            # one reading of the whole window outside SG's span, if any
            history = list(
                conn.execute(
                    sa.select(readings.c.value)
                    .where(*mine)
                    .order_by(readings.c.timestamp.desc())
                    .limit(UNIT_SAMPLE)
                ).scalars()
            )
            if tag == "gravity_plato" and unit == "°P":
                low, high = SG_SPAN
                outside = sa.or_(readings.c.value < low, readings.c.value > high)
                history += conn.execute(
                    sa.select(readings.c.value).where(*mine, outside).limit(1)
                ).scalars()
            likely = unit_contradiction(np.array(values), unit, np.array(history, float), tag)
            if likely is not None:
                raise ReadingError(
                    f"{push.device_id}: {tag} values sent as {unit} look like {likely} "
                    f"(with its readings of the last {UNIT_HISTORY.days} days): declare "
                    f"{likely} (the push's unit key, or the device's unit: PUT /devices/...)"
                )

    def _store(self, conn, push: Push, now: datetime) -> Stored:
        """One push's readings, each to the batch running in its device's fermenter at
        that reading's time (a reading before the pitch stays unassigned, the rest of the
        push does not); repeats are no-ops, another value at a stored key corrects it."""
        self._judge_units(conn, push)
        device = (
            conn.execute(sa.select(devices).where(devices.c.device_id == push.device_id))
            .mappings()
            .first()
        )
        windows = self._windows(conn, device["fermenter"]) if device is not None else []
        existing = {
            (_as_utc(t), tag): (value, received)
            for t, tag, value, received in conn.execute(
                sa.select(
                    readings.c.timestamp, readings.c.tag, readings.c.value, readings.c.received_at
                ).where(
                    readings.c.device_id == push.device_id,
                    readings.c.timestamp.in_(sorted({at for at, _, _ in push.rows})),
                )
            )
        }
        offsets = _offsets(device)
        sent = push.sent or [(None, None)] * len(push.rows)
        new, corrected, duplicates = [], [], 0
        for (at, tag, value), (sent_value, sent_unit) in zip(push.rows, sent, strict=True):
            value = value + offsets.get(tag, 0.0)
            row = {
                "device_id": push.device_id,
                "timestamp": at,
                "tag": tag,
                "value": value,
                "batch_id": _batch_at(windows, at),
                "received_at": now,
                "sent_value": sent_value,
                "sent_unit": sent_unit,
                "held_out": None,  # or why it is kept out of the curve: _hold_out_jumps
            }
            old = existing.get((at, tag))
            if old is None:
                new.append(row)
            elif old[0] == value:
                duplicates += 1
            else:
                corrected.append((row, old))
        held_out = self._hold_out_jumps(conn, [*new, *(row for row, _ in corrected)])
        if new:
            conn.execute(readings.insert(), new)
        for row, (old_value, old_received) in corrected:
            changes = {
                k: row[k] for k in ("value", "batch_id", "held_out", "sent_value", "sent_unit")
            }
            _correct(conn, row, changes, old_value, old_received, now)
        touched: dict[str, tuple[list, bool]] = {}
        for row in new:
            if row["batch_id"] and row["held_out"] is None:
                touched.setdefault(row["batch_id"], ([], False))[0].append(
                    (row["timestamp"], row["tag"], row["value"])
                )
        for row, _ in corrected:  # a batch whose readings changed: its copies are reloaded
            if row["batch_id"]:
                touched[row["batch_id"]] = (touched.get(row["batch_id"], ([], True))[0], True)
        changed = {
            batch_id: (self._next_revision(conn, batch_id), added, rewritten)
            for batch_id, (added, rewritten) in touched.items()
        }
        written = new + [row for row, _ in corrected]
        latest = max(push.rows, key=lambda r: r[0])[0]
        return Stored(
            push.device_id,
            len(new),
            duplicates,
            _batch_at(windows, latest),
            corrected=len(corrected),
            unassigned=sum(1 for row in written if row["batch_id"] is None),
            held_out=held_out,
            changed=changed,
        )

    def _hold_out_jumps(self, conn, rows: list[dict]) -> list[str]:
        """Mark (``held_out``) each gravity reading among ``rows`` that lies more than
        ``max_gravity_jump_plato`` above the median of its batch's last
        :data:`JUMP_REFERENCE` readings kept before it: gravity only falls, so such a value
        is a device moved to a fresh batch or a probe out of the liquid, and folding it into
        the curve would move the forecast. It is stored (and reaches the lake, whose
        validation judges it again) but not drawn or forecast from. Returns the reasons."""
        by_batch: dict[str, list[dict]] = {}
        for row in rows:
            if row["batch_id"] and row["tag"] == "gravity_plato":
                by_batch.setdefault(row["batch_id"], []).append(row)
        reasons = []
        low, high = READING_VALUE_RANGES["gravity_plato"]
        for batch_id, mine in by_batch.items():
            mine.sort(key=lambda r: r["timestamp"])
            earlier = conn.execute(
                sa.select(readings.c.value)
                .where(
                    readings.c.batch_id == batch_id,
                    readings.c.tag == "gravity_plato",
                    readings.c.held_out.is_(None),
                    readings.c.timestamp < mine[0]["timestamp"],
                    readings.c.value.between(low, high),
                )
                .order_by(readings.c.timestamp.desc())
                .limit(JUMP_REFERENCE)
            ).scalars()
            recent = list(reversed(list(earlier)))
            for row in mine:
                reason = gravity_jump(recent, row["value"], self.max_gravity_jump_plato)
                if reason is None:
                    if low <= row["value"] <= high:
                        recent = [*recent, row["value"]][-JUMP_REFERENCE:]
                    continue
                row["held_out"] = reason
                reasons.append(f"{row['device_id']} at {row['timestamp'].isoformat()}: {reason}")
        return reasons

    @staticmethod
    def _windows(conn, fermenter: str) -> list[tuple[str, datetime, datetime | None]]:
        """The batches of ``fermenter``: (id, pitch, end), latest pitch first."""
        query = (
            sa.select(batches.c.batch_id, batches.c.start_time, batches.c.end_time)
            .where(batches.c.fermenter == fermenter)
            .order_by(batches.c.start_time.desc())
        )
        return [(b, _as_utc(s), _as_utc(e)) for b, s, e in conn.execute(query)]

    def _reattach(self, conn, fermenter: str | None = None, device_id: str | None = None) -> int:
        """Give the unassigned readings of ``device_id`` (or of every device in
        ``fermenter``) the batch running in its fermenter at their time: what an assignment
        or a new batch window makes known. The batches they join count a revision."""
        assigned = sa.select(devices.c.device_id, devices.c.fermenter)
        if device_id is not None:
            assigned = assigned.where(devices.c.device_id == device_id)
        if fermenter is not None:
            assigned = assigned.where(devices.c.fermenter == fermenter)
        moved = 0
        for device, vessel in conn.execute(assigned).all():
            windows = self._windows(conn, vessel)
            if not windows:
                continue
            waiting = conn.execute(
                sa.select(readings.c.timestamp, readings.c.tag).where(
                    readings.c.device_id == device, readings.c.batch_id.is_(None)
                )
            ).all()
            joined: dict[str, int] = {}
            for at, tag in waiting:
                batch_id = _batch_at(windows, _as_utc(at))
                if batch_id is None:
                    continue
                conn.execute(
                    readings.update()
                    .where(
                        readings.c.device_id == device,
                        readings.c.timestamp == at,
                        readings.c.tag == tag,
                    )
                    .values(batch_id=batch_id)
                )
                joined[batch_id] = joined.get(batch_id, 0) + 1
            for batch_id, count in joined.items():
                self._next_revision(conn, batch_id)
                moved += count
        return moved

    def _next_revision(self, conn, batch_id: str) -> int:
        """Count one more push into ``batch_id`` (in the push's transaction), the new count."""
        return int(conn.execute(self._count_push, {"batch_id": batch_id}).scalar_one())

    def running(self, at: datetime | None = None, batch_id: str | None = None) -> list[dict]:
        """The batches running at ``at`` (now: not ended), or the one ``batch_id``, each with
        its readings' ``revision``: one query, however many batches."""
        if batch_id is not None:
            query, bound = _ONE_BATCH, {"batch_id": batch_id}
        elif at is None:
            query, bound = _NOT_ENDED, {}
        else:
            query, bound = _RUNNING_AT, {"at": at}
        with self.engine.connect() as conn:
            rows = [_utc(dict(r)) for r in conn.execute(query, bound).mappings()]
        if batch_id is not None and not rows:
            raise ReadingError(f"batch {batch_id!r} does not exist", 404)
        return rows

    def series(self, running: Sequence[dict]) -> list[tuple[Series, Series]]:
        """Each batch's (gravity, temperature) readings, from this worker's memory where its
        copy is at the batch's revision, else read again (those batches in one query)."""
        out = {b["batch_id"]: self.cache.get(b["batch_id"], b["revision"]) for b in running}
        stale = [b for b, found in out.items() if found is None]
        for start in range(0, len(stale), 500):  # bound the IN list
            out.update(self._load(stale[start : start + 500]))
        return [out[b["batch_id"]] for b in running]

    def _load(self, batch_ids: list[str]) -> dict[str, tuple[Series, Series]]:
        """Read the batches' readings and the revision they make in one statement (one
        snapshot of the database in SQLite and PostgreSQL alike), and keep them."""
        query = sa.text(
            "SELECT r.batch_id, r.tag, r.timestamp, r.value, COALESCE(v.revision, 0) "
            "FROM readings r LEFT JOIN batch_revisions v ON v.batch_id = r.batch_id "
            "WHERE r.batch_id IN :batches AND r.held_out IS NULL"
        ).bindparams(sa.bindparam("batches", expanding=True))
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"batches": batch_ids}).fetchall()
        # columns from the driver's rows: a frame built from SQLAlchemy's rows costs 6x more
        names = ("batch_id", "tag", "timestamp", "value", "revision")
        columns = zip(*rows, strict=True) if rows else ([] for _ in names)
        frame = pd.DataFrame(
            {name: pd.Series(list(c), dtype=object) for name, c in zip(names, columns, strict=True)}
        )
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        frame["value"] = frame["value"].astype("float64")
        groups = dict(tuple(frame.groupby("batch_id", sort=False)))
        out = {}
        for batch_id in batch_ids:
            mine = groups.get(batch_id)
            if mine is None:  # no reading yet: revision 0
                out[batch_id] = self.cache.put(batch_id, 0, _EMPTY, _EMPTY)
                continue
            tags = [_series(mine[mine["tag"] == tag], tag) for tag in TAGS]
            out[batch_id] = self.cache.put(batch_id, int(mine["revision"].iloc[0]), *tags)
        return out


#: A stored batch with its readings' revision (0 before any): the forecasts' queries, built
#: once (SQLAlchemy then only looks their compiled form up).
_WITH_REVISION = (
    sa.select(batches, sa.func.coalesce(batch_revisions.c.revision, 0).label("revision"))
    .select_from(
        batches.outerjoin(batch_revisions, batch_revisions.c.batch_id == batches.c.batch_id)
    )
    .order_by(batches.c.start_time)
)
_ONE_BATCH = _WITH_REVISION.where(batches.c.batch_id == sa.bindparam("batch_id"))
_NOT_ENDED = _WITH_REVISION.where(batches.c.end_time.is_(None))
_RUNNING_AT = _WITH_REVISION.where(
    batches.c.start_time <= sa.bindparam("at", type_=batches.c.start_time.type),
    sa.or_(
        batches.c.end_time.is_(None),
        batches.c.end_time > sa.bindparam("at", type_=batches.c.start_time.type),
    ),
)
_EMPTY = Series(np.empty(0), np.empty(0))
#: The tags a snapshot reads, in the order the store returns their series.
TAGS = ("gravity_plato", "temperature_c")


def _series(rows: pd.DataFrame, tag: str) -> Series:
    """One tag's stored readings as a :class:`~brewcast.snapshots.Series`: sorted by time
    (stable, as training sorts the lake's) and inside the physical range."""
    hours = hours_of(rows["timestamp"])
    values = rows["value"].to_numpy(dtype="float64")
    order = np.argsort(hours, kind="stable")
    return _plausible(Series(hours[order], values[order]), tag)


def _plausible(series: Series, tag: str) -> Series:
    low, high = READING_VALUE_RANGES[tag]
    keep = (series.values >= low) & (series.values <= high)
    return series if keep.all() else Series(series.hours[keep], series.values[keep])


class ReadingsCache:
    """A worker's copy of its batches' readings, the most recently forecast ``capacity``
    ones: two float arrays a tag (16 bytes a reading; 30 days of 15-minute gravity and
    temperature are 92 KB). Each copy is tagged with the revision it was read or extended
    at; a forecast uses it only when that equals the stored revision, so readings another
    worker stored are never missed."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._batches: OrderedDict[str, tuple[int, Series, Series]] = OrderedDict()

    def get(self, batch_id: str, revision: int) -> tuple[Series, Series] | None:
        with self._lock:
            found = self._batches.get(batch_id)
            if found is None or found[0] != revision:
                return None
            self._batches.move_to_end(batch_id)
            return found[1], found[2]

    def put(
        self, batch_id: str, revision: int, gravity: Series, temperature: Series
    ) -> tuple[Series, Series]:
        with self._lock:
            found = self._batches.get(batch_id)
            if found is None or found[0] <= revision:
                self._batches[batch_id] = (revision, gravity, temperature)
                self._batches.move_to_end(batch_id)
                while len(self._batches) > self.capacity:
                    self._batches.popitem(last=False)
        return gravity, temperature

    def drop(self, batch_id: str) -> None:
        """Forget a batch whose stored readings changed (read again when next forecast)."""
        with self._lock:
            self._batches.pop(batch_id, None)

    def added(self, batch_id: str, revision: int, rows: list[tuple[datetime, str, float]]) -> None:
        """A committed push's readings: extend the copy made at the revision before it
        (a copy read after the push already holds them; an older one is dropped)."""
        with self._lock:
            found = self._batches.get(batch_id)
            if found is None or found[0] >= revision:
                return
            if found[0] != revision - 1:
                del self._batches[batch_id]
                return
            tags = [found[1], found[2]]
            for i, tag in enumerate(TAGS):
                mine = [(hour_of(at), value) for at, t, value in rows if t == tag]
                if mine:
                    hours, values = (np.array(c, dtype="float64") for c in zip(*mine, strict=True))
                    tags[i] = _extended(tags[i], _plausible(Series(hours, values), tag))
            self._batches[batch_id] = (revision, tags[0], tags[1])


def _batch_at(windows: list[tuple[str, datetime, datetime | None]], at: datetime) -> str | None:
    """The batch of ``windows`` (latest pitch first) running at ``at``: pitched by then and
    not ended before."""
    for batch_id, start, end in windows:
        if start <= at and (end is None or end >= at):
            return batch_id
    return None


def _extended(series: Series, more: Series) -> Series:
    """``series`` with ``more`` readings, still sorted by time (a late push sorts in)."""
    hours = np.concatenate([series.hours, more.hours])
    values = np.concatenate([series.values, more.values])
    if len(series.hours) and len(more.hours) and more.hours.min() < series.hours[-1]:
        order = np.argsort(hours, kind="stable")
        hours, values = hours[order], values[order]
    return Series(hours, values)


def _pitched(start: datetime, now: datetime) -> None:
    """Refuse a pitch time in the future: its readings cannot exist yet."""
    if start > now + FUTURE_TOLERANCE:
        raise ReadingError(
            f"start_time: {start.isoformat()} is in the future (now {now.isoformat()}): "
            "start a batch when it is pitched",
            422,
        )


def named_device(route: str, body: str) -> str | None:
    """The device a refused body names, as its push would have (None: it names none)."""
    import json
    import urllib.parse

    try:
        if route.endswith("/tilt"):
            colour = _tilt_colour(dict(urllib.parse.parse_qsl(body)))
            return f"tilt:{colour}" if colour else None
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    if route in NAMED_BY:
        prefix, keys = NAMED_BY[route]
        name = _named(parsed, keys)
        return None if name is None else (prefix + name)[:64]
    items = parsed.get("readings")
    if route == "/readings" and isinstance(items, list) and items and isinstance(items[0], dict):
        device = items[0].get("device")
        return str(device)[:64] if isinstance(device, int | str) else None
    return None


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


def snapshot_records(
    items: Sequence[tuple[dict, Series, Series]], at: datetime
) -> list[dict | None]:
    """The snapshots at ``at`` of stored batches from their (gravity, temperature) readings,
    built by the training code (:func:`brewcast.snapshots.snapshot_columns`) in one frame,
    as request rows; None for a batch with no gravity reading yet. Readings after ``at``
    may be given: the training code never looks past its time."""
    t = np.array([hour_of(at)])
    parts, where = [], []
    for i, (batch, gravity, temperature) in enumerate(items):
        if len(gravity.hours) == 0:
            continue
        row = BatchRow(
            **{
                name: np.nan
                if batch.get(name) is None and name in _FLOAT_COLUMNS
                else batch.get(name)
                for name in BATCHES.names
            }
        )
        parts.append((row, snapshot_columns(row, gravity, temperature, t)))
        where.append(i)
    out: list[dict | None] = [None] * len(items)
    if not parts:
        return out
    table = snapshot_table(parts)
    columns = [[_plain(v) for v in np.asarray(values).tolist()] for values in table.values()]
    for i, row in zip(where, zip(*columns, strict=True), strict=True):
        out[i] = dict(zip(table, row, strict=True))
    return out


def score_running(
    store: ReadingsStore,
    model,
    running: Sequence[dict],
    at: datetime,
    rule: PlateauRule | None = None,
) -> list[tuple[dict, dict] | str]:
    """Each running batch's snapshot at ``at`` (its readings from memory while current) and
    its prediction-log row from ``model`` (a :class:`serving.model.ServedModel`), all scored
    in one onnxruntime call, the row with the cellar's ``state`` and ``state_detail``
    (:func:`brewcast.plateau.cellar_state` under ``rule``) and ``backcast`` (the store held
    a later reading than ``at``: a forecast made after the fact, not a live one); a batch
    with no gravity reading yet gives the reason instead."""
    rule = rule or PlateauRule()
    series = store.series(running)
    records = snapshot_records([(b, g, t) for b, (g, t) in zip(running, series, strict=True)], at)
    wanted = [{k: v for k, v in r.items() if k in REQUEST_FIELDS} for r in records if r]
    rows = iter(model.score(wanted, now_utc()) if wanted else [])
    scored = iter(wanted)
    until = hour_of(at)
    out: list[tuple[dict, dict] | str] = []
    for batch, (gravity, _), record in zip(running, series, records, strict=True):
        if not record:
            out.append(f"batch {batch['batch_id']} has no gravity reading yet")
            continue
        row = next(rows)
        known = gravity.hours <= until
        prompt = model.prompt_threshold
        row["state"], row["state_detail"] = cellar_state(
            gravity.hours[known],
            gravity.values[known],
            bool(row["decision"]),
            rule,
            record.get("gravity_slope_plato_per_day"),
            None if prompt is None else bool(row["probability"] >= prompt),
        )
        row["backcast"] = bool(
            len(gravity.hours) and gravity.hours[-1] > until + BACKCAST_SLACK_HOURS
        )
        out.append((next(scored), row))
    return out


def _plain(value):
    """A frame's cell as JSON-ready Python (NaN and NA: None)."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return None if value is pd.NA else value


def now_utc() -> datetime:
    return datetime.now(UTC)

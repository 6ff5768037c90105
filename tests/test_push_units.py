"""A pushed reading is stored in its true unit and time, or refused with a reason naming the
field: the devices' unit keys honoured, a value judged against its declared unit with the
device's history (as a file's are), no 500 from repeated keys or unset clocks, device
names kept whole."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brewcast.units import from_canonical, sg_to_plato
from serving.prediction_log import make_engine
from serving.readings import (
    Push,
    ReadingError,
    ReadingsStore,
    parse_brewfather,
    parse_ispindel,
    parse_readings,
    parse_tilt,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    return ReadingsStore(make_engine(f"sqlite:///{tmp_path / 'readings.db'}"))


def _values(push: Push) -> dict[str, float]:
    return {tag: value for _, tag, value in push.rows}


def f_to_c(f: float) -> float:
    return (f - 32.0) * 5.0 / 9.0


# Every device payload of DEVICES.md whose unit keys say °F or SG, as the device sends it.
PAYLOADS = [
    (  # iSpindel firmware: temp_units, gravity in the owner's unit (assigned: °P)
        parse_ispindel,
        {"name": "iSpindel001", "ID": 9390968, "temperature": 73.175, "temp_units": "F",
         "gravity": 22.80585},
        "°P",
        {"gravity_plato": 22.80585, "temperature_c": f_to_c(73.175)},
    ),
    (  # GravityMon HTTP (iSpindle format): gravity-unit G
        parse_ispindel,
        {"name": "gravmon", "ID": "2E6753", "temperature": 20.5, "temp_units": "C",
         "gravity": 1.0050, "gravity-unit": "G"},
        None,
        {"gravity_plato": float(sg_to_plato(1.0050)), "temperature_c": 20.5},
    ),
    (  # GravityMon's form keys: temp-units
        parse_ispindel,
        {"name": "gravmon", "temperature": 68.0, "temp-units": "F", "gravity": 12.0,
         "gravity-unit": "P"},
        None,
        {"gravity_plato": 12.0, "temperature_c": 20.0},
    ),
    (  # GravityMon's InfluxDB keys: temp-format, gravity-format
        parse_ispindel,
        {"name": "gravmon", "temperature": 293.15, "temp-format": "K", "gravity": 1.048,
         "gravity-format": "G"},
        None,
        {"gravity_plato": float(sg_to_plato(1.048)), "temperature_c": 20.0},
    ),
    (  # GravityMon's Brewfather format: temp-unit (39.2 °F was stored as 39.2 °C)
        parse_brewfather,
        {"name": "gravmon", "temp": 39.2, "temp-unit": "F", "battery": 3.67, "gravity": 1.0050,
         "gravity_unit": "G"},
        None,
        {"gravity_plato": float(sg_to_plato(1.0050)), "temperature_c": 4.0},
    ),
    (  # GravityMon's own firmware (sendBrewfather): temp_unit; Plato
        parse_brewfather,
        {"name": "gm", "temp": 64.4, "temp_unit": "F", "gravity": 11.5, "gravity_unit": "P"},
        None,
        {"gravity_plato": 11.5, "temperature_c": 18.0},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("parse", "body", "assigned", "expected"), PAYLOADS)
def test_every_device_payload_is_stored_in_canonical_units(parse, body, assigned, expected):
    push = parse(body, NOW, assigned) if assigned else parse(body, NOW)
    assert _values(push) == pytest.approx(expected, abs=1e-9)


def test_unit_keys_that_disagree_are_refused_naming_them():
    with pytest.raises(ReadingError, match="temperature unit keys disagree"):
        parse_brewfather({"name": "x", "temp": 20.0, "temp_unit": "C", "temp-unit": "F"}, NOW)


def test_sg_pushed_without_a_unit_is_refused_naming_sg(store):
    """A hand reading of SG 1.032 sent to /readings without a unit (its default is °P) was
    stored as 1.03 °P: attenuation 92% on the board."""
    (push,) = parse_readings(
        {"readings": [{"device": "hand", "timestamp": "2026-03-10T08:00:00Z", "gravity": 1.032}]}
    )
    with pytest.raises(ReadingError, match="look like SG") as caught:
        store.store(push, NOW)
    assert caught.value.status == 422
    assert store.unassigned() == []  # nothing stored


def test_a_dry_reading_after_a_fermentation_in_plato_is_plato(store):
    """The device's history decides: after readings from 12 °P down, 1.05 °P is a dry beer,
    not SG."""
    for hours, plato in ((96, 12.0), (72, 8.0), (48, 4.0), (24, 1.6)):
        (push,) = parse_readings(
            {"readings": [{"device": "hand", "gravity": plato,
                           "timestamp": (NOW - timedelta(hours=hours)).isoformat()}]}
        )  # fmt: skip
        store.store(push, NOW)
    (push,) = parse_readings(
        {"readings": [{"device": "hand", "timestamp": NOW.isoformat(), "gravity": 1.05}]}
    )
    assert store.store(push, NOW).stored == 1


def test_fahrenheit_declared_on_celsius_values_is_refused_naming_celsius(store):
    push = parse_ispindel(
        {"name": "s", "temperature": 31.0, "temp_units": "F", "gravity": 12.0}, NOW, "°P"
    )  # 31 °F is -0.6 °C: inside physics, a wrong value all the same
    with pytest.raises(ReadingError, match="look like °C"):
        store.store(push, NOW)


def test_a_value_outside_physics_names_the_unit_it_looks_like():
    with pytest.raises(ReadingError, match="it looks like °P"):
        parse_brewfather({"name": "s", "gravity": 12.0, "gravity_unit": "G"}, NOW)


def test_the_same_key_twice_in_one_push_is_kept_once_or_refused(store):
    """Twice the same reading in one body was a 500 (a unique-key violation)."""
    twice = {"device": "hand", "timestamp": "2026-03-10T08:00:00Z", "gravity": 9.0}
    (push,) = parse_readings({"readings": [twice, dict(twice)]})
    stored = store.store(push, NOW)
    assert (stored.stored, len(push.rows)) == (1, 1)
    (push,) = parse_readings({"readings": [twice, {**twice, "gravity": 9.5}]})
    with pytest.raises(ReadingError, match="two gravity_plato values"):
        store.store(push, NOW)


@pytest.mark.parametrize("timepoint", ["inf", "nan", "1e308", "-1e6", "1", "-inf"])
def test_a_tilt_timepoint_that_is_no_date_since_2000_is_refused(timepoint):
    with pytest.raises(ReadingError, match="Timepoint: an Excel serial day since 2000"):
        parse_tilt({"Color": "RED", "SG": "1.050", "Temp": "68", "Timepoint": timepoint}, UTC)


def test_a_reading_dated_before_2000_is_refused(store):
    (push,) = parse_readings(
        {"readings": [{"device": "d", "timestamp": "0001-01-01T00:00:00Z", "gravity": 9.0}]}
    )
    with pytest.raises(ReadingError, match="before 2000"):
        store.store(push, NOW)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (True, "give the device's 'name'"),
        ("x" * 10_000, "at most 48 printable characters, got 10000"),
        ("spindel\n2", "control characters"),
    ],
)
def test_device_names_are_validated_never_cut(name, says):
    with pytest.raises(ReadingError, match=says):
        parse_brewfather({"name": name, "gravity": 1.05}, NOW)


def test_a_batch_pitched_in_the_future_and_an_empty_edit_are_refused(store):
    with pytest.raises(ReadingError, match=r"start_time: .* is in the future") as caught:
        store.start_batch({"batch_id": "B", "start_time": NOW + timedelta(days=2)}, NOW)
    assert caught.value.status == 422
    store.start_batch({"batch_id": "B", "start_time": NOW - timedelta(days=2)}, NOW)
    with pytest.raises(ReadingError, match="nothing to change") as caught:
        store.update_batch("B", {})
    assert caught.value.status == 422


# -- the property: a stored value is the true value, or the push is refused -----------------

GRAVITY_UNITS = ("°P", "SG")
TEMPERATURE_UNITS = ("°C", "°F", "K")
#: How each route declares a unit (None: it cannot, the default or the device decides).
ROUTES = ("readings", "ispindel", "brewfather")
_devices = itertools.count()


def _body(route: str, gravity: float, g_unit: str | None, temp: float, t_unit: str | None):
    name = f"d{next(_devices)}"
    g_key = {"°P": "P", "SG": "G"}
    t_key = {"°C": "C", "°F": "F", "K": "K"}
    if route == "readings":
        item = {"device": name, "timestamp": NOW.isoformat(), "gravity": gravity,
                "temperature": temp}  # fmt: skip
        if g_unit:
            item["gravity_unit"] = g_unit
        if t_unit:
            item["temperature_unit"] = t_unit
        return {"readings": [item]}
    body = {
        "name": name,
        "gravity": gravity,
        ("temperature" if route == "ispindel" else "temp"): temp,
    }
    if g_unit:
        body["gravity-unit" if route == "ispindel" else "gravity_unit"] = g_key[g_unit]
    if t_unit:
        body["temp_units" if route == "ispindel" else "temp_unit"] = t_key[t_unit]
    return body


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(ROUTES),
    plato=st.floats(2.0, 25.0),
    celsius=st.floats(5.0, 35.0),
    true_g=st.sampled_from(GRAVITY_UNITS),
    true_t=st.sampled_from(TEMPERATURE_UNITS),
    declared_g=st.sampled_from((*GRAVITY_UNITS, None)),
    declared_t=st.sampled_from((*TEMPERATURE_UNITS, None)),
    device_unit=st.sampled_from((*GRAVITY_UNITS, None)),
)
def test_a_stored_value_is_the_true_one_or_the_push_is_refused(
    store, route, plato, celsius, true_g, true_t, declared_g, declared_t, device_unit
):
    """Any fermenting reading (2..25 °P, 5..35 °C: a lager to a warm ale), sent by any
    route in its true unit, under any declaration or none: what is stored equals the true
    value, or nothing is stored and the error names the field. Not covered, because one
    reading cannot tell: a cold crash below 5 °C sent in °F but declared °C (28..40 is also
    a warm °C reading), and 36..40 °C (a kveik) declared °F."""
    g_raw = float(from_canonical(np.array([plato]), true_g, "gravity")[0])
    t_raw = float(from_canonical(np.array([celsius]), true_t, "temperature")[0])
    body = _body(route, g_raw, declared_g, t_raw, declared_t)
    try:
        if route == "readings":
            (push,) = parse_readings(body)
        elif route == "ispindel":
            push = parse_ispindel(body, NOW, device_unit)
        else:
            push = parse_brewfather(body, NOW)
        store.store(push, NOW)
    except ReadingError as exc:
        assert any(word in str(exc) for word in ("gravity", "temp", "body", "readings[0]")), exc
        return
    stored = _values(push)
    assert math.isclose(stored["gravity_plato"], plato, rel_tol=1e-9, abs_tol=1e-9), (
        stored, plato, true_g, declared_g,
    )  # fmt: skip
    assert math.isclose(stored["temperature_c"], celsius, rel_tol=1e-9, abs_tol=1e-9), (
        stored, celsius, true_t, declared_t,
    )  # fmt: skip


def test_a_batch_without_a_pitch_time_is_a_422_not_a_500():
    """``"start_time": null`` passed the request model and failed the database's NOT NULL."""
    from pydantic import ValidationError

    from serving.api_models import BatchStart

    with pytest.raises(ValidationError, match="start_time"):
        BatchStart.model_validate({"batch_id": "B", "start_time": None})
    assert "null" not in str(BatchStart.model_json_schema()["properties"]["start_time"])


# -- every right reading kept: per-reading batches, re-attachment, corrections ---------------


def _own(device: str, *readings: tuple[datetime, float]) -> Push:
    (push,) = parse_readings(
        {"readings": [{"device": device, "timestamp": at.isoformat(), "gravity": plato}
                      for at, plato in readings]}
    )  # fmt: skip
    return push


def test_one_reading_before_the_pitch_does_not_orphan_the_push(store):
    """A push was assigned by its earliest reading: one from before the pitch left all
    eight unassigned ("no gravity reading yet" on the board)."""
    store.start_batch({"batch_id": "B", "fermenter": "FV1", "start_time": NOW - timedelta(days=1)})
    store.assign("hand", "FV1")
    hours = [30, 20, 16, 12, 8, 6, 4, 2]  # the first is 6 h before the pitch
    stored = store.store(
        _own("hand", *((NOW - timedelta(hours=h), 12.0 - h / 10) for h in hours)), NOW
    )
    assert (stored.stored, stored.unassigned, stored.batch_id) == (8, 1, "B")
    ((gravity, _),) = store.series(store.running(batch_id="B"))
    assert len(gravity.values) == 7
    assert store.unassigned()[0]["readings"] == 1


def test_readings_sent_before_the_batch_existed_join_it_when_it_is_started(store):
    store.assign("hand", "FV2")
    early = store.store(_own("hand", (NOW - timedelta(hours=5), 12.0)), NOW)
    assert early.unassigned == 1
    store.start_batch(
        {"batch_id": "B2", "fermenter": "FV2", "start_time": NOW - timedelta(hours=6)}
    )
    ((gravity, _),) = store.series(store.running(batch_id="B2"))
    assert list(gravity.values) == [12.0] and store.unassigned() == []


def test_another_value_at_a_stored_key_corrects_it_and_keeps_the_old_one(tmp_path):
    """A different value at an existing (device, time, tag) was answered "duplicates" and
    dropped; the drop folder treats it as a correction. Two workers: the one that did not
    store the correction forecasts from the corrected value too."""
    import sqlalchemy as sa

    from brewcast.readings_store import reading_corrections

    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    mine, other = ReadingsStore(engine), ReadingsStore(engine)
    mine.start_batch({"batch_id": "B", "fermenter": "FV1", "start_time": NOW - timedelta(days=1)})
    mine.assign("hand", "FV1")
    at = NOW - timedelta(hours=2)
    mine.store(_own("hand", (at, 9.0), (NOW - timedelta(hours=1), 8.8)), NOW)
    for store in (mine, other):  # both workers hold a copy of the batch
        store.series(store.running(batch_id="B"))
    again = mine.store(_own("hand", (at, 9.0)), NOW)
    assert (again.stored, again.duplicates, again.corrected) == (0, 1, 0)
    fixed = mine.store(_own("hand", (at, 9.4)), NOW)
    assert (fixed.stored, fixed.duplicates, fixed.corrected) == (0, 0, 1)
    assert fixed.to_dict()["corrected"] == 1
    for store in (mine, other):
        ((gravity, _),) = store.series(store.running(batch_id="B"))
        assert list(gravity.values) == [9.4, 8.8]
    with engine.connect() as conn:
        kept = conn.execute(sa.select(reading_corrections)).mappings().all()
    assert [(k["old_value"], k["new_value"]) for k in kept] == [(9.0, 9.4)]


def test_an_ispindel_pushed_before_its_unit_is_known_is_kept_then_stored(store):
    """An iSpindel from a device nobody assigned got a 422 and was lost; now the push is
    kept (202) and stored at the time it arrived once the device is assigned its unit."""
    import json

    from serving.readings import UnitPending

    body = {"name": "fresh", "gravity": 1.040, "temperature": 18.0, "temp_units": "C"}
    with pytest.raises(UnitPending) as caught:
        parse_ispindel(body, NOW)
    assert caught.value.status == 202
    arrived = NOW - timedelta(hours=3)
    store.refuse("/readings/ispindel", json.dumps(body), caught.value, arrived)
    store.start_batch({"batch_id": "B", "fermenter": "FV3", "start_time": NOW - timedelta(days=1)})
    assigned = store.assign("ispindel:fresh", "FV3", "SG")
    assert assigned["pending_stored"] == 1
    ((gravity, temperature),) = store.series(store.running(batch_id="B"))
    assert list(gravity.values) == pytest.approx([float(sg_to_plato(1.040))])
    assert list(temperature.values) == [18.0]
    assert store.refused(store.batch("B")) == []  # stored since: no refusal on the page
    assert store.assign("ispindel:fresh", "FV3", "SG")["pending_stored"] == 0  # once


def test_a_readings_body_over_the_row_cap_is_a_413_naming_the_cap():
    """One client's 40k-reading bodies were parsed whole on the event loop."""
    item = {"device": "d", "timestamp": "2026-03-10T08:00:00Z", "gravity": 9.0}
    with pytest.raises(ReadingError, match="at most 1000") as caught:
        parse_readings({"readings": [item] * 1001}, 1000)
    assert caught.value.status == 413
    assert len(parse_readings({"readings": [item] * 1000}, 1000)[0].rows) == 1000

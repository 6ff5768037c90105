"""Readings pushed in the devices' own formats, stored once, assigned to the batch running in
the device's fermenter; and the forecast's snapshot built from them by the training code:
equal to the lake's training snapshot at the same time for simulated batches (the real Tilt
logs, replayed through the running service, are ``tests/test_serving.py``'s)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from brewcast import lake
from brewcast.schema import BATCHES, FEATURES, READINGS
from brewcast.settings import Settings
from brewcast.snapshots import hour_of
from brewcast.units import sg_to_plato
from ingest.devices import EXCEL_ORIGIN
from models.dataset import LabelRules, build_snapshots
from serving.prediction_log import make_engine
from serving.readings import (
    Push,
    ReadingError,
    ReadingsStore,
    parse_brewfather,
    parse_ispindel,
    parse_readings,
    parse_tilt,
    score_running,
    snapshot_records,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
COMPARED = [
    c.name
    for c in FEATURES.columns
    if c.role in ("feature", "meta") or c.name == "gravity_readings_count"
]


@pytest.fixture
def store(tmp_path):
    return ReadingsStore(make_engine(f"sqlite:///{tmp_path / 'readings.db'}"))


def test_each_device_format_in_canonical_units():
    gravitymon = parse_ispindel(
        {
            "name": "gravmon",
            "ID": "2E6753",
            "temperature": 68.0,
            "temp_units": "F",
            "gravity": 1.05,
            "gravity-unit": "G",
        },
        NOW,
    )
    assert gravitymon.device_id == "ispindel:gravmon"
    assert dict((t, v) for _, t, v in gravitymon.rows) == pytest.approx(
        {"gravity_plato": sg_to_plato(1.05), "temperature_c": 20.0}
    )
    spindel = parse_ispindel(
        {"name": "iSpindel001", "gravity": 12.5, "temperature": 19.0}, NOW, "°P"
    )
    assert spindel.rows[0][1:] == ("gravity_plato", 12.5)
    stream = parse_brewfather(
        {
            "name": "FV1-stream",
            "temp": 18.5,
            "temp_unit": "C",
            "gravity": 11.0,
            "gravity_unit": "P",
        },
        NOW,
    )
    assert stream.device_id == "brewfather:FV1-stream" and stream.rows[0][2] == 11.0
    serial = (datetime(2026, 3, 10, 13, 0) - EXCEL_ORIGIN).total_seconds() / 86400  # 13:00 CET
    tilt = parse_tilt(
        {
            "Timepoint": f"{serial:.10f}",
            "SG": "1.0480",
            "Temp": "68.0",
            "Color": "BLACK",
            "Beer": "Saison",
        },
        ZoneInfo("Europe/Copenhagen"),
    )
    assert tilt.device_id == "tilt:black" and tilt.rows[0][0] == datetime(
        2026, 3, 10, 12, 0, tzinfo=UTC
    )
    assert tilt.rows[1][2] == pytest.approx(20.0)
    (own,) = parse_readings(
        {
            "readings": [
                {
                    "device": "hand",
                    "timestamp": "2026-03-10T08:00:00Z",
                    "gravity": 1.048,
                    "gravity_unit": "SG",
                }
            ]
        }
    )
    assert own.rows == [
        (
            datetime(2026, 3, 10, 8, 0, tzinfo=UTC),
            "gravity_plato",
            pytest.approx(sg_to_plato(1.048)),
        )
    ]


@pytest.mark.parametrize(
    ("parse", "says"),
    [
        (
            lambda: parse_ispindel({"name": "x", "gravity": 1.05}, NOW),
            "body.gravity: an iSpindel does not say its gravity unit",
        ),
        (
            lambda: parse_ispindel(["not", "an", "object"], NOW),
            "body: an iSpindel posts a JSON object",
        ),
        (lambda: parse_ispindel({"gravity": 12.0}, NOW, "°P"), "give the device's 'name' or 'ID'"),
        (
            lambda: parse_brewfather({"name": "s", "gravity": 1.5, "gravity_unit": "G"}, NOW),
            "outside the physical range",
        ),
        (
            lambda: parse_brewfather({"name": "s", "temp": "warm"}, NOW),
            "body.temp: must be a number",
        ),
        (
            lambda: parse_tilt(
                {"Timepoint": "yesterday", "SG": "1.05", "Temp": "68", "Color": "RED"}, UTC
            ),
            "Timepoint",
        ),
        (
            lambda: parse_readings(
                {"readings": [{"device": "d", "timestamp": "2026-03-10 08:00", "gravity": 12}]}
            ),
            "with an offset",
        ),
        (lambda: parse_readings({"readings": []}), "non-empty list"),
    ],
)
def test_a_push_in_the_wrong_shape_names_its_field(parse, says):
    with pytest.raises(ReadingError, match=None) as caught:
        parse()
    assert says in str(caught.value)


def test_readings_go_to_the_batch_running_in_the_fermenter_once(store):
    store.start_batch(
        {
            "batch_id": "B1",
            "fermenter": "FV1",
            "brand": "pils",
            "start_time": NOW - timedelta(days=2),
        }
    )
    unassigned = store.store(
        Push("tilt:red", [(NOW - timedelta(hours=1), "gravity_plato", 10.0)]), NOW
    )
    assert unassigned.batch_id is None and store.unassigned()[0]["device"] == "tilt:red"
    store.assign("tilt:red", "FV1")
    push = Push("tilt:red", [(NOW, "gravity_plato", 9.8), (NOW, "temperature_c", 18.0)])
    first = store.store(push, NOW)
    again = store.store(push, NOW)  # the device retried: nothing changes
    assert (first.stored, first.duplicates, first.batch_id) == (2, 0, "B1")
    assert (again.stored, again.duplicates) == (0, 2)
    ((gravity, temperature),) = store.series(store.running(batch_id="B1"))
    # the reading sent while unassigned joined the batch when its device was assigned
    assert (list(gravity.values), list(temperature.values)) == ([10.0, 9.8], [18.0])
    assert store.unassigned() == []
    with pytest.raises(ReadingError, match="in the future"):
        store.store(Push("tilt:red", [(NOW + timedelta(hours=2), "gravity_plato", 9.0)]), NOW)
    with pytest.raises(ReadingError, match="exists already") as caught:
        store.start_batch({"batch_id": "B1", "start_time": NOW})
    assert caught.value.status == 409
    store.update_batch("B1", {"end_time": NOW})
    assert store.batches(active=True) == [] and store.batches(active=False)[0]["batch_id"] == "B1"


def test_a_gravity_jump_is_stored_flagged_and_kept_out_of_the_curve(store):
    """A device moved to a fresh batch read 7 °P above its old batch and the curve folded
    it in. Now a reading more than 2 °P above the median of the batch's last three is held
    out (stored, listed with its reason, not forecast from); one glitch among the three
    does not hold out the readings after it, and a hydrometer's noise is no jump."""
    store.start_batch({"batch_id": "B1", "fermenter": "FV1", "start_time": NOW - timedelta(days=5)})
    store.assign("tilt:red", "FV1")
    hours = iter(range(-96, 0, 4))

    def push(*values: float):
        rows = [(NOW + timedelta(hours=next(hours)), "gravity_plato", v) for v in values]
        return store.store(Push("tilt:red", rows), NOW)

    assert push(12.0, 10.0, 8.0, 6.0).held_out == []
    assert push(6.4).held_out == []  # noise: 0.4 °P above the last readings
    moved = push(13.0, 12.9)
    assert len(moved.held_out) == 2 and "6.60 °P above the batch's last" in moved.held_out[0]
    answer = moved.to_dict()
    assert answer["held_out"] == 2 and "device moved" in answer["warnings"][0]
    assert push(5.9, 0.5, 5.8).held_out == []  # a glitch (0.5) among the reference three
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    assert list(gravity.values) == [12.0, 10.0, 8.0, 6.0, 6.4, 5.9, 0.5, 5.8]
    listed = store.held_out("B1")
    assert [r["value"] for r in listed] == [13.0, 12.9] and listed[0]["timestamp"].tzinfo
    fresh = ReadingsStore(store.engine)  # another worker reads the store: the same curve
    ((again, _),) = fresh.series(fresh.running(batch_id="B1"))
    assert list(again.values) == list(gravity.values)


def test_a_pitch_time_typed_wrong_is_corrected_and_its_readings_follow(store):
    """A pitch typed a day late holds the first readings back (no batch); correcting it
    gives them the batch, moving it later again takes away the readings before it, and a
    pitch in the future is refused as when the batch was started."""
    from serving.api_models import BATCH_CHANGES

    assert "start_time" in BATCH_CHANGES
    start = NOW - timedelta(days=1)
    store.start_batch({"batch_id": "B1", "fermenter": "FV1", "start_time": start})
    store.assign("tilt:red", "FV1")
    rows = [
        (NOW - timedelta(hours=h), "gravity_plato", 12.0 - 0.1 * (40 - h)) for h in (40, 30, 20, 10)
    ]
    assert store.store(Push("tilt:red", rows), NOW).unassigned == 2
    store.update_batch("B1", {"start_time": NOW - timedelta(days=2)})
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    assert len(gravity.values) == 4 and store.unassigned() == []
    store.update_batch("B1", {"start_time": NOW - timedelta(hours=25)})
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    assert len(gravity.values) == 2 and store.unassigned()[0]["readings"] == 2
    with pytest.raises(ReadingError, match="in the future") as caught:
        store.update_batch("B1", {"start_time": NOW + timedelta(days=1)}, NOW)
    assert caught.value.status == 422
    # a pitch time cannot be taken away (schemathesis sent null: a 500 until refused)
    with pytest.raises(ReadingError, match="cannot be removed") as caught:
        store.update_batch("B1", {"start_time": None, "brand": "x"}, NOW)
    assert caught.value.status == 422 and store.batch("B1")["brand"] is None


def test_a_batchs_reading_troubles_for_its_card(store):
    """Held-out readings, pushes refused from the devices in its fermenter since its pitch,
    and their readings that found no batch in the week before the pitch: counted per
    running batch, with the latest reason; another fermenter's troubles are not its."""
    start = NOW - timedelta(days=2)
    store.start_batch({"batch_id": "B1", "fermenter": "FV1", "start_time": start})
    store.start_batch({"batch_id": "B2", "fermenter": "FV2", "start_time": start})
    store.assign("tilt:red", "FV1")
    store.assign("tilt:blue", "FV2")
    early = [(start - timedelta(hours=h), "gravity_plato", 12.0) for h in (200, 30, 20)]
    store.store(Push("tilt:red", early), NOW)  # before the pitch: no batch
    rows = [
        (start + timedelta(hours=h), "gravity_plato", v) for h, v in ((1, 12), (5, 11), (9, 10))
    ]
    store.store(
        Push("tilt:red", [*rows, (start + timedelta(hours=12), "gravity_plato", 14.0)]), NOW
    )
    store.store(Push("tilt:blue", [(start + timedelta(hours=1), "gravity_plato", 12.0)]), NOW)
    for when in (start - timedelta(hours=1), NOW - timedelta(hours=2), NOW - timedelta(hours=1)):
        store.refuse(
            "/readings",
            '{"readings": [{"device": "tilt:red"}]}',
            ReadingError(f"bad {when:%H}"),
            when,
        )
    found = store.troubles(store.running())
    assert set(found) == {"B1"}
    assert found["B1"]["held_out"]["count"] == 1 and "above" in found["B1"]["held_out"]["reason"]
    assert found["B1"]["refused"] == {"count": 2, "reason": f"bad {NOW - timedelta(hours=1):%H}"}
    assert found["B1"]["unassigned"] == {"count": 2, "devices": ["tilt:red"]}
    assert store.troubles([]) == {}


def _stored_batch(batch) -> dict:
    out = {}
    for name in BATCHES.names:
        value = getattr(batch, name)
        if name != "end_time":
            out[name] = None if pd.isna(value) else value
    out["start_time"] = pd.Timestamp(out["start_time"]).to_pydatetime()
    return out


def _assert_same_snapshot(record: dict, expected: pd.Series) -> None:
    for name in COMPARED:
        want = expected[name]
        got = record.get(name)
        if pd.isna(want):
            assert got is None or pd.isna(got), name
        elif isinstance(want, float):
            assert got == want, (name, got, want)  # the same function: exactly equal
        else:
            assert str(got) == str(want), name


def test_the_forecast_snapshot_is_the_training_snapshot(store, small_world):
    """Simulated batches' readings pushed as devices would, the snapshot rebuilt from the
    store at each training snapshot time: every feature equal to the lake's."""
    rules = LabelRules()
    training = build_snapshots(small_world.batches, small_world.readings, rules)
    chosen = training["batch_id"].drop_duplicates().iloc[:4]
    for batch in small_world.batches[small_world.batches["batch_id"].isin(chosen)].itertuples(
        index=False
    ):
        stored = _stored_batch(batch)
        stored["fermenter"] = batch.fermenter
        store.start_batch(stored | {"fermenter": f"{batch.batch_id}-vessel"})
        store.update_batch(batch.batch_id, {"fermenter": f"{batch.batch_id}-vessel"})
        store.assign(f"hand:{batch.batch_id}", f"{batch.batch_id}-vessel")
        mine = small_world.readings[small_world.readings["batch_id"] == batch.batch_id]
        mine = mine[np.isfinite(mine["value"])]  # a corrupted record is no reading to push
        rows = [
            (t.to_pydatetime(), tag, float(v))
            for t, tag, v in zip(mine["timestamp"], mine["tag"], mine["value"], strict=True)
        ]
        result = store.store(Push(f"hand:{batch.batch_id}", rows), datetime(2100, 1, 1, tzinfo=UTC))
        assert result.batch_id == batch.batch_id and result.stored == len(rows)
        # the stored batch keeps the batch's own fermenter for the model
        store.update_batch(batch.batch_id, {"fermenter": batch.fermenter})
        expected = training[training["batch_id"] == batch.batch_id]
        for _, snapshot in expected.iloc[:: max(len(expected) // 6, 1)].iterrows():
            record = _snapshot(store, batch.batch_id, snapshot["snapshot_time"].to_pydatetime())
            _assert_same_snapshot(record, snapshot)


def _snapshot(store: ReadingsStore, batch_id: str, at: datetime) -> dict | None:
    """The forecast's snapshot of a stored batch at ``at``, as the service builds it."""
    running = store.running(batch_id=batch_id)
    ((gravity, temperature),) = store.series(running)
    return snapshot_records([(running[0], gravity, temperature)], at)[0]


def test_a_tilt_post_in_the_hour_the_clocks_repeat_is_read_as_it_arrives():
    """The Tilt app's Timepoint is the phone's local time, with no offset: in the hour the
    clocks repeat (1 Nov 2026 01:00-02:00 in Chicago), the reading is the one nearer the
    time the post arrives, so a log replayed as the app sends it keeps its order."""
    zone = ZoneInfo("America/Chicago")
    local = datetime(2026, 11, 1, 1, 30)
    form = {
        "Timepoint": f"{(local - EXCEL_ORIGIN).total_seconds() / 86400:.10f}",
        "SG": "1.034",
        "Temp": "69",
        "Color": "Black",
    }
    first = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 CDT (UTC-5)
    second = datetime(2026, 11, 1, 7, 30, tzinfo=UTC)  # 01:30 CST (UTC-6), an hour later
    for arrives in (first, second):
        push = parse_tilt(form, zone, now=arrives + timedelta(seconds=2))
        assert push.device_id == "tilt:black" and push.rows[0][0] == arrives
    assert push.rows[1][2] == pytest.approx((69 - 32) * 5 / 9)


def test_pushed_readings_flush_into_the_lake_for_validation_and_training(tmp_path):
    """``brewcast ingest --source service``: the readings devices pushed, with their batch,
    land in lake/raw (the same partition on a re-run); unassigned ones stay, counted."""
    from application import stages

    settings = Settings(home=tmp_path / "home")
    store = ReadingsStore(make_engine(settings.prediction_log))
    store.start_batch(
        {
            "batch_id": "B7",
            "fermenter": "FV2",
            "yeast_strain": "german_lager",
            "start_time": NOW - timedelta(days=1),
        }
    )
    store.assign("tilt:green", "FV2")
    store.store(
        Push(
            "tilt:green",
            [(NOW - timedelta(hours=h), "gravity_plato", 12.0 - h / 10) for h in range(1, 6)],
        ),
        NOW,
    )
    store.store(Push("tilt:orange", [(NOW - timedelta(hours=1), "gravity_plato", 3.0)]), NOW)
    first = stages.ingest(settings, "service", NOW - timedelta(days=2), NOW)
    assert first.counts["reading_rows"] == 5 and first.counts["batch_rows"] == 1
    assert first.details["unassigned_readings"] == 1
    again = stages.ingest(settings, "service", NOW - timedelta(days=2), NOW)
    assert again.counts["reading_rows"] == 5
    raw = lake.read_table(settings.paths.lake, "raw", READINGS)
    assert len(raw) == 5 and set(raw["batch_id"]) == {"B7"}
    batch = lake.read_table(settings.paths.lake, "raw", BATCHES).iloc[0]
    assert batch["yeast_strain"] == "german_lager"
    stages.validate(settings)
    assert len(lake.read_table(settings.paths.lake, "validated", READINGS)) == 5


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_workers_readings_in_memory_follow_every_workers_pushes(database, tmp_path, request):
    """Two workers on one database: each forecast reads the batch's readings from memory
    only while they are at the stored revision, so the other worker's pushes, and a late
    push that sorts in before the last reading, are never missed."""
    engine = make_engine(
        f"sqlite:///{tmp_path / 'readings.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    mine, other = ReadingsStore(engine), ReadingsStore(engine)
    mine.start_batch({"batch_id": "B1", "fermenter": "FV1", "start_time": NOW - timedelta(days=3)})
    mine.assign("tilt:red", "FV1")

    def gravity_of(store) -> list[float]:
        ((gravity, _),) = store.series(store.running(batch_id="B1"))
        return list(gravity.values)

    assert gravity_of(mine) == []  # no reading yet: revision 0, empty
    mine.store(Push("tilt:red", [(NOW - timedelta(hours=3), "gravity_plato", 10.0)]), NOW)
    assert gravity_of(mine) == [10.0]
    before = mine.cache.get("B1", 1)
    assert before is not None  # extended in place by its own push, at revision 1
    other.store(Push("tilt:red", [(NOW - timedelta(hours=1), "gravity_plato", 9.0)]), NOW)
    assert mine.cache.get("B1", 2) is None  # the other worker's push: mine is stale
    assert gravity_of(mine) == [10.0, 9.0]  # read again
    # a late push, older than the last reading, sorts in
    mine.store(Push("tilt:red", [(NOW - timedelta(hours=2), "gravity_plato", 9.5)]), NOW)
    gravity, _ = mine.cache.get("B1", 3)
    assert list(gravity.values) == [10.0, 9.5, 9.0]
    assert list(gravity.hours) == [hour_of(NOW - timedelta(hours=h)) for h in (3, 2, 1)]
    # a fresh worker reads the same arrays as the one that extended its copy
    fresh = ReadingsStore(engine)
    assert gravity_of(fresh) == gravity_of(mine)
    assert np.array_equal(fresh.cache.get("B1", 3)[0].hours, gravity.hours)
    # the least recently forecast batch leaves a full cache
    small = ReadingsStore(engine, cached_batches=1)
    small.start_batch({"batch_id": "B2", "fermenter": "FV2", "start_time": NOW})
    small.series(small.running(batch_id="B1"))
    small.series(small.running(batch_id="B2"))
    assert small.cache.get("B1", 3) is None and small.cache.get("B2", 0) is not None


def test_a_store_an_earlier_release_wrote_is_upgraded_in_place(tmp_path):
    """A batches table without a column added since (``time_resolution_h``) gets it, and
    its batches stay; without the upgrade every new batch failed to insert."""
    import sqlalchemy as sa

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE batches (batch_id VARCHAR(64) PRIMARY KEY, "
                             "start_time DATETIME NOT NULL, fermenter VARCHAR(64))"))  # fmt: skip
        conn.execute(sa.text("INSERT INTO batches VALUES ('OLD', '2026-03-01 00:00:00', 'FV1')"))
    store = ReadingsStore(engine)
    store.start_batch({"batch_id": "NEW", "fermenter": "FV2", "start_time": NOW})
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT batch_id FROM batches ORDER BY 1")).scalars().all()
    assert kept == ["NEW", "OLD"]


def test_a_device_declared_in_the_wrong_unit_is_corrected_by_re_declaring_it(store):
    """Readings an iSpindel sent in SG were stored as °P under a wrong declaration (1.032
    "°P"). Re-declaring the device SG with ``correct_gravity_since`` re-reads them from the
    values as sent: 8.0 °P, the old value kept in the corrections history; the forecast's
    curve has the corrected values. A calibration offset applies to what comes next."""
    import sqlalchemy as sa

    from brewcast.readings_store import reading_corrections

    store.start_batch({"batch_id": "B1", "fermenter": "FV1", "start_time": NOW - timedelta(days=3)})
    store.assign("ispindel:red", "FV1", "°P")
    for hours, sg in ((-48, 1.040), (-24, 1.032)):
        push = Push("ispindel:red")
        push.add(NOW + timedelta(hours=hours), "gravity_plato", sg, "°P", "body", judge=False)
        store.store(push, NOW)
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    assert list(gravity.values) == [1.040, 1.032]  # what the board showed as °P
    answer = store.assign(
        "ispindel:red", "FV1", "SG", gravity_offset_plato=-0.2,
        correct_gravity_since=NOW - timedelta(days=3),
    )  # fmt: skip
    assert answer["corrected"] == 2
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    expected = [sg_to_plato(1.040) - 0.2, sg_to_plato(1.032) - 0.2]
    assert list(gravity.values) == pytest.approx(expected)
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(reading_corrections.c.old_value)).scalars().all()
    assert sorted(kept) == [1.032, 1.040]
    later = Push("ispindel:red")
    later.add(NOW, "gravity_plato", 1.020, "SG", "body")
    store.store(later, NOW)
    ((gravity, _),) = store.series(store.running(batch_id="B1"))
    assert gravity.values[-1] == pytest.approx(sg_to_plato(1.020) - 0.2)
    with pytest.raises(ReadingError, match="gravity_unit"):
        store.assign("ispindel:red", "FV1", None, correct_gravity_since=NOW)


def test_a_hand_logged_batch_asks_for_a_reading_before_it_is_ready(trained, tmp_path):
    """A pale ale read once a day, scored by the trained champion from the stored readings:
    at 2.9 °P (0.5 below the day before) the model says finished within 24 h, but no
    reading confirms the plateau, so the forecast says "take a gravity reading" and no
    ready event is raised; the next morning's 2.8 °P agrees with it: ready, and the event
    says the hand reading confirmed it."""
    from serving.cellar import ForecastBook, webhook_body
    from serving.model import served_model

    settings, workdir = trained
    model = served_model((workdir / "model.onnx").read_bytes(), "1", "hand-state", settings)
    engine = make_engine(f"sqlite:///{tmp_path / 'hand.db'}")
    store, book = ReadingsStore(engine), ForecastBook(engine)
    morning = datetime(2026, 6, 10, 10, tzinfo=UTC)
    store.start_batch(
        {
            "batch_id": "H1",
            "fermenter": "FV03",
            "brand": "harbour_pale_ale",
            "style": "pale_ale",
            "yeast_strain": "american_ale",
            "original_gravity_plato": 12.0,
            "start_time": morning - timedelta(days=5, hours=2),
        }
    )
    store.assign("hand:h1", "FV03")
    readings = [12.0, 10.0, 7.0, 4.6, 3.4, 2.9]
    rows = [(morning - timedelta(days=5 - i), "gravity_plato", v) for i, v in enumerate(readings)]
    store.store(Push("hand:h1", rows), morning)

    def forecast(at: datetime) -> dict:
        (found,) = score_running(store, model, store.running(), at)
        row = found[1]
        answered = {
            "batch_id": "H1",
            "model_version": "1",
            "at": at,
            "prediction_id": row["prediction_id"],
            "probability": row["probability"],
            "decision": row["decision"],
            "state": row["state"],
            "state_detail": row["state_detail"],
        }
        return answered, book.record([answered], at)

    first, raised = forecast(morning + timedelta(minutes=5))
    assert first["decision"] and first["state"] == "take a reading", first
    assert "2.6 °P or above confirms the finish" in first["state_detail"]
    assert raised == []
    tomorrow = morning + timedelta(days=1)
    store.store(Push("hand:h1", [(tomorrow, "gravity_plato", 2.8)]), tomorrow)
    second, raised = forecast(tomorrow + timedelta(minutes=5))
    assert second["state"] == "ready" and len(raised) == 1
    (event,) = book.events("H1")
    assert webhook_body(event)["confirmed_by"].startswith("confirmed by hand: 2.8 °P")
    # a forecast for a time before a stored reading is a back-cast, never a live one
    assert [
        score_running(store, model, store.running(), at)[0][1]["backcast"]
        for at in (tomorrow - timedelta(hours=1), tomorrow, tomorrow + timedelta(minutes=5))
    ] == [True, False, False]

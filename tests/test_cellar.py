"""The cellar's side of forecasts without a server: forecasts kept as answered, the ready
event raised once per batch and model version (across a restart too), delivered to a real
HTTP receiver until it answers 2xx, the operator's answer, an override stored as a label,
and the board's rows."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from brewcast.settings import Settings
from brewcast.snapshots import Series, hour_of
from serving.cellar import ForecastBook, ReadyNotifier, board, concerns, finish_errors, webhook_body
from serving.prediction_log import PredictionLog, make_engine
from serving.readings import ReadingError

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _forecast(batch_id: str, at: datetime, decision: bool, version: str = "3") -> dict:
    return {
        "batch_id": batch_id,
        "model_version": version,
        "at": at,
        "prediction_id": f"p-{batch_id}-{at:%d%H}-{version}",
        "probability": 0.9 if decision else 0.2,
        "decision": decision,
        "state": "ready" if decision else "fermenting",
        "state_detail": "the model's decision, on a device's readings" if decision else "",
        "predicted_finish_time": (at + timedelta(hours=10)).isoformat().replace("+00:00", "Z"),
        "features": {
            "yeast_strain": "german_lager",
            "fermenter": "FV1",
            "apparent_attenuation": 0.7,
        },
    }


class Receiver:
    """A webhook receiver: answers 500 to the first ``fail`` posts, then 200; keeps bodies."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[dict] = []
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500)
                else:
                    outer.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_ready_event_is_raised_once_per_batch_and_model_version(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    book = ForecastBook(make_engine(url))
    assert book.record([_forecast("B1", NOW, False)], NOW) == []  # not ready: no event
    (event,) = book.record([_forecast("B1", NOW + timedelta(hours=6), True)], NOW)
    assert event["batch_id"] == "B1" and event["model_version"] == "3"
    # the next forecasts, and a restarted service, raise nothing more for that version
    assert book.record([_forecast("B1", NOW + timedelta(hours=12), True)], NOW) == []
    restarted = ForecastBook(make_engine(url))
    assert restarted.record([_forecast("B1", NOW + timedelta(hours=18), True)], NOW) == []
    # a new champion may say ready again: one event per model version
    later = NOW + timedelta(minutes=1)
    assert (
        len(restarted.record([_forecast("B1", NOW + timedelta(hours=18), True, "4")], later)) == 1
    )
    events = restarted.events("B1")
    assert [e["model_version"] for e in events] == ["3", "4"]
    assert events[0]["forecast"]["at"] == "2026-03-10T18:00:00Z"  # the forecast that caused it
    assert [f["at"] for f in restarted.history("B1")][:2] == [
        "2026-03-10T12:00:00Z",
        "2026-03-10T18:00:00Z",
    ]
    assert restarted.latest(["B1", "B2"])["B1"]["model_version"] == "4"


def test_the_webhook_gets_each_event_once_retried_until_it_answers(tmp_path):
    book = ForecastBook(make_engine(f"sqlite:///{tmp_path / 'p.db'}"))
    book.record([_forecast("B1", NOW, True)], NOW)
    receiver = Receiver(fail=1)
    try:
        notifier = ReadyNotifier(book, Settings(home=tmp_path, ready_webhook_url=receiver.url))
        assert notifier.deliver_pending() == 0  # 500: kept, retried later
        (pending,) = book.undelivered(webhook=True, asset=False)
        assert pending["delivery_attempts"] == 1 and "500" in pending["delivery_error"]
        notifier._next_try.clear()  # the pause has passed
        assert notifier.deliver_pending() == 1
        assert notifier.deliver_pending() == 0  # delivered: never again
        # a restarted service's notifier finds nothing left to send
        assert (
            ReadyNotifier(
                book, Settings(home=tmp_path, ready_webhook_url=receiver.url)
            ).deliver_pending()
            == 0
        )
        notifier.stop()
    finally:
        receiver.close()
    (body,) = receiver.bodies
    (event,) = book.events("B1")
    assert body == json.loads(json.dumps(webhook_body(event), default=_iso))
    assert body["event"] == "batch_ready" and body["forecast"]["decision"] is True
    assert body["confirmed_by"] == "the model's decision, on a device's readings"
    assert event["webhook_delivered_at"] is not None and event["delivery_error"] is None


def _iso(value):
    return value.isoformat().replace("+00:00", "Z")


def test_an_override_becomes_a_label_and_the_first_answer_stands(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", "sync")
    book = ForecastBook(log.engine)
    book.record([_forecast("B1", NOW, True)], NOW)
    with pytest.raises(ReadingError) as missing:
        book.answer("B9", "3", "acknowledged", "ana", None)
    assert missing.value.status == 404
    event, label = book.answer("B1", "3", "overridden", "ana", "still 0.4 °P above terminal")
    assert event["answer"] == "overridden" and event["reason"].startswith("still 0.4")
    assert label == {"prediction_id": "p-B1-1012-3", "finished_within_horizon": False}
    assert book.answer("B1", "3", "overridden", "ana", "again")[0]["reason"].startswith("still")
    with pytest.raises(ReadingError) as conflict:
        book.answer("B1", "3", "acknowledged", "bo", None)
    assert conflict.value.status == 409 and "first answer stands" in str(conflict.value)
    # stored as the service stores it, monitoring reads it as that forecast's label
    log.add_labels([label], source="override")
    from monitoring.monitor import attach_labels

    served = pd.DataFrame(
        {
            "prediction_id": ["p-B1-1012-3", "p-other"],
            "batch_id": ["B1", "B2"],
            "snapshot_time": [NOW, NOW],
            "served_at": [NOW, NOW],
        }
    )
    no_outcomes = pd.DataFrame(columns=["batch_id", "status", "finish_time"])
    joined = attach_labels(served, log.read_labels(), no_outcomes, 24.0)
    assert joined["label"].tolist()[0] == 0.0 and np.isnan(joined["label"].tolist()[1])
    log.close()


def test_the_board_rows_say_stale_hydrometers_and_the_alerts_that_concern_them():
    start = NOW - timedelta(days=3)
    fresh = Series(np.array([hour_of(NOW - timedelta(minutes=20))]), np.array([4.2]))
    silent = Series(np.array([hour_of(NOW - timedelta(hours=5))]), np.array([6.0]))
    running = [
        {
            "batch_id": "B1",
            "fermenter": "FV1",
            "brand": "pils",
            "yeast_strain": "german_lager",
            "start_time": start,
        },
        {
            "batch_id": "B2",
            "fermenter": "FV2",
            "brand": "ale",
            "yeast_strain": "english_ale",
            "start_time": start,
        },
    ]
    empty = Series(np.empty(0), np.empty(0))
    latest = {"B1": _forecast("B1", NOW, True)}
    lager = {"slice": "yeast_strain", "value": "german_lager", "for_brewers": "lagers late"}
    rows = board(running, [(fresh, empty), (silent, empty)], latest, [], [lager], NOW)
    assert [r["stale"] for r in rows] == [False, True]
    assert rows[0]["last_reading_hours_ago"] == pytest.approx(1 / 3)
    assert rows[0]["hours_since_pitch"] == 72.0 and rows[0]["current_gravity_plato"] == 4.2
    assert rows[0]["alerts"] == [lager] and rows[1]["alerts"] == []  # B2 has no forecast yet
    assert concerns({"slice": "all", "value": "all"}, {})
    assert concerns(
        {"slice": "yeast_strain*season", "value": "german_lager*autumn"},
        {"yeast_strain": "german_lager", "season": "autumn"},
    )


def _gravity(hours_ago, values) -> Series:
    return Series(
        np.array([hour_of(NOW - timedelta(hours=h)) for h in hours_ago], float),
        np.array(values, float),
    )


def _kinds(row_or_warnings) -> list[str]:
    warnings = row_or_warnings["warnings"] if isinstance(row_or_warnings, dict) else row_or_warnings
    return [w["kind"] for w in warnings]


def test_a_card_says_when_not_to_believe_it():
    """A start in the future reads 0 h since pitch, with a line saying so; a forecast of a
    brand the model never saw, out of distribution, stalled, says each in one line (not the
    API's "1 of 1 snapshot(s)" notes); a clean forecast of a device read every 15 minutes
    says nothing."""
    from serving.cellar import trust_warnings

    start = NOW + timedelta(hours=38.4)
    batch = {"batch_id": "B9", "fermenter": "FV9", "brand": "new", "start_time": start}
    empty = Series(np.empty(0), np.empty(0))
    stranger = {
        **_forecast("B9", NOW, False),
        "unknown_categories": ["brand"],
        "out_of_distribution": True,
        "forecast_status": "stalled",
        "notes": ["1 of 1 snapshot(s) are of a brand and fermenter this model never saw"],
    }
    (row,) = board([batch], [(_gravity([1], [9.0]), empty)], {"B9": stranger}, [], [], NOW)
    assert row["hours_since_pitch"] == 0.0
    assert _kinds(row) == ["future_pitch", "unknown_category", "out_of_distribution", "stalled"]
    texts = [w["text"] for w in row["warnings"]]
    assert texts[0] == "The pitch time is 38.4 h in the future: check the batch's start time."
    assert "never saw this brand" in texts[1] and "take a gravity reading" in texts[2]
    assert not any("snapshot(s)" in t for t in texts)
    both = {**stranger, "unknown_categories": ["brand", "fermenter"]}
    assert "other_brewery" in _kinds(trust_warnings(batch, both, empty, NOW))

    clean = {"batch_id": "B1", "fermenter": "FV1", "start_time": NOW - timedelta(hours=50)}
    every_15_min = _gravity(np.arange(48, 0, -1) * 0.25, np.linspace(12, 6, 48))
    assert trust_warnings(clean, _forecast("B1", NOW, True), every_15_min, NOW) == []
    (row,) = board(
        [clean], [(every_15_min, empty)], {"B1": _forecast("B1", NOW, True)}, [], [], NOW
    )
    assert row["warnings"] == [] and not row["stale"] and row["read_by"] == "device"


def test_a_card_warns_of_its_readings_troubles():
    """Silent device, hand reading due, no reading at all, SG stored as °P, readings held
    out, pushes refused and readings with no batch: each its own line saying what to do."""
    from serving.cellar import trust_warnings

    batch = {"batch_id": "B1", "fermenter": "FV1", "start_time": NOW - timedelta(hours=80)}
    device = _gravity(np.arange(40, 0, -1) * 0.25 + 10, np.linspace(12, 8, 40))
    (warning,) = trust_warnings(batch, None, device, NOW)
    assert warning["kind"] == "hydrometer_silent" and "silent for 10.2 h" in warning["text"]
    daily = _gravity([72, 48, 24], [12.0, 9.0, 7.0])
    assert trust_warnings(batch, None, daily, NOW) == []  # a hand log read yesterday: fine
    (warning,) = trust_warnings(batch, None, _gravity([96, 72, 40], [12.0, 9.0, 7.0]), NOW)
    assert warning["kind"] == "reading_due" and "40.0 h" in warning["text"]
    (warning,) = trust_warnings(batch, None, Series(np.empty(0), np.empty(0)), NOW)
    assert warning["kind"] == "no_readings" and "FV1" in warning["text"]
    as_plato = _gravity([1.0, 0.75, 0.5], [1.048, 1.046, 1.044])
    assert _kinds(trust_warnings(batch, None, as_plato, NOW)) == ["unit_suspect"]
    troubles = {
        "held_out": {"count": 2, "reason": "gravity 13.00 °P is 6.60 °P above"},
        "refused": {"count": 3, "reason": "tilt:red: gravity_plato values sent as °P look like SG"},
        "unassigned": {"count": 5, "devices": ["tilt:red"]},
    }
    found = trust_warnings(batch, None, daily, NOW, troubles)
    assert _kinds(found) == ["held_out", "refused", "unassigned"]
    assert "Check the device's unit" in found[1]["text"] and "3 push(es)" in found[1]["text"]
    assert "5 reading(s) of tilt:red" in found[2]["text"]


def _finished(batch_id, brand, days, error_24=None, held=None, finished_days_ago=10, style=None):
    finished = NOW - timedelta(days=finished_days_ago)
    said = {"error_hours": error_24, "held_80": held}
    return {
        "batch_id": batch_id,
        "brand": brand,
        "style": style,
        "yeast_strain": "us05",
        "start_time": finished - timedelta(days=days),
        "finished_at": finished,
        "duration_hours": days * 24.0,
        "before_finish": {
            "24": said,
            "48": {"error_hours": None, "held_80": None},
            "72": {"error_hours": None, "held_80": None},
        },
    }


def test_a_forecast_no_fermentation_or_history_supports_is_flagged():
    """A slope of -277 °P a day, and a finish past 1.5 x the brand's longest finish (three
    finished batches needed; a brand with fewer is judged by its style), are flagged."""
    from serving.cellar import trust_warnings

    batch = {
        "batch_id": "B1",
        "brand": "pils",
        "style": "lager",
        "start_time": NOW - timedelta(days=3),
    }
    gravity = _gravity([48, 24, 1], [12.0, 9.0, 7.0])
    steep = {**_forecast("B1", NOW, False), "hours_remaining": 24.0}
    steep["features"] = {**steep["features"], "gravity_slope_plato_per_day": -277.0}
    (warning,) = trust_warnings(batch, steep, gravity, NOW)
    assert warning["kind"] == "implausible_slope" and "falling 277.0 °P a day" in warning["text"]

    history = [_finished(f"P{i}", "pils", d) for i, d in enumerate((8, 9, 10))]
    slow = {**_forecast("B1", NOW, False), "hours_remaining": 13 * 24.0}  # 16 days from pitch
    (warning,) = trust_warnings(batch, slow, gravity, NOW, None, history)
    assert warning["kind"] == "beyond_history"
    assert "1.5 × the longest of this brand's 3 finished batches (10.0 days)" in warning["text"]
    assert trust_warnings(batch, slow, gravity, NOW, None, history[:2]) == []  # too few
    styled = [_finished(f"S{i}", f"other{i}", 20, style="lager") for i in range(3)]
    assert trust_warnings(batch, slow, gravity, NOW, None, history[:2] + styled) == []


def test_track_record_by_brand_then_style_against_a_hand_example():
    """The last finished batches of the brand: the median error and the windows that held,
    read from each batch's forecasts before its finish; a brand with none falls back to its
    style; a cellar with no scored finish has none."""
    from serving.cellar import track_record

    rows = [
        _finished("A1", "ale", 5, 4.0, True, finished_days_ago=30),
        _finished("A2", "ale", 5, -2.0, False, finished_days_ago=20),
        _finished("A3", "ale", 5, 10.0, True, finished_days_ago=10),
        _finished("A4", "ale", 5, None, None, finished_days_ago=5),  # no forecast near
        _finished("L1", "lager", 14, 30.0, False, style="lager"),
    ]
    record = track_record(rows, {"batch_id": "A9", "brand": "ale"})
    assert (record["group"], record["value"]) == ("brand", "ale")
    assert [b["batch_id"] for b in record["batches"]] == ["A1", "A2", "A3"]
    day = record["hours_before_finish"]["24"]
    assert day == {
        "forecasts": 3,
        "median_error_hours": 4.0,
        "windows": 3,
        "windows_held": 2,
    }
    assert record["hours_before_finish"]["48"]["forecasts"] == 0
    styled = track_record(rows, {"batch_id": "N1", "brand": "new", "style": "lager"})
    assert styled["group"] == "style" and [b["batch_id"] for b in styled["batches"]] == ["L1"]
    assert track_record(rows[3:4], {"batch_id": "A9", "brand": "ale"}) is None


def test_finish_errors_against_a_hand_example():
    """The live forecast nearest 24/48/72 h before the finish: its error, and whether its
    80% window held; a back-cast is never the one."""
    finished = NOW
    history = [
        {
            "at": finished - timedelta(hours=h),
            "predicted_finish_time": finished + timedelta(hours=e),
            "finish_time_80": {
                "earliest": finished - timedelta(hours=5),
                "latest": None if late is None else finished + timedelta(hours=late),
            },
            "backcast": backcast,
        }
        for h, e, late, backcast in (
            (73, 20.0, None, False),
            (47, -5.0, -1.0, False),
            (24, 0.5, 2.0, True),
            (10, 1.0, 2.0, False),
        )
    ]
    history = [
        {k: _iso(v) if isinstance(v, datetime) else v for k, v in f.items()} for f in history
    ]
    for f in history:
        f["finish_time_80"] = {k: v and _iso(v) for k, v in f["finish_time_80"].items()}
    assert finish_errors(history, finished) == {
        24: {"error_hours": None, "held_80": None},
        48: {"error_hours": -5.0, "held_80": False},
        72: {"error_hours": 20.0, "held_80": True},
    }


def test_the_fitted_curve_recovers_a_logistic_and_declines_what_it_cannot_fit():
    """DOMAIN.md's four-parameter logistic, fitted to 15-minute readings of a known curve
    with 0.1 °P of noise, gives back its terminal gravity, slope and midpoint; a handful
    of readings or a flat line gets no curve."""
    import numpy as np

    from brewcast.snapshots import Series
    from ingest.simulator import logistic_gravity
    from serving.cellar import fitted_curve

    rng = np.random.default_rng(4)
    start = 500_000.0  # hours since the epoch
    t = np.arange(0, 120, 0.25)
    values = logistic_gravity(t, 12.0, 3.0, 0.08, 48.0) + rng.normal(0, 0.1, t.size)
    fit = fitted_curve(Series(start + t, values), until_hours=start + 200)
    assert fit["terminal_gravity_plato"] == pytest.approx(3.0, abs=0.1)
    assert fit["original_gravity_plato"] == pytest.approx(12.0, abs=0.1)
    assert fit["slope_per_hour"] == pytest.approx(0.08, rel=0.05)
    assert fit["rms_plato"] == pytest.approx(0.1, abs=0.02)
    midpoint = (fit["midpoint_at"].timestamp() / 3600) - start
    assert midpoint == pytest.approx(48.0, abs=1.0)
    first, last = fit["points"][0][0], fit["points"][-1][0]
    assert (last - first).total_seconds() / 3600 == pytest.approx(200.0)  # drawn to the forecast
    assert fitted_curve(Series(start + t[:5], values[:5])) is None
    assert fitted_curve(Series(start + t, np.full(t.size, 12.0))) is None

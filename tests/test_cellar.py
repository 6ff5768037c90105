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


def test_a_card_says_when_not_to_believe_it():
    """A start in the future reads 0 h since pitch, with a line saying so; a forecast of
    a brand the model never saw, out of distribution, with the service's notes, says each
    in one line; a clean forecast says nothing."""
    from serving.cellar import trust_warnings

    start = NOW + timedelta(hours=38.4)
    batch = {"batch_id": "B9", "fermenter": "FV9", "brand": "new", "start_time": start}
    gravity = Series(np.array([hour_of(NOW - timedelta(hours=1))]), np.array([9.0]))
    empty = Series(np.empty(0), np.empty(0))
    stranger = {
        **_forecast("B9", NOW, False),
        "unknown_categories": ["brand"],
        "out_of_distribution": True,
        "notes": ["1 of 1 snapshot(s) are of a brand and fermenter this model never saw"],
    }
    (row,) = board([batch], [(gravity, empty)], {"B9": stranger}, [], [], NOW)
    assert row["hours_since_pitch"] == 0.0
    assert row["warnings"][0].startswith("The pitch time is in the future")
    assert "never saw this brand" in row["warnings"][1]
    assert "take a gravity reading" in row["warnings"][2]
    assert row["warnings"][3].startswith("1 of 1 snapshot(s)")
    assert trust_warnings(_forecast("B1", NOW, True), 12.0) == []


def test_finish_errors_against_a_hand_example():
    finished = NOW
    history = [
        {
            "at": finished - timedelta(hours=h),
            "predicted_finish_time": finished + timedelta(hours=e),
        }
        for h, e in ((73, 20.0), (47, -5.0), (10, 1.0))
    ]
    history = [{k: _iso(v) for k, v in f.items()} for f in history]
    assert finish_errors(history, finished) == {24: None, 48: -5.0, 72: 20.0}


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

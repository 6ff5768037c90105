"""The BentoML service, started for real (`bentoml serve` in a subprocess) with a real
exported model, spoken to over real HTTP."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from application.processes import ServerProcess, bento_server, free_port
from brewcast.contract import META_FINISH_FORECAST, read_metadata
from brewcast.intervals import FinishForecast
from brewcast.schema import FEATURES, OOV, READING_VALUE_RANGES
from brewcast.units import sg_to_plato
from models.export import cpu_session, run_onnx
from models.intervals import forecast_frame
from tests.conftest import register_model

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "test-key"}


def start_service(home: Path, **env: str) -> tuple[ServerProcess, str]:
    port = free_port()
    server = bento_server(
        home, port, BREWCAST_SERVING_POLL_SECONDS="0", BREWCAST_SERVING_API_KEY="test-key", **env
    )
    return server.start(timeout=180), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def champion_home(trained, tmp_path_factory):
    settings, workdir = trained
    home = tmp_path_factory.mktemp("serving") / "home"
    settings = settings.model_copy(update={"home": home})
    work = home.parent / "work"
    shutil.copytree(workdir, work)
    assert register_model(settings, work)["promoted"]
    return settings, work


@pytest.fixture(scope="module")
def service(champion_home):
    settings, _ = champion_home
    # Inline scoring up to 10 rows: the 40-row parity test is scored on a thread, the
    # smaller requests on the event loop; both paths are checked.
    server, url = start_service(
        settings.home,
        BREWCAST_SERVING_MAX_ROWS="50",
        BREWCAST_SERVING_INLINE_ROWS="10",
        BREWCAST_SERVING_MAX_BODY_BYTES=str(2**20),
    )
    yield server, url
    server.stop()


def _rows(frame: pd.DataFrame) -> list[dict]:
    features = [c.name for c in FEATURES.by_role("feature")]
    out = json.loads(frame[["batch_id", *features]].to_json(orient="records"))
    for row, t in zip(out, frame["snapshot_time"], strict=True):
        row["snapshot_time"] = t.isoformat()
    return out


def test_predictions_equal_in_process_onnxruntime(service, champion_home):
    _, url = service
    _, work = champion_home
    test = pd.read_parquet(work / "test.parquet").head(40)
    response = httpx.post(f"{url}/predict", json={"rows": _rows(test)}, headers=KEY, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    expected, hours = run_onnx(cpu_session((work / "model.onnx").read_bytes()), test)
    got = np.array([p["probability"] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(
        [p["hours_remaining"] for p in body["predictions"]], hours, atol=1e-3
    )
    threshold = body["threshold"]
    assert [p["decision"] for p in body["predictions"]] == [bool(p >= threshold) for p in got]
    assert body["model_version"] == "1"
    # the finish forecast: the model file's own groups, computed in process, in UTC
    forecast = FinishForecast.from_json(
        read_metadata((work / "model.onnx").read_bytes())[META_FINISH_FORECAST]
    )
    expected_rows = forecast.row_columns(forecast_frame(forecast, test, hours))
    for prediction, row, at in zip(
        body["predictions"], expected_rows, test["snapshot_time"], strict=True
    ):
        assert prediction["forecast_group"] == row["forecast_group"]
        assert prediction["never_probability"] == pytest.approx(row["never_probability"])
        for tag in (80, 95):
            interval = prediction[f"interval_{tag}"]
            assert interval["low"] == pytest.approx(row[f"interval_{tag}_low"], abs=1e-3)
            if row[f"interval_{tag}_high"] is None:
                assert (
                    interval["high"] is None and prediction[f"finish_time_{tag}"]["latest"] is None
                )
            else:
                latest = pd.Timestamp(prediction[f"finish_time_{tag}"]["latest"])
                expected_latest = pd.Timestamp(at) + pd.Timedelta(hours=interval["high"])
                assert abs(latest - expected_latest) < pd.Timedelta(seconds=1)
        finish = pd.Timestamp(prediction["predicted_finish_time"])
        assert prediction["predicted_finish_time"].endswith("Z")
        assert abs(
            finish - pd.Timestamp(at) - pd.Timedelta(hours=prediction["hours_remaining"])
        ) < pd.Timedelta(seconds=1)
        if row["finish_probabilities"] is not None:
            assert prediction["finish_probabilities"] == pytest.approx(
                json.loads(row["finish_probabilities"])
            )
    assert len({p["prediction_id"] for p in body["predictions"]}) == 40


def test_metadata_health_and_metrics(service):
    _, url = service
    meta = httpx.get(f"{url}/metadata", headers=KEY).json()
    assert meta["execution_provider"] == "CPUExecutionProvider"  # no GPU on this machine
    assert meta["model"]["requested_providers"][-1] == "CPUExecutionProvider"
    assert meta["model"]["model_version"] == "1" and 0 < meta["model"]["threshold"] < 1
    finish = meta["model"]["finish_forecast"]
    assert finish["levels"] == [0.8, 0.95] and finish["horizons_hours"] == [12, 24, 48, 72]
    assert finish["groups"]["*|*"]["snapshots"] > 0
    assert {f["name"] for f in meta["schema"]["features"]} == {
        c.name for c in FEATURES.by_role("feature")
    }
    for probe in ("healthz", "livez", "readyz"):
        assert httpx.get(f"{url}/{probe}").status_code == 200
    before = _metric_samples(url)
    rows = [{"brand": "golden_pilsner"}, {"brand": "golden_pilsner"}, {"brand": "no_such_beer"}]
    response = httpx.post(f"{url}/predict", json={"rows": rows}, headers=KEY)
    assert response.status_code == 200, response.text
    finished = sum(p["decision"] for p in response.json()["predictions"])
    after = _metric_samples(url)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("brewcast_predictions_total", decision="finished", model_version="1") == finished
    assert delta("brewcast_predictions_total", decision="not_finished", model_version="1") == (
        3 - finished
    )
    assert delta("brewcast_unknown_categories_total", column="brand") == 1
    # A row per count and its probability in the sum: the two pilsners, and the unknown brand
    # under the out-of-vocabulary label (a client cannot add label values).
    probabilities = [p["probability"] for p in response.json()["predictions"]]
    assert delta("brewcast_probability_count", slice="brand", value="golden_pilsner") == 2
    assert delta("brewcast_probability_sum", slice="brand", value="golden_pilsner") == (
        pytest.approx(probabilities[0] + probabilities[1])
    )
    assert delta("brewcast_probability_count", slice="brand", value=OOV) == 1
    assert delta("brewcast_model_seconds_count") == 1
    assert not any(dict(labels).get("value") == "no_such_beer" for _, labels in after)
    assert delta("brewcast_prediction_log_written_rows_total") == 3
    assert after[("brewcast_model_version", ())] == 1


def _metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """The service's Prometheus samples by (name, sorted labels); BentoML's multiprocess
    registry adds a ``pid`` label to gauges, dropped here."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            samples[(sample.name, labels)] = sample.value
    return samples


BAD = {
    "wrong type": ({"rows": [{"current_gravity_plato": "twelve"}]}, 400, "current_gravity_plato"),
    "out of range": ({"rows": [{"current_gravity_plato": 99.0}]}, 400, "current_gravity_plato"),
    "unknown field": ({"rows": [{"gravity": 12.0}]}, 400, "gravity"),
    "empty list": ({"rows": []}, 422, "rows"),
    "missing rows": ({"snapshots": []}, 400, "rows"),
    "too many rows": ({"rows": [{}] * 51}, 413, "limit is 50"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_4xx_naming_the_problem(service, case):
    _, url = service
    body, status, needle = BAD[case]
    response = httpx.post(f"{url}/predict", json=body, headers=KEY)
    assert response.status_code == status, response.text
    assert needle in response.text


@pytest.mark.parametrize(
    "raw",
    [
        '{"rows": [{"current_gravity_plato": NaN}]}',
        '{"rows": [{"current_gravity_plato": Infinity}]}',
    ],
)
def test_nan_and_infinity_are_refused(service, raw):
    _, url = service
    response = httpx.post(
        f"{url}/predict", content=raw, headers={**KEY, "content-type": "application/json"}
    )
    assert response.status_code == 400 and "current_gravity_plato" in response.text


def test_non_json_oversize_and_auth(service):
    _, url = service
    r = httpx.post(
        f"{url}/predict", content=b"not json", headers={**KEY, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.text
    r = httpx.post(f"{url}/predict", json={"rows": [{}]})
    assert r.status_code == 401 and "X-API-Key" in r.text
    r = httpx.post(f"{url}/predict", content=b"x" * (2 * 2**20), headers=KEY)
    assert r.status_code == 413 and f"over {2**20} bytes" in r.text


def test_every_hostile_body_gets_a_4xx_naming_its_problem(service):
    """The bodies of ``benchmarks.hostile`` (40,000 readings, a body at the byte limit, JSON
    100,000 deep, one key twice, a Tilt Timepoint of inf...): each a 4xx with a detail,
    none a 5xx; the service then still takes a good push."""
    from benchmarks.hostile import hostile_bodies

    _, url = service
    for name, route, body, media in hostile_bodies():
        answer = httpx.post(
            f"{url}{route}", content=body, headers={**KEY, "content-type": media}, timeout=60
        )
        assert 400 <= answer.status_code < 500 and answer.json()["detail"], (name, answer.text)
    pushed = httpx.post(f"{url}/readings/brewfather", json={"name": "calm", "temp": 18.0},
                        headers=KEY)  # fmt: skip
    assert pushed.status_code in (200, 202), pushed.text


def test_an_issued_device_key_pushes_readings_and_is_refused_everywhere_else(
    service, champion_home
):
    """Against the running server: a key issued with ``brewcast keys`` (the service reads
    the book in its database), 403 on every route that is not a push, then revoked."""
    from serving.access import KEY_CACHE_SECONDS, ROUTE_GRANTS, KeyBook
    from serving.prediction_log import make_engine

    _, url = service
    settings, _ = champion_home
    book = KeyBook(make_engine(settings.prediction_log))
    key = book.issue("ispindel-cellar-3", "device")
    spindel = {"name": "keyed-spindel", "temperature": 18.2, "temp_units": "C", "gravity": 8.1}
    pushed = httpx.post(f"{url}/readings/ispindel?key={key}", json=spindel)
    assert pushed.status_code == 202, pushed.text  # kept: nobody assigned it yet
    for route in ROUTE_GRANTS:
        if route.grant == "push":
            continue
        path = route.template.replace("{batch_id}", "b-1").replace("{device_id}", "d-1")
        answer = httpx.request(route.method, f"{url}{path}", json={}, headers={"X-API-Key": key})
        assert answer.status_code == 403, (route, answer.status_code, answer.text)
        assert "scope is device" in answer.json()["detail"]
    book.revoke("ispindel-cellar-3")
    time.sleep(KEY_CACHE_SECONDS + 0.5)
    refused = httpx.post(f"{url}/readings/ispindel?key={key}", json=spindel)
    assert refused.status_code == 401, refused.text


def test_openapi_documents_the_request_and_response_models(service):
    """/predict answers bytes and takes its body as one model; the API docs must still say
    what goes in and what comes out."""
    _, url = service
    spec = httpx.get(f"{url}/docs.json").json()["paths"]["/predict"]["post"]
    request = spec["requestBody"]["content"]["application/json"]["schema"]
    response = spec["responses"]["200"]["content"]["application/json"]["schema"]
    assert request["required"] == ["rows"] and request["properties"]["rows"]["minItems"] == 1
    assert request["additionalProperties"] is False
    assert set(response["required"]) == {
        "model_version",
        "threshold",
        "horizon_hours",
        "predictions",
    }
    # each forecast's intervals and finish times are documented, with an example
    text = json.dumps(httpx.get(f"{url}/docs.json").json())
    for field in ("interval_80", "interval_95", "finish_time_95", "finish_probabilities"):
        assert f'"{field}"' in text, field
    assert "2026-04-10T13:47:29Z" in text


def test_unknown_categories_are_served_as_oov_and_flagged(service):
    _, url = service
    rows = [{"brand": "mystery_ale", "fermenter": "FV01"}, {"brand": None, "fermenter": "FV01"}]
    body = httpx.post(f"{url}/predict", json={"rows": rows}, headers=KEY).json()
    first, second = body["predictions"]
    assert first["unknown_categories"] == ["brand"] and second["unknown_categories"] == []
    assert first["probability"] == pytest.approx(second["probability"])  # both OOV


def test_feedback_round_trip(service, champion_home):
    settings, work = champion_home
    _, url = service
    test = pd.read_parquet(work / "test.parquet").head(3)
    served = httpx.post(f"{url}/predict", json={"rows": _rows(test)}, headers=KEY).json()
    ids = [p["prediction_id"] for p in served["predictions"]]
    labels = [
        {"prediction_id": ids[0], "finished_within_horizon": True},
        {"prediction_id": "nope", "finished_within_horizon": False},
        {"batch_id": test["batch_id"].iloc[1], "finished_at": "2026-09-01T00:00:00Z"},
    ]
    r = httpx.post(f"{url}/feedback", json={"labels": labels}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": 2,
        "repeated": 0,
        "unknown_prediction_ids": ["nope"],
        "unknown_batch_ids": [],
    }
    bad = httpx.post(f"{url}/feedback", json={"labels": [{"prediction_id": ids[0]}]}, headers=KEY)
    assert bad.status_code == 400 and "finished_within_horizon" in bad.text
    # Nothing to accept is an answer, not a 500 (it once tried to insert an empty label).
    only_unknown = [{"prediction_id": "gone", "finished_within_horizon": True}]
    r = httpx.post(f"{url}/feedback", json={"labels": only_unknown}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": 0,
        "repeated": 0,
        "unknown_prediction_ids": ["gone"],
        "unknown_batch_ids": [],
    }
    with sqlite3.connect(settings.home / "predictions.db") as db:
        assert (
            db.execute("select count(*) from labels where prediction_id = ?", (ids[0],)).fetchone()[
                0
            ]
            == 1
        )
        row = db.execute(
            "select batch_id, probability, model_version from predictions where prediction_id = ?",
            (ids[1],),
        ).fetchone()
    assert row[0] == test["batch_id"].iloc[1] and math.isclose(
        row[1], served["predictions"][1]["probability"]
    )


def test_hot_swap_under_load_drops_nothing(service, champion_home):
    settings, work = champion_home
    _, url = service
    rows = {"rows": _rows(pd.read_parquet(work / "test.parquet").head(5))}
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{url}/predict", json=rows, headers=KEY)
                results.append((r.status_code, r.json().get("model_version", "?")))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(hammer)
        time.sleep(1.0)
        second = work.parent / "work2"
        shutil.copytree(work, second, dirs_exist_ok=True)
        assert register_model(settings, second)["promoted"]  # version 2 is champion now
        swap = httpx.post(f"{url}/reload", headers=KEY, timeout=60).json()
        assert swap["swapped"] and swap["model_version"] == "2", swap
        time.sleep(1.0)
        stop.set()
    statuses = {s for s, _ in results}
    versions = [v for _, v in results]
    assert statuses == {200}, statuses
    assert versions[0] == "1" and versions[-1] == "2" and len(results) > 50
    meta = httpx.get(f"{url}/metadata", headers=KEY).json()
    assert meta["model"]["model_version"] == "2"


def test_sync_log_survives_kill_9_under_load(champion_home, tmp_path):
    settings, work = champion_home
    home = settings.home
    server, url = start_service(
        home, BREWCAST_PREDICTION_LOG_URL=(f"sqlite:///{tmp_path / 'crash.db'}")
    )
    rows = {"rows": _rows(pd.read_parquet(work / "test.parquet").head(3))}
    answered: list[str] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{url}/predict", json=rows, headers=KEY)
                except httpx.HTTPError:
                    return  # the server died mid-request: that response was never sent
                if r.status_code == 200:
                    answered.extend(p["prediction_id"] for p in r.json()["predictions"])

    acknowledged: list[tuple[str, str]] = []  # (device, timestamp) of answered pushes
    start = pd.Timestamp("2026-01-01", tz="UTC")

    def push(worker: int):
        """Devices pushing readings the same time: what was answered must be stored."""
        with httpx.Client(timeout=10) as client:
            k = 0
            while not stop.is_set():
                at = (start + pd.Timedelta(minutes=k)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = {
                    "readings": [{"device": f"crash-{worker}", "timestamp": at, "gravity": 10.0}]
                }
                try:
                    r = client.post(f"{url}/readings", json=body, headers=KEY)
                except httpx.HTTPError:
                    return
                if r.status_code in (200, 202):
                    acknowledged.append((f"crash-{worker}", at))
                k += 1

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    threads += [threading.Thread(target=push, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.kill()
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert len(answered) > 30 and len(acknowledged) > 30
    with sqlite3.connect(tmp_path / "crash.db") as db:
        logged = {r[0] for r in db.execute("select prediction_id from predictions")}
        stored = {
            (device, pd.Timestamp(at).tz_localize("UTC").strftime("%Y-%m-%dT%H:%M:%SZ"))
            for device, at in db.execute("select device_id, timestamp from readings")
        }
    missing = set(answered) - logged
    assert not missing, f"{len(missing)} answered predictions were not in the log"
    lost = set(acknowledged) - stored
    assert not lost, f"{len(lost)} acknowledged readings were not stored"


def test_readings_pushed_by_devices_give_forecasts_from_the_stored_readings(service, champion_home):
    """A batch started over the API, a Tilt and an iSpindel assigned to its fermenter,
    their own push formats, then ``GET /batches/{id}/forecast``: the service's snapshot is
    the training code's on the stored readings, its probability in-process onnxruntime's
    on that snapshot, and the forecast is logged. Bad pushes get a 4xx naming the field."""
    from datetime import UTC, datetime, timedelta

    from ingest.devices import EXCEL_ORIGIN

    _, url = service
    _, work = champion_home
    pitch = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    batch = {
        "batch_id": f"B-{uuid.uuid4().hex[:8]}",
        "start_time": pitch.isoformat(),
        "fermenter": "FV01",
        "brand": "golden_pilsner",
        "yeast_strain": "german_lager",
        "original_gravity_plato": 12.0,
    }
    assert httpx.post(f"{url}/batches", json=batch).status_code == 401  # keyed like /predict
    assert httpx.post(f"{url}/batches", json=batch, headers=KEY).status_code == 201
    assert httpx.post(f"{url}/batches", json=batch, headers=KEY).status_code == 409
    vessel = f"vessel-{batch['batch_id']}"
    assert (
        httpx.patch(
            f"{url}/batches/{batch['batch_id']}", json={"fermenter": vessel}, headers=KEY
        ).status_code
        == 200
    )
    colour = uuid.uuid4().hex[:6]
    for device, body in (
        (f"tilt:{colour}", {"fermenter": vessel}),
        (f"ispindel:spin-{colour}", {"fermenter": vessel, "gravity_unit": "SG"}),
    ):
        assert httpx.put(f"{url}/devices/{device}", json=body, headers=KEY).status_code == 200
    # the Tilt app's form posts every 3 h since pitch, local time in the service's zone (UTC)
    for k in range(1, 24):
        at = pitch + timedelta(hours=3 * k)
        serial = (at.replace(tzinfo=None) - EXCEL_ORIGIN).total_seconds() / 86400
        sg = 1.048 - 0.0016 * k
        form = {
            "Timepoint": f"{serial:.10f}",
            "SG": f"{sg:.4f}",
            "Temp": "64.4",
            "Color": colour.upper(),
            "Beer": "Pils",
        }
        answer = httpx.post(f"{url}/readings/tilt?key=test-key", data=form)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["batch_id"] == batch["batch_id"]
    again = httpx.post(f"{url}/readings/tilt?key=test-key", data=form).json()["results"][0]
    assert (again["stored"], again["duplicates"]) == (0, 2)
    ispindel = {
        "name": f"spin-{colour}",
        "ID": 9390968,
        "angle": 40.1,
        "temperature": 18.2,
        "temp_units": "C",
        "gravity": 1.011,
        "interval": 900,
    }
    assert httpx.post(f"{url}/readings/ispindel?key=test-key", json=ispindel).status_code == 200
    stranger = httpx.post(
        f"{url}/readings/brewfather?key=test-key",
        json={"name": f"nobody-{colour}", "temp": 19.0, "gravity": 1.02},
    )
    assert stranger.status_code == 202 and stranger.json()["results"][0]["status"] == "unassigned"
    unassigned = httpx.get(f"{url}/devices/unassigned", headers=KEY).json()["devices"]
    assert f"brewfather:nobody-{colour}" in {d["device"] for d in unassigned}
    # an iSpindel nobody assigned yet cannot say its gravity's unit: kept (202), and stored
    # at the time it arrived once the device is assigned its unit
    newcomer = {**ispindel, "name": f"new-{colour}", "gravity": 1.009}
    kept = httpx.post(f"{url}/readings/ispindel?key=test-key", json=newcomer)
    assert kept.status_code == 202 and kept.json()["results"][0]["status"] == "pending"
    assigned = httpx.put(
        f"{url}/devices/ispindel:new-{colour}",
        json={"fermenter": vessel, "gravity_unit": "SG"},
        headers=KEY,
    ).json()
    assert assigned["pending_stored"] == 1, assigned
    for bad, says in (
        (
            {"name": f"spin-{colour}", "gravity": 1.6, "temperature": 18},
            "outside the physical range",
        ),
        (["not", "an", "object"], "JSON object"),
    ):
        refused = httpx.post(f"{url}/readings/ispindel?key=test-key", json=bad)
        assert refused.status_code == 422 and says in refused.json()["detail"]
    future = {
        "readings": [
            {
                "device": f"tilt:{colour}",
                "timestamp": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                "gravity": 5.0,
            }
        ]
    }
    refused = httpx.post(f"{url}/readings", json=future, headers=KEY)
    assert refused.status_code == 422 and "in the future" in refused.json()["detail"]

    at = (pitch + timedelta(hours=60)).isoformat()
    forecast = httpx.get(
        f"{url}/batches/{batch['batch_id']}/forecast", params={"at": at}, headers=KEY
    )
    assert forecast.status_code == 200, forecast.text
    body = forecast.json()
    features = body["features"]
    assert features["gravity_readings_count"] == 20 and features["hours_since_pitch"] == 60.0
    assert features["current_gravity_plato"] == pytest.approx(sg_to_plato(1.048 - 0.0016 * 20))
    frame = pd.DataFrame([features])
    frame["snapshot_time"] = pd.Timestamp(features["snapshot_time"])
    probability, hours = run_onnx(cpu_session((work / "model.onnx").read_bytes()), frame)
    assert body["probability"] == pytest.approx(probability[0], abs=1e-6)
    assert body["hours_remaining"] == pytest.approx(hours[0], abs=1e-3)
    high = body["interval_95"]["high"]  # None: open-ended
    assert high is None or body["interval_95"]["low"] <= body["interval_80"]["low"] <= high
    assert body["predicted_finish_time"].endswith("Z")
    # the refused push of its iSpindel is kept, with its reason, on the batch's page data
    page = httpx.get(f"{url}/cellar/batches/{batch['batch_id']}", headers=KEY).json()
    physics, future = page["refused"]  # oldest first; the body naming no device is not here
    assert physics["device_id"] == f"ispindel:spin-{colour}" and physics["status"] == 422
    assert "outside the physical range" in physics["reason"] and '"gravity":1.6' in physics["body"]
    assert future["device_id"] == f"tilt:{colour}" and "in the future" in future["reason"]
    # a reading 8 °P above the batch's last ones (the device moved): stored, held out
    jump = {"device": f"tilt:{colour}", "gravity": 12.0,
            "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}  # fmt: skip
    held = httpx.post(f"{url}/readings", json={"readings": [jump]}, headers=KEY).json()
    assert held["results"][0]["held_out"] == 1, held
    page = httpx.get(f"{url}/cellar/batches/{batch['batch_id']}", headers=KEY).json()
    assert [r["value"] for r in page["held_out"]] == [12.0]
    assert 12.0 not in [value for _, value in page["readings"]["gravity_plato"]]
    running = httpx.get(f"{url}/batches", params={"active": "true"}, headers=KEY).json()["batches"]
    assert batch["batch_id"] in {b["batch_id"] for b in running}
    every = httpx.get(f"{url}/forecasts", headers=KEY).json()["forecasts"]
    assert batch["batch_id"] in {f["batch_id"] for f in every}
    ended = httpx.patch(
        f"{url}/batches/{batch['batch_id']}",
        json={"end_time": datetime.now(UTC).isoformat()},
        headers=KEY,
    )
    assert ended.status_code == 200 and ended.json()["end_time"] is not None


@pytest.mark.parametrize("log, colour", [("SAISON", "Black"), ("MEAD", "Pink")])
def test_real_tilt_logs_posted_as_the_tilt_app_does_give_the_training_snapshots(
    service, champion_home, tmp_path, log, colour
):
    """A real Tilt log (the saison's JSON lines, the mead's newest-first CSV) through the
    drop folder into the lake gives training snapshots; the same samples posted one by one
    to ``/readings/tilt`` as the Tilt app posts them (Excel serial local time, SG, °F) give
    forecasts whose features equal them (within the °P -> SG -> °P of a form) and whose
    probability is in-process onnxruntime's on the training snapshot."""
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS
    from brewcast.settings import Settings
    from brewcast.units import plato_to_sg
    from devtools import realdata
    from ingest.devices import EXCEL_ORIGIN

    _, url = service
    _, work = champion_home
    settings = Settings(home=tmp_path / "lake")  # the service's zone (UTC) for local times
    training = realdata.real_snapshots(settings, getattr(realdata, log))
    assert len(training) > 20
    batch = lake.read_table(settings.paths.lake, "validated", BATCHES).iloc[0]
    batch_id = f"{batch['batch_id']}-{uuid.uuid4().hex[:6]}"
    vessel = f"FV-{batch_id}"
    started = {
        name: None
        if pd.isna(batch[name])
        else batch[name].isoformat()
        if isinstance(batch[name], pd.Timestamp)
        else batch[name]
        for name in BATCHES.names
        if name != "end_time"
    } | {"batch_id": batch_id, "fermenter": vessel}
    assert httpx.post(f"{url}/batches", json=started, headers=KEY).status_code == 201
    device = f"tilt:{colour.lower()}"
    assert (
        httpx.put(f"{url}/devices/{device}", json={"fermenter": vessel}, headers=KEY).status_code
        == 200
    )
    readings = lake.read_table(settings.paths.lake, "validated", READINGS)
    samples = readings.pivot_table(
        index="timestamp", columns="tag", values="value", aggfunc="first"
    ).dropna()
    forms = [
        {
            "Timepoint": f"{(at.tz_localize(None) - EXCEL_ORIGIN).total_seconds() / 86400:.10f}",
            "SG": repr(float(plato_to_sg(np.array([row["gravity_plato"]]))[0])),
            "Temp": repr(float(row["temperature_c"]) * 9 / 5 + 32),
            "Color": colour,
            "Beer": "real",
        }
        for at, row in samples.tz_convert("UTC").iterrows()
    ]
    assert len(forms) > 1000

    def post(part: list[dict]) -> None:  # one post a sample, in 4 streams to save time
        with httpx.Client(base_url=url, timeout=30) as client:
            for form in part:
                answer = client.post("/readings/tilt?key=test-key", data=form)
                assert answer.status_code == 200, answer.text
                assert answer.json()["results"][0]["batch_id"] == batch_id

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, [forms[i::4] for i in range(4)]))
    # the lake's batch has no fermenter; the service's is the one the device is assigned to
    chosen = training.iloc[:: max(len(training) // 8, 1)].assign(fermenter=vessel)
    expected, _ = run_onnx(cpu_session((work / "model.onnx").read_bytes()), chosen)
    for (_, snapshot), probability in zip(chosen.iterrows(), expected, strict=True):
        answer = httpx.get(
            f"{url}/batches/{batch_id}/forecast",
            params={"at": snapshot["snapshot_time"].isoformat()},
            headers=KEY,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        features = body["features"]
        for name in [c.name for c in FEATURES.by_role("feature")] + ["gravity_readings_count"]:
            want, got = snapshot[name], features.get(name)
            if pd.isna(want):
                assert got is None, name
            elif isinstance(want, float):
                assert got == pytest.approx(want, abs=1e-6), (name, got, want)
            else:
                assert str(got) == str(want), name
        assert body["probability"] == pytest.approx(probability, abs=1e-6)


def _simulated_batches(url: str, world, count: int) -> list[tuple[str, pd.Timestamp]]:
    """The first ``count`` batches of a simulated world that finished, started over the API
    with their own attributes, each with a device in its fermenter pushing all its readings
    (brewcast's readings JSON); each batch's id and finish time."""
    from models.dataset import LabelRules, derive_outcomes
    from monitoring.replay import records

    outcomes = derive_outcomes(world.batches, world.readings, LabelRules())
    finished = outcomes[outcomes["status"] == "finished"].head(count)
    chosen = world.batches[world.batches["batch_id"].isin(finished["batch_id"])]
    for batch in records(chosen.drop(columns=["end_time"])):
        assert httpx.post(f"{url}/batches", json=batch, headers=KEY).status_code == 201
        device = f"hand:{batch['batch_id']}"
        assign = {"fermenter": batch["fermenter"]}
        assert httpx.put(f"{url}/devices/{device}", json=assign, headers=KEY).status_code == 200
        mine = world.readings[world.readings["batch_id"] == batch["batch_id"]]
        ranges = mine["tag"].map(READING_VALUE_RANGES)  # a device's impossible values: refused
        mine = mine[[lo <= v <= hi for v, (lo, hi) in zip(mine["value"], ranges, strict=True)]]
        readings = [
            {
                "device": device,
                "timestamp": t.isoformat(),
                "gravity" if tag == "gravity_plato" else "temperature": float(v),
            }
            for t, tag, v in zip(mine["timestamp"], mine["tag"], mine["value"], strict=True)
        ]
        answer = httpx.post(f"{url}/readings", json={"readings": readings}, headers=KEY)
        assert answer.status_code == 200, answer.text
    return list(zip(finished["batch_id"], finished["finish_time"], strict=True))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no Chromium: `make test` has it")
def test_ready_event_once_across_a_restart_webhook_and_the_board(
    champion_home, small_world, tmp_path
):
    """Two simulated batches' readings pushed (hand readings on the cellar's rounds: a day
    and a half after the finish, a reading a day earlier confirms the plateau), their
    forecasts then turn ready: one event each, delivered to a webhook receiver once, never
    again after a restart; the
    board (real Chromium) shows the API's numbers, links to the batch page, and the
    operator's acknowledgement is stored; an override of the other batch becomes a label."""
    from tests.test_cellar import Receiver

    settings, _ = champion_home
    receiver = Receiver()
    env = {
        "BREWCAST_READY_WEBHOOK_URL": receiver.url,
        "BREWCAST_PREDICTION_LOG_URL": f"sqlite:///{tmp_path / 'board.db'}",
        "BREWCAST_SERVING_FORECAST_EVERY_MINUTES": "0",
    }
    server, url = start_service(settings.home, **env)
    try:
        (ready, first), (overridden, second) = _simulated_batches(url, small_world, 2)
        for batch_id, finished in ((ready, first), (overridden, second)):
            at = {"at": (finished + pd.Timedelta(hours=36)).isoformat()}
            forecast = httpx.get(f"{url}/batches/{batch_id}/forecast", params=at, headers=KEY)
            assert forecast.json()["state"] == "ready", forecast.text
        _wait(lambda: len(receiver.bodies) == 2)
        httpx.get(f"{url}/forecasts", params=at, headers=KEY)  # ready again: no new event
        server.stop()
        server, url = start_service(settings.home, **env)  # restarted
        at = {"at": (first + pd.Timedelta(hours=42)).isoformat()}
        again = httpx.get(f"{url}/batches/{ready}/forecast", params=at, headers=KEY).json()
        assert again["state"] == "ready", again  # still ready: no new event
        time.sleep(3)  # the notifier's turn: nothing left to send
        assert sorted(b["batch_id"] for b in receiver.bodies) == sorted([ready, overridden])
        events = httpx.get(f"{url}/cellar/events", headers=KEY).json()["events"]
        assert len(events) == 2 and all(e["webhook_delivered_at"] for e in events)
        by_batch = {b["batch_id"]: b for b in receiver.bodies}
        assert by_batch[ready]["forecast"]["at"].startswith(
            (first + pd.Timedelta(hours=36)).strftime("%Y-%m-%dT%H:%M")
        )

        override = {"answer": "overridden", "by": "ana", "reason": "still 0.4 °P above terminal"}
        answered = httpx.post(f"{url}/cellar/batches/{overridden}/ready", json=override)
        assert answered.status_code == 401  # answering needs the key
        answered = httpx.post(
            f"{url}/cellar/batches/{overridden}/ready", json=override, headers=KEY
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["label"]["finished_within_horizon"] is False
        import sqlalchemy as sa

        with sa.create_engine(env["BREWCAST_PREDICTION_LOG_URL"]).connect() as conn:
            labels = conn.execute(sa.text("select source, prediction_id from labels")).all()
        assert [(s, p) for s, p in labels] == [
            ("override", by_batch[overridden]["forecast"]["prediction_id"])
        ]
        refused = httpx.post(
            f"{url}/cellar/batches/{ready}/ready",
            json={"answer": "overridden", "by": "x"},
            headers=KEY,
        )
        assert refused.status_code == 422 and "reason" in refused.text

        board = httpx.get(f"{url}/cellar", headers=KEY).json()["batches"]
        shots = Path(os.environ.get("BREWCAST_SCREENSHOTS", tmp_path / "shots"))
        _board_in_chromium(url, board, ready, again["model_version"], shots)
        (event,) = [
            e
            for e in httpx.get(f"{url}/cellar/events", headers=KEY).json()["events"]
            if e["batch_id"] == ready
        ]
        assert (event["answer"], event["answered_by"]) == ("acknowledged", "ana")
    finally:
        server.stop()
        receiver.close()


def _board_in_chromium(
    url: str, board: list[dict], batch_id: str, version: str, shots: Path
) -> None:
    """The board at tablet and phone widths shows the API's numbers for ``batch_id``; its batch
    page draws its curves and lists its event; the Acknowledge button stores the answer."""
    from playwright.sync_api import sync_playwright

    from tests.test_demo import CHROMIUM_ARGS

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        errors: list[str] = []
        for width, height in ((1024, 768), (390, 844)):
            # a tablet set to another zone than the cellar's (UTC here): the board still
            # shows the cellar's time, and says which zone once, in the header
            page = browser.new_page(
                viewport={"width": width, "height": height}, timezone_id="Pacific/Auckland"
            )
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(f"{url}/board?key=test-key")
            page.wait_for_timeout(1000)
            assert not errors, errors
            card = page.locator(f'article[data-batch="{batch_id}"]')
            card.wait_for(timeout=30_000)
            shown = {
                name: card.locator(f'[data-field="{name}"]').first.get_attribute("data-value")
                for name in ("probability", "predicted_finish_time", "model_version")
            }
            expected = next(b for b in board if b["batch_id"] == batch_id)["forecast"]
            assert float(shown["probability"]) == expected["probability"]
            assert shown["predicted_finish_time"] == expected["predicted_finish_time"]
            assert shown["model_version"] == expected["model_version"] == version
            # read by hand (a reading every few hours), its last reading long ago: one is due
            assert card.locator(".pill.stale").inner_text() == "reading due"
            due = card.locator('[data-field="warning"][data-value="reading_due"]')
            assert due.inner_text().startswith("No gravity reading for "), due.inner_text()
            assert page.locator("#zone").inner_text() == "times in UTC"
            in_utc = page.evaluate(
                """iso => new Date(iso).toLocaleString([], {weekday: "short", day: "2-digit",
                month: "short", hour: "2-digit", minute: "2-digit", timeZone: "UTC"})""",
                expected["predicted_finish_time"],
            )
            shown_at = card.locator('[data-field="predicted_finish_time"]').first.inner_text()
            assert shown_at == in_utc, (shown_at, in_utc)
            page.close()
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/board?key=test-key")
        page.locator(f'article[data-batch="{batch_id}"] h2 a').click()
        page.locator("#curve svg").wait_for(timeout=30_000)
        assert not errors, errors
        status = page.locator("#status")
        assert "forecasts" in status.inner_text(), status.inner_text()
        assert page.locator("#curve svg path").count() >= 2  # gravity and temperature
        # axis ticks with the precision the data needs and a unit each: no two alike
        for axis, unit in (("left", "°P"), ("right", "°C")):
            ticks = page.locator(f'#curve svg text[data-axis="{axis}"]').all_text_contents()
            assert len(ticks) == 5 and len(set(ticks)) == 5, ticks
            assert all(t.endswith(unit) for t in ticks), ticks
        fitted = httpx.get(f"{url}/cellar/batches/{batch_id}", headers=KEY).json()["fitted"]
        assert fitted and fitted["rms_plato"] < 0.5  # a simulated batch follows the logistic
        assert page.locator('#curve svg path[stroke-dasharray="5 4"]').count() == 1
        assert page.get_by_text("fitted logistic (terminal").count() == 1
        assert page.locator("#events [data-field=ready-event]").count() == 1
        page.get_by_role("link", name="Board").click()
        card = page.locator(f'article[data-batch="{batch_id}"]')
        card.wait_for(timeout=30_000)
        page.on("dialog", lambda dialog: dialog.accept("ana"))
        card.get_by_role("button", name="Acknowledge").click()
        card.get_by_text("acknowledged by ana").wait_for(timeout=30_000)
        page.screenshot(path=shots / "cellar-acknowledged.png")
        page.get_by_role("link", name="History").click()
        page.locator("#status", has_text="0 finished batches").wait_for(timeout=30_000)
        assert not errors, errors
        browser.close()


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


#: The trouble world's batches: (batch id, fermenter, the warning its card must show).
TROUBLES = (
    ("clean", "FV01", None),
    ("unknown-brand", "FV02", "unknown_category"),
    ("out-of-distribution", "FV03", "out_of_distribution"),
    ("absurd-slope", "FV04", "implausible_slope"),
    ("stale", "FV05", "hydrometer_silent"),
    ("moved", "FV06", "held_out"),
    ("future-start", "FV07", "future_pitch"),
    ("stuck", "FV08", "stalled"),
    ("unit", "FV09", "refused"),
)


def _send(url: str, device: str, rows: list[tuple]) -> httpx.Response:
    """Push (time, gravity °P or None, temperature °C or None) rows as brewcast's JSON."""
    readings = []
    for at, gravity, temperature in rows:
        reading = {"device": device, "timestamp": pd.Timestamp(at).isoformat()}
        if gravity is not None:
            reading["gravity"] = round(float(gravity), 4)
        if temperature is not None:
            reading["temperature"] = round(float(temperature), 3)
        readings.append(reading)
    return httpx.post(f"{url}/readings", json={"readings": readings}, headers=KEY, timeout=60)


def _trouble_world(url: str, database: str, world, now: pd.Timestamp) -> dict[str, str]:
    """One batch of each trouble of :data:`TROUBLES` and a clean one, started over the API,
    each with a device in its fermenter, read as of ``now``; and a finished batch of the
    clean one's brand, forecast live along its way, so the clean card has a track record.
    Each batch's brand."""
    from models.dataset import LabelRules, derive_outcomes

    outcomes = derive_outcomes(world.batches, world.readings, LabelRules())
    finished = outcomes[outcomes["status"] == "finished"].set_index("batch_id")
    base = world.batches.set_index("batch_id").loc[finished.index[0]]
    mine = world.readings[world.readings["batch_id"] == base.name]
    gravity = mine[mine["tag"] == "gravity_plato"].set_index("timestamp")["value"]
    temperature = mine[mine["tag"] == "temperature_c"].set_index("timestamp")["value"]
    duration = finished.loc[base.name, "finish_time"] - base["start_time"]
    attributes = base.drop(["end_time", "time_resolution_h"], errors="ignore").dropna()

    def start(batch_id: str, fermenter: str, pitch: pd.Timestamp, **changes) -> None:
        batch = {**json.loads(attributes.to_json()), "batch_id": batch_id, "fermenter": fermenter}
        batch.update(start_time=pitch.isoformat(), **changes)
        assert httpx.post(f"{url}/batches", json=batch, headers=KEY).status_code == 201
        device = f"dev:{batch_id}"
        assert (
            httpx.put(
                f"{url}/devices/{device}", json={"fermenter": fermenter}, headers=KEY
            ).status_code
            == 200
        )

    def rows(pitch, until, plato=lambda v: v, celsius=lambda v: v, every=None):
        """The base batch's readings moved to ``pitch``, up to ``until``; ``every``: its
        gravity interpolated to that cadence (a device's)."""
        shift = pitch - base["start_time"]
        g = gravity.copy()
        if every is not None:
            grid = pd.date_range(g.index[0], g.index[-1], freq=every)
            g = g.reindex(g.index.union(grid)).interpolate("time").reindex(grid)
        # a device's impossible values (the simulator's glitches) are refused: left out
        (g_lo, g_hi), (c_lo, c_hi) = (
            READING_VALUE_RANGES[t] for t in ("gravity_plato", "temperature_c")
        )
        g, c = g[g.between(g_lo, g_hi)], temperature[temperature.between(c_lo, c_hi)]
        out = [(t + shift, plato(v), None) for t, v in g.items() if t + shift <= until]
        out += [(t + shift, None, celsius(v)) for t, v in c.items() if t + shift <= until]
        return sorted(out, key=lambda r: r[0])

    mid = now - duration * 0.45  # a pitch that puts now 45% of the way to the finish
    for batch_id, fermenter, _ in TROUBLES:
        device = f"dev:{batch_id}"
        if batch_id == "future-start":
            # the API refuses a pitch ahead; another writer of the database (an ERP sync
            # with the planned pitch) does not: its device's readings find no batch
            import sqlalchemy as sa

            from brewcast.readings_store import batches

            planned = {**json.loads(attributes.to_json()), "batch_id": batch_id}
            planned.update(fermenter=fermenter, start_time=now + pd.Timedelta(hours=38.4))
            planned["start_time"] = planned["start_time"].to_pydatetime()
            with sa.create_engine(database).begin() as conn:
                conn.execute(batches.insert().values(**planned))
            assert (
                httpx.put(
                    f"{url}/devices/{device}", json={"fermenter": fermenter}, headers=KEY
                ).status_code
                == 200
            )
            pushed = _send(
                url, device, [(now - pd.Timedelta(hours=h), 12.5, 18.0) for h in (3, 2, 1)]
            )
            assert pushed.status_code == 202, pushed.text
            continue
        if batch_id == "stuck":  # 25% attenuated, flat for three days, five after pitch
            pitch = now - pd.Timedelta(days=5)
            start(batch_id, fermenter, pitch)
            hours = np.arange(0, 5 * 24, 0.5)
            plato = np.where(hours < 48, 12.0 - 3.0 * hours / 48, 9.0 - 0.002 * (hours - 48))
            stalled = [
                (pitch + pd.Timedelta(hours=h), p, 19.0) for h, p in zip(hours, plato, strict=True)
            ]
            assert _send(url, device, stalled).status_code == 200
            continue
        if batch_id == "unit":  # an SG hydrometer sending SG where °P is expected: refused
            start(batch_id, fermenter, mid)
            sent = _send(
                url,
                device,
                [(now - pd.Timedelta(hours=h), 1.048 - 0.001 * h, None) for h in (2, 1)],
            )
            assert sent.status_code == 422 and "look like SG" in sent.text, sent.text
            continue
        changes, until, options = {}, now, {}
        if batch_id == "unknown-brand":
            changes["brand"] = "mystery_brand"
        if batch_id == "out-of-distribution":
            options = {"plato": lambda v: v * 2.4, "celsius": lambda v: v + 16}
        if batch_id == "stale":
            until, options = now - pd.Timedelta(hours=10), {"every": "15min"}
        start(batch_id, fermenter, mid, **changes)
        pushed = rows(mid, until, **options)
        if batch_id == "absurd-slope":  # the last 3 h fall 10 °P, read every 15 minutes
            last = [r for r in pushed if r[1] is not None][-1]
            pushed += [
                (now - pd.Timedelta(minutes=15 * k), last[1] - 10 * (12 - k) / 12, None)
                for k in range(11, -1, -1)
            ]
            pushed = [r for r in pushed if r[1] is None or r[0] <= last[0] or r[1] < last[1]]
        assert _send(url, device, pushed).status_code == 200
        if batch_id == "moved":  # the device now reads a fresh batch 7 °P above this one
            last = [r for r in pushed if r[1] is not None][-1]
            moved = [(last[0] + pd.Timedelta(minutes=m), last[1] + 7, None) for m in (5, 10)]
            assert _send(url, device, moved).status_code == 200

    # a finished batch of the clean batch's brand, forecast live every 6 h on its way
    pitch = now - duration - pd.Timedelta(days=2)
    start("finished", "FV10", pitch)
    earlier = rows(pitch, now)
    for cut in pd.date_range(pitch + pd.Timedelta(hours=6), earlier[-1][0], freq="6h"):
        part = [r for r in earlier if cut - pd.Timedelta(hours=6) < r[0] <= cut]
        if part:
            sent = _send(url, "dev:finished", part)
            assert sent.status_code == 200, sent.text
        answer = httpx.get(
            f"{url}/batches/finished/forecast", params={"at": cut.isoformat()}, headers=KEY
        )
        assert answer.status_code in (200, 409), answer.text  # 409: no reading yet
        assert answer.status_code == 409 or answer.json()["backcast"] is False
    label = {"labels": [{"batch_id": "finished", "finished_at": (pitch + duration).isoformat()}]}
    assert httpx.post(f"{url}/feedback", json=label, headers=KEY).json()["accepted"] >= 1
    ended = {"end_time": (pitch + duration + pd.Timedelta(hours=30)).isoformat()}
    assert httpx.patch(f"{url}/batches/finished", json=ended, headers=KEY).status_code == 200
    return {b: ("mystery_brand" if b == "unknown-brand" else base["brand"]) for b, _, _ in TROUBLES}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no Chromium: `make test` has it")
def test_each_card_says_how_far_to_believe_it(champion_home, small_world, tmp_path):
    """A cellar with one batch of each trouble and a clean one: each card (real Chromium, at
    tablet and phone widths) shows its warning in words, the clean card none, with the API's
    numbers and its brand's track record; its batch page draws the track record and keeps
    a back-cast apart from the live forecasts; the history page lists the finished batch."""
    from playwright.sync_api import sync_playwright

    from tests.test_demo import CHROMIUM_ARGS

    settings, _ = champion_home
    env = {
        "BREWCAST_PREDICTION_LOG_URL": f"sqlite:///{tmp_path / 'trouble.db'}",
        "BREWCAST_SERVING_FORECAST_EVERY_MINUTES": "0",
    }
    server, url = start_service(settings.home, **env)
    try:
        now = pd.Timestamp.now(tz="UTC").floor("min") - pd.Timedelta(minutes=5)
        _trouble_world(url, env["BREWCAST_PREDICTION_LOG_URL"], small_world, now)
        answered = httpx.get(f"{url}/forecasts", headers=KEY, timeout=60).json()["forecasts"]
        assert {f["batch_id"] for f in answered if "error" not in f} >= {"clean", "stuck"}
        # a back-cast of the clean batch: made now for a time it has later readings of
        back = httpx.get(
            f"{url}/batches/clean/forecast",
            params={"at": (now - pd.Timedelta(hours=12)).isoformat()},
            headers=KEY,
        ).json()
        assert back["backcast"] is True
        httpx.get(f"{url}/forecasts", headers=KEY, timeout=60)  # the latest is live again
        rows = {b["batch_id"]: b for b in httpx.get(f"{url}/cellar", headers=KEY).json()["batches"]}
        kinds = {b: [w["kind"] for w in row["warnings"]] for b, row in rows.items()}
        for batch_id, _, trouble in TROUBLES:
            if trouble is None:
                assert kinds[batch_id] == [], (batch_id, rows[batch_id]["warnings"])
            else:
                assert trouble in kinds[batch_id], (batch_id, rows[batch_id]["warnings"])
        assert "unassigned" in kinds["future-start"]
        # readings no fermentation could make confirm nothing: a reading is asked for
        steep = rows["absurd-slope"]["forecast"]
        if steep["decision"]:
            assert steep["state"] == "take a reading", steep
            assert "faster than any fermentation" in steep["state_detail"]
        assert not rows["absurd-slope"]["ready"]
        unit = next(w for w in rows["unit"]["warnings"] if w["kind"] == "refused")
        assert "Check the device's unit" in unit["text"]
        clean = rows["clean"]
        record = clean["track_record"]
        assert record and record["group"] == "brand" and len(record["batches"]) == 1

        shots = Path(os.environ.get("BREWCAST_SCREENSHOTS", tmp_path / "shots"))
        shots.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
            )
            errors: list[str] = []
            for width, height, name in (
                (1024, 768, "cellar-trust"),
                (390, 844, "cellar-trust-phone"),
            ):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"{url}/board?key=test-key")
                page.locator('article[data-batch="clean"]').wait_for(timeout=30_000)
                for batch_id in rows:
                    card = page.locator(f'article[data-batch="{batch_id}"]')
                    shown = card.locator('[data-field="warning"]')
                    said = [shown.nth(i).get_attribute("data-value") for i in range(shown.count())]
                    assert said == kinds[batch_id], (batch_id, said)
                    # the same words (the hours they quote may have moved on since)
                    texts = [re.sub(r"[\d.]+", "#", t) for t in shown.all_inner_texts()]
                    said = [re.sub(r"[\d.]+", "#", w["text"]) for w in rows[batch_id]["warnings"]]
                    assert texts == said, (batch_id, texts)
                card = page.locator('article[data-batch="clean"]')
                for name_, want in (
                    ("probability", clean["forecast"]["probability"]),
                    ("predicted_finish_time", clean["forecast"]["predicted_finish_time"]),
                    ("current_gravity_plato", clean["current_gravity_plato"]),
                    ("model_version", clean["forecast"]["model_version"]),
                ):
                    got = card.locator(f'[data-field="{name_}"]').first.get_attribute("data-value")
                    assert got == str(want) or float(got) == pytest.approx(float(want)), name_
                line = card.locator('[data-field="track-record"]').inner_text()
                assert line.startswith(f"Track record of brand {clean['brand']} (1 finished):")
                # nothing clipped: no card wider than the page
                overflow = page.evaluate("document.documentElement.scrollWidth")
                assert overflow <= width, (width, overflow)
                page.screenshot(path=shots / f"{name}.png", full_page=width > 400)
                page.close()
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/board/batches/clean?key=test-key")
            page.locator("#record svg").wait_for(timeout=30_000)
            assert page.locator('#moves svg path[data-kind="backcast"]').count() == 1
            assert "2 forecasts, 1 back-cast " in page.locator("#status").inner_text()
            assert page.locator("#record-line").inner_text().startswith("Track record of brand")
            page.screenshot(path=shots / "cellar-batch-track-record.png", full_page=True)
            page.goto(f"{url}/board/history?key=test-key")
            page.locator("#status", has_text="1 finished batches").wait_for(timeout=30_000)
            assert page.locator('#batches tr[data-batch="finished"]').count() == 1
            assert page.locator('[data-field="empty"]').count() == 0
            assert not errors, errors
            browser.close()
    finally:
        server.stop()

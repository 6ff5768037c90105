"""brewcast's HTTP clients on a busy machine, without Airflow: a tiny local HTTP server in a
thread answers slowly, fails the first calls (503, a dropped connection) or never answers,
and the demo's Airflow client, the service client and the health probe survive what they
can and otherwise raise an error naming the server, the path and the demo's step."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pandas as pd
import pytest

from application import demo, http
from application.processes import ServerProcess, free_port

TOKEN = ("POST", "/auth/token")
RUNS = ("GET", "/api/v2/dags/fermentation_ingest/dagRuns")
TRIGGER = ("POST", "/api/v2/dags/fermentation_ingest/dagRuns")
QUICK = http.Policy(read=5.0, connect=1.0, attempts=5, backoff=0.05)

#: What the fake server does for one call: ("json", status, payload), ("slow", seconds,
#: payload), ("drop",) (reads the request, closes the connection unanswered), ("hang",).
Action = tuple


def ok(payload: object = None) -> Action:
    return ("json", 200, payload if payload is not None else {"ok": True})


@dataclass
class FakeServer:
    """Scripted answers per (method, path); a path ending in ``*`` matches a prefix. Each
    route's actions are used in turn, the last one for every call after."""

    routes: dict[tuple[str, str], list[Action]]
    calls: list[tuple[str, str, dict]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.calls if (m, p) == (method, path))

    def next_action(self, method: str, path: str) -> Action:
        for (m, route), actions in self.routes.items():
            prefix = route.endswith("*") and path.startswith(route[:-1])
            if m == method and (route == path or prefix):
                return actions.pop(0) if len(actions) > 1 else actions[0]
        return ("json", 404, {"detail": "not found"})

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        size = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(size) or b"{}")
        self.calls.append((handler.command, path, body))
        action = self.next_action(handler.command, path)
        if action[0] in ("drop", "hang"):
            if action[0] == "hang":
                self.released.wait(60)
            handler.close_connection = True  # unanswered: the client sees a dropped connection
            return
        if action[0] == "slow":
            self.released.wait(action[1])
            action = ("json", 200, action[2])
        content = json.dumps(action[2]).encode()
        handler.send_response(action[1])
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Airflow's and BentoML's servers do

    def do_GET(self) -> None:
        self.server.fake.answer(self)  # type: ignore[attr-defined]

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    """``serve(routes)``: a FakeServer listening on 127.0.0.1 in a thread."""
    started: list[tuple[ThreadingHTTPServer, FakeServer]] = []

    def start(routes: dict[tuple[str, str], list[Action]]) -> FakeServer:
        fake = FakeServer(routes)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.fake = fake  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        started.append((server, fake))
        return fake

    yield start
    for server, fake in started:
        fake.released.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_step() -> Iterator[None]:
    http.set_step(None)
    yield
    http.set_step(None)


def airflow(**routes: list[Action]) -> dict[tuple[str, str], list[Action]]:
    """A fake Airflow: the token, then ``routes`` (``runs=``, ``trigger=``, ``run=``)."""
    names = {"runs": RUNS, "trigger": TRIGGER, "run": (RUNS[0], RUNS[1] + "/*")}
    return {TOKEN: [ok({"access_token": "t"})]} | {names[k]: v for k, v in routes.items()}


def a_run(state: str = "success", run_id: str = "r1") -> dict:
    queued = pd.Timestamp.now("UTC").isoformat()
    return {"dag_run_id": run_id, "run_type": "manual", "queued_at": queued, "state": state}


# ------------------------------------------------------------------------------------------
# (a) slow answers
# ------------------------------------------------------------------------------------------


def test_a_slow_answer_within_the_read_timeout_succeeds_in_one_attempt(serve):
    fake = serve({("GET", "/slow"): [("slow", 0.8, {"done": 1})]})
    with http.Server("fake", fake.url, QUICK) as server:
        assert server.get("/slow").json() == {"done": 1}
        assert fake.count("GET", "/slow") == 1
        too_short = replace(QUICK, read=0.3, attempts=1)  # a timeout smaller than the work
        with pytest.raises(http.ServerCallError, match="ReadTimeout"):
            server.get("/slow", policy=too_short)


@pytest.mark.slow
def test_the_demo_waits_out_an_airflow_slower_than_its_old_30_s_timeout(serve):
    """The failure on the busy machine: polling the ingest run took > 30 s to answer."""
    fake = serve(airflow(runs=[("slow", 32, {"dag_runs": [a_run()]})]))
    started = time.monotonic()
    run = demo.AirflowApi(fake.url).wait("fermentation_ingest", run_id="r1", timeout=120)
    assert run["state"] == "success"
    assert fake.count(*RUNS) == 1 and time.monotonic() - started > 30


def test_the_health_probe_waits_out_a_server_slower_than_its_old_2_s_timeout(serve, tmp_path):
    fake = serve({("GET", "/health"): [("slow", 3, {"status": "ok"})]})
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    process = ServerProcess(command, f"{fake.url}/health", tmp_path / "p.log")
    try:
        process.start(timeout=8)  # each old probe gave up at 2 s, until the 8 s were spent
    finally:
        process.stop()
    assert fake.count("GET", "/health") == 1


def test_a_server_that_never_gets_healthy_is_named_with_its_last_answer(serve, tmp_path):
    fake = serve({("GET", "/health"): [("json", 503, {"status": "starting"})]})
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    process = ServerProcess(command, f"{fake.url}/health", tmp_path / "p.log", name="Airflow")
    with pytest.raises(TimeoutError, match=r"Airflow not healthy at .*/health .*answered 503"):
        process.start(timeout=1.5)
    assert process.process is not None and process.process.poll() is not None  # stopped


# ------------------------------------------------------------------------------------------
# (b) the first calls fail, then the server answers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [("json", 503, {"detail": "busy"}), ("drop",)])
def test_an_idempotent_get_is_retried_until_it_succeeds(serve, failure):
    fake = serve({("GET", "/things"): [failure, failure, ok({"n": 3})]})
    with http.Server("fake", fake.url, QUICK) as server:
        assert server.get("/things").json() == {"n": 3}
    assert fake.count("GET", "/things") == 3  # two failures, then the success


def test_an_idempotent_call_gives_up_after_the_policys_attempts(serve):
    fake = serve({("GET", "/down"): [("json", 503, {"detail": "busy"})]})
    with (
        http.Server("fake", fake.url, replace(QUICK, attempts=3)) as server,
        pytest.raises(http.ServerCallError, match=r"answered 503 .*after 3 attempts"),
    ):
        server.get("/down")
    assert fake.count("GET", "/down") == 3


def test_backoff_doubles_up_to_its_cap():
    policy = http.Policy(read=1, backoff=1, max_backoff=5)
    assert [policy.pause(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]


@pytest.mark.parametrize("failure", [("json", 503, {"detail": "busy"}), ("drop",)])
def test_a_non_idempotent_post_is_sent_once(serve, failure):
    """``/predict`` logs its rows: a retry could log them twice. Only an explicit
    ``idempotent=True`` (a POST idempotent by design) is retried."""
    fake = serve({("POST", "/predict"): [failure, ok()]})
    with http.Server("the BentoML service", fake.url, QUICK) as service:
        with pytest.raises(http.ServerCallError, match="is not idempotent: not retried"):
            service.post("/predict", json={"rows": []})
        assert fake.count("POST", "/predict") == 1
        assert service.post("/predict", json={"rows": []}, idempotent=True).json() == {"ok": True}
    assert fake.count("POST", "/predict") == 2


def test_a_call_that_never_connected_is_retried_whatever_its_method(caplog):
    """A refused connection reached nothing: repeating even a POST is harmless."""
    policy = replace(QUICK, attempts=3, backoff=0.01)
    with (
        http.Server("the BentoML service", f"http://127.0.0.1:{free_port()}", policy) as service,
        pytest.raises(http.ServerCallError, match=r"ConnectError.*after 3 attempts"),
    ):
        service.post("/predict", json={"rows": []})
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("failure", [("json", 503, {"detail": "busy"}), ("drop",)])
def test_the_demos_airflow_calls_retry_503_and_dropped_connections(serve, monkeypatch, failure):
    monkeypatch.setattr(http, "AIRFLOW", replace(http.AIRFLOW, backoff=0.05))
    routes = airflow(runs=[failure, failure, ok({"dag_runs": [a_run()]})])
    routes[TOKEN].insert(0, failure)  # the token request is idempotent by design
    fake = serve(routes)
    assert demo.AirflowApi(fake.url).runs("fermentation_ingest")[0]["dag_run_id"] == "r1"
    assert fake.count(*TOKEN) == 2 and fake.count(*RUNS) == 3


def test_the_demos_trigger_is_retried_with_its_fixed_run_id(serve, monkeypatch):
    """The first POST created the run but its answer was lost; the retry, with the same run
    id, gets 409 Conflict: the run is there, and the demo goes on with it."""
    monkeypatch.setattr(http, "AIRFLOW", replace(http.AIRFLOW, backoff=0.05))
    conflict = ("json", 409, {"detail": "Unique constraint violation"})
    fake = serve(airflow(trigger=[("drop",), conflict], run=[ok(a_run())]))
    start, end = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-03-01", tz="UTC")
    run_id = demo.AirflowApi(fake.url).trigger("fermentation_ingest", start, end, note="n")
    posted = [body["dag_run_id"] for m, p, body in fake.calls if (m, p) == TRIGGER]
    assert posted == [run_id, run_id]
    assert fake.count("GET", f"{RUNS[1]}/{run_id}") == 1


def test_a_trigger_conflicting_with_another_run_is_an_error(serve):
    conflict = ("json", 409, {"detail": "a run for this logical date exists"})
    fake = serve(airflow(trigger=[conflict], run=[("json", 404, {"detail": "no such run"})]))
    with pytest.raises(http.ServerCallError, match=rf"Airflow .*POST {TRIGGER[1]} refused .*409"):
        demo.AirflowApi(fake.url).trigger("fermentation_ingest")


# ------------------------------------------------------------------------------------------
# (c) a server that never answers
# ------------------------------------------------------------------------------------------


def test_a_server_that_never_answers_raises_an_error_naming_server_path_and_step(serve):
    fake = serve({("GET", "/api/v2/dags"): [("hang",)]})
    policy = replace(QUICK, read=0.3, attempts=2)
    with (
        http.Server("Airflow", fake.url, policy) as server,
        pytest.raises(http.ServerCallError) as raised,
    ):
        server.get("/api/v2/dags", step="waiting for the DAGs")
    message = str(raised.value)
    for part in ("Airflow", fake.url, "GET /api/v2/dags", "'waiting for the DAGs'", "ReadTimeout"):
        assert part in message
    assert "after 2 attempts, waited" in message and "read 0.3 s" in message
    assert fake.count("GET", "/api/v2/dags") == 2


def test_the_demos_error_names_airflow_the_path_and_the_demos_step(serve, monkeypatch):
    """What the busy machine should have printed instead of a bare ``ReadTimeout``."""
    monkeypatch.setattr(http, "AIRFLOW", replace(QUICK, read=0.5, attempts=2))
    fake = serve(airflow(runs=[("hang",)]))
    api = demo.AirflowApi(fake.url)
    demo._step("ingesting 240 days of history through fermentation_ingest", "2025 .. 2026")
    with pytest.raises(http.ServerCallError) as raised:
        api.wait("fermentation_ingest", run_id="r1", timeout=60)
    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)  # `brewcast demo` prints it, no traceback
    for part in (
        f"Airflow ({fake.url})",
        "GET /api/v2/dags/fermentation_ingest/dagRuns",
        "during 'ingesting 240 days of history through fermentation_ingest'",
        "ReadTimeout",
        "after 2 attempts, waited",
    ):
        assert part in message


def test_notify_serving_retries_a_busy_service_and_otherwise_warns(serve, tmp_path):
    """The training DAG's last step asks the service to reload: a reload is idempotent, so a
    busy service is asked again; one that stays down is a warning, not a failed run (the
    service polls the registry on its own)."""
    from application import stages
    from brewcast.settings import Settings

    busy = ("json", 503, {"detail": "busy"})
    fake = serve({("POST", "/reload"): [busy, ok({"swapped": True, "model_version": "3"})]})
    settings = Settings(home=tmp_path / "home", serving_url=fake.url, serving_api_key="k")
    manifest = stages.notify_serving(settings)
    assert manifest.details == {"notified": True, "swapped": True, "model_version": "3"}
    assert fake.count("POST", "/reload") == 2
    down = serve({("POST", "/reload"): [busy]})
    manifest = stages.notify_serving(settings.model_copy(update={"serving_url": down.url}))
    assert not manifest.details["notified"] and down.count("POST", "/reload") == 3
    assert "the BentoML service" in manifest.warnings[0] and "/reload" in manifest.warnings[0]

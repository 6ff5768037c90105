"""``make demo``: brewcast's whole loop on one machine, on the embedded defaults.

1. start an MLflow server (SQLite), Airflow standalone (SQLite, LocalExecutor) and, once a
   champion exists, the BentoML service, each in its own process group, pids written to
   ``BREWCAST_HOME/demo/pids.json`` (``make stop`` ends them);
2. through Airflow: ingest a simulated year (validation, labels) in one run of
   ``fermentation_ingest``; its labelled-data asset triggers ``fermentation_training``,
   which trains, registers and promotes the champion;
3. replay the following weeks through the service over HTTP, as the cellar would: a
   snapshot of every running batch every few hours, each finished batch's finish time sent
   to ``/feedback``; one yeast strain turns sluggish part-way (the simulator's drift);
4. run ``fermentation_monitoring`` through Airflow, which finds the drift and asks for
   retraining (an asset event), and print where to look.

Re-running is safe: it stops what an earlier demo left running and starts from a clean
demo home, so the same command gives the same world, model and alerts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from application import http
from application.processes import (
    MlflowServer,
    ServerProcess,
    bento_server,
    brewcast_command,
    stop_tree,
)
from brewcast.paths import Paths

log = logging.getLogger(__name__)

AIRFLOW_USER = ("admin", "admin")


#: Readings a push of the live weeks carries at most (under the service's row cap).
PUSH_ROWS = 500


@dataclass(frozen=True)
class DemoWorld:
    """The simulated cellar: a year of history to train on, then live weeks with a drift."""

    history_days: int = 365
    live_days: int = 56
    drift_after_days: int = 14
    fermenters: int = 12
    seed: int = 42
    drift_strain: str = "german_lager"
    drift_late_slope_factor: float = 0.5
    #: The day the live weeks end (YYYY-MM-DD); None: yesterday. The simulated brewery's
    #: weather follows the calendar, so a world that ends yesterday is another world every
    #: day; a fixed day gives the same world, and the same trained model, every day.
    live_until: str | None = None

    @property
    def live_start(self) -> pd.Timestamp:
        """Deployment: the live weeks before ``live_until`` (so nothing lies in the
        future)."""
        if self.live_until is None:
            end = pd.Timestamp.now("UTC").floor("D") - pd.Timedelta(days=1)
        else:
            end = pd.Timestamp(self.live_until, tz="UTC").floor("D")
            if end > pd.Timestamp.now("UTC"):
                raise ValueError(f"--live-until {self.live_until} lies in the future")
        return end - pd.Timedelta(days=self.live_days)

    @property
    def start(self) -> pd.Timestamp:
        return self.live_start - pd.Timedelta(days=self.history_days)

    @property
    def live_end(self) -> pd.Timestamp:
        return self.live_start + pd.Timedelta(days=self.live_days)

    @property
    def drift_start(self) -> pd.Timestamp:
        return self.live_start + pd.Timedelta(days=self.drift_after_days)

    def environment(self) -> dict[str, str]:
        """The ``BREWCAST_*`` settings that describe this world to every process."""
        return {
            "BREWCAST_SOURCE": "simulator",
            "BREWCAST_SEED": str(self.seed),
            "BREWCAST_SIMULATION_START": f"{self.start:%Y-%m-%d}",
            # the world runs on past the live weeks so their batches can finish
            "BREWCAST_SIMULATION_DAYS": str(self.history_days + self.live_days + 20),
            "BREWCAST_SIMULATION_FERMENTERS": str(self.fermenters),
            "BREWCAST_DRIFT_COLUMN": "yeast_strain",
            "BREWCAST_DRIFT_VALUE": self.drift_strain,
            "BREWCAST_DRIFT_START": f"{self.drift_start:%Y-%m-%d}",
            "BREWCAST_DRIFT_LATE_SLOPE_FACTOR": str(self.drift_late_slope_factor),
        }


@dataclass(frozen=True)
class DemoPorts:
    mlflow: int = 5000
    airflow: int = 8080
    serving: int = 3000


# ------------------------------------------------------------------------------------------
# pids: what the demo started, so `make stop` can end exactly that
# ------------------------------------------------------------------------------------------


def demo_dir(home: Path) -> Path:
    return Paths(Path(home).resolve()).demo


def _pid_file(home: Path) -> Path:
    return demo_dir(home) / "pids.json"


def _record(home: Path, name: str, server: ServerProcess) -> None:
    import psutil

    path = _pid_file(home)
    pids = json.loads(path.read_text()) if path.exists() else {}
    pids[name] = {"pid": server.pid, "started": psutil.Process(server.pid).create_time()}
    path.write_text(json.dumps(pids, indent=2))


def stop(home: Path) -> list[str]:
    """Stop every process the demo started (by pid, checked against its start time so a
    recycled pid is never signalled); the names stopped."""
    import psutil

    path = _pid_file(home)
    if not path.exists():
        return []
    stopped = []
    for name, entry in json.loads(path.read_text()).items():
        with contextlib.suppress(psutil.NoSuchProcess):
            if abs(psutil.Process(entry["pid"]).create_time() - entry["started"]) < 1e-3:
                stop_tree(entry["pid"])
                stopped.append(name)
    path.unlink(missing_ok=True)  # a concurrent `brewcast stop` may have removed it
    return stopped


# ------------------------------------------------------------------------------------------
# the Airflow REST API (v2, JWT from the simple auth manager)
# ------------------------------------------------------------------------------------------


class AirflowApi:
    """Airflow's REST API (v2) as the demo uses it, every call under ``http.AIRFLOW``."""

    def __init__(self, base_url: str, user: tuple[str, str] = AIRFLOW_USER) -> None:
        self.base_url = base_url.rstrip("/")
        policy = http.AIRFLOW  # read when called: tests shorten it
        with http.Server("Airflow", self.base_url, policy) as login:
            # idempotent by design: a token request changes nothing on the server
            token = login.post(
                "/auth/token",
                json={"username": user[0], "password": user[1]},
                idempotent=True,
            )
        self.server = http.Server(
            "Airflow",
            f"{self.base_url}/api/v2",
            policy,
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            known = {d["dag_id"] for d in self.server.get("/dags").json().get("dags", [])}
            if set(dag_ids) <= known:
                return
            time.sleep(2)
        raise TimeoutError(f"Airflow at {self.base_url} did not parse {dag_ids} in {timeout:.0f} s")

    def trigger(
        self,
        dag_id: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        note: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """A manual run; with ``start``/``end`` it owns that data interval. The run id is
        fixed before the first attempt, which makes the POST idempotent: a retry after a
        lost answer gets 409 (that run exists), and the run it names is ours."""
        at = end or pd.Timestamp.now("UTC")
        run_id = run_id or f"brewcast-demo__{at.isoformat()}"
        body: dict = {"dag_run_id": run_id, "logical_date": at.isoformat(), "note": note}
        if start is not None:
            body |= {"data_interval_start": start.isoformat(), "data_interval_end": at.isoformat()}
        path = f"/dags/{dag_id}/dagRuns"
        response = self.server.post(path, json=body, idempotent=True, accept=(409,))
        if response.status_code == 409:  # an earlier attempt created it, or another run
            if self.server.get(f"{path}/{run_id}", accept=(404,)).status_code == 404:
                raise http.ServerCallError(
                    f"Airflow ({self.base_url}): POST /api/v2{path}{_during()} refused run "
                    f"{run_id}: {response.status_code} {response.text[:300]}"
                )
            return run_id
        return response.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        response = self.server.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"})
        return response.json()["dag_runs"]

    def wait(
        self,
        dag_id: str,
        run_id: str | None = None,
        run_type: str | None = None,
        after: pd.Timestamp | None = None,
        timeout: float = 900,
    ) -> dict:
        """Wait until the run (or the newest run of ``run_type`` queued after ``after``)
        finishes; it, or an error naming its failed tasks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id):
                if run_id is not None and run["dag_run_id"] != run_id:
                    continue
                if run_type is not None and run["run_type"] != run_type:
                    continue
                if after is not None and pd.Timestamp(run["queued_at"]) < after:
                    continue
                if run["state"] == "success":
                    return run
                if run["state"] == "failed":
                    raise RuntimeError(
                        f"{dag_id} run {run['dag_run_id']} failed: "
                        f"{self.failed_tasks(dag_id, run['dag_run_id'])}"
                    )
                break
            time.sleep(3)
        raise TimeoutError(
            f"{dag_id} did not finish in {timeout:.0f} s (Airflow at {self.base_url}"
            f"{_during()}); see the run in Airflow's UI"
        )

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        try:
            response = self.server.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        except http.ServerCallError as exc:  # the run's failure matters more than this
            return [f"(task instances unavailable: {exc})"]
        return [
            t["task_id"]
            for t in response.json().get("task_instances", [])
            if t["state"] == "failed"
        ]


# ------------------------------------------------------------------------------------------
# the demo
# ------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    mlflow_url: str
    airflow_url: str
    serving_url: str
    report: str
    training_experiment: str  # experiment id
    monitoring_experiment: str
    monitoring_runs: list[str]  # one per window
    #: The child runs of the champion's training run (one per model family and baseline).
    training_runs: list[str]
    predictions: int
    labels: int
    alerts: list[str]
    retraining_requested: bool
    champion_version: str
    model_name: str
    #: The last forecast of the replay for a batch still fermenting, in words.
    latest_forecast: str = ""
    #: Ready events the service raised during the replay (one per batch and model version).
    ready_events: int = 0

    def _compare(self, runs: list[str], experiment: str) -> str:
        return (
            f"{self.mlflow_url}/#/compare-runs?runs="
            + json.dumps(runs, separators=(",", ":"))
            + f'&experiments=["{experiment}"]'
        )

    def lines(self) -> list[str]:
        experiments = f"{self.mlflow_url}/#/experiments"
        compare = self._compare(self.monitoring_runs, self.monitoring_experiment)
        models = self._compare(self.training_runs, self.training_experiment)
        out = [
            "",
            "brewcast demo: done. Where to look:",
            f"  MLflow UI       {experiments}",
            f"    training      {experiments}/{self.training_experiment}/runs"
            "?workflowType=machine_learning (metrics, plots, the gate's verdict)",
            f"    models        {models} (the champion's run: families and baselines side by side)",
            f"    monitoring    {compare} (the windows side by side)",
            f"    the model     {self.mlflow_url}/#/models/{self.model_name} "
            f"(champion: version {self.champion_version})",
            f"  Airflow UI      {self.airflow_url}/dags  (login {AIRFLOW_USER[0]} / "
            f"{AIRFLOW_USER[1]}): fermentation_ingest -> fermentation_training -> "
            "fermentation_monitoring",
            f"  BentoML         {self.serving_url}/  (Swagger UI; /metadata, /metrics)",
            f"  Cellar board    {self.serving_url}/board  ({self.ready_events} batches said "
            "ready: a webhook and an asset event each, see fermentation_batch_ready)",
            f"  Monitoring      file://{self.report}",
            "",
            *([f"  Latest forecast {self.latest_forecast}"] if self.latest_forecast else []),
            f"  {self.predictions} predictions served, {self.labels} batch finishes fed back; "
            f"{len(self.alerts)} alert(s):",
            *[f"    {a}" for a in self.alerts[:8]],
        ]
        if len(self.alerts) > 8:
            out.append(f"    ... and {len(self.alerts) - 8} more in the report")
        if self.retraining_requested:
            out.append(
                "  Monitoring asked for retraining: see the asset-triggered "
                "fermentation_training run in Airflow."
            )
        out.append("  `make stop` stops the servers.")
        return out


def run(
    home: Path,
    world: DemoWorld | None = None,
    ports: DemoPorts | None = None,
    progress: bool = True,
) -> DemoResult:
    world, ports = world or DemoWorld(), ports or DemoPorts()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    home = Path(home).resolve()
    stopped = stop(home)
    if stopped:
        log.info("stopped the previous demo's %s", ", ".join(stopped))
    _require_free_ports(ports)
    _fresh_home(home)
    demo_dir(home).mkdir(parents=True, exist_ok=True)
    (demo_dir(home) / "world.json").write_text(json.dumps(asdict(world), indent=2))
    urls = {name: f"http://127.0.0.1:{port}" for name, port in asdict(ports).items()}
    env = {
        "BREWCAST_HOME": str(home),
        "BREWCAST_MLFLOW_TRACKING_URI": urls["mlflow"],
        "BREWCAST_SERVING_URL": urls["serving"],
        **world.environment(),
    }
    os.environ.update(env)  # this process reads the same settings
    api = _start_mlflow_and_airflow(home, ports, urls, env)
    champion = _history_through_airflow(api, world)

    from brewcast.settings import get_settings

    settings = get_settings()
    _step("starting the BentoML service", urls["serving"])
    # the service tells Airflow when a batch is ready (asset events of fermentation_batch_ready)
    serving = bento_server(home, ports.serving, BREWCAST_READY_AIRFLOW_URL=urls["airflow"], **env)
    serving.log_file = demo_dir(home) / "bentoml.log"
    serving.start(timeout=300)
    _record(home, "bentoml", serving)

    _step("replaying the live weeks through the service", urls["serving"])
    predictions, labels, forecast = replay_live(world, settings, urls["serving"], progress)

    _step("monitoring (fermentation_monitoring)")
    run_id = api.trigger("fermentation_monitoring", note="brewcast demo: after the live weeks")
    api.wait("fermentation_monitoring", run_id=run_id, timeout=600)
    summary = json.loads(Paths(home).monitoring_summary.read_text())
    alerts = [
        f"[{a['window']}] {a['slice']}={a['value']}: {a['metric']} {a['observed']:+.3f} "
        f"(limit {a['limit']:g}, {a['batches']} batches)"
        for a in summary["alerts"]
    ]
    return DemoResult(
        mlflow_url=urls["mlflow"],
        airflow_url=urls["airflow"],
        serving_url=urls["serving"],
        report=summary["report"],
        training_experiment=_experiment_id(settings.experiment),
        monitoring_experiment=_experiment_id(settings.monitor_experiment),
        monitoring_runs=summary.get("mlflow_runs", []),
        training_runs=_training_runs(settings, champion),
        predictions=predictions,
        labels=labels,
        alerts=alerts,
        retraining_requested=bool(summary["retrain"]),
        champion_version=champion,
        model_name=settings.model_name,
        latest_forecast=forecast,
        ready_events=_ready_events(urls["serving"]),
    )


def _start_mlflow_and_airflow(
    home: Path, ports: DemoPorts, urls: dict[str, str], env: dict[str, str]
) -> AirflowApi:
    """MLflow, then Airflow standalone (each recorded for `brewcast stop`); Airflow's API
    once it has parsed the DAGs."""
    _step("starting MLflow", urls["mlflow"])
    mlflow = MlflowServer(
        f"sqlite:///{Paths(home).mlflow_db}",
        Paths(home).mlflow_artifacts,
        port=ports.mlflow,
        log_file=demo_dir(home) / "mlflow.log",
    ).start(timeout=180)
    _record(home, "mlflow", mlflow)

    _step("starting Airflow standalone", urls["airflow"])
    airflow = ServerProcess(
        brewcast_command("airflow", "--port", str(ports.airflow), "standalone"),
        f"{urls['airflow']}/api/v2/monitor/health",
        demo_dir(home) / "airflow.log",
        env=env,
        name="Airflow",
    ).start(timeout=300)
    _record(home, "airflow", airflow)
    api = AirflowApi(urls["airflow"])
    api.wait_for_dags(["fermentation_ingest", "fermentation_training", "fermentation_monitoring"])
    return api


def _history_through_airflow(api: AirflowApi, world: DemoWorld) -> str:
    """The year of history through fermentation_ingest, whose labelled-data asset triggers
    fermentation_training; the champion's version it registered."""
    _step(
        f"ingesting {world.history_days} days of history through fermentation_ingest",
        f"{world.start:%Y-%m-%d} .. {world.live_start:%Y-%m-%d}",
    )
    triggered = pd.Timestamp.now("UTC")
    run_id = api.trigger(
        "fermentation_ingest",
        world.start,
        world.live_start,
        note="brewcast demo: the year of history",
    )
    api.wait("fermentation_ingest", run_id=run_id, timeout=900)
    _step("training, gating, registering and promoting (asset-triggered fermentation_training)")
    training = api.wait(
        "fermentation_training", run_type="asset_triggered", after=triggered, timeout=1500
    )
    from brewcast.registry import CHAMPION, configure, version_by_alias
    from brewcast.settings import get_settings

    settings = get_settings()
    configure(settings.tracking_uri)
    champion = version_by_alias(settings.model_name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"training run {training['dag_run_id']} registered no champion")
    return str(champion.version)


def describe_forecast(row: dict, prediction: dict) -> str:
    """One forecast in a brewer's words: the batch, when, how sure."""

    def when(at: str | None) -> str:
        return "never (may be stuck)" if at is None else pd.Timestamp(at).strftime("%a %d %b %H:%M")

    text = (
        f"{row.get('batch_id')} ({row.get('yeast_strain') or 'strain unknown'}): finishes "
        f"{when(prediction['predicted_finish_time'])} UTC, P(within 24 h) "
        f"{prediction['probability']:.2f}"
    )
    for tag in (80, 95):
        window = prediction.get(f"finish_time_{tag}")
        if window:
            text += f"; {tag}%: {when(window['earliest'])} .. {when(window['latest'])}"
    return text


#: The demo's first fermenter has a Tilt, which posts the Tilt app's own form at each of its
#: gravity readings (with the temperature it last measured), and a temperature controller
#: for the rest; the others an iSpindel each. Those go through brewcast's readings JSON: an
#: iSpindel's own post has no timestamp (it means "now"), and the live weeks lie in the past.
DEMO_TILT = "tilt:red"


def replay_live(
    world: DemoWorld, settings, serving_url: str, progress: bool
) -> tuple[int, int, str]:
    """The live weeks through the service over HTTP, as a cellar lives them: a hydrometer in
    every fermenter pushing its readings as they are taken, each batch started when it is
    pitched and ended when it leaves the fermenter, every few hours the forecast of every
    running batch (``GET /forecasts``: the service builds the snapshots from the readings it
    stores), and each finish sent to ``/feedback`` once it happened. (forecasts served,
    labels sent, the last forecast of a batch still fermenting in words)."""
    from rich.progress import Progress

    from ingest.simulator import simulate
    from ingest.sources import simulation_config
    from models.dataset import LabelRules, derive_outcomes
    from monitoring.replay import finish_labels, records

    sim = simulate(simulation_config(settings))
    rules = LabelRules.from_settings(settings)
    finishes = finish_labels(
        derive_outcomes(sim.batches, sim.readings, rules), world.live_start, world.live_end
    )
    cellar = LiveCellar(sim.batches, sim.readings, world.live_start, world.live_end)
    ticks = pd.date_range(
        world.live_start, world.live_end, freq=pd.Timedelta(hours=rules.snapshot_every_hours)
    )
    with (
        http.Server("the BentoML service", serving_url, http.SERVICE) as service,
        Progress(disable=not progress, transient=True) as bar,
    ):
        cellar.assign_devices(service)
        task = bar.add_task("streaming the live weeks through the service", total=len(ticks))
        served, labelled, latest = 0, 0, ""
        for at in ticks:
            cellar.advance(service, at, settings.local_timezone)
            answer = service.get("/forecasts", params={"at": at.isoformat()}).json()
            for forecast in answer["forecasts"]:
                if "error" in forecast:  # a batch with no gravity reading yet
                    continue
                served += 1
                if not forecast["decision"]:
                    latest = describe_forecast(forecast["features"], forecast)
            happened = int((finishes["finished_at"] <= at).sum())
            if happened > labelled:
                due = finishes.iloc[labelled:happened]
                service.post("/feedback", json={"labels": records(due)})  # stores: once
                labelled = happened
            bar.advance(task)
        if labelled < len(finishes):
            service.post("/feedback", json={"labels": records(finishes.iloc[labelled:])})
    log.info(
        "streamed %d readings (%d impossible ones left out, as a device's refused push; "
        "%d impossible batch fields left blank), served %d forecasts, sent %d batch finishes",
        cellar.posted,
        cellar.impossible,
        cellar.blanked,
        served,
        len(finishes),
    )
    return served, len(finishes), latest


class LiveCellar:
    """The simulated cellar during the live weeks, told to the service as it happens: its
    batches (started, ended) and its hydrometers' readings, tick by tick."""

    def __init__(
        self, batches: pd.DataFrame, readings: pd.DataFrame, since: pd.Timestamp, until
    ) -> None:
        from brewcast.schema import READING_VALUE_RANGES

        live = batches[
            (batches["start_time"] < until)
            & (batches["end_time"].isna() | (batches["end_time"] > since))
        ]
        self.batches = live.sort_values("start_time", kind="mergesort")
        mine = readings[readings["batch_id"].isin(live["batch_id"])]
        mine = mine[mine["timestamp"] <= until]
        ranges = mine["tag"].map(READING_VALUE_RANGES)
        possible = np.array(
            [low <= v <= high for v, (low, high) in zip(mine["value"], ranges, strict=True)],
            dtype=bool,
        )
        self.impossible = int((~possible).sum())  # the service would refuse the push
        self.readings = mine[possible].sort_values("timestamp", kind="mergesort")
        self.fermenters = sorted(self.batches["fermenter"].unique())
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.since = None
        self.posted = 0
        self.blanked = 0  # batch fields outside the schema's range, left blank
        self.tilt_temperature: float | None = None  # the Tilt's latest temperature, °C

    def json_device(self, fermenter: str) -> str:
        """The device whose readings of ``fermenter`` go through brewcast's JSON."""
        return (
            f"controller:{fermenter}"
            if fermenter == self.fermenters[0]
            else f"ispindel:{fermenter}"
        )

    def assign_devices(self, service) -> None:
        pairs = [(DEMO_TILT, self.fermenters[0])] + [
            (self.json_device(f), f) for f in self.fermenters
        ]
        for device, fermenter in pairs:
            service.request("PUT", f"/devices/{device}", json={"fermenter": fermenter})

    def advance(self, service, at: pd.Timestamp, zone: str) -> None:
        """Up to ``at``: batches pitched are started, their readings pushed, and batches
        that left their fermenter ended (after their last readings)."""
        from monitoring.replay import records

        pitched = self.batches[
            (self.batches["start_time"] <= at) & ~self.batches["batch_id"].isin(self.started)
        ]
        for batch in records(pitched.drop(columns=["end_time"])):
            # a retried start that had been stored is told "exists already"
            service.post("/batches", json=self._entered(batch), idempotent=True, accept=(409,))
            self.started.add(batch["batch_id"])
        times = self.readings["timestamp"]
        due = self.readings[
            (times <= at) if self.since is None else (times > self.since) & (times <= at)
        ]
        due = due[due["batch_id"].isin(self.started)]
        self.since = at
        fermenter = due["batch_id"].map(self.batches.set_index("batch_id")["fermenter"])
        first = fermenter == self.fermenters[0]
        self._post_tilt(service, due[first], zone)
        rest = ~first | (due["tag"] != "gravity_plato")  # the first one's controller too
        self._post_json(service, due[rest], fermenter[rest].map(self.json_device))
        left = self.batches[
            (self.batches["end_time"] <= at) & ~self.batches["batch_id"].isin(self.ended)
        ]
        for batch_id, end in zip(left["batch_id"], left["end_time"], strict=True):
            service.request("PATCH", f"/batches/{batch_id}", json={"end_time": end.isoformat()})
            self.ended.add(batch_id)

    def _entered(self, batch: dict) -> dict:
        """The batch as the brewer enters it on the service, which refuses a value outside
        the schema's range (the simulator's typos, such as an OG of 122.5 for 12.25): the
        brewer leaves such a field blank (counted), and the batch's readings tell its OG."""
        from brewcast.schema import BATCHES

        out = dict(batch)
        for column in BATCHES.columns:
            value = out.get(column.name)
            low = -np.inf if column.min is None else column.min
            high = np.inf if column.max is None else column.max
            if isinstance(value, float) and not low <= value <= high:
                out[column.name] = None
                self.blanked += 1
        return out

    def _post_json(self, service, due: pd.DataFrame, device: pd.Series) -> None:
        """The other devices' readings of the tick in one push of brewcast's JSON, gravity
        in SG as an iSpindel reports it."""
        from brewcast.units import plato_to_sg

        if due.empty:
            return
        gravity = due["tag"] == "gravity_plato"
        sg = plato_to_sg(due["value"].to_numpy())
        readings = [
            {"device": d, "timestamp": t.isoformat()}
            | ({"gravity": s, "gravity_unit": "SG"} if g else {"temperature": v})
            for d, t, g, s, v in zip(
                device, due["timestamp"], gravity, sg, due["value"], strict=True
            )
        ]
        # a reading is stored once per (device, time): a retried push changes nothing;
        # in requests under the service's row cap (BREWCAST_SERVING_MAX_ROWS, 1,000)
        for start in range(0, len(readings), PUSH_ROWS):
            part = readings[start : start + PUSH_ROWS]
            service.post("/readings", json={"readings": part}, idempotent=True)
        self.posted += len(readings)

    def _post_tilt(self, service, due: pd.DataFrame, zone: str) -> None:
        """The Tilt's readings as the Tilt app posts them: one form a gravity reading, its
        time an Excel serial day in the phone's local time, SG and the latest °F."""
        from brewcast.units import plato_to_sg
        from ingest.devices import EXCEL_ORIGIN

        for at, tag, value in zip(due["timestamp"], due["tag"], due["value"], strict=True):
            if tag == "temperature_c":
                self.tilt_temperature = value
                continue
            temperature = self.tilt_temperature
            if temperature is None:  # before the fermenter's first temperature: the wort's
                temperature = 20.0
            local = at.tz_convert(zone).tz_localize(None)
            form = {
                "Timepoint": f"{(local - EXCEL_ORIGIN).total_seconds() / 86400:.10f}",
                "SG": f"{float(plato_to_sg(np.array([value]))[0]):.4f}",
                "Temp": f"{temperature * 9 / 5 + 32:.1f}",
                "Color": "RED",
                "Beer": "demo",
            }
            service.post("/readings/tilt", data=form, idempotent=True)
            self.posted += 1


def _ready_events(serving_url: str) -> int:
    with http.Server("the BentoML service", serving_url, http.SERVICE) as service:
        return len(service.get("/cellar/events").json()["events"])


def _training_runs(settings, version: str) -> list[str]:
    """The child runs (one per family and per baseline, the candidate first) of the run that
    registered ``version``: the same metric keys, side by side."""
    from mlflow import MlflowClient

    client = MlflowClient()
    parent = client.get_model_version(settings.model_name, version).run_id
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    order = {"candidate": 0, "alternative": 1, "baseline": 2}
    children.sort(key=lambda run: order.get(run.data.tags.get("role", ""), 3))
    return [run.info.run_id for run in children]


def _experiment_id(name: str) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else ""


def _require_free_ports(ports: DemoPorts) -> None:
    """Refuse to start beside something already listening (its health URL would answer for
    a server the demo did not start)."""
    import socket

    for name, port in asdict(ports).items():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(
                    f"port {port} ({name}) is already in use: stop what listens there, or "
                    f"pass --{name}-port"
                )


def _fresh_home(home: Path) -> None:
    """Remove an earlier demo's state (stores, lake, logs) so the demo starts clean."""
    folders, files = Paths(home).state()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    for file in files:
        file.unlink(missing_ok=True)


def _during() -> str:
    """`` during 'STEP'`` for an error message, when the demo is in a step."""
    step = http.current_step()
    return f" during '{step}'" if step else ""


def _step(what: str, detail: str = "") -> None:
    """Print the step, and name it in any error of a server call made during it."""
    http.set_step(what)
    print(f"==> {what}{': ' + detail if detail else ''}", flush=True)

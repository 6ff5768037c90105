"""Airflow 3 DAGs: they parse without heavy imports, wire the right tasks, and run end to
end (`airflow dags test`) against a real MLflow server; the asset event of new labels makes
the real scheduler create a training run."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from application.processes import airflow_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout
DAGS = PROJECT_ROOT / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _run(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


PARSE = """
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: v[-300:] for k, v in bag.import_errors.items()},
       "seconds": time.perf_counter() - started,
       "heavy": [m for m in ("tensorflow", "keras", "great_expectations", "mlflow", "bentoml",
                             "pandas", "sklearn") if m in sys.modules],
       "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
        "timetable": type(dag.timetable).__name__, "tags": sorted(dag.tags),
        "doc": bool(dag.doc_md), "owners": sorted({t.owner for t in dag.tasks}),
        "retries": sorted({t.retries for t in dag.tasks}),
        "timeouts": sorted({str(t.execution_timeout) for t in dag.tasks}),
        "outlets": {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    env = airflow_env(tmp_path_factory.mktemp("parse"))
    result = _run([sys.executable, "-c", PARSE, str(DAGS)], env, timeout=120)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dags_import_cleanly_and_cheaply(parsed):
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {
        "fermentation_ingest",
        "fermentation_training",
        "fermentation_monitoring",
        "fermentation_batch_ready",
    }
    assert parsed["heavy"] == []  # no TensorFlow, GX, MLflow, pandas... at parse time


def test_every_dag_is_documented_owned_retried_and_timed(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["doc"] and "brewcast" in dag["tags"], dag_id
        assert dag["owners"] == ["brewcast"], dag_id
        assert min(dag["retries"]) >= 1, dag_id
        assert "None" not in dag["timeouts"], dag_id


def test_ingest_dag_graph(parsed):
    dag = parsed["dags"]["fermentation_ingest"]
    assert dag["tasks"] == {
        "ingest": ["validate"],
        "validate": ["derive_labels"],
        "derive_labels": [],
    }
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["outlets"] == {
        "validate": ["brewcast://lake/validated"],
        "derive_labels": ["brewcast://lake/features/labelled"],
    }


def test_training_dag_graph(parsed):
    dag = parsed["dags"]["fermentation_training"]
    chain = [
        "workdir",
        "prepare",
        "fit",
        "calibrate",
        "export",
        "evaluate",
        "gate",
        "register",
        "promote",
        "notify_serving",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        assert dag["tasks"][upstream] == [downstream]
    assert dag["timetable"] == "AssetOrTimeSchedule"
    assert dag["outlets"] == {
        "notify_serving": ["brewcast://registry/fermentation-completion/champion"]
    }


def test_the_ready_example_dag_runs_on_the_services_ready_asset(parsed):
    dag = parsed["dags"]["fermentation_batch_ready"]
    assert dag["tasks"] == {"next_step": []}
    assert dag["timetable"] == "AssetTriggeredTimetable"


def test_monitoring_dag_graph(parsed):
    dag = parsed["dags"]["fermentation_monitoring"]
    assert dag["tasks"] == {"monitor": ["request_retraining"], "request_retraining": []}
    assert dag["outlets"] == {"request_retraining": ["brewcast://monitoring/retrain"]}


def test_the_hourly_ingest_on_an_empty_lake_skips_its_labels_instead_of_failing(
    tmp_path, monkeypatch
):
    """A fresh install's first scheduled hour has nothing validated yet: derive_labels is
    skipped (nothing to label), not failed three times with backoff, which left a red run
    and held the next run (max_active_runs=1) for two minutes in the demo."""
    import importlib.util

    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setenv("BREWCAST_HOME", str(tmp_path / "home"))
    spec = importlib.util.spec_from_file_location("ingest_dag", DAGS / "fermentation_ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.fermentation_ingest().get_task("derive_labels")
    with pytest.raises(AirflowSkipException, match="nothing validated yet"):
        task.python_callable({}, outlet_events={})


@pytest.mark.slow
def test_ingest_then_training_end_to_end(tmp_path):
    """ingest -> validate -> labels (asset event) -> scheduler queues training ->
    training registers a champion in a real MLflow server."""
    from mlflow import MlflowClient

    from application.processes import MlflowServer
    from brewcast.settings import get_settings
    from ingest.sources import ingest_interval, simulation_config
    from tests.conftest import TRAINING_OVERRIDES, TRAINING_WORLD

    home = tmp_path / "home"
    with MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts") as mlflow:
        brewcast = {
            "BREWCAST_SIMULATION_DAYS": str(TRAINING_WORLD.days),
            "BREWCAST_SIMULATION_FERMENTERS": str(TRAINING_WORLD.fermenters),
            "BREWCAST_SEED": str(TRAINING_WORLD.seed),
            "BREWCAST_MLFLOW_TRACKING_URI": mlflow.url,
            **{f"BREWCAST_{k.upper()}": str(v) for k, v in TRAINING_OVERRIDES.items()},
        }
        env = airflow_env(home, **brewcast)
        settings = get_settings(
            **{
                "home": home,
                **{k.removeprefix("BREWCAST_").lower(): v for k, v in brewcast.items()},
            }
        )
        world = simulation_config(settings)
        last_hour = world.end - pd.Timedelta(hours=1)
        ingest_interval(settings, "simulator", world.start, last_hour)  # the backlog

        _run([AIRFLOW, "db", "migrate"], env)
        _run([AIRFLOW, "dags", "reserialize"], env)  # as the dag-processor would
        _run([AIRFLOW, "dags", "test", "fermentation_ingest", world.end.isoformat()], env)
        db = sqlite3.connect(home / "airflow" / "airflow.db")
        runs = db.execute("select state from dag_run where dag_id='fermentation_ingest'").fetchall()
        assert runs == [("success",)]
        events = db.execute(
            "select a.uri, e.extra from asset_event e join asset a on a.id = e.asset_id"
        ).fetchall()
        labelled = [
            json.loads(extra) for uri, extra in events if uri == "brewcast://lake/features/labelled"
        ]
        assert labelled and labelled[0]["new_labelled_batches"] > 20
        assert db.execute("select target_dag_id from asset_dag_run_queue").fetchall() == [
            ("fermentation_training",)
        ]
        db.close()

        # The real scheduler turns the queued asset event into a training run. Waited for
        # as that run appearing, not as the scheduler's exit: on a busy machine its exit
        # also waited for the LocalExecutor to start the run's tasks (>180 s once).
        scheduler = subprocess.Popen(
            [AIRFLOW, "scheduler", "--num-runs", "5"],
            env={**os.environ, **env},
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def training_runs() -> list[tuple[str]]:
            with contextlib.closing(sqlite3.connect(home / "airflow" / "airflow.db")) as db:
                query = "select run_type from dag_run where dag_id='fermentation_training'"
                return db.execute(query).fetchall()

        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and scheduler.poll() is None:
                if ("asset_triggered",) in training_runs():
                    break
                time.sleep(2)
        finally:  # its LocalExecutor workers outlive it: end the whole group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(scheduler.pid, signal.SIGKILL)
        triggered = training_runs()
        assert ("asset_triggered",) in triggered, (triggered, scheduler.returncode)

        _run([AIRFLOW, "dags", "test", "fermentation_training", world.end.isoformat()], env)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
        champion = client.get_model_version_by_alias(settings.model_name, "champion")
        assert champion.version == "1"
        assert client.get_model_version_by_alias(settings.model_name, "challenger").version == "1"
        runs = client.search_runs(
            [client.get_experiment_by_name(settings.experiment).experiment_id]
        )
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].data.tags["gate"] == "passed"
        # its children: one per model family and per baseline
        assert sorted(r.data.tags.get("model") for r in runs if r not in parents) == [
            "boosted",
            "brand_history",
            "logistic_regression",
            "network",
            "slope_rule",
        ]


@pytest.mark.slow
def test_a_dag_runs_through_a_real_celery_worker(tmp_path, postgres_database):
    """Scale-out mode: PostgreSQL metadata DB, Redis broker, api-server + scheduler +
    dag-processor + a Celery worker; fermentation_monitoring runs on the worker."""
    import time

    import redis
    import sqlalchemy as sa

    from application.processes import ServerProcess, free_port

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis not reachable on 127.0.0.1:6379: {exc}")
    port = free_port()
    db = postgres_database
    env = airflow_env(
        tmp_path / "home",
        sql_alchemy_conn=db,
        executor="CeleryExecutor",
        # asyncpg is not installed: Airflow's async engine is not needed here
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="",
        AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/7",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{db}",
        AIRFLOW__CELERY__WORKER_CONCURRENCY="2",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",  # workers call its execution API
        AIRFLOW__API_AUTH__JWT_SECRET="brewcast-test-jwt-secret-0123456789abcdef0123456789",
        AIRFLOW__CORE__FERNET_KEY="0oSs62yfslaVhttMSnm9E-NKVXgzTTglQoGYe2Ple0A=",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    _run([AIRFLOW, "db", "migrate"], env)
    logs = tmp_path / "logs"
    components = {
        name: ServerProcess(
            [AIRFLOW, *name.split()],
            f"http://127.0.0.1:{port}/api/v2/monitor/health",
            logs / f"{name}.log",
            env,
        )
        for name in ("api-server", "scheduler", "dag-processor", "celery worker")
    }
    try:
        for name, process in components.items():
            if name == "api-server":
                process.start(timeout=180)
            else:  # health is the api-server's; these only need to be running
                process.health_url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
                process.start(timeout=60)
        engine = sa.create_engine(db)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the dag-processor must have parsed the DAG
            with engine.connect() as conn:
                if conn.execute(
                    sa.text("select count(*) from dag where dag_id = 'fermentation_monitoring'")
                ).scalar():
                    break
            time.sleep(1)
        _run([AIRFLOW, "dags", "trigger", "fermentation_monitoring"], env)
        state, run_id = None, None
        while time.monotonic() < deadline + 180:  # our manual run (the scheduler may add its own)
            with engine.connect() as conn:
                row = conn.execute(
                    sa.text(
                        "select run_id, state from dag_run where "
                        "dag_id = 'fermentation_monitoring' "
                        "and run_type = 'manual'"
                    )
                ).first()
            if row is not None:
                run_id, state = row
                if state in ("success", "failed"):
                    break
            time.sleep(1)
        with engine.connect() as conn:
            tasks = dict(
                conn.execute(
                    sa.text(
                        "select task_id, state from task_instance where dag_id = "
                        "'fermentation_monitoring' and run_id = :run"
                    ),
                    {"run": run_id},
                ).all()
            )
        engine.dispose()
        worker_log = (logs / "celery worker.log").read_text()
        assert state == "success", (tasks, worker_log[-2000:])
        assert tasks == {"monitor": "success", "request_retraining": "skipped"}
        assert "fermentation_monitoring" in worker_log  # executed by the Celery worker
    finally:
        for process in reversed(list(components.values())):
            process.stop()

"""Airflow 3 DAGs: they parse without heavy imports, wire the right tasks, and run end to
end (`airflow dags test`) against a real MLflow server; the asset event of new labels makes
the real scheduler create a training run."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brewcast.processes import PROJECT_ROOT, airflow_env

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
        "register",
        "notify_serving",
    ]
    for upstream, downstream in itertools.pairwise(chain):
        assert dag["tasks"][upstream] == [downstream]
    assert dag["timetable"] == "AssetOrTimeSchedule"
    assert dag["outlets"] == {
        "notify_serving": ["brewcast://registry/fermentation-completion/champion"]
    }


def test_monitoring_dag_graph(parsed):
    dag = parsed["dags"]["fermentation_monitoring"]
    assert dag["tasks"] == {"monitor": ["request_retraining"], "request_retraining": []}
    assert dag["outlets"] == {"request_retraining": ["brewcast://monitoring/retrain"]}


@pytest.mark.slow
def test_ingest_then_training_end_to_end(tmp_path):
    """ingest -> validate -> labels (asset event) -> scheduler queues training ->
    training registers a champion in a real MLflow server."""
    from mlflow import MlflowClient

    from brewcast.settings import get_settings
    from ingest.sources import ingest_interval, simulation_config
    from models.registry import MlflowServer
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

        # The real scheduler turns the queued asset event into a training run.
        _run([AIRFLOW, "scheduler", "--num-runs", "2"], env, timeout=180)
        db = sqlite3.connect(home / "airflow" / "airflow.db")
        triggered = db.execute(
            "select run_type from dag_run where dag_id='fermentation_training'"
        ).fetchall()
        db.close()
        assert ("asset_triggered",) in triggered

        _run([AIRFLOW, "dags", "test", "fermentation_training", world.end.isoformat()], env)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        client = MlflowClient(tracking_uri=mlflow.url, registry_uri=mlflow.url)
        champion = client.get_model_version_by_alias(settings.model_name, "champion")
        assert champion.version == "1"
        assert client.get_model_version_by_alias(settings.model_name, "challenger").version == "1"
        runs = client.search_runs(
            [client.get_experiment_by_name(settings.experiment).experiment_id]
        )
        assert len(runs) == 1 and runs[0].data.tags["gate"] == "passed"

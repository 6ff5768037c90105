"""MLflow: a real tracking server (SQLite, and PostgreSQL as backend), the registered model,
its aliases and the promotion gate; and the default local store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from application.processes import MlflowServer
from brewcast.registry import CHALLENGER, CHAMPION, download_onnx, version_by_alias
from models.export import cpu_session, run_onnx
from models.pipeline import ChampionUnavailableError
from models.workdir import TrainingWorkdir
from tests.conftest import register_model

pytestmark = pytest.mark.slow


def _copy(workdir, target):
    shutil.copytree(workdir, target)
    return target


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts") as server:
        yield server


def test_register_gate_and_promote_on_a_tracking_server(trained, sqlite_server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    settings, workdir = trained
    settings = settings.model_copy(
        update={"mlflow_tracking_uri": sqlite_server.url, "home": tmp_path / "home"}
    )
    first = register_model(settings, _copy(workdir, tmp_path / "w1"))
    assert first["promoted"] and first["version"] == "1", first["verdict"]
    assert version_by_alias(settings.model_name, CHAMPION).version == "1"
    assert version_by_alias(settings.model_name, CHALLENGER).version == "1"
    assert (settings.home / "validation" / "reference.json").exists()  # the champion's data

    client = MlflowClient()
    run = client.get_run(first["run_id"])
    for key in (
        "test/auc",
        "test/ece",
        "test/bias",
        "test/slice/yeast_strain/german_lager/auc",
        "test/slice/fermenter/FV01/bias",
        "threshold/threshold",
        "threshold/expected_cost_per_row",
        "calibration/a",
        "onnx/parity_max_abs_error",
        "validation/before_calibration/ece",
        "validation/after_calibration/ece",
        "baseline/slope_rule/log_loss",
        "baseline/logistic_regression/auc",
        "test/log_loss_low",
        "test/log_loss_high",
        "compare/slope_rule/log_loss_difference_high",
        "gate/passed",
        "intervals/coverage_80",
        "intervals/coverage_95_low",
        "intervals/width_48h_before_finish_80",
        "intervals/plain_split_conformal/width_48h_before_finish_80",
        "intervals/finished_by_72h/ece",
        "intervals/classifier_agreement/mean_abs_difference",
        "onnx/parity_interval_max_abs_error",
    ):
        assert key in run.data.metrics, key
    assert run.data.params["data_snapshot_id"] == run.data.tags["data_snapshot_id"]
    history = client.get_metric_history(first["run_id"], "epoch/val_loss")
    assert len(history) >= 2 and history[0].step == 1
    # the summary metrics are the logged model's too (MLflow 3's Models view), curves not
    logged_model = client.get_logged_model(first["model_uri"].removeprefix("models:/"))
    linked = {m.key: m.value for m in logged_model.metrics}
    assert linked["test/auc"] == run.data.metrics["test/auc"]
    assert not any(key.startswith("epoch/") for key in linked)
    assert 0 < first["mlflow_logging_seconds"] < 60
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "plots")}
    assert {
        "plots/calibration.png",
        "plots/roc_pr.png",
        "plots/bias_by_slice.png",
        "plots/loss_curves.png",
        "plots/calibration_by_model.png",
        "plots/coverage.png",
        "plots/finish_probability_calibration.png",
    } <= artifacts
    reports = {a.path for a in client.list_artifacts(first["run_id"], "reports")}
    assert {
        "reports/threshold_report.json",
        "reports/gate_verdict.json",
        "reports/slices.csv",
        "reports/coverage.csv",
        "reports/calibration.json",
        "reports/finish_forecast.json",
    } <= reports
    downloaded = client.download_artifacts(
        first["run_id"], "reports/finish_forecast.json", str(tmp_path)
    )
    logged = json.loads(Path(downloaded).read_text())
    assert logged["groups"]["*|*"]["residuals"] and logged["levels"] == [0.8, 0.95]

    # One parent run, a child run per family and per baseline on the same metric keys and
    # the same test set (logged as an MLflow dataset with its digest).
    children = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'"
    )
    roles = {c.data.tags["model"]: c.data.tags["role"] for c in children}
    assert roles == {
        "network": roles["network"],
        "boosted": roles["boosted"],
        "slope_rule": "baseline",
        "brand_history": "baseline",
        "logistic_regression": "baseline",
    }
    assert sorted([roles["network"], roles["boosted"]]) == ["alternative", "candidate"]
    digests = {i.dataset.digest for r in [run, *children] for i in r.inputs.dataset_inputs}
    assert len(digests) == 1
    for child in children:
        assert {"test/auc", "test/log_loss", "test/ece", "test/log_loss_low"} <= set(
            child.data.metrics
        ), child.data.tags["model"]
    # the brewer's own history beside the families, on their keys and with its window
    history = next(c for c in children if c.data.tags["model"] == "brand_history")
    assert {
        "test/hours_mae",
        "intervals/coverage_80",
        "intervals/median_width_80",
        "vs_candidate/hours_mae_difference_value",
    } <= set(history.data.metrics)
    candidate = next(c for c in children if c.data.tags["role"] == "candidate")
    assert candidate.data.metrics["test/auc"] == pytest.approx(run.data.metrics["test/auc"])
    predictions = mlflow.artifacts.load_text(
        f"runs:/{first['run_id']}/predictions/test_predictions.csv"
    ).splitlines()
    header = predictions[0].split(",")
    assert {"network_probability", "boosted_probability", "slope_rule_hours"} <= set(header)
    assert len(predictions) - 1 == len(pd.read_parquet(workdir / "test.parquet"))

    # What the registry serves is what was evaluated.
    test = pd.read_parquet(workdir / "test.parquet")
    served = download_onnx(f"models:/{settings.model_name}@{CHAMPION}", tmp_path / "dl")
    np.testing.assert_allclose(
        run_onnx(cpu_session(served), test)[0],
        run_onnx(cpu_session((workdir / "model.onnx").read_bytes()), test)[0],
        atol=1e-7,
    )
    tags = client.get_model_version(settings.model_name, "1").tags
    assert float(tags["threshold"]) == pytest.approx(TrainingWorkdir(workdir).load_calibration()[1])

    # A challenger failing the gate stays registered, not promoted, and says why.
    strict = settings.model_copy(update={"gate_max_ece": 1e-6})
    second = register_model(strict, _copy(workdir, tmp_path / "w2"))
    assert not second["promoted"] and second["version"] == "2"
    assert any(r.startswith("ece:") for r in second["verdict"]["reasons"])
    assert version_by_alias(settings.model_name, CHAMPION).version == "1"
    assert version_by_alias(settings.model_name, CHALLENGER).version == "2"
    version = client.get_model_version(settings.model_name, "2")
    assert version.tags["gate"] == "rejected" and "ece" in version.description
    assert client.get_run(second["run_id"]).data.tags["gate"] == "rejected"
    verdict = mlflow.artifacts.load_dict(f"runs:/{second['run_id']}/reports/gate_verdict.json")
    assert not verdict["passed"] and verdict["reasons"]

    # Against a champion: compared on the same test rows; an equal model passes.
    third = register_model(settings, _copy(workdir, tmp_path / "w3"))
    names = {c["name"] for c in third["verdict"]["checks"]}
    assert {"log_loss - champion", "auc - champion"} <= names
    table = mlflow.artifacts.load_dict(
        f"runs:/{third['run_id']}/reports/candidate_vs_champion.json"
    )
    assert "log_loss" in str(table) and "difference_high" in str(table)
    assert third["promoted"] and version_by_alias(settings.model_name, CHAMPION).version == "3"


def test_default_local_store_keeps_everything_under_home(trained, tmp_path, monkeypatch):
    settings, workdir = trained
    monkeypatch.chdir(tmp_path)
    settings = settings.model_copy(update={"home": tmp_path / "home"})
    result = register_model(settings, _copy(workdir, tmp_path / "w"))
    assert result["promoted"]
    assert settings.tracking_uri.startswith("sqlite:///")
    assert (settings.home / "mlflow.db").exists()
    assert list((settings.home / "mlartifacts").rglob("*.onnx"))
    assert not (tmp_path / "mlruns").exists()


def test_tracking_server_on_postgresql(trained, postgres_database, tmp_path):
    settings, workdir = trained
    with MlflowServer(postgres_database, tmp_path / "artifacts") as server:
        settings = settings.model_copy(
            update={"mlflow_tracking_uri": server.url, "home": tmp_path / "home"}
        )
        result = register_model(settings, _copy(workdir, tmp_path / "w"))
        assert result["promoted"]
        assert version_by_alias(settings.model_name, CHAMPION).version == result["version"]
    engine = sa.create_engine(postgres_database)
    with engine.connect() as conn:
        names = conn.execute(sa.text("select name from registered_models")).scalars().all()
    engine.dispose()
    assert names == [settings.model_name]


def test_an_unscorable_champion_fails_the_run_and_promotes_nothing(trained, tmp_path, monkeypatch):
    """The gate fails closed: a champion whose artifact is corrupt, or missing, stops the run
    at evaluate with the version and the cause, registers nothing and leaves the alias."""
    from mlflow import MlflowClient

    settings, workdir = trained
    monkeypatch.chdir(tmp_path)
    settings = settings.model_copy(update={"home": tmp_path / "home"})
    first = register_model(settings, _copy(workdir, tmp_path / "w1"))
    assert first["promoted"] and first["verdict"]["first_model"]
    assert first["verdict"]["note"].startswith("first model")
    graphs = list(settings.paths.mlflow_artifacts.rglob("*.onnx"))
    assert graphs
    for damage, attempt in (("corrupt", "w2"), ("missing", "w3")):
        for graph in graphs:
            if damage == "corrupt":
                graph.write_bytes(b"not an ONNX graph")
            else:
                graph.unlink(missing_ok=True)
        with pytest.raises(ChampionUnavailableError, match=r"champion version 1 of .* cannot be"):
            register_model(settings, _copy(workdir, tmp_path / attempt))
        assert not TrainingWorkdir(tmp_path / attempt).verdict.exists()  # no gate ran
        assert str(version_by_alias(settings.model_name, CHAMPION).version) == "1"
        versions = MlflowClient().search_model_versions(f"name='{settings.model_name}'")
        assert [str(v.version) for v in versions] == ["1"], damage

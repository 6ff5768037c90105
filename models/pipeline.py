"""Training end to end, as stages that hand each other files in a work directory.

``prepare`` -> ``fit`` -> ``calibrate`` -> ``export`` -> ``evaluate`` -> ``register``:
each stage reads what the previous ones wrote under ``workdir`` and writes its own
outputs there, so an orchestrator (the training DAG) can run them as separate tasks
passing only the path; :func:`train_and_register` runs them all in one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast import lake
from brewcast.schema import FEATURES, LABEL, REGRESSION_TARGET, slice_keys
from brewcast.settings import Settings
from models import metrics
from models.calibrate import Calibration, fit_calibration, sigmoid
from models.dataset import SPLITS, split_by_batch_time
from models.inputs import Preprocessing, raw_inputs

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (too little data, a failed export...); the message says why."""


class NoTrainingDataError(TrainingError):
    """Nothing published to train on yet: a scheduled run skips, it does not fail."""


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def _load(path: Path):
    return json.loads(path.read_text())


def _split_frames(workdir: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(workdir / f"{s}.parquet") for s in SPLITS}


def _preprocessing(workdir: Path) -> Preprocessing:
    data = _load(workdir / "preprocessing.json")
    return Preprocessing(
        data["fill_values"], {k: tuple(v) for k, v in data["vocabularies"].items()}
    )


def _targets(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "logit": frame[LABEL].astype("float32").to_numpy()[:, None],
        "hours": frame[REGRESSION_TARGET].astype("float32").to_numpy()[:, None],
    }


def _network_config(settings: Settings):
    from models.network import NetworkConfig

    return NetworkConfig(
        hidden_layers=tuple(int(x) for x in settings.hidden_layers.split(",") if x.strip()),
        activation=settings.activation,
        l1=settings.l1,
        l2=settings.l2,
        dropout=settings.dropout,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        patience=settings.patience,
        seed=settings.seed,
    )


# ------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------


def prepare(settings: Settings, workdir: Path) -> dict:
    """Read the published features, split them by batch and time, fit the preprocessing."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = lake.partition_files(settings.lake_dir, "features", FEATURES)
    features = lake.read_table(settings.lake_dir, "features", FEATURES)
    if features.empty:
        raise NoTrainingDataError(
            f"no published features under {settings.lake_dir}/features; run "
            "`brewcast features` (after ingest and validate) first"
        )
    snapshot_id = hashlib.sha256(
        "".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files).encode()
    ).hexdigest()[:16]
    split = split_by_batch_time(features)
    info: dict = {
        "data_snapshot_id": snapshot_id,
        "feature_files": len(files),
        "rows": len(features),
    }
    for name in SPLITS:
        part = features[split == name].reset_index(drop=True)
        batches = part["batch_id"].nunique()
        if batches < settings.min_split_batches or part[LABEL].nunique() < 2:
            labels = sorted(part[LABEL].unique().tolist())
            raise TrainingError(
                f"the {name} split has {batches} batch(es) and labels {labels}: too little "
                f"labelled data to train (need {settings.min_split_batches} batches and both "
                f"classes per split)"
            )
        part.to_parquet(workdir / f"{name}.parquet", index=False)
        info[f"{name}_rows"] = len(part)
        info[f"{name}_batches"] = batches
        info[f"{name}_positive_rate"] = float(part[LABEL].mean())
        info[f"{name}_until"] = part["snapshot_time"].max().isoformat()
    pre = Preprocessing.fit(pd.read_parquet(workdir / "train.parquet"))
    _json(workdir / "preprocessing.json", asdict(pre))
    _json(workdir / "data.json", info)
    return info


def fit(settings: Settings, workdir: Path, progress: bool = True) -> dict:
    """Train the network (early stopping) and the baselines on the same split."""
    from models.baselines import fit_baselines
    from models.network import train_network

    frames = _split_frames(workdir)
    pre = _preprocessing(workdir)
    config = _network_config(settings)
    started = time.perf_counter()
    net = train_network(
        pre,
        pre.network_inputs(frames["train"]),
        _targets(frames["train"]),
        pre.network_inputs(frames["validation"]),
        _targets(frames["validation"]),
        config,
        progress=progress,
    )
    net.model.save(workdir / "network.keras")
    _json(workdir / "history.json", net.history)
    baselines = fit_baselines(
        frames["train"],
        frames["validation"],
        settings.seed,
        settings.terminal_tolerance_plato,
        settings.horizon_hours,
    )
    scores = {
        name: model.predict_proba(frames["test"]).tolist() for name, model in baselines.items()
    }
    _json(workdir / "baseline_test_probabilities.json", scores)
    info = {
        "best_epoch": net.best_epoch,
        "epochs_run": len(net.history.get("loss", [])),
        "train_seconds": time.perf_counter() - started,
        "params": config.params(),
    }
    _json(workdir / "fit.json", info)
    return info


def _load_network(workdir: Path):
    from models.network import _keras, masked_huber

    return _keras().models.load_model(
        workdir / "network.keras", custom_objects={"masked_huber": masked_huber}
    )


def calibrate(settings: Settings, workdir: Path) -> dict:
    """Fit the calibration on validation logits and choose the threshold on validation."""
    from models.network import predict_network
    from models.threshold import choose_threshold

    frames = _split_frames(workdir)
    pre = _preprocessing(workdir)
    model = _load_network(workdir)
    logit, _ = predict_network(model, pre.network_inputs(frames["validation"]))
    y = frames["validation"][LABEL].to_numpy(dtype=float)
    calibration = fit_calibration(logit, y, settings.calibration_method)
    before, after = sigmoid(logit), calibration.apply(logit)
    report = choose_threshold(
        y,
        after,
        settings.threshold_policy,
        settings.cost_false_finished,
        settings.cost_late,
        settings.precision_target,
    )
    info = {
        "calibration": asdict(calibration),
        "validation_before": {
            "ece": metrics.expected_calibration_error(y, before),
            "ece_quantile": metrics.expected_calibration_error(y, before, strategy="quantile"),
            "brier": metrics.brier(y, before),
            "log_loss": metrics.log_loss(y, before),
        },
        "validation_after": {
            "ece": metrics.expected_calibration_error(y, after),
            "ece_quantile": metrics.expected_calibration_error(y, after, strategy="quantile"),
            "brier": metrics.brier(y, after),
            "log_loss": metrics.log_loss(y, after),
        },
        "reliability_before": metrics.reliability_table(y, before).to_dict("records"),
        "reliability_after": metrics.reliability_table(y, after).to_dict("records"),
        "threshold": report.to_dict(),
    }
    _json(workdir / "calibration.json", info)
    _json(workdir / "threshold_curve.json", report.curve)
    return info


def _calibration(workdir: Path) -> tuple[Calibration, float]:
    info = _load(workdir / "calibration.json")
    return Calibration(**info["calibration"]), float(info["threshold"]["threshold"])


def export(settings: Settings, workdir: Path) -> dict:
    """Compose the ONNX graph and check its parity with Keras on the test split."""
    from models.export import export_model

    frames = _split_frames(workdir)
    calibration, threshold = _calibration(workdir)
    data = _load(workdir / "data.json")
    result = export_model(
        _preprocessing(workdir),
        _load_network(workdir),
        calibration,
        frames["test"],
        metadata={
            "threshold": threshold,
            "horizon_hours": settings.horizon_hours,
            "data_snapshot_id": data["data_snapshot_id"],
        },
    )
    (workdir / "model.onnx").write_bytes(result.serialized())
    info = {
        "parity_max_abs_error": result.parity_max_abs_error,
        "parity_hours_max_abs_error": result.parity_hours_max_abs_error,
        "parity_rows": result.parity_rows,
    }
    _json(workdir / "export.json", info)
    return info


def evaluate(settings: Settings, workdir: Path) -> dict:
    """Score the exported graph (what will be served) on the test split: overall, per slice,
    baselines, plots."""
    from models.evaluate import (
        plot_bias_by_slice,
        plot_loss_curves,
        plot_reliability,
        plot_roc_pr,
        plot_slice_reliability,
        slice_table,
    )
    from models.export import cpu_session, run_onnx

    test = _split_frames(workdir)["test"]
    _, threshold = _calibration(workdir)
    probability, hours = run_onnx(cpu_session((workdir / "model.onnx").read_bytes()), test)
    y = test[LABEL].to_numpy(dtype=float)
    overall = metrics.classification_report(y, probability, threshold, test["batch_id"])
    finished = test[REGRESSION_TARGET].notna().to_numpy()
    overall["hours_mae"] = float(
        np.mean(np.abs(hours[finished] - test[REGRESSION_TARGET].to_numpy()[finished]))
    )
    note = metrics.Confusion.at(y, probability, threshold).accuracy_note()
    slices = slice_table(test, probability, threshold, settings.gate_min_slice_rows)
    slices.to_csv(workdir / "slices.csv", index=False)
    baselines = {}
    for name, p in _load(workdir / "baseline_test_probabilities.json").items():
        p = np.asarray(p)
        baselines[name] = {
            k: metrics.classification_report(y, p, threshold)[k]
            for k in ("auc", "log_loss", "brier", "ece", "bias")
        }
    plots = workdir / "plots"
    calibration_info = _load(workdir / "calibration.json")
    plot_reliability({"test (calibrated ONNX)": (y, probability)}, plots / "calibration.png")
    for key in slice_keys():
        plot_slice_reliability(
            test,
            probability,
            key,
            plots / f"calibration_by_{key}.png",
            settings.gate_min_slice_rows,
        )
    plot_roc_pr(y, probability, plots / "roc_pr.png", threshold)
    plot_bias_by_slice(slices, plots / "bias_by_slice.png", settings.gate_max_abs_bias)
    plot_loss_curves(_load(workdir / "history.json"), plots / "loss_curves.png")
    info = {
        "test": overall,
        "accuracy_note": note,
        "baselines": baselines,
        "beats_baselines": {n: overall["log_loss"] < b["log_loss"] for n, b in baselines.items()},
        "calibration_validation": {
            k: calibration_info[k] for k in ("validation_before", "validation_after")
        },
    }
    _json(workdir / "evaluation.json", info)
    return info


# ------------------------------------------------------------------------------------------
# MLflow
# ------------------------------------------------------------------------------------------


@dataclass
class RegisteredModel:
    run_id: str
    version: str
    promoted: bool
    verdict: dict
    model_uri: str
    mlflow_logging_seconds: float  # the run's params, metrics and artifacts, and the model


def _log_metrics_batched(
    run_id: str, summary: dict[str, float], history: dict[str, list[float]], model_id: str
) -> None:
    """The summary metrics (linked to the logged model, as MLflow 3 links a model's
    metrics) and the per-epoch loss curves (step = epoch), in as few requests as MLflow
    allows (1,000 metrics each), not one request per epoch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, 0, model_id=model_id, run_id=run_id)
        for key, value in summary.items()
    ]
    metrics += [
        Metric(f"epoch/{key}", float(value), now, epoch + 1)
        for key, values in history.items()
        for epoch, value in enumerate(values)
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)


def _champion_on_test(
    settings: Settings, workdir: Path, test: pd.DataFrame, threshold: float
) -> tuple[str | None, dict | None]:
    """The current champion scored on this run's test rows (same data, fair comparison)."""
    from models.export import cpu_session, run_onnx
    from models.registry import CHAMPION, download_onnx, version_by_alias

    champion = version_by_alias(settings.model_name, CHAMPION)
    if champion is None:
        return None, None
    try:
        onnx_bytes = download_onnx(
            f"models:/{settings.model_name}@{CHAMPION}", workdir / "champion"
        )
        probability, _ = run_onnx(cpu_session(onnx_bytes), test)
    except Exception:
        log.exception(
            "champion version %s cannot be scored; gating without comparison", champion.version
        )
        return f"{champion.version} (unscorable)", None
    return champion.version, metrics.classification_report(
        test[LABEL].to_numpy(dtype=float), probability, threshold
    )


def register(settings: Settings, workdir: Path) -> RegisteredModel:
    """Log the run, register the ONNX graph as ``challenger``, gate it, maybe promote it."""
    import mlflow
    import onnx
    import onnxruntime as ort
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from models.evaluate import flatten_metrics
    from models.gate import GateLimits, promotion_gate
    from models.registry import CHALLENGER, CHAMPION, configure, ensure_experiment, set_alias
    from validation.reference import save_reference

    configure(settings.tracking_uri)
    experiment_id = ensure_experiment(settings.experiment, settings.home / "mlartifacts")
    data, fitted = _load(workdir / "data.json"), _load(workdir / "fit.json")
    cal, exported = _load(workdir / "calibration.json"), _load(workdir / "export.json")
    evaluation = _load(workdir / "evaluation.json")
    frames = _split_frames(workdir)
    test = frames["test"]
    slices = pd.read_csv(
        workdir / "slices.csv", keep_default_na=False, na_values=[""], dtype={"value": str}
    )
    threshold = float(cal["threshold"]["threshold"])
    champion_version, champion = _champion_on_test(settings, workdir, test, threshold)
    verdict = promotion_gate(
        exported["parity_max_abs_error"],
        evaluation["test"],
        slices,
        GateLimits.from_settings(settings),
        champion,
        evaluation["baselines"].get("slope_rule"),
    )

    metric_values = flatten_metrics("test", evaluation["test"], slices)
    metric_values.update(
        {f"validation/before_calibration/{k}": v for k, v in cal["validation_before"].items()}
    )
    metric_values.update(
        {f"validation/after_calibration/{k}": v for k, v in cal["validation_after"].items()}
    )
    metric_values.update(
        {
            f"threshold/{k}": v
            for k, v in cal["threshold"].items()
            if isinstance(v, int | float) and v is not None
        }
    )
    metric_values.update(
        {f"calibration/{k}": v for k, v in cal["calibration"].items() if isinstance(v, int | float)}
    )
    metric_values.update({f"onnx/{k}": v for k, v in exported.items()})
    for name, values in evaluation["baselines"].items():
        metric_values.update({f"baseline/{name}/{k}": v for k, v in values.items()})
    if champion is not None:
        metric_values.update({f"champion/{k}": champion[k] for k in ("auc", "log_loss", "ece")})
    metric_values["gate/passed"] = float(verdict.passed)
    metric_values = {
        k: float(v) for k, v in metric_values.items() if v is not None and np.isfinite(float(v))
    }

    params = {
        **fitted["params"],
        "calibration_method": settings.calibration_method,
        "threshold_policy": settings.threshold_policy,
        "cost_false_finished": settings.cost_false_finished,
        "cost_late": settings.cost_late,
        "horizon_hours": settings.horizon_hours,
        "snapshot_every_hours": settings.snapshot_every_hours,
        "data_snapshot_id": data["data_snapshot_id"],
        "seed": settings.seed,
        **{f"data_{k}": v for k, v in data.items() if k != "data_snapshot_id"},
    }
    history = _load(workdir / "history.json")
    validation_summary = settings.home / "validation" / "last_run.json"
    model = onnx.load_from_string((workdir / "model.onnx").read_bytes())
    example = raw_inputs(test.head(3))
    signature = infer_signature(
        example,
        {
            "probability": np.zeros((3, 1), np.float32),
            "hours_remaining": np.zeros((3, 1), np.float32),
        },
    )

    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train-{data['data_snapshot_id']}"
    ) as run:
        started = time.perf_counter()
        mlflow.set_tags(
            {
                "data_snapshot_id": data["data_snapshot_id"],
                "gate": "passed" if verdict.passed else "rejected",
                "champion_before": champion_version or "none",
                "accuracy_note": evaluation["accuracy_note"] or "",
            }
        )
        mlflow.log_params(params)
        # The model before the metrics: MLflow 3's log_model links the run's metrics logged
        # so far to the model with one GET per metric (4 s of 5 here); these are linked
        # in the batch instead.
        info = mlflow.onnx.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name=settings.model_name,
            # one self-contained file (32 KB): serving downloads exactly one .onnx
            save_as_external_data=False,
            # the graph needs onnxruntime, not this project's whole lock file
            pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}"],
        )
        _log_metrics_batched(run.info.run_id, metric_values, history, info.model_id)
        mlflow.log_artifacts(str(workdir / "plots"), artifact_path="plots")
        for name in (
            "slices.csv",
            "calibration.json",
            "evaluation.json",
            "data.json",
            "export.json",
            "threshold_curve.json",
            "preprocessing.json",
        ):
            mlflow.log_artifact(str(workdir / name), artifact_path="reports")
        mlflow.log_dict(cal["threshold"], "reports/threshold_report.json")
        mlflow.log_dict(verdict.to_dict(), "reports/gate_verdict.json")
        if validation_summary.exists():
            mlflow.log_artifact(str(validation_summary), artifact_path="reports/validation")
        logging_seconds = time.perf_counter() - started
        log.info("MLflow logging took %.2f s", logging_seconds)
    version = str(info.registered_model_version)
    client = MlflowClient()
    set_alias(settings.model_name, CHALLENGER, version)
    for key, value in {
        "threshold": threshold,
        "gate": "passed" if verdict.passed else "rejected",
        "data_snapshot_id": data["data_snapshot_id"],
        "calibration": json.dumps(cal["calibration"]),
    }.items():
        client.set_model_version_tag(settings.model_name, version, key, str(value))
    client.update_model_version(
        settings.model_name,
        version,
        description=(
            f"threshold {threshold:.4f} ({cal['threshold']['policy']}); test AUC "
            f"{evaluation['test']['auc']:.4f}, ECE {evaluation['test']['ece']:.4f}; gate "
            f"{'passed' if verdict.passed else 'rejected: ' + '; '.join(verdict.reasons)}"
        ),
    )
    if verdict.passed:
        set_alias(settings.model_name, CHAMPION, version)
        # The champion's training data is the reference new data is validated against.
        from models.export import cpu_session, run_onnx

        train_probability, _ = run_onnx(
            cpu_session((workdir / "model.onnx").read_bytes()), frames["train"]
        )
        save_reference(settings, frames["train"], train_probability)
    result = RegisteredModel(
        run.info.run_id,
        version,
        verdict.passed,
        verdict.to_dict(),
        info.model_uri,
        round(logging_seconds, 3),
    )
    _json(workdir / "registered.json", asdict(result))
    return result


def build(settings: Settings, workdir: Path, progress: bool = True) -> Path:
    """Every stage up to (not including) registration, in one process."""
    for stage in (prepare, fit, calibrate, export, evaluate):
        started = time.perf_counter()
        log.info("training stage %s ...", stage.__name__)
        stage(settings, workdir, **({"progress": progress} if stage is fit else {}))
        log.info("training stage %s done in %.1f s", stage.__name__, time.perf_counter() - started)
    return workdir


def train_and_register(
    settings: Settings, workdir: Path | None = None, progress: bool = True
) -> RegisteredModel:
    """Every stage in order, in one process."""
    workdir = workdir or settings.home / "training" / pd.Timestamp.now("UTC").strftime(
        "%Y%m%dT%H%M%S"
    )
    return register(settings, build(settings, workdir, progress))

"""The training steps up to the gate: prepare -> fit -> calibrate -> export -> evaluate.

Each step reads what the previous ones wrote in a :class:`~models.workdir.TrainingWorkdir`
and writes its own files there (``models.workdir.STEP_FILES`` lists them), so an
orchestrator can run the steps as separate tasks passing only the path. The gate, the
registration and the promotion that follow are in :mod:`models.promotion`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from brewcast import lake
from brewcast.schema import FEATURES, LABEL, REGRESSION_TARGET, slice_keys
from brewcast.settings import Settings
from models import metrics
from models.calibrate import fit_calibration, sigmoid
from models.dataset import SPLITS, split_by_batch_time
from models.inputs import Preprocessing
from models.workdir import TrainingWorkdir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (too little data, a failed export...); the message says why."""


class NoTrainingDataError(TrainingError):
    """Nothing published to train on yet: a scheduled run skips, it does not fail."""


class ChampionUnavailableError(TrainingError):
    """A champion exists but cannot be loaded or scored: nothing may be gated against it, so
    the run stops (failing closed) instead of promoting without the comparison."""


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


def prepare(settings: Settings, work: TrainingWorkdir) -> dict:
    """Read the published features, split them by batch and time, fit the preprocessing."""
    work.root.mkdir(parents=True, exist_ok=True)
    files = lake.partition_files(settings.paths.lake, "features", FEATURES)
    features = lake.read_table(settings.paths.lake, "features", FEATURES)
    if features.empty:
        raise NoTrainingDataError(
            f"no published features under {settings.paths.lake}/features; run "
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
        part.to_parquet(work.split(name), index=False)
        info[f"{name}_rows"] = len(part)
        info[f"{name}_batches"] = batches
        info[f"{name}_positive_rate"] = float(part[LABEL].mean())
        info[f"{name}_until"] = part["snapshot_time"].max().isoformat()
    pre = Preprocessing.fit(pd.read_parquet(work.train), settings.vocabulary_min_batches)
    work.write_json(work.preprocessing, asdict(pre))
    work.write_json(work.data, info)
    return info


def fit(settings: Settings, work: TrainingWorkdir, progress: bool = True) -> dict:
    """Train the network (early stopping) and the baselines on the same split."""
    from models.baselines import fit_baselines
    from models.network import train_network

    frames = work.frames()
    pre = work.load_preprocessing()
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
    net.model.save(work.network)
    work.write_json(work.history, net.history)
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
    work.write_json(work.baseline_scores, scores)
    info = {
        "best_epoch": net.best_epoch,
        "epochs_run": len(net.history.get("loss", [])),
        "train_seconds": time.perf_counter() - started,
        "params": config.params(),
    }
    work.write_json(work.fit, info)
    return info


def _calibration_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "ece": metrics.expected_calibration_error(y, p),
        "ece_quantile": metrics.expected_calibration_error(y, p, strategy="quantile"),
        "brier": metrics.brier(y, p),
        "log_loss": metrics.log_loss(y, p),
    }


def calibrate(settings: Settings, work: TrainingWorkdir) -> dict:
    """Fit the calibration on validation logits and choose the threshold on validation."""
    from models.network import predict_network
    from models.threshold import choose_threshold

    validation = pd.read_parquet(work.validation)
    pre = work.load_preprocessing()
    logit, _ = predict_network(work.load_network(), pre.network_inputs(validation))
    y = validation[LABEL].to_numpy(dtype=float)
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
        "validation_before": _calibration_metrics(y, before),
        "validation_after": _calibration_metrics(y, after),
        "reliability_before": metrics.reliability_table(y, before).to_dict("records"),
        "reliability_after": metrics.reliability_table(y, after).to_dict("records"),
        "threshold": report.to_dict(),
    }
    work.write_json(work.calibration, info)
    work.write_json(work.threshold_curve, report.curve)
    return info


def export(settings: Settings, work: TrainingWorkdir) -> dict:
    """Compose the ONNX graph and check its parity with Keras on the test split."""
    from brewcast.contract import (
        META_DATA_SNAPSHOT_ID,
        META_FAMILIARITY,
        META_HORIZON_HOURS,
        META_THRESHOLD,
        META_TRAINED_ON,
        Familiarity,
    )
    from models.export import export_model

    calibration, threshold = work.load_calibration()
    data = work.read_json(work.data)
    frames = work.frames()
    familiarity = Familiarity.fit(Familiarity.inputs(frames["train"])).with_threshold(
        Familiarity.inputs(frames["validation"]), settings.familiarity_quantile
    )
    test_distance = familiarity.distance(Familiarity.inputs(frames["test"]))
    result = export_model(
        work.load_preprocessing(),
        work.load_network(),
        calibration,
        frames["test"],
        metadata={
            META_THRESHOLD: threshold,
            META_HORIZON_HOURS: settings.horizon_hours,
            META_DATA_SNAPSHOT_ID: data["data_snapshot_id"],
            META_FAMILIARITY: familiarity.to_json(),
            META_TRAINED_ON: {
                "batches": data["train_batches"],
                "rows": data["train_rows"],
                "until": data["train_until"],
            },
        },
    )
    work.model.write_bytes(result.serialized())
    info = {
        "familiarity_threshold": familiarity.threshold,
        "test_out_of_distribution_rate": float(np.mean(test_distance > familiarity.threshold))
        if test_distance.size
        else 0.0,
        "parity_max_abs_error": result.parity_max_abs_error,
        "parity_hours_max_abs_error": result.parity_hours_max_abs_error,
        "parity_rows": result.parity_rows,
    }
    work.write_json(work.export, info)
    return info


def score_model(model_bytes: bytes, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Probability and hours of an exported graph (of either input contract) on ``frame``."""
    from models.export import cpu_session, run_onnx

    return run_onnx(cpu_session(model_bytes), frame)


def evaluate(settings: Settings, work: TrainingWorkdir) -> dict:
    """Score the exported graph (what will be served) on the test split: overall, per slice,
    baselines, plots; and the current champion on the same rows (:func:`score_champion`)."""
    from models.evaluate import slice_table

    work.champion.unlink(missing_ok=True)  # never gate on an earlier attempt's comparison
    test = pd.read_parquet(work.test)
    _, threshold = work.load_calibration()
    probability, hours = score_model(work.model.read_bytes(), test)
    y = test[LABEL].to_numpy(dtype=float)
    overall = metrics.classification_report(y, probability, threshold, test["batch_id"])
    finished = test[REGRESSION_TARGET].notna().to_numpy()
    overall["hours_mae"] = float(
        np.mean(np.abs(hours[finished] - test[REGRESSION_TARGET].to_numpy()[finished]))
    )
    slices = slice_table(test, probability, threshold, settings.gate_min_slice_rows)
    slices.to_csv(work.slices, index=False)
    baselines = {}
    for name, p in work.read_json(work.baseline_scores).items():
        report = metrics.classification_report(y, np.asarray(p), threshold)
        baselines[name] = {k: report[k] for k in ("auc", "log_loss", "brier", "ece", "bias")}
    _plot_evaluation(settings, work, test, probability, threshold, slices)
    calibration_info = work.read_json(work.calibration)
    info = {
        "test": overall,
        "accuracy_note": metrics.Confusion.at(y, probability, threshold).accuracy_note(),
        "baselines": baselines,
        "beats_baselines": {n: overall["log_loss"] < b["log_loss"] for n, b in baselines.items()},
        "calibration_validation": {
            k: calibration_info[k] for k in ("validation_before", "validation_after")
        },
    }
    work.write_json(work.evaluation, info)
    work.write_json(work.champion, score_champion(settings, work, test, threshold))
    return info


def _plot_evaluation(
    settings: Settings,
    work: TrainingWorkdir,
    test: pd.DataFrame,
    probability: np.ndarray,
    threshold: float,
    slices: pd.DataFrame,
) -> None:
    from models.evaluate import (
        plot_bias_by_slice,
        plot_loss_curves,
        plot_reliability,
        plot_roc_pr,
        plot_slice_reliability,
    )

    y = test[LABEL].to_numpy(dtype=float)
    plots = work.plots
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
    plot_loss_curves(work.read_json(work.history), plots / "loss_curves.png")


def score_champion(
    settings: Settings, work: TrainingWorkdir, test: pd.DataFrame, threshold: float
) -> dict:
    """The current champion scored on this run's test rows (same data, fair comparison):
    ``{"version": None, "first_model": True}`` when there is none. A champion that exists
    but cannot be downloaded or scored raises :class:`ChampionUnavailableError`."""
    from brewcast.registry import CHAMPION, configure, download_onnx, version_by_alias

    configure(settings.tracking_uri)
    champion = version_by_alias(settings.model_name, CHAMPION)
    if champion is None:
        return {"version": None, "first_model": True, "test": None}
    try:
        model_bytes = download_onnx(
            f"models:/{settings.model_name}/{champion.version}", work.champion_download
        )
        probability, _ = score_model(model_bytes, test)
    except Exception as exc:  # any cause: the comparison is impossible, so is the gate
        raise ChampionUnavailableError(
            f"champion version {champion.version} of {settings.model_name} cannot be scored "
            f"on this run's test rows ({type(exc).__name__}: {exc}); nothing is promoted. "
            "Fix or re-point the champion alias, then re-run from evaluate"
        ) from exc
    report = metrics.classification_report(
        test[LABEL].to_numpy(dtype=float), probability, threshold
    )
    return {"version": str(champion.version), "first_model": False, "test": report}


#: The steps of this module, in order.
STEPS = {
    "prepare": prepare,
    "fit": fit,
    "calibrate": calibrate,
    "export": export,
    "evaluate": evaluate,
}

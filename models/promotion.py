"""After evaluation: gate -> register -> promote, each a step of its own.

* **gate** decides on what ``evaluate`` measured, the champion's scores on the same rows
  included, and writes the verdict. It never runs without that comparison: a champion that
  cannot be scored already stopped ``evaluate`` (``ChampionUnavailableError``).
* **register** logs the run to MLflow (params, the same metric keys every run, plots,
  reports, the verdict) and registers the ONNX graph as a new version with alias
  ``challenger``, tagged with its verdict. A rejected model stays registered.
* **promote** moves ``champion`` to a version that passed, only if the champion is still the
  one it was gated against, and makes its training data the validation reference.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from brewcast.contract import OUTPUTS, raw_inputs
from brewcast.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_PASSED,
    GATE_REJECTED,
    GATE_TAG,
    configure,
    ensure_experiment,
    set_alias,
    version_by_alias,
)
from brewcast.settings import Settings
from models.baselines import NON_ML
from models.gate import GateLimits, promotion_gate
from models.pipeline import TrainingError, score_model
from models.workdir import TrainingWorkdir

log = logging.getLogger(__name__)


class ChampionMovedError(TrainingError):
    """The champion alias moved after this run was gated against it: re-run from evaluate."""


def gate(settings: Settings, work: TrainingWorkdir) -> dict:
    """The promotion gate's verdict on this run (``gate_verdict.json``)."""
    exported = work.read_json(work.export)
    evaluation = work.read_json(work.evaluation)
    champion = work.read_json(work.champion)  # missing: evaluate did not finish; fail here
    verdict = promotion_gate(
        exported["parity_max_abs_error"],
        evaluation["test"],
        work.load_slices(),
        GateLimits.from_settings(settings),
        baselines={name: evaluation["comparisons"][name] for name in evaluation["baselines"]},
        champion=champion["comparison"],
        champion_version=champion["version"],
        significantly_better_than=NON_ML,
        coverage=work.load_coverage(),
        horizon_disagreement=_horizon_disagreement(evaluation),
        hours_baselines=evaluation.get("hours_comparisons", {}),
        window_baselines=evaluation.get("intervals", {}).get("baselines", {}),
        windows=evaluation.get("intervals", {}).get("overall", {}),
    )
    result = verdict.to_dict()
    work.write_json(work.verdict, result)
    return result


def _horizon_disagreement(evaluation: dict) -> float | None:
    agreement = (
        evaluation.get("intervals", {}).get("finish_probabilities", {}).get("classifier_agreement")
    )
    return None if agreement is None else float(agreement["mean_abs_difference"])


@dataclass
class RegisteredModel:
    run_id: str
    version: str
    gate_passed: bool
    verdict: dict
    model_uri: str
    mlflow_logging_seconds: float  # the run's params, metrics and artifacts, and the model


@dataclass(frozen=True)
class _RunReports:
    """The JSON reports of the earlier steps that registration logs, each read once."""

    data: dict
    fit: dict
    calibration: dict
    export: dict
    evaluation: dict
    champion: dict
    verdict: dict

    @classmethod
    def read(cls, work: TrainingWorkdir) -> _RunReports:
        return cls(
            **{name: work.read_json(getattr(work, name)) for name in cls.__dataclass_fields__}
        )


def interval_metrics(intervals: dict, coverage: pd.DataFrame | None = None) -> dict[str, float]:
    """The finish forecast's numbers under stable keys: ``intervals/coverage_80`` (and its
    ``_low``/``_high``), median widths, the width two days before the finish against plain
    split conformal's, each horizon's calibration, and per tested slice
    ``intervals/<slice>/<value>/coverage_80``."""
    from models.evaluate import metric_key

    out = {f"intervals/{k}": v for k, v in intervals.get("overall", {}).items()}
    for tag, width in intervals.get("width_48h_before_finish", {}).items():
        out[f"intervals/width_48h_before_finish_{tag}"] = width
    plain = intervals.get("plain_split_conformal", {})
    for tag, width in plain.get("width_48h_before_finish", {}).items():
        out[f"intervals/plain_split_conformal/width_48h_before_finish_{tag}"] = width
    out.update(
        {
            f"intervals/plain_split_conformal/{k}": v
            for k, v in plain.items()
            if k != "width_48h_before_finish"
        }
    )
    horizons = intervals.get("finish_probabilities", {})
    for horizon, scores in horizons.get("horizons", {}).items():
        out.update({f"intervals/finished_by_{horizon}h/{k}": v for k, v in scores.items()})
    agreement = horizons.get("classifier_agreement")
    if agreement:
        out["intervals/classifier_agreement/mean_abs_difference"] = agreement["mean_abs_difference"]
    if coverage is not None:
        tested = coverage[coverage["enough_support"].astype(bool) & (coverage["slice"] != "all")]
        for row in tested.to_dict("records"):
            for column in ("coverage_80", "coverage_95"):
                out[metric_key("intervals", row["slice"], row["value"], column)] = row[column]
    return out


def _run_metrics(
    reports: _RunReports, slices: pd.DataFrame, coverage: pd.DataFrame | None = None
) -> dict[str, float]:
    """Every number of the run under the stable keys all runs share (finite ones only)."""
    from models.evaluate import flatten_metrics

    cal, evaluation = reports.calibration, reports.evaluation
    values = flatten_metrics("test", evaluation["test"], slices)
    for when in ("before", "after"):
        values.update(
            {f"validation/{when}_calibration/{k}": v for k, v in cal[f"validation_{when}"].items()}
        )
    for group in ("threshold", "calibration"):
        values.update(
            {f"{group}/{k}": v for k, v in cal[group].items() if isinstance(v, int | float)}
        )
    values.update({f"onnx/{k}": v for k, v in reports.export.items() if isinstance(v, int | float)})
    values.update(headline_metrics(evaluation["headline"]))
    for name, difference in evaluation["comparisons"].items():
        values.update({f"compare/{name}/log_loss_difference_{k}": v for k, v in difference.items()})
    for name, scores in evaluation["baselines"].items():
        values.update({f"baseline/{name}/{k}": v for k, v in scores.items()})
    values.update(interval_metrics(evaluation.get("intervals", {}), coverage))
    champion = reports.champion["test"]
    if champion is not None:
        values.update({f"champion/{k}": champion[k] for k in ("auc", "log_loss", "ece")})
    values["gate/passed"] = float(reports.verdict["passed"])
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(float(v))}


def headline_metrics(headline: dict[str, dict[str, float]]) -> dict[str, float]:
    """A model's headline metrics under the keys every model's run shares, so MLflow's
    compare page lines the families and baselines up: ``test/<metric>`` and its interval
    ``test/<metric>_low`` / ``_high`` (pre-finish rows, batch bootstrap)."""
    out = {}
    for name, value in headline.items():
        out[f"test/{name}"] = value["value"]
        out[f"test/{name}_low"] = value["low"]
        out[f"test/{name}_high"] = value["high"]
    return out


def _run_params(settings: Settings, reports: _RunReports) -> dict:
    data = reports.data
    return {
        **reports.fit["params"],
        "calibration_method": settings.calibration_method,
        "unknown_category_share": settings.unknown_category_share,
        "bootstrap_replicates": settings.bootstrap_replicates,
        "gate_min_slice_batches": settings.gate_min_slice_batches,
        "threshold_policy": settings.threshold_policy,
        "cost_false_finished": settings.cost_false_finished,
        "cost_late": settings.cost_late,
        "horizon_hours": settings.horizon_hours,
        "snapshot_every_hours": settings.snapshot_every_hours,
        "data_snapshot_id": data["data_snapshot_id"],
        "seed": settings.seed,
        **{f"data_{k}": v for k, v in data.items() if k != "data_snapshot_id"},
    }


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


def _log_model(settings: Settings, work: TrainingWorkdir):
    """The ONNX graph as an ``mlflow.onnx`` model with signature and input example,
    registered as a new version of the model; MLflow's model info."""
    import mlflow
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    example = raw_inputs(pd.read_parquet(work.test).head(3))
    signature = infer_signature(example, {name: np.zeros((3, 1), np.float32) for name in OUTPUTS})
    return mlflow.onnx.log_model(
        onnx.load_from_string(work.model.read_bytes()),
        name="model",
        signature=signature,
        input_example=example,
        registered_model_name=settings.model_name,
        # one self-contained file: serving downloads exactly one .onnx
        save_as_external_data=False,
        # the graph needs onnxruntime, not this project's whole lock file
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}"],
    )


def _log_run(settings: Settings, work: TrainingWorkdir, reports: _RunReports):
    """One MLflow run: tags, params, the registered model, metrics, plots and reports."""
    import mlflow

    experiment_id = ensure_experiment(settings.experiment, settings.paths.mlflow_artifacts)
    data, verdict = reports.data, reports.verdict
    fingerprint = work.read_json(work.fingerprint)
    metric_values = _run_metrics(reports, work.load_slices(), work.load_coverage())
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train-{data['data_snapshot_id']}"
    ) as run:
        started = time.perf_counter()
        mlflow.set_tags(
            {
                "data_snapshot_id": data["data_snapshot_id"],
                GATE_TAG: GATE_PASSED if verdict["passed"] else GATE_REJECTED,
                "champion_before": verdict["champion_version"] or "none (first model)",
                "accuracy_note": reports.evaluation["accuracy_note"] or "",
                # the reproducibility fingerprint (reports/reproducibility.json has it whole)
                **{
                    f"reproducibility.{key}": str(fingerprint[key])
                    for key in ("model_sha256", "settings_sha256", "numerics_pinned")
                },
                **{
                    f"reproducibility.{family}_sha256": digest
                    for family, digest in fingerprint["family_sha256"].items()
                },
            }
        )
        mlflow.log_params(_run_params(settings, reports))
        # The model before the metrics: MLflow 3's log_model links the run's metrics logged
        # so far to the model with one GET per metric; these are linked in the batch instead.
        info = _log_model(settings, work)
        history = work.read_json(work.history)
        _log_metrics_batched(run.info.run_id, metric_values, history, info.model_id)
        mlflow.log_artifacts(str(work.plots), artifact_path="plots")
        for name in work.REPORTS:
            mlflow.log_artifact(str(getattr(work, name)), artifact_path="reports")
        mlflow.log_dict(reports.calibration["threshold"], "reports/threshold_report.json")
        # the finish forecast's groups and residuals, as the graph's metadata carries them
        mlflow.log_text(reports.calibration["finish_forecast"], "reports/finish_forecast.json")
        mlflow.log_dict(verdict, "reports/gate_verdict.json")
        # What this model knows of the brewery: the categories it learned (the rest are
        # out of vocabulary when served), also in the graph's metadata.
        mlflow.log_dict(
            {k: list(v) for k, v in work.load_preprocessing().vocabularies.items()},
            "reports/vocabularies.json",
        )
        if settings.paths.validation_summary.exists():
            mlflow.log_artifact(
                str(settings.paths.validation_summary), artifact_path="reports/validation"
            )
        _log_comparison(work, reports, experiment_id)
        seconds = time.perf_counter() - started
    log.info("MLflow logging took %.2f s", seconds)
    return run, info, seconds


def _test_dataset(work: TrainingWorkdir):
    """The test split as an MLflow dataset (its digest tells runs on the same rows apart
    from runs on others)."""
    import mlflow

    from brewcast.schema import LABEL

    return mlflow.data.from_pandas(
        pd.read_parquet(work.test), source=str(work.test), targets=LABEL, name="test"
    )


def _log_comparison(work: TrainingWorkdir, reports: _RunReports, experiment_id: str) -> None:
    """In the active (parent) run: the test set as an input, the per-row predictions of
    every model, the candidate-vs-champion table, and a child run per model family and per
    baseline with the same metric keys, so MLflow's compare page puts them side by side."""
    import mlflow

    evaluation, champion = reports.evaluation, reports.champion
    dataset = _test_dataset(work)
    mlflow.log_input(dataset, context="test")
    predictions = pd.read_parquet(work.predictions)
    mlflow.log_text(predictions.to_csv(index=False), "predictions/test_predictions.csv")
    if champion["test"] is not None:
        rows = []
        for metric in ("auc", "log_loss", "brier", "ece", "bias"):
            row = {
                "metric": metric,
                "candidate": evaluation["test"][metric],
                "champion": champion["test"][metric],
                "difference": evaluation["test"][metric] - champion["test"][metric],
            }
            paired = champion["comparison"].get(metric)
            if paired is not None:
                row.update(difference_low=paired["low"], difference_high=paired["high"])
            rows.append(row)
        mlflow.log_table(pd.DataFrame(rows), "reports/candidate_vs_champion.json")
    fitted = reports.fit["families"]
    for name, model in evaluation["models"].items():
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{name} ({model['role']})", nested=True
        ):
            mlflow.set_tags({"role": model["role"], "kind": model["kind"], "model": name})
            if name in fitted:
                mlflow.log_params(fitted[name]["params"])
            mlflow.log_input(dataset, context="test")
            mlflow.log_metrics(
                {
                    k: v
                    for k, v in {
                        **headline_metrics(model["headline"]),
                        **interval_metrics({"overall": model.get("intervals") or {}}),
                    }.items()
                    if v is not None and np.isfinite(v)
                }
            )
            if name in evaluation["comparisons"]:
                difference = evaluation["comparisons"][name]
                mlflow.log_metrics(
                    {
                        f"vs_candidate/log_loss_difference_{k}": v
                        for k, v in difference.items()
                        if np.isfinite(v)
                    }
                )
            if name in evaluation.get("hours_comparisons", {}):
                difference = evaluation["hours_comparisons"][name]
                mlflow.log_metrics(
                    {
                        f"vs_candidate/hours_mae_difference_{k}": v
                        for k, v in difference.items()
                        if np.isfinite(v)
                    }
                )
            # one name in every child: MLflow's compare page shows the diagrams side by side
            plot = work.plots / "models" / name / "calibration.png"
            if plot.exists():
                mlflow.log_artifact(str(plot), artifact_path="plots")


def register(settings: Settings, work: TrainingWorkdir) -> RegisteredModel:
    """Log the run and register the graph as ``challenger``, tagged with its verdict."""
    from mlflow import MlflowClient

    configure(settings.tracking_uri)
    reports = _RunReports.read(work)
    run, info, seconds = _log_run(settings, work, reports)
    version = str(info.registered_model_version)
    set_alias(settings.model_name, CHALLENGER, version)
    cal, evaluation, verdict = reports.calibration, reports.evaluation, reports.verdict
    threshold = cal["threshold"]["threshold"]
    client = MlflowClient()
    for key, value in {
        "threshold": threshold,
        "model_family": evaluation["candidate"],
        GATE_TAG: GATE_PASSED if verdict["passed"] else GATE_REJECTED,
        "data_snapshot_id": reports.data["data_snapshot_id"],
        "calibration": json.dumps(cal["calibration"]),
    }.items():
        client.set_model_version_tag(settings.model_name, version, key, str(value))
    outcome = "passed" if verdict["passed"] else "rejected: " + "; ".join(verdict["reasons"])
    client.update_model_version(
        settings.model_name,
        version,
        description=(
            f"{evaluation['candidate']} family; "
            f"threshold {threshold:.4f} ({cal['threshold']['policy']}); test AUC "
            f"{evaluation['test']['auc']:.4f}, ECE {evaluation['test']['ece']:.4f}; "
            f"gate {outcome}"
        ),
    )
    result = RegisteredModel(
        run.info.run_id, version, verdict["passed"], verdict, info.model_uri, round(seconds, 3)
    )
    work.write_json(work.registered, asdict(result))
    return result


def promote(settings: Settings, work: TrainingWorkdir) -> dict:
    """Move ``champion`` to this run's version if its gate passed and the champion is still
    the one it was compared with; the champion's training data becomes the validation
    reference. Writes and returns ``promoted.json``."""
    from validation.reference import save_reference

    configure(settings.tracking_uri)
    verdict, registered = work.read_json(work.verdict), work.read_json(work.registered)
    version = registered["version"]
    current = version_by_alias(settings.model_name, CHAMPION)
    current_version = None if current is None else str(current.version)
    result = {"version": version, "promoted": False, "champion_before": current_version}
    if verdict["passed"]:
        if current_version != verdict["champion_version"]:
            raise ChampionMovedError(
                f"the champion is version {current_version or 'none'} now, but version "
                f"{version} was gated against {verdict['champion_version'] or 'no champion'}: "
                "nothing promoted; re-run from evaluate"
            )
        set_alias(settings.model_name, CHAMPION, version)
        from mlflow import MlflowClient

        MlflowClient().set_model_version_tag(settings.model_name, version, "promoted", "true")
        train = pd.read_parquet(work.train)
        train_probability, _ = score_model(work.model.read_bytes(), train)
        save_reference(settings, train, train_probability)
        result["promoted"] = True
    else:
        result["reasons"] = verdict["reasons"]
    work.write_json(work.promoted, result)
    return result


#: The steps of this module, in order.
STEPS = {"gate": gate, "register": register, "promote": promote}

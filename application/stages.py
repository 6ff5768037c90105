"""The stage API: one function per pipeline stage, each returning a :class:`Manifest`.

The command line, the Airflow tasks, the demo, the benchmarks and the test fixtures all call
these functions, so each flow (the features flow above all) exists once. A stage reads its
settings from the environment unless given them, works on files under ``BREWCAST_HOME``,
and says what it read, what it wrote, how much, and what went wrong short of failing. Each
is idempotent for its inputs: re-running it rewrites the same files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from application.orchestration import TRAINING_STEPS
from brewcast import lake
from brewcast.schema import BATCHES, LABEL, READINGS
from brewcast.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Manifest:
    """What one stage did: XCom carries it between Airflow tasks (never a DataFrame)."""

    stage: str
    read: list[str] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The training run's work directory, for the training steps.
    workdir: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON types only (what XCom carries)."""
        return json.loads(json.dumps(asdict(self), default=str))


def json_safe(value):
    """``value`` as strict JSON would have it: NaN and infinities (a metric of a model that
    forecasts no hours, an interval without enough batches) become None; Airflow's XCom
    refuses them otherwise."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json_safe(json.loads(json.dumps(value, default=str)))


def _paths(paths) -> list[str]:
    return [str(p) for p in paths]


# ------------------------------------------------------------------------------------------
# data: ingest, validate, features
# ------------------------------------------------------------------------------------------


def ingest(
    settings: Settings | None = None,
    source: str | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    config=None,
) -> Manifest:
    """Pull ``[start, end)`` from ``source`` (default ``BREWCAST_SOURCE``), or the pending
    drop files, into the lake's raw stage. ``config``: a simulated world other than the
    settings' one."""
    from ingest import sources

    settings = settings or get_settings()
    report = sources.ingest(settings, source or settings.source, start, end, config)
    log.info(report.summary())
    return Manifest(
        "ingest",
        read=[report.source, *report.accepted],
        wrote=_paths(report.files_written),
        counts={
            "batch_rows": report.batches,
            "reading_rows": report.readings,
            "files_written": len(report.files_written),
            "files_rejected": len(report.rejected),
            "files_ignored": len(report.ignored),
            "files_unchanged": len(report.unchanged),
        },
        warnings=[f"rejected {name}: {why}" for name, why in report.rejected.items()]
        + [f"ignored {name}: {why}" for name, why in report.ignored.items()],
        details={"source": report.source, "summary": report.summary(), **report.notes},
    )


def _validation_manifest(stage: str, run) -> Manifest:
    outcomes, totals, failures = run.outcomes, run.totals(), run.failure_counts()
    return Manifest(
        stage,
        read=sorted({o.source for o in outcomes}),
        wrote=sorted(
            {f for o in outcomes for f in (o.published_file, o.quarantine_file) if f is not None}
        ),
        counts={
            "rows_in": sum(t["rows_in"] for t in totals.values()),
            "rows_passed": sum(t["published"] for t in totals.values()),
            "rows_quarantined": sum(t["quarantined"] for t in totals.values()),
        },
        warnings=[f"{rule}: {n}" for rule, n in failures.items()],
        details={
            "success": run.success,
            "totals": totals,
            "failures": failures,
            "new_values": run.new_values(),
            "data_docs": run.data_docs,
            "still_quarantined": run.still_quarantined,
            "summary": run.summary(),
        },
    )


def validate(
    settings: Settings | None = None, everything: bool = False, path: Path | None = None
) -> Manifest:
    """Validate every new raw partition (every one with ``everything``, or the one file
    ``path``): good rows to validated/, the rest quarantined with reasons."""
    from validation.validate import validate_file, validate_lake

    settings = settings or get_settings()
    run = validate_file(settings, path) if path is not None else validate_lake(settings, everything)
    log.info(run.summary())
    return _validation_manifest("validate", run)


def build_features(settings: Settings | None = None, stage: str = "validated") -> Manifest:
    """Labels for the batches that finished, as validated snapshots in features/.

    The one features flow: read the ``stage`` tables, derive outcomes, build labelled
    snapshots, validate and publish them, and remember which batches were labelled.
    ``counts["new_labelled_batches"]`` counts batches labelled since the last build: the
    training DAG is triggered (through the asset) only when it is positive.
    """
    from models.dataset import (
        KNOWN_OUTCOMES,
        LabelRules,
        build_snapshots,
        derive_outcomes,
        split_by_batch_time,
    )
    from validation.validate import publish_features

    settings = settings or get_settings()
    paths = settings.paths
    batches = lake.read_table(paths.lake, stage, BATCHES)
    readings = lake.read_table(paths.lake, stage, READINGS)
    if batches.empty:
        hint = "`brewcast validate`" if stage == "validated" else "`brewcast ingest`"
        raise FeaturesError(
            f"no batches in lake stage {stage!r} under {paths.lake}; run {hint} first"
        )
    rules = LabelRules.from_settings(settings)
    outcomes = derive_outcomes(batches, readings, rules)
    snapshots = build_snapshots(batches, readings, rules, outcomes)
    labelled = sorted(outcomes.loc[outcomes["status"].isin(KNOWN_OUTCOMES), "batch_id"])
    state = paths.labelled_batches
    before = set(json.loads(state.read_text())) if state.exists() else set()
    manifest = Manifest(
        "build_features",
        read=[str(lake.table_dir(paths.lake, stage, t)) for t in (BATCHES, READINGS)],
        counts={
            "batches": len(batches),
            "labelled_batches": len(labelled),
            "new_labelled_batches": len(set(labelled) - before),
            "snapshots": len(snapshots),
        },
        details={"outcomes": outcomes["status"].value_counts().to_dict()},
    )
    if len(snapshots):
        published = _validation_manifest("build_features", publish_features(settings, snapshots))
        manifest.wrote = published.wrote
        manifest.warnings = published.warnings
        manifest.counts.update(
            features_published=published.counts["rows_passed"],
            features_quarantined=published.counts["rows_quarantined"],
        )
        manifest.details.update(
            validation_success=published.details["success"],
            validation_summary=published.details["summary"],
            positive_rate=float(snapshots[LABEL].mean()),
            splits=split_by_batch_time(snapshots).value_counts().to_dict(),
        )
    lake.write_text(state, json.dumps(labelled))
    return manifest


class FeaturesError(RuntimeError):
    """No data to build features from; the message says which command to run first."""


# ------------------------------------------------------------------------------------------
# training: prepare -> fit -> calibrate -> export -> evaluate -> gate -> register -> promote
# ------------------------------------------------------------------------------------------


def training_workdir(run_id: str, settings: Settings | None = None) -> str:
    """One work directory per training run (re-running a step reuses it)."""
    return str((settings or get_settings()).paths.training_run(run_id))


def train_step(
    step: str, workdir: str | Path, settings: Settings | None = None, progress: bool = False
) -> Manifest:
    """Run one training step in ``workdir``; what it read, wrote and found."""
    from models import pipeline, promotion
    from models.workdir import TrainingWorkdir

    functions = {**pipeline.STEPS, **promotion.STEPS}
    if step not in functions:
        raise ValueError(f"unknown training step {step!r}; one of {tuple(TRAINING_STEPS)}")
    settings = settings or get_settings()
    work = TrainingWorkdir(workdir)
    started = time.perf_counter()
    kwargs = {"progress": progress} if step == "fit" else {}
    result = functions[step](settings, work, **kwargs)
    details = asdict(result) if hasattr(result, "__dataclass_fields__") else result
    reads, writes = work.files(step)
    manifest = Manifest(
        step,
        read=_paths(reads),
        wrote=_paths(writes),
        counts={"seconds": round(time.perf_counter() - started)},
        details=json_safe(details),
        workdir=str(work.root),
    )
    if step == "gate" and not details["passed"]:
        manifest.warnings = [f"gate: {reason}" for reason in details["reasons"]]
    return manifest


def train(
    settings: Settings | None = None,
    workdir: Path | None = None,
    progress: bool = True,
    steps: Iterable[str] = tuple(TRAINING_STEPS),
) -> Manifest:
    """The training ``steps`` (all of them by default) in order, in one process; one
    manifest for them all, with each step's details under its name."""
    settings = settings or get_settings()
    if workdir is None:
        workdir = settings.paths.training_run(pd.Timestamp.now("UTC").strftime("%Y%m%dT%H%M%S"))
    done: dict[str, Manifest] = {}
    for step in steps:
        log.info("training step %s ...", step)
        done[step] = train_step(step, workdir, settings, progress)
        log.info("training step %s done in %d s", step, done[step].counts["seconds"])
    first = next(iter(done.values()))
    return Manifest(
        "train",
        read=first.read,
        wrote=[f for m in done.values() for f in m.wrote],
        counts={"seconds": sum(m.counts["seconds"] for m in done.values())},
        warnings=[w for m in done.values() for w in m.warnings],
        details={name: m.details for name, m in done.items()},
        workdir=str(workdir),
    )


#: The steps whose output a trained model is: what a re-training for verification runs.
MODEL_STEPS = ("prepare", "fit", "calibrate", "export")


class VerificationError(RuntimeError):
    """A run cannot be re-trained as it was (its fingerprint or its features are gone)."""


def verify_training(
    run_id: str, settings: Settings | None = None, workdir: Path | None = None
) -> Manifest:
    """Re-train MLflow run ``run_id`` from the features it was trained on, with its
    recorded training settings, and compare the graphs' hashes with its fingerprint
    (``models.reproducible``). ``details["reproduces"]`` says whether every family's graph
    is bit-identical; ``warnings`` list the differences and what may explain them."""
    import tempfile

    import mlflow

    from brewcast.registry import configure
    from models.reproducible import compare

    settings = settings or get_settings()
    configure(settings.tracking_uri)
    try:
        recorded_path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="reports/reproducibility.json",
            dst_path=tempfile.mkdtemp(prefix="brewcast-verify-"),
        )
    except Exception as exc:  # MLflow raises several types for a missing run or file
        raise VerificationError(
            f"run {run_id} has no reports/reproducibility.json in {settings.tracking_uri} "
            f"(a run registered before fingerprints were logged cannot be verified): {exc}"
        ) from exc
    recorded = json.loads(Path(recorded_path).read_text())
    again = settings.model_copy(update=recorded["settings"])
    if workdir is None:
        workdir = settings.paths.training_run(f"verify-{run_id}")
    prepared = train_step("prepare", workdir, again)
    snapshot = prepared.details["data_snapshot_id"]
    if snapshot != recorded["data_snapshot_id"]:
        raise VerificationError(
            f"run {run_id} trained on features snapshot {recorded['data_snapshot_id']}, the "
            f"lake under {settings.paths.lake} now holds {snapshot}: publish those features "
            "again (the same validated data and label settings) to verify it"
        )
    manifest = train(again, workdir, progress=False, steps=MODEL_STEPS[1:])
    retrained = json.loads((Path(workdir) / "reproducibility.json").read_text())
    differences = compare(recorded, retrained)
    return Manifest(
        "verify_training",
        read=prepared.read,
        wrote=prepared.wrote + manifest.wrote,
        counts={"seconds": prepared.counts["seconds"] + manifest.counts["seconds"]},
        warnings=differences,
        details={
            "run_id": run_id,
            "reproduces": not differences,
            "recorded": {k: recorded[k] for k in ("model_sha256", "family_sha256")},
            "retrained": {k: retrained[k] for k in ("model_sha256", "family_sha256")},
        },
        workdir=str(workdir),
    )


# ------------------------------------------------------------------------------------------
# serving and monitoring
# ------------------------------------------------------------------------------------------


def notify_serving(settings: Settings | None = None) -> Manifest:
    """Ask the deployed service to reload the champion now (it also polls on its own)."""
    settings = settings or get_settings()
    manifest = Manifest("notify_serving", details={"notified": False})
    if not settings.serving_url:
        manifest.details["reason"] = (
            "BREWCAST_SERVING_URL not set; the service polls MLflow every "
            "BREWCAST_SERVING_POLL_SECONDS"
        )
        return manifest
    from application import http

    headers = {"X-API-Key": settings.serving_api_key} if settings.serving_api_key else None
    # A reload is idempotent (it loads the champion, whoever asks how often): retried.
    policy = http.Policy(read=60.0, attempts=3)
    try:
        with http.Server("the BentoML service", settings.serving_url, policy, headers) as server:
            response = server.post("/reload", idempotent=True, step="notify_serving")
            manifest.details = {"notified": True, **response.json()}
    except http.ServerCallError as exc:  # the service may be down; it polls when it is back
        log.warning("%s", exc)
        manifest.details["reason"] = str(exc)
        manifest.warnings.append(f"service not reached: {exc}")
    return manifest


def monitor(settings: Settings | None = None) -> Manifest:
    """Join the prediction log with labels; metrics, alerts and drift; report and log."""
    from monitoring.report import run_monitoring

    settings = settings or get_settings()
    summary = run_monitoring(settings)
    return Manifest(
        "monitor",
        read=[settings.prediction_log, str(settings.paths.lake / "validated")],
        wrote=[summary["report"]],
        counts={
            "labelled_predictions": summary["labelled_predictions"],
            "pending_predictions": summary["pending_predictions"],
            "alerts": len(summary["alerts"]),
            "drift_alarms": len(summary["drift_alarms"]),
        },
        details=summary,
    )

"""The units of work the Airflow DAGs run, importable and testable without Airflow.

Each job takes plain values (times, paths), reads its settings from the environment, works
on files, and returns a small JSON-able summary (what XCom carries: never a DataFrame). Each
is idempotent for its inputs: re-running an interval rewrites the same files.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import pandas as pd

from brewcast.settings import Settings, get_settings

log = logging.getLogger(__name__)

TRAINING_STAGES = ("prepare", "fit", "calibrate", "export", "evaluate")


def ingest(start: str, end: str, settings: Settings | None = None) -> dict:
    """Pull ``[start, end)`` from the configured source (or the drop folder) into raw/."""
    from ingest.sources import ingest_drop_folder, ingest_interval

    settings = settings or get_settings()
    if settings.source == "drop":
        report = ingest_drop_folder(settings)
    else:
        report = ingest_interval(settings, settings.source, pd.Timestamp(start), pd.Timestamp(end))
    log.info(report.summary())
    return {
        "source": report.source,
        "batches": report.batches,
        "readings": report.readings,
        "files": len(report.files_written),
        "rejected_files": sorted(report.rejected),
    }


def validate(settings: Settings | None = None) -> dict:
    """Validate every new raw partition; good rows to validated/, the rest quarantined."""
    from validation.validate import validate_lake

    settings = settings or get_settings()
    run = validate_lake(settings)
    log.info(run.summary())
    return {
        "success": run.success,
        "totals": run.totals(),
        "failures": run.failure_counts(),
        "data_docs": run.data_docs,
    }


def build_features(settings: Settings | None = None) -> dict:
    """Labels for batches that finished, as validated snapshots in features/.

    ``new_labelled_batches`` counts batches labelled since the last build: the training DAG
    is triggered (through the asset) only when it is positive.
    """
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS
    from models.dataset import LabelRules, build_snapshots, derive_outcomes
    from validation.validate import publish_features

    settings = settings or get_settings()
    batches = lake.read_table(settings.lake_dir, "validated", BATCHES)
    readings = lake.read_table(settings.lake_dir, "validated", READINGS)
    rules = LabelRules.from_settings(settings)
    outcomes = derive_outcomes(batches, readings, rules)
    labelled = sorted(outcomes.loc[outcomes["status"] != "running", "batch_id"])
    state = settings.home / "features" / "labelled_batches.json"
    before = set(json.loads(state.read_text())) if state.exists() else set()
    snapshots = build_snapshots(batches, readings, rules, outcomes)
    summary = {
        "batches": len(batches),
        "labelled_batches": len(labelled),
        "new_labelled_batches": len(set(labelled) - before),
        "snapshots": len(snapshots),
    }
    if len(snapshots):
        run = publish_features(settings, snapshots)
        summary.update(
            features_published=sum(o.rows_published for o in run.outcomes),
            features_quarantined=sum(o.rows_quarantined for o in run.outcomes),
            validation_success=run.success,
        )
    lake.write_text(state, json.dumps(labelled))
    return summary


def training_workdir(run_id: str, settings: Settings | None = None) -> str:
    """One work directory per DAG run (re-running a task reuses it)."""
    settings = settings or get_settings()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return str((settings.home / "training" / safe).resolve())


def train_stage(stage: str, workdir: str, settings: Settings | None = None) -> dict:
    """Run one training stage (``models.pipeline``) in ``workdir``; its summary."""
    from models import pipeline

    if stage not in TRAINING_STAGES:
        raise ValueError(f"unknown training stage {stage!r}; one of {TRAINING_STAGES}")
    settings = settings or get_settings()
    function = getattr(pipeline, stage)
    kwargs = {"progress": False} if stage == "fit" else {}
    result = function(settings, Path(workdir), **kwargs)
    return json.loads(json.dumps(result, default=str))


def register(workdir: str, settings: Settings | None = None) -> dict:
    """Log to MLflow, register as challenger, gate, maybe promote to champion."""
    from dataclasses import asdict

    from models import pipeline

    settings = settings or get_settings()
    return asdict(pipeline.register(settings, Path(workdir)))


def notify_serving(settings: Settings | None = None) -> dict:
    """Ask the deployed service to reload the champion now (it also polls on its own)."""
    settings = settings or get_settings()
    if not settings.serving_url:
        return {
            "notified": False,
            "reason": "BREWCAST_SERVING_URL not set; the service "
            "polls MLflow every BREWCAST_SERVING_POLL_SECONDS",
        }
    request = urllib.request.Request(
        f"{settings.serving_url.rstrip('/')}/reload", data=b"", method="POST"
    )
    if settings.serving_api_key:
        request.add_header("X-API-Key", settings.serving_api_key)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return {"notified": True, **json.loads(response.read())}
    except OSError as exc:  # the service may be down; it will poll when it is back
        log.warning("could not reach the service at %s: %s", settings.serving_url, exc)
        return {"notified": False, "reason": str(exc)}


def monitor(settings: Settings | None = None) -> dict:
    """Join the prediction log with labels; metrics, alerts and drift; report and log."""
    from monitoring.report import run_monitoring

    settings = settings or get_settings()
    return run_monitoring(settings)

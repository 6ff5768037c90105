"""What the DAG files share: assets (URIs in :mod:`brewcast.assets`) and task defaults.

Imports nothing heavy, so parsing a DAG file stays cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from brewcast.assets import ASSETS

START = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_ARGS = {
    "owner": "brewcast",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
}


def asset(key: str):
    """The Airflow asset ``key`` (imports the Airflow SDK only when a DAG asks)."""
    from airflow.sdk import Asset

    uri, name = ASSETS[key]
    return Asset(uri=uri, name=name)


#: The training steps in order, each with its task timeout in minutes (``application.stages``
#: runs them; the training DAG makes one task of each).
TRAINING_STEPS = {
    "prepare": 10,
    "fit": 90,
    "calibrate": 10,
    "export": 15,
    "evaluate": 15,
    "gate": 5,
    "register": 15,
    "promote": 10,
}


def ready_events(events) -> list[dict]:
    """The ready batches of a run of ``fermentation_batch_ready`` (its triggering asset
    events): batch, model version, probability, predicted finish; logged, and returned for
    the next task."""
    import logging

    out = []
    for event in events:
        extra = dict(event.extra or {})
        forecast = extra.get("forecast") or {}
        out.append(
            {
                "batch_id": extra.get("batch_id"),
                "model_version": extra.get("model_version"),
                "probability": forecast.get("probability"),
                "predicted_finish_time": forecast.get("predicted_finish_time"),
            }
        )
        logging.getLogger(__name__).info("batch ready: %s", out[-1])
    return out

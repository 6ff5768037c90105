"""What the DAG files share: asset URIs and task defaults.

Imports nothing heavy, so parsing a DAG file stays cheap. The asset URIs are stable names
for what changed, not file paths.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Asset key -> (URI, name). One definition, used by every DAG that produces or consumes it.
ASSETS = {
    "validated": ("brewcast://lake/validated", "brewcast_validated"),
    "labelled": ("brewcast://lake/features/labelled", "brewcast_labelled_features"),
    "retrain": ("brewcast://monitoring/retrain", "brewcast_retrain_request"),
    "champion": ("brewcast://registry/fermentation-completion/champion", "brewcast_champion"),
}

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

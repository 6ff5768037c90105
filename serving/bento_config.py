"""BentoML's service configuration, one definition for brewcast's service and for the
serving benchmark's BentoML floor (which must be configured exactly alike)."""

from __future__ import annotations

from brewcast.settings import Settings
from serving.prediction_log import COMMIT_TIMEOUT_S


def service_config(settings: Settings) -> dict:
    """Keyword arguments for ``@bentoml.service``."""
    return {
        "workers": settings.serving_workers,
        "threads": settings.serving_api_threads,
        # The timeout bounds every request, its prediction-log commit included (then a 504).
        "traffic": {"timeout": COMMIT_TIMEOUT_S, "max_concurrency": 256},
        "metrics": {"enabled": True},
        "logging": {"access": {"enabled": settings.serving_access_log}},
        # OpenTelemetry skips every URL: with tracing off it still cost ~2% of a request.
        "tracing": {"sample_rate": 0.0, "excluded_urls": [".*"]},
    }

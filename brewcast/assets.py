"""The Airflow asset URIs: stable names for what changed, not file paths. One definition for
the DAGs that produce and consume them (``application.orchestration``) and for the service,
which emits a batch's "ready" event as an asset event. Imports nothing: DAG files parse it.
"""

#: Asset key -> (URI, name).
ASSETS = {
    "validated": ("brewcast://lake/validated", "brewcast_validated"),
    "labelled": ("brewcast://lake/features/labelled", "brewcast_labelled_features"),
    "retrain": ("brewcast://monitoring/retrain", "brewcast_retrain_request"),
    "champion": ("brewcast://registry/fermentation-completion/champion", "brewcast_champion"),
    "ready": ("brewcast://cellar/batch-ready", "brewcast_batch_ready"),
}

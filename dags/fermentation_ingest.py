"""### fermentation_ingest

Hourly: pull the data interval from the configured source (`BREWCAST_SOURCE`: the
simulator, the drop folder or a Brewery Pi database) into the raw lake, validate it with
Great Expectations (good rows to `validated/`, bad ones to `quarantine/` with reasons), then
derive labels for batches that finished and publish validated snapshots to `features/`.

Emits `brewcast://lake/validated` after validation and `brewcast://lake/features/labelled`
when new batches were labelled (which triggers `fermentation_training`). Every task is
idempotent for its interval; logic lives in `application.stages`.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.timetables.interval import CronDataIntervalTimetable

from application.orchestration import DEFAULT_ARGS, START, asset

VALIDATED = asset("validated")
LABELLED = asset("labelled")


@dag(
    dag_id="fermentation_ingest",
    # Interval semantics (not Airflow 3's default trigger semantics): each run owns the hour
    # [data_interval_start, data_interval_end) and re-running it rewrites the same files.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["brewcast", "ingest", "validation"],
    doc_md=__doc__,
)
def fermentation_ingest():
    @task
    def ingest(data_interval_start=None, data_interval_end=None) -> dict:
        from application import stages

        return stages.ingest(
            start=data_interval_start.isoformat(), end=data_interval_end.isoformat()
        ).to_dict()

    @task(outlets=[VALIDATED])
    def validate(ingested: dict) -> dict:
        from application import stages

        return stages.validate().to_dict()

    @task(outlets=[LABELLED])
    def derive_labels(validated: dict, **context) -> dict:
        from application import stages

        try:
            manifest = stages.build_features()
        except stages.FeaturesError as exc:  # no batch validated yet: nothing to label
            raise AirflowSkipException(f"nothing validated yet: {exc}") from exc
        if not manifest.counts["new_labelled_batches"]:
            raise AirflowSkipException("no batch finished since the last run")
        context["outlet_events"][LABELLED].extra = manifest.counts
        return manifest.to_dict()

    derive_labels(validate(ingest()))


fermentation_ingest()

"""### fermentation_training

Weekly, or as soon as new labelled data (`brewcast://lake/features/labelled`) or a
retraining request from monitoring (`brewcast://monitoring/retrain`) arrives:

prepare (split, preprocessing) -> fit (the Keras network, the boosted challenger, the
baselines) -> calibrate (+ threshold; the family with the lowest validation log loss is the
candidate) -> export (ONNX + parity, every family) -> evaluate (pre-finish rows, bootstrap
intervals, slices, plots, the champion scored on the same rows) -> gate (the verdict) ->
register (a parent MLflow run, a child run per family and baseline, version as
`challenger`) -> promote (`champion`, only through the gate) -> notify the service to reload.

The gate fails closed: a champion that exists but cannot be scored fails `evaluate`, naming
the version and the cause, and nothing is promoted. The steps hand each other files in one
work directory per DAG run; each task's XCom is its manifest (what it read and wrote).
Logic lives in `models.pipeline` and `models.promotion`, via `application.stages`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from application.orchestration import DEFAULT_ARGS, START, TRAINING_STEPS, asset

LABELLED = asset("labelled")
RETRAIN = asset("retrain")
CHAMPION = asset("champion")


@dag(
    dag_id="fermentation_training",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"),
        assets=(LABELLED | RETRAIN),
    ),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=["brewcast", "training", "mlflow"],
    doc_md=__doc__,
)
def fermentation_training():
    @task
    def workdir(run_id=None) -> dict:
        from application import stages

        return {"workdir": stages.training_workdir(run_id)}

    def step(name: str, timeout: timedelta):
        @task(task_id=name, execution_timeout=timeout)
        def run(previous: dict) -> dict:
            from application import stages
            from models.pipeline import NoTrainingDataError

            try:
                return stages.train_step(name, previous["workdir"]).to_dict()
            except NoTrainingDataError as exc:  # e.g. the weekly run before any ingest
                raise AirflowSkipException(str(exc)) from exc

        return run

    @task(outlets=[CHAMPION])
    def notify_serving(promoted: dict, **context) -> dict:
        from application import stages

        details = promoted["details"]
        if not details["promoted"]:
            raise AirflowSkipException(
                f"gate rejected version {details['version']}: {'; '.join(details['reasons'])}"
            )
        context["outlet_events"][CHAMPION].extra = {"version": details["version"]}
        return stages.notify_serving().to_dict()

    manifest = workdir()
    for name, minutes in TRAINING_STEPS.items():
        manifest = step(name, timedelta(minutes=minutes))(manifest)
    notify_serving(manifest)


fermentation_training()

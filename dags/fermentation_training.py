"""### fermentation_training

Weekly, or as soon as new labelled data (`brewcast://lake/features/labelled`) or a
retraining request from monitoring (`brewcast://monitoring/retrain`) arrives:

prepare (split, preprocessing) -> fit (Keras + baselines) -> calibrate (+ threshold) ->
export (ONNX + parity) -> evaluate (slices, plots) -> register (MLflow run, version as
`challenger`, promotion gate -> `champion`) -> notify the service to reload.

The stages hand each other files in one work directory per DAG run (its path is the only
XCom); logic lives in `models.pipeline` via `brewcast.jobs`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from brewcast.orchestration import DEFAULT_ARGS, START, asset

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
    def workdir(run_id=None) -> str:
        from brewcast import jobs

        return jobs.training_workdir(run_id)

    def stage(name: str, timeout: timedelta):
        @task(task_id=name, execution_timeout=timeout)
        def run(path: str) -> str:
            from brewcast import jobs
            from models.pipeline import NoTrainingDataError

            try:
                jobs.train_stage(name, path)
            except NoTrainingDataError as exc:  # e.g. the weekly run before any ingest
                raise AirflowSkipException(str(exc)) from exc
            return path

        return run

    @task(execution_timeout=timedelta(minutes=15))
    def register(path: str) -> dict:
        from brewcast import jobs

        return jobs.register(path)

    @task(outlets=[CHAMPION])
    def notify_serving(registered: dict, **context) -> dict:
        from brewcast import jobs

        if not registered["promoted"]:
            raise AirflowSkipException(
                "gate rejected version {version}: {reasons}".format(
                    version=registered["version"],
                    reasons="; ".join(registered["verdict"]["reasons"]),
                )
            )
        context["outlet_events"][CHAMPION].extra = {"version": registered["version"]}
        return jobs.notify_serving()

    path = workdir()
    for name, minutes in (
        ("prepare", 10),
        ("fit", 90),
        ("calibrate", 10),
        ("export", 15),
        ("evaluate", 15),
    ):
        path = stage(name, timedelta(minutes=minutes))(path)
    notify_serving(register(path))


fermentation_training()

"""### fermentation_batch_ready

An example of a brewery's own DAG acting on brewcast's forecasts: it runs when the service
says a batch is ready, through the asset `brewcast://cellar/batch-ready` (one asset event
per batch and model version; its `extra` is the webhook's JSON: `event_id`, `batch_id`,
`model_version`, `emitted_at` and the `forecast` that caused it). Here it only logs each
event; replace `next_step` with the cellar's next step (free rise, diacetyl rest, crash-cool,
transfer). Created **paused**: unpause it once it does something. The operator's answer
(acknowledge or override) is on the cellar board, `/board`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from application.orchestration import DEFAULT_ARGS, START, asset

READY = asset("ready")


@dag(
    dag_id="fermentation_batch_ready",
    schedule=[READY],
    start_date=START,
    catchup=False,
    is_paused_upon_creation=True,
    default_args=DEFAULT_ARGS,
    tags=["brewcast", "cellar", "example"],
    doc_md=__doc__,
)
def fermentation_batch_ready():
    @task(execution_timeout=timedelta(minutes=5))
    def next_step(**context) -> list[dict]:
        from application.orchestration import ready_events

        return ready_events(context["triggering_asset_events"][READY])

    next_step()


fermentation_batch_ready()

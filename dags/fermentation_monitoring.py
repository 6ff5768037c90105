"""### fermentation_monitoring

Daily: join the served predictions (the prediction log) with the labels that arrived since
(`/feedback`, or batch outcomes derived from validated readings), compute prediction bias,
calibration (ECE, reliability), AUC and precision/recall per window and per slice (brand,
yeast strain, fermenter, season, and pairs where support allows), a CUSUM per slice since
deployment, one alert per root cause, and batch-level feature/prediction drift against the
champion's training batches of the same season. Logs one MLflow run per window
(`brewcast-monitoring`), writes `HOME/monitoring/report.html` and `summary.json`, alerts to
the log (and `BREWCAST_MONITOR_WEBHOOK_URL`), and emits `brewcast://monitoring/retrain`
when an alarm fires, which triggers `fermentation_training`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from application.orchestration import DEFAULT_ARGS, START, asset

RETRAIN = asset("retrain")


@dag(
    dag_id="fermentation_monitoring",
    schedule="@daily",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["brewcast", "monitoring"],
    doc_md=__doc__,
)
def fermentation_monitoring():
    @task(execution_timeout=timedelta(minutes=20))
    def monitor() -> dict:
        from application import stages

        return stages.monitor().details

    @task(outlets=[RETRAIN])
    def request_retraining(summary: dict, **context) -> dict:
        if not summary["retrain"]:
            raise AirflowSkipException("no alarm: the champion stays")
        alerts = summary["alerts"]
        context["outlet_events"][RETRAIN].extra = {
            "alerts": len(alerts),
            "slices": sorted({f"{a['slice']}={a['value']}" for a in alerts}),
        }
        return {"alerts": len(alerts)}

    request_retraining(monitor())


fermentation_monitoring()

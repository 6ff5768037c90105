"""Airflow-side overhead: DAG folder parse time, and task start latency under
`brewcast airflow standalone` (SQLite, LocalExecutor), from the metadata DB's own times.

Target: <= 2 s of Airflow overhead per task (queued -> running)."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from application.processes import ServerProcess, airflow_env, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout

PARSE = (
    "import time; t = time.perf_counter(); "
    "from airflow.dag_processing.dagbag import DagBag; "
    "b = DagBag(dag_folder='{dags}'); "
    "assert not b.import_errors, b.import_errors; print(time.perf_counter() - t)"
)


def parse_seconds(env: dict, repeats: int = 3) -> list[float]:
    out = []
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, "-c", PARSE.format(dags=PROJECT_ROOT / "dags")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(float(result.stdout.strip().splitlines()[-1]))
    return out


def run(runs: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**__import__("os").environ, **airflow_env(Path(home))}
        parse = parse_seconds(env)
        port = free_port()
        brewcast = str(Path(sys.executable).with_name("brewcast"))
        server = ServerProcess(
            [brewcast, "airflow", "--port", str(port), "standalone"],
            f"http://127.0.0.1:{port}/api/v2/monitor/health",
            Path(home) / "standalone.log",
            {"BREWCAST_HOME": home},
        )
        started = time.perf_counter()
        server.start(timeout=300)
        startup = time.perf_counter() - started
        airflow = str(Path(sys.executable).with_name("airflow"))
        db = Path(home) / "airflow" / "airflow.db"
        try:
            time.sleep(10)  # first parse by the dag-processor
            for _ in range(runs):
                subprocess.run(
                    [airflow, "dags", "trigger", "fermentation_monitoring"],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                time.sleep(2)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with sqlite3.connect(db) as conn:
                    done = conn.execute(
                        "select count(*) from dag_run where dag_id="
                        "'fermentation_monitoring' and state in "
                        "('success','failed')"
                    ).fetchone()[0]
                if done >= runs:
                    break
                time.sleep(2)
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "select task_id, (julianday(start_date) - julianday(queued_dttm)) * 86400, "
                    "(julianday(end_date) - julianday(start_date)) * 86400 from task_instance "
                    "where dag_id='fermentation_monitoring' and start_date is not null and "
                    "queued_dttm is not null and end_date is not null"
                ).fetchall()
        finally:
            server.stop()
    latency = [r[1] for r in rows]
    return {
        "parse_seconds_median": statistics.median(parse),
        "parse_seconds": parse,
        "standalone_startup_seconds": startup,
        "task_instances": len(rows),
        "queued_to_running_median_s": statistics.median(latency) if latency else None,
        "queued_to_running_max_s": max(latency) if latency else None,
        "task_runtime_median_s": statistics.median(r[2] for r in rows) if rows else None,
        "target_overhead_per_task_s": 2.0,
    }


def markdown(result: dict) -> str:
    return (
        "| Airflow overhead | value |\n|---|---:|\n"
        f"| DAG folder parse (median of 3) | {result['parse_seconds_median']:.2f} s |\n"
        f"| standalone start-up | {result['standalone_startup_seconds']:.1f} s |\n"
        f"| task queued -> running (median, {result['task_instances']} tasks) | "
        f"{result['queued_to_running_median_s']:.2f} s |\n"
        f"| task queued -> running (max) | {result['queued_to_running_max_s']:.2f} s |\n"
    )


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

"""The whole pipeline at three sizes: simulate -> ingest -> validate -> features -> train
(prepare, fit, calibrate, export, evaluate) -> register, as the Airflow tasks run it.

Measured at about 10k, 100k and 1M readings in one run, each size in a fresh process (so
its peak memory is its own) against one real MLflow server. Reports seconds per stage, the
peak RSS after each stage, each stage's growth exponent (slope of log time vs log readings;
1.0 is linear) and the share of the wall time spent logging to MLflow. Targets: near-linear
growth; 1M readings end to end in <= 2 minutes; MLflow logging <= 5% of the wall time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from application.orchestration import TRAINING_STEPS

READINGS_PER_FERMENTER_DAY = 44.0  # measured: 48 temperature + ~2.5 gravity, less cleaning
SIZES = (10_000, 100_000, 1_000_000)
STAGES = ("simulate", "ingest", "validate", "features", *TRAINING_STEPS)
FERMENTERS = 12


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(target_readings: int) -> dict:
    """One size, in this process, through the stages the DAGs call; MLflow at the URI in
    ``BREWCAST_MLFLOW_TRACKING_URI``."""
    from application import stages
    from brewcast.settings import get_settings
    from ingest.sources import simulated_world, simulation_config

    days = max(5, round(target_readings / (FERMENTERS * READINGS_PER_FERMENTER_DAY)))
    # a history that ends yesterday: validation quarantines readings from the future
    start = pd.Timestamp.now("UTC").normalize() - pd.Timedelta(days=days + 1)
    row: dict = {"target_readings": target_readings, "days": days}
    with tempfile.TemporaryDirectory() as home:
        settings = get_settings(
            home=Path(home),
            simulation_start=f"{start:%Y-%m-%d}",
            simulation_days=days,
            simulation_fermenters=FERMENTERS,
            seed=1,
            min_split_batches=3,  # 10k readings is ~20 batches: 3 per split, not 5
            experiment=f"benchmark-{target_readings}",
            model_name=f"benchmark-{target_readings}",
        )
        config = simulation_config(settings)
        workdir = stages.training_workdir("benchmark", settings)
        steps = {
            "simulate": lambda: simulated_world(config),  # cached: ingest reads this world
            "ingest": lambda: stages.ingest(settings, "simulator", config.start, config.end),
            "validate": lambda: stages.validate(settings),
            "features": lambda: stages.build_features(settings),
            **{
                step: (lambda step=step: stages.train_step(step, workdir, settings))
                for step in TRAINING_STEPS
            },
        }
        outputs = {}
        for stage, step in steps.items():
            started = time.perf_counter()
            outputs[stage] = step()
            row[f"{stage}_s"] = round(time.perf_counter() - started, 3)
            row[f"{stage}_peak_rss_mib"] = _peak_rss_mib()
            print(f"  {stage}: {row[f'{stage}_s']} s", file=sys.stderr, flush=True)
    row["readings"] = outputs["ingest"].counts["reading_rows"]
    row["snapshots"] = outputs["features"].counts["snapshots"]
    totals = outputs["validate"].details["totals"]
    row["quarantined_readings"] = totals["readings"]["quarantined"]
    row["epochs_run"] = outputs["fit"].details["epochs_run"]
    row["total_s"] = round(sum(row[f"{s}_s"] for s in STAGES), 3)
    row["mlflow_logging_s"] = outputs["register"].details["mlflow_logging_seconds"]
    row["mlflow_share"] = round(row["mlflow_logging_s"] / row["total_s"], 4)
    row["register_share"] = round(row["register_s"] / row["total_s"], 4)
    row["peak_rss_mib"] = _peak_rss_mib()
    row["promoted"] = outputs["promote"].details["promoted"]
    return row


def run() -> dict:
    from application.processes import MlflowServer

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        server = MlflowServer(f"sqlite:///{scratch}/mlflow.db", Path(scratch) / "artifacts")
        with server:
            env = {**os.environ, "BREWCAST_MLFLOW_TRACKING_URI": server.url}
            for size in SIZES:  # a fresh process per size: peak memory is that size's own
                print(f"pipeline: {size:,} readings ...", flush=True)
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.pipeline", str(size)],
                    stdout=subprocess.PIPE,
                    text=True,
                    check=True,
                    env=env,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    n = np.log([r["readings"] for r in rows])
    exponents = {
        s: round(float(np.polyfit(n, np.log([r[f"{s}_s"] for r in rows]), 1)[0]), 2)
        for s in (*STAGES, "total")
    }
    biggest = rows[-1]
    return {
        "rows": rows,
        "growth_exponent": exponents,
        "simulator_readings_per_s": round(biggest["readings"] / biggest["simulate_s"]),
        "targets": {
            "1M readings end to end <= 120 s": biggest["total_s"] <= 120,
            "MLflow logging <= 5% of wall time": all(r["mlflow_share"] <= 0.05 for r in rows),
        },
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    head = "| stage | " + " | ".join(f"{r['readings']:,} readings" for r in rows)
    head += " | growth exponent |\n|---|" + "---:|" * (len(rows) + 1) + "\n"
    body = ""
    for stage in (*STAGES, "total"):
        cells = " | ".join(str(r[f"{stage}_s"]) for r in rows)
        body += f"| {stage} s | {cells} | {result['growth_exponent'][stage]} |\n"
    for label, key in (
        ("snapshots", "snapshots"),
        ("epochs run", "epochs_run"),
        ("MLflow logging s", "mlflow_logging_s"),
        ("MLflow logging share", "mlflow_share"),
        ("register stage share", "register_share"),
        ("peak RSS MiB", "peak_rss_mib"),
    ):
        cells = " | ".join(
            f"{r[key]:.1%}" if key.endswith("share") else f"{r[key]:,}" for r in rows
        )
        body += f"| {label} | {cells} | |\n"
    tail = (
        f"\nSimulator {result['simulator_readings_per_s']:,} readings/s. Targets: "
        + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items())
        + ".\n"
    )
    return head + body + tail


if __name__ == "__main__":
    if len(sys.argv) > 1:  # one size, in this fresh process (how run() measures each size)
        print(json.dumps(measure(int(sys.argv[1]))))
    else:
        outcome = run()
        print(json.dumps(outcome, indent=2))
        print(markdown(outcome))

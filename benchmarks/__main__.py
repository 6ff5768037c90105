"""Run every benchmark and write benchmarks/results/latest.{json,md}."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from benchmarks import (
    airflow_overhead,
    board,
    hostile,
    inference,
    monitoring,
    pipeline,
    readings,
    reproducible,
    serving,
)

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "pipeline": pipeline.run(),
        "inference": inference.run(),
        "serving": serving.run(),
        "readings": readings.run(),
        "hostile": hostile.run(),
        "board": board.run(),
        "monitoring": monitoring.run(),
        "airflow": airflow_overhead.run(),
        "reproducible": reproducible.run(),
    }
    gpu = results["inference"]["gpu"]  # the serving benchmark uses CUDA by itself where it can
    results["gpu"] = gpu if gpu.get("measured") else f"not measured: {gpu['why']}"
    results["gpu_serving_provider"] = results["serving"].get("execution_provider")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    table = "\n".join(
        [
            pipeline.markdown(results["pipeline"]),
            inference.markdown(results["inference"]),
            serving.markdown(results["serving"]),
            readings.markdown(results["readings"]),
            hostile.markdown(results["hostile"]),
            board.markdown(results["board"]),
            monitoring.markdown(results["monitoring"]),
            airflow_overhead.markdown(results["airflow"]),
            reproducible.markdown(results["reproducible"]),
        ]
    )
    (RESULTS / "latest.md").write_text(table)
    print(table)
    print(f"wrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()

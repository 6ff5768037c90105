"""Run every benchmark and write benchmarks/results/latest.{json,md}."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from benchmarks import airflow_overhead, pipeline

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    results = {
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "pipeline": pipeline.run(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    table = (
        pipeline.markdown(results["pipeline"])
        + "\n"
        + airflow_overhead.markdown(results["airflow"])
    )
    (RESULTS / "latest.md").write_text(table)
    print(table)
    print(f"wrote {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()

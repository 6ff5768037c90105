"""Data pipeline scaling: simulate -> ingest to the lake -> snapshot features.

Measured at about 10k, 100k and 1M readings in one run; reports seconds per stage, peak
memory (peak RSS of a fresh process per size, imports included) and each stage's growth
exponent (slope of log time vs log readings; 1.0 is linear). Targets: the simulator makes
1M readings in well under a minute; every stage grows near-linearly.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brewcast import lake
from brewcast.schema import BATCHES, READINGS
from brewcast.settings import get_settings
from ingest.simulator import SimulationConfig, simulate
from ingest.sources import ingest_interval
from models.dataset import LabelRules, build_snapshots

READINGS_PER_FERMENTER_DAY = 44.0  # measured: 48 temperature + ~2.5 gravity, less cleaning
SIZES = (10_000, 100_000, 1_000_000)
STAGES = ("simulate", "ingest", "features")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(target_readings: int) -> dict:
    """One size, in this process: seconds per stage and the process's peak RSS."""
    fermenters = 12
    days = max(5.0, target_readings / (fermenters * READINGS_PER_FERMENTER_DAY))
    config = SimulationConfig(days=days, fermenters=fermenters, seed=1)
    row: dict = {"target_readings": target_readings, "days": round(days, 1)}
    with tempfile.TemporaryDirectory() as home:
        settings = get_settings(home=Path(home))
        world, row["simulate_s"] = _timed(lambda: simulate(config))
        _, row["ingest_s"] = _timed(
            lambda: ingest_interval(settings, "simulator", config.start, config.end, config)
        )
        batches = lake.read_table(settings.lake_dir, "raw", BATCHES)
        readings = lake.read_table(settings.lake_dir, "raw", READINGS)
        snaps, row["features_s"] = _timed(lambda: build_snapshots(batches, readings, LabelRules()))
    for stage in STAGES:
        row[f"{stage}_s"] = round(row[f"{stage}_s"], 3)
    row["readings"] = len(world.readings)
    row["snapshots"] = len(snaps)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def run() -> dict:
    rows = []
    for size in SIZES:  # a fresh process per size, so peak memory is that size's own
        print(f"pipeline: {size:,} readings ...", flush=True)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.pipeline", str(size)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    n = np.log([r["readings"] for r in rows])
    exponents = {
        s: round(float(np.polyfit(n, np.log([r[f"{s}_s"] for r in rows]), 1)[0]), 2) for s in STAGES
    }
    biggest = rows[-1]
    return {
        "rows": rows,
        "growth_exponent": exponents,
        "simulator_readings_per_s": round(biggest["readings"] / biggest["simulate_s"]),
    }


def markdown(result: dict) -> str:
    head = "| readings | simulate s | ingest s | features s | snapshots | peak RSS MiB |\n"
    head += "|---:|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['readings']:,} | {r['simulate_s']} | {r['ingest_s']} | "
        f"{r['features_s']} | {r['snapshots']:,} | {r['peak_rss_mib']} |\n"
        for r in result["rows"]
    )
    tail = (
        f"\nGrowth exponents (1.0 = linear): {result['growth_exponent']}; simulator "
        f"{result['simulator_readings_per_s']:,} readings/s.\n"
    )
    return head + body + tail


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]))))

"""Readings in, forecasts out, in process (``python -m benchmarks.readings``): how fast the
service's readings store takes pushes durably, and how long a forecast's snapshot takes to
build from stored readings, against the targets of "Readings in, forecasts out":

* readings stored per second (SQLite WAL, committed): >= 20,000/s in batches of 1,000,
  >= 2,000/s one reading per push;
* one batch with 30 days of 15-minute readings: the snapshot built (readings read + the
  training code) in <= 5 ms at p99 (half the 10 ms forecast budget);
* 500 running batches (7 days of 15-minute readings each): every snapshot built in <= 0.5 s.

Measured on one core of whatever runs it, each number in the same run; no model is scored
(onnxruntime's cost is ``benchmarks.inference``'s).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

TARGETS = {"batched_per_s": 20_000, "single_per_s": 2_000, "p99_ms": 5.0, "batches_500_s": 0.5}
START = datetime(2026, 1, 1, tzinfo=UTC)


def _curve(device: str, days: float) -> list:
    from serving.readings import Push

    rows = []
    for k in range(int(days * 96)):
        at = START + timedelta(minutes=15 * k)
        rows.append((at, "gravity_plato", 12.0 - 9.0 * min(k / (days * 96), 1.0)))
        rows.append((at, "temperature_c", 18.0 + 0.01 * (k % 7)))
    return Push(device, rows)


def run() -> dict:
    from serving.prediction_log import make_engine
    from serving.readings import Push, ReadingsStore, snapshot_record

    now = START + timedelta(days=400)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ReadingsStore(make_engine(f"sqlite:///{Path(tmp) / 'readings.db'}"))
        store.start_batch({"batch_id": "B0", "fermenter": "FV0", "start_time": START})
        store.assign("bench:0", "FV0")
        curve = _curve("bench:0", 30)
        started = time.perf_counter()
        for i in range(0, len(curve.rows), 1000):
            store.store(Push("bench:0", curve.rows[i : i + 1000]), now)
        out["batched_per_s"] = len(curve.rows) / (time.perf_counter() - started)
        single = _curve("bench:single", 2).rows[:2000]
        started = time.perf_counter()
        for row in single:
            store.store(Push("bench:single", [row]), now)
        out["single_per_s"] = len(single) / (time.perf_counter() - started)
        batch = store.batch("B0")
        at = START + timedelta(days=29, hours=12)
        times = []
        for _ in range(200):
            started = time.perf_counter()
            snapshot_record(batch, store.batch_readings("B0", until=at), at)
            times.append(time.perf_counter() - started)
        times.sort()
        out["p50_ms"] = statistics.median(times) * 1e3
        out["p99_ms"] = times[int(0.99 * len(times)) - 1] * 1e3
        for b in range(1, 501):
            store.start_batch({"batch_id": f"R{b}", "fermenter": f"R{b}", "start_time": START})
            store.assign(f"bench:r{b}", f"R{b}")
            store.store(_curve(f"bench:r{b}", 7), now)
        at = START + timedelta(days=6)
        started = time.perf_counter()
        for b in range(1, 501):
            snapshot_record(store.batch(f"R{b}"), store.batch_readings(f"R{b}", until=at), at)
        out["batches_500_s"] = time.perf_counter() - started
    return out


def markdown(result: dict) -> str:
    lines = ["## Readings in, forecasts out", "", "| measure | measured | target | met |"]
    lines.append("|---|---|---|---|")
    for key, target in TARGETS.items():
        value = result[key]
        met = value >= target if key.endswith("per_s") else value <= target
        lines.append(f"| {key} | {value:,.2f} | {target:,} | {'yes' if met else 'no'} |")
    lines.append(f"| p50_ms | {result['p50_ms']:.2f} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()

"""Readings in, forecasts out, in process (``python -m benchmarks.readings``): how fast the
service's readings store takes pushes durably, and how long forecasts from stored readings
take, against the targets of "Readings in, forecasts out":

* readings stored per second (SQLite WAL, committed): >= 20,000/s in batches of 1,000,
  >= 2,000/s one reading per push;
* one batch with 30 days of 15-minute readings: the forecast (the batch's row and revision
  read, its readings from the worker's memory, the snapshot built by the training code,
  scored by onnxruntime) in <= 10 ms at p99, the snapshot's build in <= 5 ms of it;
* 500 running batches (7 days of 15-minute readings each): every forecast in one call in
  <= 0.5 s;
* the cellar board's data for 50 running batches with 30 days of readings each in <= 1 s
  (the page itself is a static file and a few kB of script).

Cold numbers (a worker's first forecast of a batch, which reads its readings from the
database) are reported beside them. Each number in the same run, on one core of whatever
runs it; the HTTP round trip and the prediction log's commit are ``benchmarks.serving``'s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import small_model

TARGETS = {
    "batched_per_s": 20_000,
    "single_per_s": 2_000,
    "snapshot_p99_ms": 5.0,
    "forecast_p99_ms": 10.0,
    "batches_500_s": 0.5,
    "board_50_s": 1.0,
}
START = datetime(2026, 1, 1, tzinfo=UTC)


def _curve(device: str, days: float) -> list:
    from serving.readings import Push

    rows = []
    for k in range(int(days * 96)):
        at = START + timedelta(minutes=15 * k)
        rows.append((at, "gravity_plato", 12.0 - 9.0 * min(k / (days * 96), 1.0)))
        rows.append((at, "temperature_c", 18.0 + 0.01 * (k % 7)))
    return Push(device, rows)


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1e3, times[int(0.99 * len(times)) - 1] * 1e3


def _model(tmp: Path):
    from brewcast.settings import Settings
    from serving.model import served_model

    print("readings: training a model to score with ...", flush=True)
    work = small_model(tmp / "model", seed=6, epochs=5, patience=2, model_families="network")
    return served_model((work / "model.onnx").read_bytes(), "bench", "bench", Settings())


def run() -> dict:
    from serving.prediction_log import make_engine
    from serving.readings import Push, ReadingsStore, score_running, snapshot_records

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
        model = _model(Path(tmp))  # after the stores: training's threads would slow them

        at = START + timedelta(days=29, hours=12)
        cold, build, forecast = [], [], []
        for _ in range(200):
            store.cache = type(store.cache)(store.cache.capacity)  # a worker's first look
            started = time.perf_counter()
            score_running(store, model, store.running(batch_id="B0"), at)
            cold.append(time.perf_counter() - started)
        for _ in range(500):
            started = time.perf_counter()
            running = store.running(batch_id="B0")
            ((gravity, temperature),) = store.series(running)
            snapshot_records([(running[0], gravity, temperature)], at)
            build.append(time.perf_counter() - started)
            started = time.perf_counter()
            score_running(store, model, store.running(batch_id="B0"), at)
            forecast.append(time.perf_counter() - started)
        out["cold_p50_ms"], out["cold_p99_ms"] = _percentiles(cold)
        out["snapshot_p50_ms"], out["snapshot_p99_ms"] = _percentiles(build)
        out["forecast_p50_ms"], out["forecast_p99_ms"] = _percentiles(forecast)

        for b in range(1, 501):
            store.start_batch({"batch_id": f"R{b}", "fermenter": f"R{b}", "start_time": START})
            store.assign(f"bench:r{b}", f"R{b}")
            store.store(_curve(f"bench:r{b}", 7), now)
        store.update_batch("B0", {"end_time": now})
        at = START + timedelta(days=6)
        runs = []
        for _ in range(6):  # the first is cold: every batch's readings read once
            started = time.perf_counter()
            scored = score_running(store, model, store.running(), at)
            runs.append(time.perf_counter() - started)
        assert len(scored) == 500 and all(not isinstance(s, str) for s in scored)
        out["batches_500_cold_s"] = runs[0]
        out["batches_500_s"] = statistics.median(runs[1:])
        out["board_50_s"] = _board(Path(tmp), model, now)
    return out


def _board(tmp: Path, model, now: datetime) -> float:
    """The cellar board's data (``GET /cellar``: running batches, their readings' ages,
    latest forecasts, events) for 50 batches with 30 days of 15-minute readings each, each
    forecast once: the median of 5 builds, warm."""
    from serving.cellar import ForecastBook, board
    from serving.prediction_log import make_engine
    from serving.readings import ReadingsStore, score_running

    engine = make_engine(f"sqlite:///{tmp / 'board.db'}")
    store, book = ReadingsStore(engine), ForecastBook(engine)
    for b in range(50):
        store.start_batch({"batch_id": f"C{b}", "fermenter": f"C{b}", "start_time": START})
        store.assign(f"bench:c{b}", f"C{b}")
        store.store(_curve(f"bench:c{b}", 30), now)
    at = START + timedelta(days=29)
    running = store.running()
    scored = score_running(store, model, running, at)
    book.record(
        [
            {
                "batch_id": b["batch_id"],
                "model_version": "bench",
                "at": at,
                "prediction_id": row["prediction_id"],
                "probability": row["probability"],
                "decision": row["decision"],
                "state": row["state"],
                "features": record,
            }
            for b, (record, row) in zip(running, scored, strict=True)
        ],
        now,
    )
    times = []
    for _ in range(6):
        started = time.perf_counter()
        running = store.running()
        ids = [b["batch_id"] for b in running]
        board(running, store.series(running), book.latest(ids), book.events(), [], now)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def markdown(result: dict) -> str:
    lines = ["## Readings in, forecasts out", "", "| measure | measured | target | met |"]
    lines.append("|---|---|---|---|")
    for key, target in TARGETS.items():
        value = result[key]
        met = value >= target if key.endswith("per_s") else value <= target
        shown = f"{value:,.0f}" if key.endswith("per_s") else f"{value:,.3f}"
        lines.append(f"| {key} | {shown} | {target:,} | {'yes' if met else 'no'} |")
    for key in ("snapshot_p50_ms", "forecast_p50_ms", "cold_p50_ms", "cold_p99_ms"):
        lines.append(f"| {key} | {result[key]:.2f} | | |")
    lines.append(f"| batches_500_cold_s | {result['batches_500_cold_s']:.2f} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()

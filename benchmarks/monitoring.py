"""Monitoring's cost against history (``python -m benchmarks.monitoring``): a daily run after
30, 120 and 365 served days, from scratch and given the previous day's windows (what the
daily DAG does), on a synthetic prediction log of 12 fermenters (a 7-day batch each, a
snapshot every 6 h, labelled by its finish). Target: the daily run's cost flat in history.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

FERMENTERS = 12
START = pd.Timestamp("2026-01-01", tz="UTC")
STRAINS = ("german_lager", "american_ale", "english_ale")


def synthetic_log(days: int, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions as the service logs them and the batches' outcomes, ``days`` served."""
    rng = np.random.default_rng(seed)
    rows, outcomes = [], []
    for fermenter in range(FERMENTERS):
        pitch = START + pd.Timedelta(hours=float(rng.uniform(0, 48)))
        while pitch < START + pd.Timedelta(days=days):
            batch = f"FV{fermenter:02d}-{pitch:%Y%m%d%H}"
            finish = pitch + pd.Timedelta(hours=float(rng.uniform(120, 200)))
            outcomes.append((batch, "finished", finish))
            strain = STRAINS[int(rng.integers(0, 3))]
            for k in range(int((finish - pitch) / pd.Timedelta(hours=6))):
                at = pitch + pd.Timedelta(hours=6 * k)
                left = (finish - at) / pd.Timedelta(hours=1)
                p = float(np.clip(1 / (1 + np.exp((left - 24) / 6)) + rng.normal(0, 0.05), 0, 1))
                rows.append(
                    {
                        "prediction_id": f"{batch}-{k}", "served_at": at, "snapshot_time": at,
                        "model_version": "1", "batch_id": batch, "fermenter": f"FV{fermenter:02d}",
                        "brand": "house", "yeast_strain": strain, "season": "winter",
                        "features": json.dumps({"hours_since_pitch": 6.0 * k}),
                        "probability": p, "decision": p >= 0.8,
                        "hours_remaining": max(left + float(rng.normal(0, 6)), 0.0),
                        "threshold": 0.8, "unknown_categories": "",
                    }
                )  # fmt: skip
            pitch = finish + pd.Timedelta(hours=float(rng.uniform(12, 30)))
    predictions = pd.DataFrame(rows)
    outcomes = pd.DataFrame(outcomes, columns=["batch_id", "status", "finish_time"])
    return predictions, outcomes


def _daily(days: int) -> dict:
    from brewcast.settings import Settings
    from monitoring.monitor import monitor

    settings = Settings()
    labels = pd.DataFrame(
        columns=["prediction_id", "batch_id", "finished_within_horizon", "finished_at"]
    )
    predictions, outcomes = synthetic_log(days + 1)
    at = pd.to_datetime(predictions["snapshot_time"], utc=True)
    yesterday = START + pd.Timedelta(days=days)

    def run_on(day: pd.Timestamp, previous=None):  # what a run on that day sees
        seen = predictions[at <= day], outcomes[outcomes["finish_time"] <= day]
        return monitor(seen[0], labels, seen[1], None, settings, previous)

    today_at = yesterday + pd.Timedelta(days=1)
    previous = run_on(yesterday)
    started = time.perf_counter()
    today = run_on(today_at)
    scratch = time.perf_counter() - started
    started = time.perf_counter()
    incremental = run_on(today_at, previous.windows)
    daily = time.perf_counter() - started
    assert len(incremental.windows) == len(today.windows)
    return {
        "predictions": int((at <= yesterday + pd.Timedelta(days=1)).sum()),
        "windows": int(today.windows["window"].nunique()),
        "from_scratch_s": scratch,
        "daily_s": daily,
        "windows_computed": int(incremental.windows["fresh"].sum()),
    }


def run(history: tuple[int, ...] = (30, 120, 365)) -> dict:
    out = {}
    for days in history:
        print(f"monitoring: {days} served days ...", flush=True)
        out[str(days)] = _daily(days)
    return out


def markdown(result: dict) -> str:
    lines = [
        "| served days | predictions | windows | from scratch | daily (previous windows) | "
        "window rows computed |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for days, r in result.items():
        lines.append(
            f"| {days} | {r['predictions']:,} | {r['windows']} | {r['from_scratch_s']:.2f} s | "
            f"{r['daily_s']:.2f} s | {r['windows_computed']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()

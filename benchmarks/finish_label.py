"""The finish label's invariances, measured: ``python -m benchmarks.finish_label``.

* **cadence**: 200 simulated fermentations (a logistic with a slow conditioning tail and
  0.05 °P of noise) labelled from a probe's readings every 15 minutes and from a hand log's
  one reading a working day at 10 h: the distribution of the difference between their
  finishes (goal: median |difference| <= 12 h);
* **the real Tilt logs** (``tests/fixtures/realdata``, MIT): each log's finish from all its
  readings, from one reading a day, and from the log cut three days after the plateau.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

T0 = pd.Timestamp("2026-03-02 00:00", tz="UTC")  # a Monday
CADENCE_GOAL_HOURS = 12.0


def _finish(hours: np.ndarray, values: np.ndarray, og: float) -> float:
    """Hours from pitch to the labelled finish of one closed log (NaN: none)."""
    from brewcast.schema import BATCHES, READINGS
    from models.dataset import LabelRules, derive_outcomes

    row = dict.fromkeys(BATCHES.names)
    row.update(batch_id="B", original_gravity_plato=og, start_time=T0, end_time=T0)
    readings = pd.DataFrame(
        {
            "batch_id": "B",
            "tag": "gravity_plato",
            "timestamp": T0 + pd.to_timedelta(hours, unit="h"),
            "value": np.round(values, 1),
        }
    )
    outcome = derive_outcomes(
        BATCHES.conform(pd.DataFrame([row]), "bench"),
        READINGS.conform(readings, "bench"),
        LabelRules(),
    ).iloc[0]
    return (
        (outcome.finish_time - T0) / pd.Timedelta(hours=1)
        if outcome.status == "finished"
        else np.nan
    )


def cadence(curves: int = 200, seed: int = 3) -> dict:
    from ingest.simulator import logistic_gravity

    rng = np.random.default_rng(seed)
    t = np.arange(0.0, 24.0 * 21, 0.25)
    stamps = T0 + pd.to_timedelta(t, unit="h")
    hand = np.flatnonzero((stamps.hour == 10) & (stamps.minute == 0) & (stamps.day_of_week < 5))
    differences = []
    for _ in range(curves):
        og, pe = rng.uniform(11, 16), rng.uniform(2.0, 3.5)
        midpoint, slope = rng.uniform(40, 90), rng.uniform(0.04, 0.09)
        tail = rng.uniform(0.0, 0.06) / 24.0 * np.maximum(t - midpoint - 60.0, 0.0)
        values = logistic_gravity(t, og, pe, slope, midpoint, slope * 0.5) - tail
        values = values + rng.normal(0, 0.05, t.size)
        differences.append(_finish(t[hand], values[hand], og) - _finish(t, values, og))
    d = np.asarray(differences)
    return {
        "curves": curves,
        "labelled_both": int(np.isfinite(d).sum()),
        "median_abs_difference_h": float(np.nanmedian(np.abs(d))),
        "p10_p50_p90_difference_h": [float(x) for x in np.nanpercentile(d, [10, 50, 90])],
        "goal_h": CADENCE_GOAL_HOURS,
        "met": bool(np.nanmedian(np.abs(d)) <= CADENCE_GOAL_HOURS),
    }


def real_logs() -> dict:
    from application import stages
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS
    from brewcast.settings import Settings
    from devtools.realdata import MEAD, REALDATA, SAISON
    from models.dataset import LabelRules, derive_outcomes

    out = {}
    rules = LabelRules()
    for name, files in {"saison": SAISON, "mead": MEAD}.items():
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(home=Path(tmp) / "home")
            settings.paths.drop.mkdir(parents=True)
            for file in files:
                (settings.paths.drop / file).write_bytes((REALDATA / file).read_bytes())
            stages.ingest(settings, "drop")
            stages.validate(settings)
            batches = lake.read_table(settings.paths.lake, "validated", BATCHES).head(1)
            readings = lake.read_table(settings.paths.lake, "validated", READINGS)
        gravity = readings[readings["tag"] == "gravity_plato"]
        closed = batches.assign(end_time=gravity["timestamp"].max())
        full = derive_outcomes(closed, gravity, rules).iloc[0]
        stamps = gravity["timestamp"]
        morning = stamps[stamps.dt.hour >= 9].groupby(stamps.dt.normalize()).idxmin()
        daily = derive_outcomes(closed, gravity.loc[morning.to_numpy()], rules).iloc[0]
        cut = gravity[gravity["timestamp"] <= full.finish_latest + pd.Timedelta(days=3)]
        shorter = derive_outcomes(closed.assign(end_time=cut["timestamp"].max()), cut, rules)
        out[name] = {
            "readings": len(gravity),
            "finish": str(full.finish_time),
            "daily_minus_full_h": (daily.finish_time - full.finish_time) / pd.Timedelta(hours=1),
            "cut_3_days_after_plateau_same": bool(shorter.iloc[0].finish_time == full.finish_time),
        }
    return out


def main() -> None:
    result = {"cadence": cadence(), "real_tilt_logs": real_logs()}
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()

"""Model quality against the goals of the "honest model quality" issue, on a simulated world
the tests do not use: ``python -m benchmarks.quality --seed 31 --start 2025-03-01``.

Simulates the world, runs it through the lake and the features stage, trains every step up
to the gate with the default settings, and reports on the test split's pre-finish rows:
every model's headline metrics with their batch-bootstrap intervals, the slices with enough
batches, and each goal met or not:

* the candidate's AUC within 0.005 of the best family's;
* ECE <= 0.02 overall and <= 0.05 in every slice with >= 15 batches;
* |bias| <= 0.01 overall;
* the finish forecast's 80% and 95% intervals: coverage within 3 points of nominal overall
  and within 7 points in every slice with >= 15 batches (slice keys and forecast buckets);
  the median 80% width 48 h before the finish reported against plain split conformal's.

Then the real Tilt logs (``tests/fixtures/realdata``: a saison and a mead) go through the
drop folder, validation and the features code, and the trained model's finish forecast is
scored on their snapshots: two batches, so coverage there is a sanity check, not a rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

GOALS = {
    "auc_gap": 0.005,
    "ece": 0.02,
    "slice_ece": 0.05,
    "slice_batches": 15,
    "bias": 0.01,
    "coverage": 0.03,
    "slice_coverage": 0.07,
}


def coverage_goals(coverage: pd.DataFrame, intervals: dict) -> dict[str, dict]:
    """The finish forecast's goals: overall and worst tested slice, per level."""
    out = {}
    overall = coverage[coverage["slice"] == "all"].iloc[0]
    tested = coverage[
        coverage["gated"].astype(bool)
        & (coverage["batches"] >= GOALS["slice_batches"])
        & (coverage["slice"] != "all")
        & (coverage["rows"] < overall["rows"])
    ]
    for tag in (80, 95):
        value = float(overall[f"coverage_{tag}"])
        out[f"{tag}% coverage overall"] = {
            "value": value,
            "goal": f"{tag / 100:.2f} ± {GOALS['coverage']}",
            "met": abs(value - tag / 100) <= GOALS["coverage"],
        }
        gap = (tested[f"coverage_{tag}"] - tag / 100).abs()
        worst = tested.loc[gap.idxmax()] if len(tested) else None
        out[f"worst slice {tag}% coverage (>= 15 batches)"] = {
            "value": None if worst is None else float(worst[f"coverage_{tag}"]),
            "where": None if worst is None else f"{worst['slice']}={worst['value']}",
            "goal": f"{tag / 100:.2f} ± {GOALS['slice_coverage']}",
            "met": worst is None or float(gap.max()) <= GOALS["slice_coverage"],
        }
    ours = intervals["width_48h_before_finish"]["80"]
    plain = intervals["plain_split_conformal"]["width_48h_before_finish"]["80"]
    out["median 80% width 48 h before finish (h), vs plain split conformal"] = {
        "value": ours,
        "goal": f"<= {plain:.1f} (plain)",
        "met": ours <= plain,
    }
    return out


def real_logs(model_bytes: bytes, home: Path) -> dict:
    """The real Tilt logs' snapshots scored by the trained model: per batch, coverage of
    its finish forecast and the hours MAE."""
    import numpy as np

    from brewcast.contract import META_FINISH_FORECAST, read_metadata
    from brewcast.intervals import FinishForecast
    from brewcast.settings import Settings
    from devtools.realdata import MEAD, SAISON, real_snapshots
    from models.dataset import before_finish
    from models.intervals import actual_hours, covered, forecast_frame
    from models.pipeline import score_model

    snapshots = real_snapshots(Settings(home=home), SAISON + MEAD)
    snapshots = snapshots[before_finish(snapshots)].reset_index(drop=True)
    forecast = FinishForecast.from_json(read_metadata(model_bytes)[META_FINISH_FORECAST])
    _, hours = score_model(model_bytes, snapshots)
    forecasts = forecast_frame(forecast, snapshots, hours)
    target = actual_hours(snapshots)
    out = {}
    for batch, rows in snapshots.groupby("batch_id").indices.items():
        out[str(batch)] = {
            "snapshots": len(rows),
            "hours_mae": float(np.mean(np.abs(hours[rows] - target[rows]))),
            **{
                f"coverage_{round(level * 100)}": float(
                    covered(forecasts, target, level)[rows].mean()
                )
                for level in forecast.levels
            },
            "groups": sorted(set(np.asarray(forecasts.groups, dtype=object)[rows])),
        }
    return out


def goals(evaluation: dict, slices: pd.DataFrame) -> dict[str, dict]:
    """Each goal: the measured value, the goal, and whether it is met."""
    headline = evaluation["headline"]
    families = {n: m for n, m in evaluation["models"].items() if m["kind"] == "family"}
    best_auc = max(m["headline"]["auc"]["value"] for m in families.values())
    gap = best_auc - headline["auc"]["value"]
    # slices of every row (one season in the test split) are the overall numbers again
    wide = slices[
        (slices["batches"] >= GOALS["slice_batches"])
        & (slices["rows"] < evaluation["test"]["rows"])
    ]
    worst = wide.loc[wide["ece"].idxmax()] if len(wide) else None
    return {
        "auc within 0.005 of the best family": {
            "value": gap,
            "goal": GOALS["auc_gap"],
            "met": gap <= GOALS["auc_gap"],
        },
        "ece overall": {
            "value": headline["ece"]["value"],
            "goal": GOALS["ece"],
            "met": headline["ece"]["value"] <= GOALS["ece"],
        },
        "worst slice ece (>= 15 batches)": {
            "value": None if worst is None else float(worst["ece"]),
            "where": None if worst is None else f"{worst['slice']}={worst['value']}",
            "goal": GOALS["slice_ece"],
            "met": worst is None or float(worst["ece"]) <= GOALS["slice_ece"],
        },
        "|bias| overall": {
            "value": abs(headline["bias"]["value"]),
            "goal": GOALS["bias"],
            "met": abs(headline["bias"]["value"]) <= GOALS["bias"],
        },
    }


def run(seed: int, start: str, days: float, fermenters: int) -> dict:
    from application import stages
    from brewcast.settings import Settings
    from ingest.simulator import SimulationConfig
    from models.workdir import TrainingWorkdir

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home / "home")
        world = SimulationConfig(
            start=pd.Timestamp(start, tz="UTC"), days=days, fermenters=fermenters, seed=seed
        )
        print(f"quality: simulating {days:g} days x {fermenters} fermenters, seed {seed}")
        stages.ingest(settings, "simulator", world.start, world.end, world)
        stages.build_features(settings, stage="raw")
        steps = ("prepare", "fit", "calibrate", "export", "evaluate", "gate")
        print("quality: training ...", flush=True)
        details = stages.train(settings, home / "work", progress=False, steps=steps).details
        work = TrainingWorkdir(home / "work")
        evaluation = work.read_json(work.evaluation)
        slices = work.load_slices()
        coverage = work.load_coverage()
        print("quality: the real Tilt logs ...", flush=True)
        real = real_logs(work.model.read_bytes(), home / "realdata")
    intervals = evaluation["intervals"]
    return {
        "world": {"seed": seed, "start": start, "days": days, "fermenters": fermenters},
        "data": {k: v for k, v in details["prepare"].items() if not isinstance(v, dict)},
        "candidate": evaluation["candidate"],
        "validation_log_loss": {
            f: v["validation_after"]["log_loss"]
            for f, v in details["calibrate"]["families"].items()
        },
        "models": {n: m["headline"] for n, m in evaluation["models"].items()},
        "roles": {n: m["role"] for n, m in evaluation["models"].items()},
        "post_finish": evaluation["post_finish"],
        "slices": slices[slices["batches"] >= GOALS["slice_batches"]][
            ["slice", "value", "rows", "batches", "ece", "ece_low", "ece_high", "bias"]
        ].to_dict("records"),
        "gate": {"passed": details["gate"]["passed"], "reasons": details["gate"]["reasons"]},
        "goals": goals(evaluation, slices) | coverage_goals(coverage, intervals),
        "intervals": {
            "overall": intervals["overall"],
            "width_48h_before_finish": intervals["width_48h_before_finish"],
            "plain_split_conformal": intervals["plain_split_conformal"],
            "finish_probabilities": intervals["finish_probabilities"],
            "groups": intervals["groups"],
        },
        "coverage": coverage[
            coverage["gated"].astype(bool) & (coverage["batches"] >= GOALS["slice_batches"])
        ][
            ["slice", "value", "rows", "batches", "coverage_80", "coverage_95", "median_width_80"]
        ].to_dict("records"),
        "real_logs": real,
    }


def markdown(result: dict) -> str:
    world = result["world"]
    lines = [
        f"### Seed {world['seed']}, {world['days']:g} days from {world['start']}, "
        f"{world['fermenters']} fermenters",
        "",
        f"{result['data']['test_batches']} test batches, {result['data']['test_pre_finish_rows']} "
        f"pre-finish test rows ({result['post_finish']['rows']} post-finish rows reported "
        f"apart). Candidate: **{result['candidate']}** (validation log loss "
        + ", ".join(f"{f} {v:.4f}" for f, v in result["validation_log_loss"].items())
        + f"); gate {'passed' if result['gate']['passed'] else 'rejected'}.",
        "",
        "| model | role | AUC | log loss | ECE | bias | hours MAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, headline in result["models"].items():
        cells = [
            f"{h['value']:.4f} ({h['low']:.4f}..{h['high']:.4f})"
            if h["value"] == h["value"]
            else "—"
            for h in (headline[k] for k in ("auc", "log_loss", "ece", "bias", "hours_mae"))
        ]
        lines.append(f"| {name} | {result['roles'][name]} | " + " | ".join(cells) + " |")
    lines += ["", "| goal | measured | goal | met |", "|---|---|---|---|"]
    for name, goal in result["goals"].items():
        value = "—" if goal["value"] is None else f"{goal['value']:.4g}"
        where = f" ({goal['where']})" if goal.get("where") else ""
        lines.append(
            f"| {name} | {value}{where} | {goal['goal']} | {'yes' if goal['met'] else 'no'} |"
        )
    lines += _interval_lines(result)
    return "\n".join(lines) + "\n"


def _interval_lines(result: dict) -> list[str]:
    intervals = result["intervals"]
    overall, plain = intervals["overall"], intervals["plain_split_conformal"]
    horizons = intervals["finish_probabilities"]["horizons"]
    agreement = intervals["finish_probabilities"].get("classifier_agreement", {})
    lines = [
        "",
        "| finish forecast | 80% | 95% |",
        "|---|---|---|",
        "| coverage (95% interval) | "
        + " | ".join(
            f"{overall[f'coverage_{t}']:.3f} ({overall[f'coverage_{t}_low']:.3f}.."
            f"{overall[f'coverage_{t}_high']:.3f})"
            for t in (80, 95)
        )
        + " |",
        "| plain split conformal coverage | "
        + " | ".join(f"{plain[f'coverage_{t}']:.3f}" for t in (80, 95))
        + " |",
        "| median width 48 h before finish (h) | "
        + " | ".join(f"{intervals['width_48h_before_finish'][str(t)]:.1f}" for t in (80, 95))
        + " |",
        "| plain split conformal width there (h) | "
        + " | ".join(f"{plain['width_48h_before_finish'][str(t)]:.1f}" for t in (80, 95))
        + " |",
        "",
        "P(finished by t h) per horizon: "
        + ", ".join(
            f"{h} h ECE {v['ece']:.3f} (mean {v['mean_probability']:.3f} vs observed "
            f"{v['observed_rate']:.3f})"
            for h, v in horizons.items()
        )
        + (
            f"; mean |P(by {agreement['horizon_hours']:g} h) - classifier| "
            f"{agreement['mean_abs_difference']:.3f}."
            if agreement
            else "."
        ),
        "",
        "| slice (>= 15 batches) | batches | 80% coverage | 95% coverage | median 80% width (h) |",
        "|---|---|---|---|---|",
    ]
    for row in result["coverage"]:
        lines.append(
            f"| {row['slice']}={row['value']} | {row['batches']} | {row['coverage_80']:.3f} | "
            f"{row['coverage_95']:.3f} | {row['median_width_80']:.1f} |"
        )
    lines += [
        "",
        "| real Tilt log | snapshots | hours MAE | 80% coverage | 95% coverage | groups |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for batch, row in result["real_logs"].items():
        lines.append(
            f"| {batch} | {row['snapshots']} | {row['hours_mae']:.1f} | {row['coverage_80']:.2f} | "
            f"{row['coverage_95']:.2f} | {', '.join(g.replace('|', '/') for g in row['groups'])} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--start", default="2025-03-01")
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--fermenters", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args.seed, args.start, args.days, args.fermenters)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Model quality against the goals of the "honest model quality" issue, on a simulated world
the tests do not use: ``python -m benchmarks.quality --seed 31 --start 2025-03-01``.

Simulates the world, runs it through the lake and the features stage, trains every step up
to the gate with the default settings, and reports on the test split's pre-finish rows:
every model's headline metrics with their batch-bootstrap intervals, the slices with enough
batches, and each goal met or not:

* the candidate's AUC within 0.005 of the best family's;
* ECE <= 0.02 overall and <= 0.05 in every slice with >= 15 batches;
* |bias| <= 0.01 overall.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

GOALS = {"auc_gap": 0.005, "ece": 0.02, "slice_ece": 0.05, "slice_batches": 15, "bias": 0.01}


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
        "goals": goals(evaluation, slices),
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
        value = "—" if goal["value"] is None else f"{goal['value']:.4f}"
        where = f" ({goal['where']})" if goal.get("where") else ""
        lines.append(
            f"| {name} | {value}{where} | {goal['goal']} | {'yes' if goal['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


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

"""Model quality against the goals of the "honest model quality" issue, on a simulated world
the tests do not use: ``python -m benchmarks.quality --seed 31 --start 2025-03-01``, and the
hand-logging brewery: ``python -m benchmarks.quality --profile hand_log --fermenters 10
--days 540``.

Simulates the world, runs it through the lake and the features stage, trains every step up
to the gate with the default settings, and reports on the test split's pre-finish rows:
every model's headline metrics with their batch-bootstrap intervals, the slices with enough
batches, and each goal met or not:

* the candidate's AUC within 0.005 of the best family's;
* ECE <= 0.02 overall and <= 0.05 in every slice with >= 15 batches;
* |bias| <= 0.01 overall;
* the finish forecast's 80% and 95% intervals: coverage within 3 points of nominal overall
  and within 7 points in every slice with >= 15 batches (slice keys and forecast buckets);
  the median 80% width 48 h before the finish reported against plain split conformal's;
* the finish-forecast issue's goals against the brand history (:data:`FINISH_GOALS`): hours
  MAE by true time to finish, 80% coverage and width, the decision's precision and recall.

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


#: The finish-forecast issue's goals, against the brand history in the same run, on
#: pre-finish test rows by true time to finish (hand-log world, device-logged worlds).
FINISH_GOALS = {
    "mae_48h": {"hand_log": 12.0, "device": 6.0},
    "mae_48_96h": 20.0,
    "mae_vs_history": 0.8,
    "coverage_80": 0.05,
    "width_vs_history": 0.5,
    "precision": 0.90,
    "recall": {"hand_log": 0.30, "device": 0.60},
}
TIME_TO_FINISH = {"0-48 h": (0.0, 48.0), "48-96 h": (48.0, 96.0), "96 h+": (96.0, float("inf"))}


def finish_goals(
    predictions: pd.DataFrame,
    candidate: str,
    threshold: float,
    hand: bool,
    prompt_threshold: float | None = None,
) -> dict:
    """Hours MAE by true time to finish, 80% window coverage and width, and the decision at
    the threshold, for the candidate and the brand history on the pre-finish test rows;
    each goal met or not. With ``prompt_threshold``, also how often a batch finishing
    within the horizon is asked for a reading (recall) and how often a reading asked for
    is of one (precision): no goal of its own, the hand log's way to "ready"."""
    import numpy as np

    from brewcast.schema import LABEL, REGRESSION_TARGET
    from models.metrics import classification_report
    from models.pipeline import window_widths

    rows = predictions[predictions["before_finish"]]
    target = rows[REGRESSION_TARGET].to_numpy(dtype=float)
    finite = np.isfinite(target)
    world = "hand_log" if hand else "device"

    def mae(name: str, low: float, high: float) -> float:
        inside = finite & (target >= low) & (target < high)
        hours = rows[f"{name}_hours"].to_numpy(dtype=float)
        return float(np.mean(np.abs(hours[inside] - target[inside]))) if inside.any() else np.nan

    table = {
        bucket: {
            "rows": int((finite & (target >= lo) & (target < hi)).sum()),
            "candidate": mae(candidate, lo, hi),
            "brand_history": mae("brand_history", lo, hi),
        }
        for bucket, (lo, hi) in TIME_TO_FINISH.items()
    }
    overall = {name: mae(name, 0.0, float("inf")) for name in (candidate, "brand_history")}
    covered = np.where(np.isfinite(target), target, np.inf)

    def window(low_column: str, high_column: str) -> tuple[float, float]:
        low, high = rows[low_column].to_numpy(float), rows[high_column].to_numpy(float)
        width = float(np.median(window_widths(low, high)))
        return float(np.mean((covered >= low) & (covered <= high))), width

    ours, theirs = (
        window("interval_80_low", "interval_80_high"),
        window("brand_history_low_80", "brand_history_high_80"),
    )
    decision = classification_report(
        rows[LABEL].to_numpy(float), rows[f"{candidate}_probability"], threshold, rows["batch_id"]
    )
    out = {
        "hours MAE within 48 h of the finish": {
            "value": table["0-48 h"]["candidate"],
            "goal": f"<= {FINISH_GOALS['mae_48h'][world]} h (history "
            f"{table['0-48 h']['brand_history']:.1f} h)",
            "met": table["0-48 h"]["candidate"] <= FINISH_GOALS["mae_48h"][world],
        },
        "hours MAE overall / brand history": {
            "value": overall[candidate] / overall["brand_history"],
            "goal": f"<= {FINISH_GOALS['mae_vs_history']} ({overall[candidate]:.1f} h vs "
            f"{overall['brand_history']:.1f} h)",
            "met": overall[candidate] <= FINISH_GOALS["mae_vs_history"] * overall["brand_history"],
        },
        "80% coverage overall": {
            "value": ours[0],
            "goal": f"0.80 ± {FINISH_GOALS['coverage_80']} (history {theirs[0]:.2f})",
            "met": abs(ours[0] - 0.80) <= FINISH_GOALS["coverage_80"],
        },
        "median 80% width / brand history": {
            "value": ours[1] / theirs[1] if theirs[1] > 0 else float("inf"),
            "goal": f"<= {FINISH_GOALS['width_vs_history']} ({ours[1]:.0f} h vs {theirs[1]:.0f} h)",
            "met": ours[1] <= FINISH_GOALS["width_vs_history"] * theirs[1],
        },
        "decision precision at the threshold": {
            "value": decision["precision"],
            "goal": f">= {FINISH_GOALS['precision']}",
            "met": decision["precision"] >= FINISH_GOALS["precision"],
        },
        "decision recall at the threshold": {
            "value": decision["recall"],
            "goal": f">= {FINISH_GOALS['recall'][world]}",
            "met": decision["recall"] >= FINISH_GOALS["recall"][world],
        },
    }
    if hand:
        out["hours MAE 48-96 h before the finish"] = {
            "value": table["48-96 h"]["candidate"],
            "goal": f"<= {FINISH_GOALS['mae_48_96h']} h (history "
            f"{table['48-96 h']['brand_history']:.1f} h)",
            "met": table["48-96 h"]["candidate"] <= FINISH_GOALS["mae_48_96h"],
        }
    prompt = None
    if prompt_threshold is not None:
        asked = classification_report(
            rows[LABEL].to_numpy(float),
            rows[f"{candidate}_probability"],
            prompt_threshold,
            rows["batch_id"],
        )
        prompt = {"threshold": prompt_threshold, **{k: asked[k] for k in ("precision", "recall")}}
    return {"goals": out, "by_time_to_finish": table, "prompt": prompt}


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


def run(seed: int, start: str, days: float, fermenters: int, profile: str = "default") -> dict:
    from application import stages
    from brewcast.settings import Settings
    from ingest.simulator import SimulationConfig
    from models.workdir import TrainingWorkdir

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home / "home")
        world = SimulationConfig(
            start=pd.Timestamp(start, tz="UTC"),
            days=days,
            fermenters=fermenters,
            seed=seed,
            profile=profile,
        )
        print(
            f"quality: simulating {profile}, {days:g} days x {fermenters} fermenters, seed {seed}"
        )
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
        threshold = work.read_json(work.calibration)["threshold"]["threshold"]
        finish = finish_goals(
            pd.read_parquet(work.predictions),
            evaluation["candidate"],
            threshold,
            hand=profile == "hand_log",
            prompt_threshold=work.prompt_threshold(),
        )
    intervals = evaluation["intervals"]
    return {
        "world": {
            "seed": seed,
            "start": start,
            "days": days,
            "fermenters": fermenters,
            "profile": profile,
        },
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
        "goals": goals(evaluation, slices) | coverage_goals(coverage, intervals) | finish["goals"],
        "by_time_to_finish": finish["by_time_to_finish"],
        "prompt": finish["prompt"],
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
        f"### {world['profile']}: seed {world['seed']}, {world['days']:g} days from "
        f"{world['start']}, {world['fermenters']} fermenters",
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
    lines += ["", "| true time to finish | rows | candidate hours MAE | brand history |"]
    lines.append("|---|---|---|---|")
    for bucket, row in result["by_time_to_finish"].items():
        lines.append(
            f"| {bucket} | {row['rows']} | {row['candidate']:.1f} | {row['brand_history']:.1f} |"
        )
    prompt = result.get("prompt")
    if prompt:
        lines += [
            "",
            f"A reading asked for from P >= {prompt['threshold']:.3f} (the prompt threshold): "
            f"recall {prompt['recall']:.3f}, precision {prompt['precision']:.3f} on the "
            "pre-finish rows (a hand log's way to ready: a reading that agrees).",
        ]
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
    parser.add_argument(
        "--profile", default="default", help="the brewery (hand_log: the hand-logging one)"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args.seed, args.start, args.days, args.fermenters, args.profile)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""What reproducible training costs (``python -m benchmarks.reproducible``): the same
features trained pinned (``models.reproducible``: oneDNN's baseline kernels, one thread,
deterministic ops) and unpinned (the machine's own kernels and threads), each in a fresh
process (the pin is read when TensorFlow starts), with the default settings. Reports each
step's seconds, the network fit's ratio pinned / unpinned, and whether the two pinned
runs' graphs are identical. Target: the pin costs less than 2x the network's fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

WORLD_DAYS, FERMENTERS, SEED = 240, 8, 5

#: One training in a fresh process: its steps' seconds, its fingerprint's hashes.
_TRAIN = """
import json, sys, time
from pathlib import Path
from application import stages
from brewcast.settings import Settings
settings = Settings(home=sys.argv[1])
work = Path(sys.argv[2])
manifest = stages.train(settings, work, progress=False,
                        steps=("prepare", "fit", "calibrate", "export"))
fit = manifest.details["fit"]["families"]
print(json.dumps({
    "steps": manifest.counts["seconds"],
    "fit": {family: info["train_seconds"] for family, info in fit.items()},
    "fingerprint": json.loads((work / "reproducibility.json").read_text()),
}))
"""


def _train(home: Path, work: Path, pinned: bool) -> dict:
    from models.reproducible import PINNED_ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENVIRONMENT}
    env["BREWCAST_REPRODUCIBLE_TRAINING"] = "true" if pinned else "false"
    done = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(home), str(work)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run() -> dict:
    from application import stages
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS
    from brewcast.settings import Settings
    from ingest.simulator import SimulationConfig, simulate

    home = Path(tempfile.mkdtemp(prefix="brewcast-bench-reproducible-"))
    settings = Settings(home=home / "home")
    world = simulate(
        SimulationConfig(
            start=pd.Timestamp("2026-01-01", tz="UTC"),
            days=float(WORLD_DAYS),
            fermenters=FERMENTERS,
            seed=SEED,
        )
    )
    for table, frame in ((BATCHES, world.batches), (READINGS, world.readings)):
        lake.write_partitions(frame, table, settings.paths.lake, "raw", "world")
    stages.build_features(settings, stage="raw")
    runs = {}
    for name, pinned in (("pinned", True), ("unpinned", False), ("pinned_again", True)):
        print(f"training {name} ...", flush=True)
        runs[name] = _train(settings.home, home / name, pinned)
    network = {name: r["fit"].get("network") for name, r in runs.items()}
    hashes = {name: r["fingerprint"]["family_sha256"] for name, r in runs.items()}
    return {
        "world": f"{WORLD_DAYS} days, {FERMENTERS} fermenters, seed {SEED}",
        "cpus": os.cpu_count(),
        "network_fit_seconds": network,
        "boosted_fit_seconds": {name: r["fit"].get("boosted") for name, r in runs.items()},
        "steps_seconds": {name: r["steps"] for name, r in runs.items()},
        "network_fit_ratio_pinned_to_unpinned": network["pinned"] / network["unpinned"],
        "pinned_runs_identical": hashes["pinned"] == hashes["pinned_again"],
        "unpinned_network_differs": hashes["unpinned"].get("network")
        != hashes["pinned"].get("network"),
    }


def markdown(result: dict) -> str:
    fit = result["network_fit_seconds"]
    return "\n".join(
        [
            f"### Reproducible training ({result['world']}, {result['cpus']} CPUs)",
            "",
            "| run | network fit (s) | boosted fit (s) | prepare..export (s) |",
            "|---|---|---|---|",
            *(
                f"| {name} | {fit[name]:.1f} | {result['boosted_fit_seconds'][name]:.1f} | "
                f"{result['steps_seconds'][name]} |"
                for name in fit
            ),
            "",
            "Network fit pinned / unpinned: "
            f"**{result['network_fit_ratio_pinned_to_unpinned']:.2f}x** (target < 2x); "
            f"pinned runs identical: {result['pinned_runs_identical']}; "
            f"the unpinned network differs: {result['unpinned_network_differs']}.",
            "",
        ]
    )


if __name__ == "__main__":
    outcome = run()
    print(json.dumps(outcome, indent=2))
    print(markdown(outcome))

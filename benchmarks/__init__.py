"""brewcast's performance suite: run with `make bench`; never part of the unit tests."""

from __future__ import annotations

from pathlib import Path


def small_model(home: Path, seed: int, register: bool = False, **settings: object) -> Path:
    """A small but real model to measure: a simulated cellar -> snapshots in lake/features ->
    every training stage (-> the MLflow registry when ``register``); its work directory."""
    from brewcast import lake
    from brewcast.schema import FEATURES
    from brewcast.settings import Settings
    from ingest.simulator import SimulationConfig, simulate
    from models import pipeline
    from models.dataset import LabelRules, build_snapshots

    config = Settings(home=home, **settings)
    world = simulate(SimulationConfig(days=240, fermenters=8, seed=seed))
    snapshots = build_snapshots(world.batches, world.readings, LabelRules())
    lake.replace_table(snapshots, FEATURES, config.lake_dir, "features", "snapshots")
    work = pipeline.build(config, home / "work", progress=False)
    if register:
        pipeline.register(config, work)
    return work

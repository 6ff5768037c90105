"""brewcast's performance suite: run with `make bench`; never part of the unit tests."""

from __future__ import annotations

from pathlib import Path


def small_model(home: Path, seed: int, register: bool = False, **settings: object) -> Path:
    """A small but real model to measure: a simulated cellar -> the raw lake -> the features
    stage -> every training step up to the gate (and on to the MLflow registry when
    ``register``); its work directory."""
    from application import stages
    from brewcast.settings import Settings
    from ingest.simulator import SimulationConfig

    config = Settings(home=home, **settings)
    world = SimulationConfig(days=240, fermenters=8, seed=seed)
    stages.ingest(config, "simulator", world.start, world.end, world)
    stages.build_features(config, stage="raw")
    steps = stages.TRAINING_STEPS if register else ("prepare", "fit", "calibrate", "export")
    return Path(stages.train(config, home / "work", progress=False, steps=steps).workdir)

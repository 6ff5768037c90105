"""Shared fixtures: an isolated BREWCAST_HOME and a small simulated cellar."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from brewcast.settings import Settings, get_settings
from ingest.simulator import Simulation, SimulationConfig, simulate


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setenv("BREWCAST_HOME", str(tmp_path / "home"))
    return get_settings()


SMALL_WORLD = SimulationConfig(
    start=pd.Timestamp("2026-01-01", tz="UTC"), days=40.0, fermenters=4, seed=7
)


@pytest.fixture(scope="session")
def small_world() -> Simulation:
    return simulate(SMALL_WORLD)


#: Large enough that its test split (about 40 batches) can show a model beats the rules a
#: brewer already has (the slope rule, defined at any cadence, and the brand history) over
#: the whole paired interval: on 240 days x 6 fermenters (25 test batches) it could not.
TRAINING_WORLD = SimulationConfig(
    start=pd.Timestamp("2026-01-01", tz="UTC"), days=300.0, fermenters=8, seed=5
)
#: Fewer bootstrap resamples than the default 200: the tests check the intervals' logic,
#: not their third digit.
TRAINING_OVERRIDES = dict(epochs=30, patience=5, gate_min_slice_batches=5, bootstrap_replicates=100)


#: The training steps up to (not including) the gate and MLflow.
BUILD_STEPS = ("prepare", "fit", "calibrate", "export", "evaluate")


def publish_training_features(settings: Settings, world: Simulation) -> None:
    """``world``'s tables into the raw lake, then the features stage (the one features flow,
    its validation of the snapshots included) from there: the readings' own validation has
    its tests, here it would only cost time."""
    from application import stages
    from brewcast import lake
    from brewcast.schema import BATCHES, READINGS

    for table, frame in ((BATCHES, world.batches), (READINGS, world.readings)):
        lake.write_partitions(frame, table, settings.paths.lake, "raw", "world")
    stages.build_features(settings, stage="raw")


def build_model(settings: Settings, workdir):
    """Every training step up to the gate, in ``workdir``; its path."""
    from application import stages

    return Path(stages.train(settings, workdir, progress=False, steps=BUILD_STEPS).workdir)


def register_model(settings: Settings, workdir) -> dict:
    """evaluate (the champion scored again) -> gate -> register -> promote in a trained
    workdir: the registered model's fields, its verdict and whether it was promoted."""
    from application import stages

    steps = stages.train(
        settings, workdir, progress=False, steps=("evaluate", "gate", "register", "promote")
    ).details
    return {**steps["register"], "promoted": steps["promote"]["promoted"]}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One model trained through every stage up to (not including) MLflow registration:
    (settings, workdir). Tests that register copy the workdir first."""
    home = tmp_path_factory.mktemp("trained")
    settings = Settings(home=home / "home", **TRAINING_OVERRIDES)
    publish_training_features(settings, simulate(TRAINING_WORLD))
    return settings, build_model(settings, home / "work")


@pytest.fixture
def postgres_database():
    """A scratch PostgreSQL database on this machine's server (dropped afterwards); its URL."""
    import contextlib

    import sqlalchemy as sa

    from devtools.postgres import LOCAL_POSTGRES, scratch_postgres_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres_database("brewcast_test"))
        except sa.exc.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable at {LOCAL_POSTGRES}: {exc}")
        yield url

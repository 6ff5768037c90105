"""Shared fixtures: an isolated BREWCAST_HOME and a small simulated cellar."""

from __future__ import annotations

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


TRAINING_WORLD = SimulationConfig(
    start=pd.Timestamp("2026-01-01", tz="UTC"), days=240.0, fermenters=6, seed=5
)
TRAINING_OVERRIDES = dict(epochs=30, patience=5, gate_min_slice_rows=100)


def publish_training_features(settings: Settings, world: Simulation) -> None:
    """Labelled snapshots of ``world`` straight into lake/features (validation has its own
    tests; here it would only cost time)."""
    from brewcast import lake
    from brewcast.schema import FEATURES
    from models.dataset import LabelRules, build_snapshots

    snaps = build_snapshots(world.batches, world.readings, LabelRules.from_settings(settings))
    lake.replace_table(snaps, FEATURES, settings.lake_dir, "features", "snapshots")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One model trained through every stage up to (not including) MLflow registration:
    (settings, workdir). Tests that register copy the workdir first."""
    from models import pipeline

    home = tmp_path_factory.mktemp("trained")
    settings = Settings(home=home / "home", **TRAINING_OVERRIDES)
    publish_training_features(settings, simulate(TRAINING_WORLD))
    return settings, pipeline.build(settings, home / "work", progress=False)


@pytest.fixture
def postgres_database():
    """A scratch PostgreSQL database on this machine's server (dropped afterwards); its URL."""
    import contextlib

    import sqlalchemy as sa

    from brewcast.processes import LOCAL_POSTGRES, scratch_postgres_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres_database("brewcast_test"))
        except sa.exc.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable at {LOCAL_POSTGRES}: {exc}")
        yield url

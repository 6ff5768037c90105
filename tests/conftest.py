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

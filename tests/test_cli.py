"""The brewcast command line, end to end on a small world, and settings from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from application.cli import app
from brewcast import lake
from brewcast.schema import FEATURES, READINGS
from brewcast.settings import get_settings

runner = CliRunner()
SMALL = ["--start", "2026-01-01", "--days", "30", "--fermenters", "3"]


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BREWCAST_HOME", str(tmp_path))
    monkeypatch.setenv("BREWCAST_HORIZON_HOURS", "12")
    s = get_settings()
    assert s.home == tmp_path and s.horizon_hours == 12.0
    assert s.paths.lake == tmp_path / "lake" and s.paths.drop == tmp_path / "drop"
    monkeypatch.delenv("BREWCAST_HOME")
    assert get_settings().home == Path(".brewcast")


def test_importing_creates_nothing(tmp_path):
    code = (
        "import brewcast.settings, application.cli, brewcast.lake, ingest.sources, models.dataset"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        check=True,
        env={"PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert list(tmp_path.iterdir()) == []


def test_entry_point_is_installed():
    exe = Path(sys.executable).with_name("brewcast")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    for command in ("simulate", "ingest", "features"):
        assert command in out.stdout


def test_simulate_ingest_features(settings, monkeypatch):
    monkeypatch.setenv("BREWCAST_SIMULATION_DAYS", "30")
    monkeypatch.setenv("BREWCAST_SIMULATION_FERMENTERS", "3")
    monkeypatch.setenv("BREWCAST_SIMULATION_START", "2026-01-01")  # a start set is honoured
    result = runner.invoke(app, ["simulate"])
    assert result.exit_code == 0, result.output
    assert "reading rows" in result.output
    readings = lake.read_table(settings.paths.lake, "raw", READINGS)
    assert len(readings) > 3000
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1, result.output  # the simulator's bad records, quarantined
    assert "QUARANTINED SOME DATA" in result.output
    result = runner.invoke(app, ["features"])
    assert result.exit_code == 0, result.output
    assert "snapshots" in result.output and "splits" in result.output
    assert len(lake.read_table(settings.paths.lake, "features", FEATURES)) > 100
    # Ingesting the same interval again changes nothing.
    result = runner.invoke(
        app, ["ingest", "--source", "simulator", "--start", "2026-01-01", "--end", "2026-01-31"]
    )
    assert result.exit_code == 0, result.output
    assert len(lake.read_table(settings.paths.lake, "raw", READINGS)) == len(readings)


def test_drop_and_brewerypi_round_trips_through_the_cli(settings, tmp_path):
    assert runner.invoke(app, ["simulate", "--to", "drop", *SMALL]).exit_code == 0
    (settings.paths.drop / "readings_broken.csv").write_text("batch_id,tag\nx,y\n")
    result = runner.invoke(app, ["ingest", "--source", "drop"])
    assert result.exit_code == 1  # one file rejected: say so
    assert "rejected readings_broken.csv" in result.output and "missing column" in result.output
    from_drop = lake.read_table(settings.paths.lake, "raw", READINGS)

    db = tmp_path / "bp.db"
    assert (
        runner.invoke(app, ["simulate", "--to", "brewerypi", "--out", str(db), *SMALL]).exit_code
        == 0
    )
    home2 = tmp_path / "home2"
    env = {"BREWCAST_HOME": str(home2), "BREWCAST_BREWERYPI_URL": f"sqlite:///{db}"}
    result = runner.invoke(
        app,
        ["ingest", "--source", "brewerypi", "--start", "2026-01-01", "--end", "2026-02-01"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    from_bp = lake.read_table(home2 / "lake", "raw", READINGS)
    # Brewery Pi cannot store missing values; everything else is the same world.
    expected = from_drop[from_drop["value"].notna()]
    assert len(from_bp) == len(expected)
    pd.testing.assert_series_equal(
        from_bp.sort_values(list(READINGS.key))["value"].reset_index(drop=True),
        expected.sort_values(list(READINGS.key))["value"].reset_index(drop=True),
    )


def test_the_default_simulated_world_ends_today_and_a_future_one_is_said(settings):
    """`brewcast simulate --days N` without a start writes nothing validation would
    quarantine as in the future; a span told to run past today warns."""
    now = pd.Timestamp.now("UTC")
    result = runner.invoke(app, ["simulate", "--days", "20", "--fermenters", "2"])
    assert result.exit_code == 0, result.output
    readings = lake.read_table(settings.paths.lake, "raw", READINGS)
    assert readings["timestamp"].max() <= now
    assert readings["timestamp"].min() >= now.normalize() - pd.Timedelta(days=20)
    assert "future" not in result.output
    ahead = (now + pd.Timedelta(days=5)).strftime("%Y-%m-%d")
    result = runner.invoke(app, ["simulate", "--to", "drop", "--end", ahead, "--days", "10"])
    assert result.exit_code == 0, result.output
    assert "lie in the future" in result.output
    result = runner.invoke(app, ["simulate", "--start", "2026-02-01", "--end", "2026-01-01"])
    assert result.exit_code == 2 and "is not after --start" in result.output


def test_cli_errors_are_clear(settings):
    result = runner.invoke(app, ["features"])
    assert result.exit_code == 1 and "run `brewcast validate` first" in result.output
    result = runner.invoke(app, ["features", "--stage", "raw"])
    assert result.exit_code == 1 and "run `brewcast ingest` first" in result.output
    result = runner.invoke(app, ["ingest", "--source", "brewerypi"])
    assert result.exit_code == 2 and "BREWCAST_BREWERYPI_URL" in result.output
    result = runner.invoke(app, ["simulate", "--fermenters", "40"])
    assert result.exit_code == 2 and "fermenters must be" in result.output


def test_train_says_which_family_won_and_how_every_model_scored(trained, tmp_path, monkeypatch):
    """`brewcast train` on the published features: the candidate and the rule's numbers,
    each model's pre-finish headline with its interval, the registration and the gate."""
    import shutil

    settings, _ = trained
    home = tmp_path / "home"
    shutil.copytree(settings.paths.lake, home / "lake")
    monkeypatch.setenv("BREWCAST_HOME", str(home))
    monkeypatch.setenv("BREWCAST_EPOCHS", "3")
    monkeypatch.setenv("BREWCAST_GATE_MIN_SLICE_BATCHES", "5")
    result = runner.invoke(app, ["train", "--quiet", "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    candidate = next(line for line in lines if line.startswith("candidate: "))
    assert "network " in candidate and "boosted " in candidate
    for model in ("network", "boosted", "slope_rule", "logistic_regression"):
        line = next(line for line in lines if line.strip().startswith(f"{model} ("))
        assert "auc 0." in line and "[" in line, line
    assert any(line.startswith("run ") and "version 1 as challenger" in line for line in lines)

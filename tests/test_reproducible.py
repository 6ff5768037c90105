"""The same features, settings and seed train the same model on any machine: every family's
ONNX graph bit-identical under other thread counts and instruction sets, and
``brewcast train --verify-against RUN`` says so (or says what differs)."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from brewcast.settings import Settings
from ingest.simulator import SimulationConfig, simulate
from models.reproducible import PINNED_ENVIRONMENT, compare
from tests.conftest import publish_training_features

BREWCAST = str(Path(sys.executable).with_name("brewcast"))
WORLD = SimulationConfig(
    start=pd.Timestamp("2026-01-01", tz="UTC"), days=150.0, fermenters=4, seed=5
)
#: A short training: the test is about the hashes, not the model's quality.
TRAINING = {"epochs": "8", "patience": "3", "bootstrap_replicates": "20"}

#: What another machine computes with: other thread counts, oneDNN below this machine's best
#: instruction set, OpenBLAS's AVX-only kernels, numpy's baseline SIMD only. Unpinned, the
#: oneDNN cap alone gave another network graph here (and numpy's kernels another
#: calibration, in its last bits).
ANOTHER_MACHINE = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "2",
    "TF_NUM_INTEROP_THREADS": "2",
    "ONEDNN_MAX_CPU_ISA": "AVX",
    "OPENBLAS_CORETYPE": "Sandybridge",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4",
}


def _cpu_has(flag: str) -> bool:
    try:
        return f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the pin (an earlier in-process training may have
    set it), plus the brewcast home, the short training and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENVIRONMENT}
    for key in ANOTHER_MACHINE:
        env.pop(key, None)
    env.update({f"BREWCAST_{k.upper()}": v for k, v in TRAINING.items()})
    return {**env, "BREWCAST_HOME": str(home), **extra}


def _brewcast(env: dict[str, str], *args: str, check: bool = True):
    done = subprocess.run([BREWCAST, *args], env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_the_same_run_trained_on_another_machine_gives_identical_graphs(tmp_path):
    home = tmp_path / "home"
    publish_training_features(Settings(home=home), simulate(WORLD))
    trained = _brewcast(_environment(home), "train", "--quiet", "--workdir", str(tmp_path / "w"))
    run_id = re.search(r"run (\w+): registered", trained.stdout).group(1)
    recorded = (tmp_path / "w" / "reproducibility.json").read_text()
    assert '"numerics_pinned": true' in recorded

    another = {k: v for k, v in ANOTHER_MACHINE.items() if k != "OPENBLAS_CORETYPE"}
    if _cpu_has("avx"):  # OpenBLAS's Sandybridge kernels need AVX
        another["OPENBLAS_CORETYPE"] = ANOTHER_MACHINE["OPENBLAS_CORETYPE"]
    verified = _brewcast(
        _environment(home, **another),
        "train",
        "--verify-against",
        run_id,
        "--workdir",
        str(tmp_path / "again"),
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"run {run_id} reproduces" in verified.stdout
    # both families were compared, the network (TensorFlow) and the boosted (LightGBM)
    assert re.search(r"network: \w{16} \(recorded \w{16}\)", verified.stdout)
    assert re.search(r"boosted: \w{16} \(recorded \w{16}\)", verified.stdout)
    again = (tmp_path / "again" / "reproducibility.json").read_bytes()
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (
        tmp_path / "w" / "model.onnx"
    ).read_bytes()
    assert b'"numerics_pinned": true' in again

    # a lake that changed since is said, not re-trained into a false verdict
    publish_training_features(Settings(home=home), simulate(dataclasses.replace(WORLD, seed=6)))
    changed = _brewcast(
        _environment(home), "train", "--verify-against", run_id, "--workdir",
        str(tmp_path / "changed"), check=False,
    )  # fmt: skip
    assert changed.returncode == 2 and "features snapshot" in changed.stderr, changed.stderr


RECORDED = {
    "data_snapshot_id": "d1",
    "settings_sha256": "s1",
    "python": "3.11.7",
    "machine": "x86_64",
    "packages": {"tensorflow": "2.21.0", "lightgbm": "4.6.0"},
    "numerics_pinned": True,
    "model_sha256": "b" * 64,
    "family_sha256": {"boosted": "b" * 64, "network": "n" * 64},
}


def test_a_reproduced_run_has_no_differences():
    assert compare(RECORDED, copy.deepcopy(RECORDED)) == []


def test_a_graph_that_differs_is_named_with_what_may_explain_it():
    again = copy.deepcopy(RECORDED)
    again["family_sha256"]["network"] = "m" * 64
    again["packages"]["tensorflow"] = "2.22.0"
    again["numerics_pinned"] = False
    differences = compare(RECORDED, again)
    assert differences[0].startswith("the network family's graph differs (nnnnnnnnnnnn")
    assert "package tensorflow: 2.21.0 recorded, 2.22.0 now" in differences
    assert "a run was trained without pinned numerics" in differences
    assert not any("boosted" in d for d in differences)

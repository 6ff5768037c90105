"""Training that any x86-64 machine reproduces bit for bit, and the fingerprint that shows it.

TensorFlow's dense layers multiply through oneDNN's sgemm, which picks its kernels (and so
its order of summation) by the processor's instruction set, and its thread pools split the
work by their sizes: the same data, settings and seed gave another network where oneDNN
was capped at another instruction set. Pinning oneDNN to its baseline x86-64 kernels
(SSE4.1, which every processor TensorFlow runs on has), one intra- and one inter-op thread,
TensorFlow's deterministic ops and the CPU (a GPU's kernels are its own) removes both.
LightGBM is pinned by its own parameters (``models.boosted``); what numpy and scipy compute
after the fit (their SIMD kernels differ per processor in the last bits) enters the graph
at float32's precision (:data:`CANONICAL_DIGITS`). ``tests/test_reproducible.py`` trains one
world under other thread counts and instruction sets and compares hashes;
``benchmarks/README.md`` says what the pin costs in training time.

The environment must be pinned before TensorFlow computes anything: :func:`pin_numerics`
sets it when TensorFlow is not yet imported, and otherwise reports whether the process
was started with it (``BREWCAST_REPRODUCIBLE_TRAINING=false`` trains unpinned).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from brewcast.settings import LabelSettings, Settings, TrainingSettings

log = logging.getLogger(__name__)

#: The environment training's numbers are computed in (read by TensorFlow and oneDNN when
#: they start).
PINNED_ENVIRONMENT = {
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_DETERMINISTIC_OPS": "1",
}

#: The packages whose versions decide the numbers a training run computes.
NUMERIC_PACKAGES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "tensorflow",
    "keras",
    "lightgbm",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "tf2onnx",
    "onnxmltools",
    "crepes",
    "brewcast",
)


#: Significant digits of every number a trained graph carries beside its weights
#: (calibration, threshold, intervals, familiarity): float32's, the precision onnxruntime
#: computes in. Those numbers come from float64 numpy steps whose last bits differ between
#: processors (numpy picks its SIMD kernels per machine, and its order of summation with
#: them); rounded here they agree, so the same training gives the same graph.
CANONICAL_DIGITS = 7


def canonical_numbers(value):
    """``value`` (JSON-like) with every float rounded to :data:`CANONICAL_DIGITS`
    significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{CANONICAL_DIGITS}g}")
    if isinstance(value, dict):
        return {k: canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_numbers(v) for v in value]
    return value


def canonical_text(text: str) -> str:
    """JSON text with :func:`canonical_numbers`."""
    return json.dumps(canonical_numbers(json.loads(text)))


def environment_pinned() -> bool:
    """Whether this process's environment holds every pinned value."""
    return all(os.environ.get(k) == v for k, v in PINNED_ENVIRONMENT.items())


def pin_numerics(enabled: bool = True) -> bool:
    """Pin the environment training computes in (before TensorFlow is imported); whether
    the pin is in force for this process. Where TensorFlow started unpinned it is too late,
    and the run says so (a warning, and its fingerprint) instead of claiming it."""
    if not enabled:
        return False
    if "tensorflow" not in sys.modules:
        os.environ.update(PINNED_ENVIRONMENT)
    pinned = environment_pinned()
    if not pinned:
        log.warning(
            "TensorFlow started before training pinned its numerics: this run's network "
            "may not be reproduced on another machine (start training in its own process)"
        )
    return pinned


def configure_tensorflow(pinned: bool) -> None:
    """TensorFlow's own switches for a pinned run: deterministic ops, and no GPU."""
    if not pinned:
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    # devices already initialised: by an earlier training in this process, which hid them
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")


def training_settings(settings: Settings) -> dict[str, object]:
    """The settings a trained model depends on (the training and label groups, the seed):
    what a fingerprint hashes and what a re-training restores."""
    names = sorted({*TrainingSettings.model_fields, *LabelSettings.model_fields, "seed"})
    return json.loads(settings.model_dump_json(include=set(names)))


def settings_hash(values: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in NUMERIC_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint(
    settings: Settings,
    pinned: bool,
    data_snapshot_id: str,
    candidate: Path,
    families: dict[str, Path],
) -> dict:
    """What a training run's model is a function of, and the model's hashes: two runs with
    equal inputs here must have equal hashes (``compare`` says where they differ)."""
    values = training_settings(settings)
    return {
        "data_snapshot_id": data_snapshot_id,
        "settings_sha256": settings_hash(values),
        "settings": values,
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numerics_pinned": pinned,
        "model_sha256": file_hash(candidate),
        "family_sha256": {name: file_hash(path) for name, path in sorted(families.items())},
    }


def compare(recorded: dict, retrained: dict) -> list[str]:
    """Where a re-training differs from the run it re-trains, in words (empty: it
    reproduces): the model hashes, and the inputs that would explain a difference."""
    differences = []
    for name, digest in recorded["family_sha256"].items():
        again = retrained["family_sha256"].get(name)
        if again != digest:
            differences.append(
                f"the {name} family's graph differs ({digest[:12]} recorded, "
                f"{(again or 'not trained')[:12]} now)"
            )
    if recorded["model_sha256"] != retrained["model_sha256"]:
        differences.append("the candidate graph differs")
    if not differences:
        return []
    for key in ("data_snapshot_id", "settings_sha256", "python", "machine"):
        if recorded.get(key) != retrained.get(key):
            differences.append(f"{key}: {recorded.get(key)} recorded, {retrained.get(key)} now")
    for name, version in recorded.get("packages", {}).items():
        now = retrained["packages"].get(name)
        if now != version:
            differences.append(f"package {name}: {version} recorded, {now} now")
    if not (recorded.get("numerics_pinned") and retrained.get("numerics_pinned")):
        differences.append("a run was trained without pinned numerics")
    return differences

"""One training run's work directory: every file the training steps hand each other, named
once, and which step reads and writes which.

The steps run as separate Airflow tasks (possibly on different workers sharing the home),
so the only thing they pass is this directory's path; re-running a step rewrites its own
files and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brewcast import lake
from models.calibrate import Calibration
from models.dataset import SPLITS
from models.inputs import Preprocessing

#: Each training step and the files (attributes of :class:`TrainingWorkdir`) it reads and
#: writes, in order; what a step's manifest lists.
STEP_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepare": ((), ("train", "validation", "test", "preprocessing", "data")),
    "fit": (
        ("train", "validation", "test", "preprocessing"),
        ("network", "boosted", "history", "baseline_scores", "fit"),
    ),
    "calibrate": (
        ("validation", "preprocessing", "network", "boosted", "fit"),
        ("calibration", "threshold_curve"),
    ),
    "export": (
        (
            "train",
            "validation",
            "test",
            "preprocessing",
            "network",
            "boosted",
            "calibration",
            "data",
        ),
        ("model", "families", "export", "fingerprint"),
    ),
    "evaluate": (
        ("test", "model", "families", "calibration", "baseline_scores", "history"),
        ("slices", "coverage", "plots", "evaluation", "champion", "predictions"),
    ),
    "gate": (("export", "evaluation", "slices", "coverage", "champion"), ("verdict",)),
    "register": (
        (
            "data",
            "fit",
            "calibration",
            "export",
            "evaluation",
            "slices",
            "coverage",
            "verdict",
            "model",
            "families",
            "predictions",
            "fingerprint",
        ),
        ("registered",),
    ),
    "promote": (("verdict", "registered", "champion", "train", "model"), ("promoted",)),
}


class TrainingWorkdir:
    """The files of one training run under ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"TrainingWorkdir({str(self.root)!r})"

    def _file(self, name: str) -> Path:
        return self.root / name

    # -- prepare ------------------------------------------------------------------------------
    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
        return self._file(f"{name}.parquet")

    train = property(lambda self: self.split("train"))
    validation = property(lambda self: self.split("validation"))
    test = property(lambda self: self.split("test"))
    preprocessing = property(lambda self: self._file("preprocessing.json"))
    data = property(lambda self: self._file("data.json"))
    # -- fit ----------------------------------------------------------------------------------
    network = property(lambda self: self._file("network.keras"))
    boosted = property(lambda self: self._file("boosted"))
    history = property(lambda self: self._file("history.json"))
    baseline_scores = property(lambda self: self._file("baseline_test_predictions.json"))
    fit = property(lambda self: self._file("fit.json"))
    # -- calibrate ----------------------------------------------------------------------------
    calibration = property(lambda self: self._file("calibration.json"))
    threshold_curve = property(lambda self: self._file("threshold_curve.json"))
    # -- export -------------------------------------------------------------------------------
    #: The run's candidate: the graph of the family that won (registered and served).
    model = property(lambda self: self._file("model.onnx"))
    #: Every family's exported graph, ``families/<family>.onnx``.
    families = property(lambda self: self._file("families"))
    export = property(lambda self: self._file("export.json"))
    #: What the model is a function of and its hashes (``models.reproducible.fingerprint``).
    fingerprint = property(lambda self: self._file("reproducibility.json"))
    # -- evaluate -----------------------------------------------------------------------------
    slices = property(lambda self: self._file("slices.csv"))
    #: The finish forecast's coverage per level and slice (``models.intervals``).
    coverage = property(lambda self: self._file("coverage.csv"))
    plots = property(lambda self: self._file("plots"))
    evaluation = property(lambda self: self._file("evaluation.json"))
    champion = property(lambda self: self._file("champion.json"))
    #: Per test row: label, target, pre-finish flag, slice keys, every model's forecast.
    predictions = property(lambda self: self._file("test_predictions.parquet"))
    champion_download = property(lambda self: self._file("champion"))
    # -- gate, register, promote --------------------------------------------------------------
    verdict = property(lambda self: self._file("gate_verdict.json"))
    registered = property(lambda self: self._file("registered.json"))
    promoted = property(lambda self: self._file("promoted.json"))

    #: The reports a registered run carries as MLflow artifacts (under ``reports/``).
    REPORTS = (
        "slices",
        "coverage",
        "calibration",
        "evaluation",
        "data",
        "export",
        "threshold_curve",
        "preprocessing",
        "champion",
        "fingerprint",
    )

    def files(self, step: str) -> tuple[list[Path], list[Path]]:
        """(read, written) by ``step``."""
        reads, writes = STEP_FILES[step]
        return [getattr(self, n) for n in reads], [getattr(self, n) for n in writes]

    # -- reading and writing ------------------------------------------------------------------
    def write_json(self, path: Path, data) -> Path:
        """Written whole or not at all (a retried task never reads a half-written report)."""
        return lake.write_text(path, json.dumps(data, indent=2, default=float))

    @staticmethod
    def read_json(path: Path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the step that writes it first")
        return json.loads(path.read_text())

    def frames(self) -> dict[str, pd.DataFrame]:
        return {s: pd.read_parquet(self.split(s)) for s in SPLITS}

    def load_preprocessing(self) -> Preprocessing:
        data = self.read_json(self.preprocessing)
        return Preprocessing(
            data["fill_values"], {k: tuple(v) for k, v in data["vocabularies"].items()}
        )

    def load_network(self):
        from models.network import load_network

        return load_network(self.network)

    def family_model(self, family: str) -> Path:
        return self.families / f"{family}.onnx"

    def load_calibration(self, family: str | None = None) -> tuple[Calibration, float]:
        """A family's fitted calibration and the decision threshold chosen with it (the
        candidate's by default)."""
        info = self.read_json(self.calibration)
        if family is not None:
            info = info["families"][family]
        return Calibration(**info["calibration"]), float(info["threshold"]["threshold"])

    def prompt_threshold(self, family: str | None = None) -> float:
        """A family's prompt threshold (the candidate's by default): from it a hand-logged
        batch is asked for a reading; the decision's threshold for a run that chose none."""
        info = self.read_json(self.calibration)
        if family is not None:
            info = info["families"][family]
        return float(info.get("prompt_threshold", info["threshold"])["threshold"])

    def load_finish_forecast(self, family: str | None = None):
        """A family's fitted finish forecast (the candidate's by default)."""
        from brewcast.intervals import FinishForecast

        info = self.read_json(self.calibration)
        if family is not None:
            info = info["families"][family]
        return FinishForecast.from_json(info["finish_forecast"])

    def load_boosted(self):
        from models.boosted import BoostedModel

        return BoostedModel.load(self.boosted)

    def load_slices(self) -> pd.DataFrame:
        return pd.read_csv(self.slices, keep_default_na=False, na_values=[""], dtype={"value": str})

    def load_coverage(self) -> pd.DataFrame:
        return pd.read_csv(
            self.coverage, keep_default_na=False, na_values=[""], dtype={"value": str}
        )

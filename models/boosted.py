"""The boosted challenger family: LightGBM trees on the network's own inputs.

Two boosters, as the network has two heads: a binary classifier whose raw score is the
``logit`` (calibrated afterwards exactly as the network's is) and a Huber regressor for
``hours`` (trained on batches that finish). Both see the matrix the network sees, the
training medians imputed and each category as its learned vocabulary index, so the two
families differ in the model only (the indices are split on as numbers: LightGBM's
categorical splits did worse on a simulated world, see ``benchmarks/README.md``), and the
exported graph keeps the serving contract: the same ``pre`` part in front, the same
calibration behind (:func:`models.export.compose_model`).

LightGBM because its converter (``onnxmltools``) is maintained and takes its trees: the
scikit-learn converter (``skl2onnx``) does not convert scikit-learn 1.9's
HistGradientBoosting trees. The boosters are saved in LightGBM's own text format, never
pickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast.contract import CATEGORICAL, NUMERIC
from brewcast.schema import LABEL, REGRESSION_TARGET
from models.inputs import NUMERIC_INPUT, Preprocessing

log = logging.getLogger(__name__)

#: The Huber loss's switch from squared to absolute error, in hours (the network's is a day).
HUBER_HOURS = 24.0
#: LightGBM's ``decision_type`` bit of a categorical split (its threshold is no number).
_CATEGORICAL_SPLIT = 1


@dataclass(frozen=True)
class BoostedConfig:
    rounds: int = 800
    learning_rate: float = 0.05
    leaves: int = 31
    min_child_rows: int = 40
    patience: int = 40
    seed: int = 42

    def params(self) -> dict[str, object]:
        return {f"boosted_{k}": v for k, v in self.__dict__.items()}


def boosted_matrix(pre: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
    """The network's inputs as one float32 matrix: imputed numbers, then category indices
    (what the exported graph's ``pre`` part computes)."""
    indices = [pre.index(name, frame[name].to_numpy(dtype=object)) for name in CATEGORICAL]
    return np.hstack([pre.numeric_matrix(frame), *indices]).astype(np.float32)


@dataclass
class BoostedModel:
    classifier: object  # lightgbm.Booster
    regressor: object  # lightgbm.Booster

    CLASSIFIER_FILE = "classifier.txt"
    REGRESSOR_FILE = "regressor.txt"

    def raw(self, pre: Preprocessing, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(logit, hours) before calibration, in float64."""
        x = boosted_matrix(pre, frame)
        logit = self.classifier.predict(x, raw_score=True)
        hours = self.regressor.predict(x)
        return np.asarray(logit, np.float64).ravel(), np.asarray(hours, np.float64).ravel()

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.classifier.save_model(str(directory / self.CLASSIFIER_FILE))
        self.regressor.save_model(str(directory / self.REGRESSOR_FILE))
        return directory

    @classmethod
    def load(cls, directory: Path) -> BoostedModel:
        import lightgbm

        return cls(
            lightgbm.Booster(model_file=str(directory / cls.CLASSIFIER_FILE)),
            lightgbm.Booster(model_file=str(directory / cls.REGRESSOR_FILE)),
        )

    def to_onnx(self):
        """Both boosters as one graph with the network's interface: inputs ``numeric`` and
        one ``[N, 1]`` int64 index per category, outputs ``logit`` and ``hours``."""
        return boosted_graph(self.classifier, self.regressor)


def _params(config: BoostedConfig, **extra) -> dict:
    return {
        "learning_rate": config.learning_rate,
        "num_leaves": config.leaves,
        "min_data_in_leaf": config.min_child_rows,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
        **extra,
    }


def _train(params: dict, x, y, x_val, y_val, config: BoostedConfig, progress: bool, name: str):
    import lightgbm

    data = lightgbm.Dataset(x, y, free_raw_data=False)
    valid = lightgbm.Dataset(x_val, y_val, reference=data)
    callbacks = [lightgbm.early_stopping(config.patience, verbose=False)]
    if progress:
        callbacks.append(lightgbm.log_evaluation(100))
    booster = lightgbm.train(
        params,
        data,
        num_boost_round=config.rounds,
        valid_sets=[valid],
        valid_names=[f"{name} validation"],
        callbacks=callbacks,
    )
    return booster


def train_boosted(
    pre: Preprocessing,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: BoostedConfig,
    progress: bool = True,
) -> tuple[BoostedModel, dict]:
    """Both boosters, each stopped early on the validation split; (model, fit info)."""
    x, x_val = boosted_matrix(pre, train), boosted_matrix(pre, validation)
    classifier = _train(
        _params(config, objective="binary", metric="binary_logloss"),
        x,
        train[LABEL].astype(int).to_numpy(),
        x_val,
        validation[LABEL].astype(int).to_numpy(),
        config,
        progress,
        "classifier",
    )
    finishing = train[REGRESSION_TARGET].notna().to_numpy()
    finishing_val = validation[REGRESSION_TARGET].notna().to_numpy()
    regressor = _train(
        _params(config, objective="huber", alpha=HUBER_HOURS, metric="l1"),
        x[finishing],
        train[REGRESSION_TARGET].to_numpy()[finishing],
        x_val[finishing_val],
        validation[REGRESSION_TARGET].to_numpy()[finishing_val],
        config,
        progress,
        "regressor",
    )
    info = {
        "classifier_rounds": classifier.best_iteration or classifier.current_iteration(),
        "regressor_rounds": regressor.best_iteration or regressor.current_iteration(),
        "params": config.params(),
    }
    # the best iteration's trees only, each threshold exact in float32 (the ONNX graph's)
    return BoostedModel(float32_thresholds(classifier), float32_thresholds(regressor)), info


def _floor_to_float32(value: float) -> float:
    """The largest float32 not above ``value``: for any float32 ``x``, ``x <= value`` exactly
    when ``x <= _floor_to_float32(value)``."""
    single = np.float32(value)
    if float(single) > value:
        single = np.nextafter(single, np.float32(-np.inf))
    return float(single)


def float32_thresholds(booster):
    """The same booster with every numeric split threshold moved down to a float32.

    LightGBM compares ``x <= threshold`` in float64, and the ONNX tree ensemble in float32:
    a threshold rounded to the nearest float32 sends the inputs between the two to the
    wrong child (the converted graph differed by 0.007 in probability). Rounded down
    instead, every float32 input (all this model ever sees) takes the same path as before,
    so LightGBM's own predictions do not change and the graph reproduces them.
    """
    import lightgbm

    # tree_sizes (bytes per tree) would no longer hold; without it the trees are read in turn
    text = "\n".join(
        line for line in booster.model_to_string().split("\n") if not line.startswith("tree_sizes=")
    )
    blocks = text.split("\nTree=")
    for b, block in enumerate(blocks[1:], start=1):
        lines = block.split("\n")
        fields = {line.split("=", 1)[0]: i for i, line in enumerate(lines) if "=" in line}
        if "threshold" not in fields:
            continue
        decisions = [int(v) for v in lines[fields["decision_type"]].split("=", 1)[1].split()]
        values = lines[fields["threshold"]].split("=", 1)[1].split()
        lines[fields["threshold"]] = "threshold=" + " ".join(
            v if d & _CATEGORICAL_SPLIT else repr(_floor_to_float32(float(v)))
            for v, d in zip(values, decisions, strict=True)
        )
        blocks[b] = "\n".join(lines)
    return lightgbm.Booster(model_str="\nTree=".join(blocks))


def _tree_node(booster, width: int, input_name: str):
    """The booster's trees as one ai.onnx.ml TreeEnsemble node reading ``input_name``, and
    its output names (converted by onnxmltools)."""
    from onnxmltools.convert import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted = convert_lightgbm(
        booster, initial_types=[("features", FloatTensorType([None, width]))], zipmap=False
    )
    trees = [n for n in converted.graph.node if n.op_type.startswith("TreeEnsemble")]
    if len(trees) != 1:
        raise RuntimeError(f"expected one tree ensemble, the converter wrote {len(trees)}")
    node = trees[0]
    node.input[:] = [input_name]
    return node


def boosted_graph(classifier, regressor):
    """The two boosters as the ``net`` part of the exported graph (see :class:`BoostedModel`)."""
    from onnx import TensorProto, helper, numpy_helper

    from models.export import _model

    width = len(NUMERIC) + len(CATEGORICAL)
    cls = _tree_node(classifier, width, "features")
    # Raw score, not probability: the calibration behind is the one every family shares.
    for attribute in cls.attribute:
        if attribute.name == "post_transform":
            attribute.s = b"NONE"
    cls.output[:] = ["class", "scores"]  # scores: [-raw, raw] for a binary booster
    reg = _tree_node(regressor, width, "features")
    reg.output[:] = ["hours"]
    casts = [
        helper.make_node("Cast", [name], [f"{name}/float"], to=TensorProto.FLOAT)
        for name in CATEGORICAL
    ]
    nodes = [
        *casts,
        helper.make_node(
            "Concat", [NUMERIC_INPUT, *(c.output[0] for c in casts)], ["features"], axis=1
        ),
        cls,
        helper.make_node(
            "Slice", ["scores", "one", "two", "one"], ["logit"], name="positive_class"
        ),
        reg,
    ]
    graph = helper.make_graph(
        nodes,
        "boosted",
        [
            helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, ["N", len(NUMERIC)]),
            *(helper.make_tensor_value_info(n, TensorProto.INT64, ["N", 1]) for n in CATEGORICAL),
        ],
        [
            helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("hours", TensorProto.FLOAT, ["N", 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([2], np.int64), "two"),
        ],
    )
    return _model(graph)

"""Training stages: the network beats the no-ML rule, calibration helps, the threshold
follows the costs, the ONNX graph takes raw schema inputs and matches Keras."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest

from application import stages
from brewcast.contract import CATEGORICAL, NUMERIC, OUTPUTS, raw_inputs
from brewcast.schema import FEATURES, LABEL, categorical_features, numeric_features
from models import metrics, pipeline
from models.calibrate import Calibration
from models.export import PARITY_LIMIT, cpu_session, run_onnx
from models.workdir import TrainingWorkdir
from tests.conftest import TRAINING_OVERRIDES


def _load(workdir, name):
    return json.loads((workdir / name).read_text())


def test_splits_keep_batches_apart(trained):
    _, workdir = trained
    frames = {s: pd.read_parquet(workdir / f"{s}.parquet") for s in ("train", "validation", "test")}
    ids = [set(f["batch_id"]) for f in frames.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    data = _load(workdir, "data.json")
    assert len(data["data_snapshot_id"]) == 16 and data["test_batches"] >= 5


def test_the_candidate_beats_the_rule_and_calibration_helps(trained):
    _, workdir = trained
    evaluation = _load(workdir, "evaluation.json")
    test = evaluation["test"]
    assert test["auc"] > 0.95
    assert evaluation["beats_baselines"]["slope_rule"]  # over the whole paired interval
    assert test["log_loss"] < evaluation["baselines"]["slope_rule"]["log_loss"]
    cal = evaluation["calibration_validation"]
    assert cal["validation_after"]["log_loss"] <= cal["validation_before"]["log_loss"] + 1e-9
    fitted = _load(workdir, "fit.json")["families"]["network"]
    assert 1 <= fitted["best_epoch"] <= fitted["epochs_run"] <= TRAINING_OVERRIDES["epochs"]


def test_evaluation_matches_an_independent_computation(trained):
    _, workdir = trained
    test = pd.read_parquet(workdir / "test.parquet")
    test = test[test["hours_remaining"].isna() | (test["hours_remaining"] > 0)]  # pre-finish
    probability, _ = run_onnx(cpu_session((workdir / "model.onnx").read_bytes()), test)
    from sklearn.metrics import log_loss, roc_auc_score

    evaluation = _load(workdir, "evaluation.json")["test"]
    assert evaluation["auc"] == pytest.approx(roc_auc_score(test[LABEL], probability))
    assert evaluation["log_loss"] == pytest.approx(log_loss(test[LABEL], probability), rel=1e-6)
    slices = pd.read_csv(workdir / "slices.csv")
    assert set(slices["slice"]) == {"brand", "style", "yeast_strain", "fermenter", "season"}
    for key, part in slices.groupby("slice"):
        assert part["rows"].sum() == len(test), key
    for plot in (
        "calibration",
        "roc_pr",
        "bias_by_slice",
        "loss_curves",
        "calibration_by_yeast_strain",
    ):
        assert (workdir / "plots" / f"{plot}.png").stat().st_size > 5000


def test_threshold_follows_the_costs(trained):
    settings, workdir = trained
    threshold = _load(workdir, "calibration.json")["threshold"]
    assert threshold["policy"] == "cost" and threshold["threshold"] > 0.5  # FP costs 10x
    cheap_fp = settings.model_copy(update={"cost_false_finished": 1.0, "cost_late": 10.0})
    other = workdir.parent / "cheap_fp"
    other.mkdir(exist_ok=True)
    for name in (
        "train.parquet",
        "validation.parquet",
        "test.parquet",
        "preprocessing.json",
        "network.keras",
        "fit.json",
    ):
        (other / name).write_bytes((workdir / name).read_bytes())
    shutil.copytree(workdir / "boosted", other / "boosted", dirs_exist_ok=True)
    cheaper = stages.train_step("calibrate", other, cheap_fp).details["threshold"]["threshold"]
    assert cheaper < threshold["threshold"]


def test_onnx_graph_takes_the_schema_and_matches_keras(trained):
    _, workdir = trained
    model = onnx.load(str(workdir / "families" / "network.onnx"))
    # Two inputs (numbers, categories), their columns in schema order, named in the metadata.
    assert [i.name for i in model.graph.input] == ["numeric", "categorical"]
    widths = [i.type.tensor_type.shape.dim[1].dim_value for i in model.graph.input]
    assert widths == [len(numeric_features()), len(categorical_features())]
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    # Every column's embedding comes from one Gather of the categories' table cells: Keras'
    # negative-index guard (never true here) is gone, and so are the per-column lookups.
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert [list(g.input) for g in gathers] == [["pre/embedding_rows", "pre/cell"]]
    assert not {"Less", "Not", "Split"} & {n.op_type for n in model.graph.node}
    assert len(model.graph.node) <= 20  # 69 as tf2onnx and the hand-built parts first had it
    # The normalisation and the calibration are folded into the dense layers' weights.
    assert not {"Sub", "Mul"} & {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"schema_fingerprint", "calibration", "threshold", "data_snapshot_id"} <= set(meta)
    # a reading asked for is cheap: the prompt threshold (1:1 costs) is no higher
    chosen = _load(workdir, "calibration.json")
    assert chosen["prompt_threshold"]["cost_false_finished"] == 1.0
    assert 0 < float(meta["prompt_threshold"]) <= float(meta["threshold"])
    assert float(meta["prompt_threshold"]) == pytest.approx(
        min(chosen["prompt_threshold"]["threshold"], chosen["threshold"]["threshold"])
    )
    assert json.loads(meta["input_columns"]) == {
        "numeric": [c.name for c in numeric_features()],
        "categorical": [c.name for c in categorical_features()],
    }
    parity = _load(workdir, "export.json")
    assert parity["parity_max_abs_error"] < PARITY_LIMIT
    assert parity["parity_rows"] == len(pd.read_parquet(workdir / "test.parquet"))


def test_onnx_handles_unknown_categories_and_missing_numbers(trained):
    _, workdir = trained
    session = cpu_session((workdir / "model.onnx").read_bytes())
    row = pd.read_parquet(workdir / "test.parquet").head(1)
    base, _ = run_onnx(session, row)
    unknown = row.copy()
    unknown["brand"] = "mystery_ale"
    oov = row.copy()
    oov["brand"] = None
    assert run_onnx(session, unknown)[0] == pytest.approx(run_onnx(session, oov)[0])
    pre = json.loads((workdir / "preprocessing.json").read_text())
    missing = row.copy()
    missing["dissolved_oxygen_ppm"] = np.nan
    filled = row.copy()
    filled["dissolved_oxygen_ppm"] = pre["fill_values"]["dissolved_oxygen_ppm"]
    assert run_onnx(session, missing)[0] == pytest.approx(run_onnx(session, filled)[0], abs=1e-6)
    assert 0.0 <= base[0] <= 1.0
    inputs = raw_inputs(row)
    assert inputs["numeric"].shape == (1, len(NUMERIC))
    assert inputs["categorical"].shape == (1, len(CATEGORICAL))
    assert inputs["categorical"][0].tolist() == [row[name].iloc[0] or "" for name in CATEGORICAL]


def test_schema_views_agree(trained):
    """The one schema: GX suites, dataset, network inputs, ONNX inputs all derive from it."""
    settings, workdir = trained
    from validation.suites import build_expectations

    suite_columns = {
        e.column
        for e in build_expectations(FEATURES, settings)
        if getattr(e, "column", None) and not e.column.startswith("check_")
    }
    assert suite_columns == set(FEATURES.names)
    test = pd.read_parquet(workdir / "test.parquet")
    assert list(test.columns) == FEATURES.names
    from models.network import load_network

    net = load_network(workdir / "network.keras")
    assert [i.name for i in net.inputs] == ["numeric", *CATEGORICAL]
    assert net.inputs[0].shape[-1] == len(NUMERIC)


def test_too_little_data_is_a_clear_error(settings, small_world, tmp_path):
    from tests.conftest import publish_training_features

    few = small_world.batches.iloc[:8]["batch_id"]
    world = type(small_world)(
        small_world.config,
        small_world.batches[small_world.batches["batch_id"].isin(few)],
        small_world.readings[small_world.readings["batch_id"].isin(few)],
        small_world.truth,
    )
    publish_training_features(settings, world)
    with pytest.raises(pipeline.TrainingError, match="too little labelled data"):
        stages.train_step("prepare", tmp_path / "w", settings)
    assert not (tmp_path / "w").exists()  # a refused run leaves no half work directory
    empty = settings.model_copy(update={"home": tmp_path / "empty"})
    with pytest.raises(pipeline.NoTrainingDataError, match="no published features"):
        stages.train_step("prepare", tmp_path / "w2", empty)


def test_the_training_steps_are_named_alike_everywhere():
    """The DAG's tasks, the step functions and the workdir's file lists name the same steps
    in the same order."""
    from application.orchestration import TRAINING_STEPS
    from models import promotion
    from models.workdir import STEP_FILES

    functions = [*pipeline.STEPS, *promotion.STEPS]
    assert list(TRAINING_STEPS) == functions == list(STEP_FILES)


def test_embedding_width_follows_fourth_root_of_vocabulary():
    from models.network import embedding_width

    assert embedding_width(13) == round(13**0.25)  # 12 fermenters + OOV
    assert embedding_width(81) == 3
    assert embedding_width(5) == 2  # 4 values + OOV: never narrower than 2


def test_calibration_applies_as_in_the_graph():
    cal = Calibration("platt", 2.0, -1.0)
    assert cal.apply(np.array([0.5]))[0] == pytest.approx(0.5)
    assert metrics.log_loss([1], [0.5]) == pytest.approx(np.log(2))


def test_training_is_seeded_and_reproducible(trained, tmp_path):
    settings, workdir = trained
    quick = settings.model_copy(update={"epochs": 2, "patience": 2})
    logits = []
    for run in ("a", "b"):
        other = tmp_path / run
        other.mkdir()
        for name in ("train.parquet", "validation.parquet", "test.parquet", "preprocessing.json"):
            (other / name).write_bytes((workdir / name).read_bytes())
        stages.train_step("fit", other, quick)
        from models.network import predict_network

        model = TrainingWorkdir(other).load_network()
        pre = TrainingWorkdir(other).load_preprocessing()
        logits.append(
            predict_network(model, pre.network_inputs(pd.read_parquet(other / "test.parquet")))[0]
        )
    np.testing.assert_array_equal(logits[0], logits[1])


def test_affine_constants_fold_into_the_dense_layers():
    """A hand graph: normalised x beside y into a dense layer, then a head scaled and
    shifted. Folded, it computes the same as NumPy does with the unfolded formula, with the
    Sub and the three constant Mul/Adds gone."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from models.export import IR_VERSION, OPSET, fold_affine_constants

    rng = np.random.default_rng(0)
    c = {
        "mean": rng.normal(size=(1, 3)),
        "inverse_std": rng.uniform(0.5, 2.0, size=(1, 3)),
        "w": rng.normal(size=(5, 4)),
        "b": rng.normal(size=4),
        "w_head": rng.normal(size=(4, 1)),
        "b_head": rng.normal(size=1),
        "scale": np.array(1.7),
        "shift": np.array(-0.3),
    }
    node = helper.make_node
    nodes = [
        node("Sub", ["x", "mean"], ["centred"]),
        node("Mul", ["centred", "inverse_std"], ["normal"]),
        node("Concat", ["y", "normal"], ["both"], axis=1),  # x's rows are 2..4 of w
        node("MatMul", ["both", "w"], ["product"]),
        node("Add", ["product", "b"], ["hidden"]),
        node("Relu", ["hidden"], ["relu"]),
        node("MatMul", ["relu", "w_head"], ["head_product"]),
        node("Add", ["head_product", "b_head"], ["head"]),
        node("Mul", ["head", "scale"], ["scaled"]),
        node("Add", ["shift", "scaled"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in c.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    assert fold_affine_constants(model.graph) == 4
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Concat", "MatMul", "Add", "Relu", "MatMul", "Add"]
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = rng.normal(size=(64, 2)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(["out"], {"x": x, "y": y})
    hidden = np.hstack([y, (x - c["mean"]) * c["inverse_std"]]) @ c["w"] + c["b"]
    want = (np.maximum(hidden, 0) @ c["w_head"] + c["b_head"]) * c["scale"] + c["shift"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_categories_shared_between_columns_get_each_columns_own_index():
    """The pre graph looks every category up once in one vocabulary over all columns: a
    value that two columns share must still get each column's own index (hand example)."""
    import onnxruntime as ort

    from models.export import pre_graph
    from models.inputs import Preprocessing

    vocabularies = dict(
        zip(CATEGORICAL, [("a", "b"), ("b", "c"), ("c", "a"), ("a", "d")], strict=True)
    )
    pre = Preprocessing({name: 0.0 for name in NUMERIC}, vocabularies)
    session = ort.InferenceSession(
        pre_graph(pre).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    categories = np.array([["b", "b", "a", "d"], ["a", "c", "c", "a"], ["", "zz", "b", "b"]])
    numbers = np.full((3, len(NUMERIC)), np.nan, np.float32)
    names = [f"pre/{name}" for name in CATEGORICAL]
    out = session.run(names, {"numeric": numbers, "categorical": categories.astype(object)})
    assert np.hstack(out).tolist() == [[2, 1, 2, 2], [1, 2, 1, 1], [0, 0, 0, 0]]


def test_embedding_lookups_merge_whatever_the_concatenation_order():
    """A hand network behind the real pre graph, its embeddings concatenated out of column
    order around the numbers: merged into one lookup, it computes the same outputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from models.export import merge_embedding_lookups, pre_graph
    from models.inputs import Preprocessing

    rng = np.random.default_rng(1)
    vocabularies = dict(
        zip(CATEGORICAL, [("a", "b"), ("b", "c", "d"), ("c", "e"), ("f",)], strict=True)
    )
    model = pre_graph(Preprocessing({name: 0.0 for name in NUMERIC}, vocabularies))
    graph = model.graph
    order = [CATEGORICAL[2], None, CATEGORICAL[3], CATEGORICAL[1], CATEGORICAL[0]]
    pieces = []
    for name in order:
        if name is None:
            pieces.append("pre/numeric")
            continue
        rows = rng.normal(size=(len(vocabularies[name]) + 1, 3)).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(rows, f"E_{name}"))
        graph.node.extend(
            [
                helper.make_node("Gather", [f"E_{name}", f"pre/{name}"], [f"g_{name}"]),
                helper.make_node("Reshape", [f"g_{name}", "flat"], [f"r_{name}"]),
            ]
        )
        pieces.append(f"r_{name}")
    width = len(NUMERIC) + 3 * len(CATEGORICAL)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, 3], np.int64), "flat"),
            numpy_helper.from_array(rng.normal(size=(width, 2)).astype(np.float32), "W"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Concat", pieces, ["joined"], axis=1),
            helper.make_node("MatMul", ["joined", "W"], ["out"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2]))
    feed = {
        "numeric": rng.normal(size=(5, len(NUMERIC))).astype(np.float32),
        "categorical": np.array(
            [
                ["a", "b", "c", "f"],
                ["b", "d", "x", ""],
                ["", "c", "e", "f"],
                ["b", "b", "c", "zz"],
                ["zz", "d", "", "f"],
            ],
            dtype=object,
        ),
    }

    def run() -> np.ndarray:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(["out"], feed)[0]

    before, nodes = run(), len(graph.node)
    assert merge_embedding_lookups(graph) == 2 * len(CATEGORICAL)
    onnx.checker.check_model(model, full_check=True)
    assert len(graph.node) == nodes - 2 * len(CATEGORICAL)
    np.testing.assert_allclose(run(), before, rtol=1e-6, atol=1e-6)

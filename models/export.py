"""One ONNX graph from raw schema inputs to calibrated probability and hours remaining.

It is composed of three parts, merged with ``onnx.compose``:

* ``pre`` (hand-built): two inputs (:func:`brewcast.contract.raw_inputs`) — the numbers as one
  float32 matrix, NaN imputed by the training medians (``IsNaN`` + ``Where``), the
  categories as one string matrix, looked up in one ``ai.onnx.ml.LabelEncoder`` over every
  column's vocabulary, then mapped to each column's own vocabulary index by a table
  (unknown -> 0, the OOV index) and split into columns;
* ``net``: the Keras network (its Normalization layer included), converted with
  ``tf2onnx.convert.from_function`` and an explicit input signature. ``model.export``
  leaves the Normalization statistics as extra graph *inputs*, so the captured constants
  are frozen into initializers here;
* ``post`` (hand-built): ``probability = Sigmoid(a * logit + b)`` (the calibration) and
  ``hours_remaining = Relu(hours)``.

The merged graph is then made cheaper without changing what it computes (most of a small
batch's time is per node): Keras' negative-index guards dropped, constant scales and shifts
folded into the dense layers' weights, and every column's embedding looked up by one
Gather (69 nodes as first converted, 19 after).

The boosted family (``models.boosted``) takes the network's place in the middle, with
the same interface, so the graph's inputs, outputs and calibration are the same whichever
family won. The parity check runs the graph in onnxruntime on the test split and compares
it with the family's own model plus the same calibration in NumPy; above
``PARITY_LIMIT`` the export fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brewcast.contract import (
    CATEGORICAL,
    META_CALIBRATION,
    META_INPUT_COLUMNS,
    META_SCHEMA_FINGERPRINT,
    META_VOCABULARIES,
    NUMERIC,
    OUTPUTS,
    RAW_CATEGORICAL,
    RAW_NUMERIC,
    frame_inputs,
)
from brewcast.schema import schema_fingerprint
from models.calibrate import Calibration
from models.inputs import NUMERIC_INPUT, Preprocessing
from models.reproducible import canonical_numbers

PARITY_LIMIT = 1e-4
IR_VERSION = 8  # what tf2onnx 1.17 writes; merge_models needs every part to agree
OPSET = 17
ML_OPSET = 2  # ai.onnx.ml LabelEncoder-2: keys_strings / values_int64s / default_int64


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the Keras model within the limit."""


@dataclass
class ExportResult:
    model: object  # onnx.ModelProto
    parity_max_abs_error: float
    parity_hours_max_abs_error: float
    parity_rows: int
    #: The graph's own hours remaining on the parity rows (what serving would answer).
    parity_hours: np.ndarray

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


def network_to_onnx(model) -> object:
    """The Keras network as ONNX with its captured constants frozen into initializers."""
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    try:  # Keras ships a NumPy 2 compatibility patch for tf2onnx
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    except ImportError:  # pragma: no cover - older Keras
        pass
    numeric_width = model.get_layer("normalise").input.shape[-1]
    spec = [tf.TensorSpec((None, numeric_width), tf.float32, name=NUMERIC_INPUT)] + [
        tf.TensorSpec((None, 1), tf.int64, name=name) for name in CATEGORICAL
    ]
    names = [NUMERIC_INPUT, *CATEGORICAL]

    @tf.function(input_signature=spec)
    def serve(*tensors):
        out = model(dict(zip(names, tensors, strict=True)), training=False)
        return {"logit": out["logit"], "hours": out["hours"]}

    concrete = serve.get_concrete_function(*spec)
    captured = {
        t.name.split(":")[0] + ":0": v.numpy()
        for t, v in zip(concrete.inputs[len(spec) :], concrete.captured_inputs, strict=False)
        if v.dtype != tf.resource
    }
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    keep = []
    for value in proto.graph.input:
        if value.name in captured:
            proto.graph.initializer.append(
                numpy_helper.from_array(captured[value.name], value.name)
            )
        else:
            keep.append(value)
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    return proto


def _category_tables(pre: Preprocessing) -> tuple[list[str], np.ndarray]:
    """The categories of every column as one vocabulary, and a table from (column, index in
    that vocabulary) to the column's own index: a category is looked up once, whatever
    column it is in (index 0, out of vocabulary, everywhere)."""
    union = sorted({v for name in CATEGORICAL for v in pre.vocabularies[name]})
    position = {v: i for i, v in enumerate(union, start=1)}
    table = np.zeros((len(CATEGORICAL), len(union) + 1), np.int64)
    for column, name in enumerate(CATEGORICAL):
        for index, value in enumerate(pre.vocabularies[name], start=1):
            table[column, position[value]] = index
    return union, table


def pre_graph(pre: Preprocessing):
    from onnx import TensorProto, helper, numpy_helper

    fill = np.array([pre.fill_values[n] for n in NUMERIC], np.float32).reshape(1, -1)
    union, table = _category_tables(pre)
    offsets = (np.arange(len(CATEGORICAL), dtype=np.int64) * table.shape[1]).reshape(1, -1)
    nodes = [
        helper.make_node("IsNaN", [RAW_NUMERIC], ["pre/missing"], name="pre/isnan"),
        helper.make_node(
            "Where", ["pre/missing", "pre/fill", RAW_NUMERIC], ["pre/numeric"], name="pre/impute"
        ),
        # categories -> index in the union (one string lookup per value) -> the column's own
        # index through the flattened table -> one [N, 1] index per column
        helper.make_node(
            "LabelEncoder",
            [RAW_CATEGORICAL],
            ["pre/category"],
            domain="ai.onnx.ml",
            name="pre/vocabulary",
            keys_strings=union,
            values_int64s=list(range(1, len(union) + 1)),
            default_int64=0,
        ),
        helper.make_node("Add", ["pre/category", "pre/offsets"], ["pre/cell"], name="pre/cell"),
        helper.make_node("Gather", ["pre/table", "pre/cell"], ["pre/index"], name="pre/index"),
        helper.make_node(
            "Split",
            ["pre/index", "pre/split"],
            [f"pre/{name}" for name in CATEGORICAL],
            axis=1,
            name="pre/split",
        ),
    ]
    inputs = [
        helper.make_tensor_value_info(RAW_NUMERIC, TensorProto.FLOAT, ["N", len(NUMERIC)]),
        helper.make_tensor_value_info(RAW_CATEGORICAL, TensorProto.STRING, ["N", len(CATEGORICAL)]),
    ]
    outputs = [
        helper.make_tensor_value_info("pre/numeric", TensorProto.FLOAT, ["N", len(NUMERIC)]),
        *(
            helper.make_tensor_value_info(f"pre/{name}", TensorProto.INT64, ["N", 1])
            for name in CATEGORICAL
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "preprocess",
        inputs,
        outputs,
        initializer=[
            numpy_helper.from_array(fill, "pre/fill"),
            numpy_helper.from_array(offsets, "pre/offsets"),
            numpy_helper.from_array(table.ravel(), "pre/table"),
            numpy_helper.from_array(np.ones(len(CATEGORICAL), np.int64), "pre/split"),
        ],
    )
    return _model(graph)


def _post_graph(calibration: Calibration):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["post/logit", "post/a"], ["post/scaled"]),
        helper.make_node("Add", ["post/scaled", "post/b"], ["post/z"]),
        helper.make_node("Sigmoid", ["post/z"], ["probability"]),
        helper.make_node("Relu", ["post/hours"], ["hours_remaining"]),
    ]
    graph = helper.make_graph(
        nodes,
        "calibrate",
        [
            helper.make_tensor_value_info("post/logit", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("post/hours", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1]) for name in OUTPUTS],
        initializer=[
            numpy_helper.from_array(np.array(calibration.a, np.float32), "post/a"),
            numpy_helper.from_array(np.array(calibration.b, np.float32), "post/b"),
        ],
    )
    return _model(graph)


def _model(graph):
    from onnx import helper

    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        producer_name="brewcast",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )


#: Ops of the guard Keras 3 puts before an embedding's gather (``where(i < 0, i + V, i)``),
#: which tf2onnx writes as eight nodes per embedding.
_GUARD_OPS = {"Add", "Mul", "Cast", "Less", "Not"}


def drop_negative_index_guards(graph) -> int:
    """Feed each embedding's Gather its vocabulary index directly; the guards removed.

    The indices come from this graph's own LabelEncoders, whose default (out of vocabulary)
    is 0, so they are never negative and the guard never changes a value: it only costs
    32 of the graph's ~70 nodes, most of a batch-1 call. Gathers whose index is not such a
    guard over a single ``pre/`` index are left as they are.
    """
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for gather in (n for n in graph.node if n.op_type == "Gather"):
        roots, stack, pure = set(), [gather.input[1]], True
        while stack and pure:
            name = stack.pop()
            if name.startswith("pre/"):
                roots.add(name)
                continue
            node = producer.get(name)
            if node is None:  # an initializer (the vocabulary size, a constant)
                continue
            pure = node.op_type in _GUARD_OPS
            stack.extend(node.input)
        if pure and len(roots) == 1 and gather.input[1] not in roots:
            gather.input[1] = roots.pop()
            rewired += 1
    outputs = {o.name for o in graph.output}
    while True:  # prune what no longer feeds anything
        consumed = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(out in consumed for out in n.output)]
        if not dead:
            return rewired
        for node in dead:
            graph.node.remove(node)


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    for value in graph.output:
        out.setdefault(value.name, []).append(None)
    return out


def _widths(graph) -> dict[str, int]:
    """The last dimension of every input and intermediate value whose shape inference
    knows it (0 where it does not): the columns each contributes to a Concat."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(_model(graph)).graph
    return {
        v.name: v.type.tensor_type.shape.dim[-1].dim_value
        for v in (*inferred.input, *inferred.value_info)
        if v.type.tensor_type.shape.dim
    }


def _only_consumer(consumers: dict[str, list], name: str, op_type: str):
    """The single node reading ``name`` if it is an ``op_type``, else None."""
    readers = consumers.get(name, [])
    if len(readers) == 1 and readers[0] is not None and readers[0].op_type == op_type:
        return readers[0]
    return None


def _constant_operand(node, constants: dict[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    """(the other input, the constant) when exactly one input of ``node`` is a constant."""
    first, second = node.input[0], node.input[1]
    if second in constants and first not in constants:
        return first, constants[second]
    if first in constants and second not in constants and node.op_type in ("Mul", "Add"):
        return second, constants[first]
    return None


def fold_affine_constants(graph) -> int:
    """Fold constant scales and shifts into the weights of the dense layer next to them.

    * In front of the first layer: the network's Normalization, ``(x - mean) * 1/std`` fed
      through a Concat into ``MatMul(W) + b``, becomes ``x @ (W * 1/std) + (b - mean/std @ W)``
      on the rows of ``W`` that ``x`` meets;
    * behind an output layer: ``(x @ W + b) * s + t`` (the calibration's ``a`` and ``b``, the
      hours head's days-to-hours factor) becomes ``x @ (W s) + (b s + t)``.

    Same function, five fewer nodes: most of a small batch's time is per node. The folded
    weights are new initializers; what no longer feeds anything is pruned by the caller.
    Returns the number of nodes removed.
    """
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    def replace(name: str, value: np.ndarray) -> str:
        new = f"{name}/folded{len(constants)}"
        constants[new] = value
        graph.initializer.append(numpy_helper.from_array(value, new))
        return new

    removed = 0
    # behind the output layers, to a fixed point: Mul by a scalar, then Add of a scalar
    changed = True
    while changed:
        changed = False
        consumers = _consumers(graph)
        producer = {out: node for node in graph.node for out in node.output}
        for node in list(graph.node):
            if node.op_type not in ("Mul", "Add"):
                continue
            operand = _constant_operand(node, constants)
            if operand is None or operand[1].size != 1:
                continue
            bias_add = producer.get(operand[0])
            if bias_add is None or bias_add.op_type != "Add" or len(consumers[operand[0]]) != 1:
                continue
            product_and_bias = _constant_operand(bias_add, constants)
            matmul = producer.get(product_and_bias[0]) if product_and_bias else None
            if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in constants:
                continue
            factor = float(operand[1].ravel()[0])
            bias_name = bias_add.input[1] if bias_add.input[1] in constants else bias_add.input[0]
            bias = constants[bias_name].astype(np.float64)
            if node.op_type == "Mul":
                weights = constants[matmul.input[1]].astype(np.float64) * factor
                matmul.input[1] = replace(matmul.input[1], weights.astype(np.float32))
                bias = bias * factor
            else:
                bias = bias + factor
            new_bias = replace(bias_name, bias.astype(np.float32))
            bias_add.input[:] = [product_and_bias[0], new_bias]
            bias_add.output[0] = node.output[0]
            graph.node.remove(node)
            removed += 1
            changed = True
            break

    # in front of the first layer: Sub(x, mean) -> Mul(., 1/std) -> Concat -> MatMul -> Add
    consumers = _consumers(graph)
    for sub in [n for n in graph.node if n.op_type == "Sub" and n.input[1] in constants]:
        scale_mul = _only_consumer(consumers, sub.output[0], "Mul")
        scale = _constant_operand(scale_mul, constants) if scale_mul is not None else None
        concat = _only_consumer(consumers, scale_mul.output[0], "Concat") if scale else None
        matmul = _only_consumer(consumers, concat.output[0], "MatMul") if concat else None
        bias_add = _only_consumer(consumers, matmul.output[0], "Add") if matmul else None
        axis = next((a.i for a in concat.attribute if a.name == "axis"), 0) if concat else 0
        if bias_add is None or axis not in (1, -1):
            continue
        if matmul.input[1] not in constants or bias_add.input[1] not in constants:
            continue
        position = list(concat.input).index(scale_mul.output[0])
        inferred = _widths(graph)
        widths = [inferred.get(name, 0) for name in concat.input[:position]]
        if not all(widths):
            continue
        weights = constants[matmul.input[1]].astype(np.float64)
        start = sum(widths)
        width = inferred.get(scale_mul.output[0], 0) or constants[sub.input[1]].size
        rows = weights[start : start + width]
        mean = np.broadcast_to(constants[sub.input[1]].astype(np.float64).ravel(), (width,))
        inverse = np.broadcast_to(scale[1].astype(np.float64).ravel(), (width,))
        bias = constants[bias_add.input[1]].astype(np.float64) - (mean * inverse) @ rows
        folded = weights.copy()
        folded[start : start + width] = rows * inverse[:, None]
        matmul.input[1] = replace(matmul.input[1], folded.astype(np.float32))
        bias_add.input[1] = replace(bias_add.input[1], bias.astype(np.float32))
        concat.input[position] = sub.input[0]
        graph.node.remove(sub)
        graph.node.remove(scale_mul)
        removed += 2
    return removed


def merge_embedding_lookups(graph) -> int:
    """One Gather for every column's embedding instead of a table lookup, a Split and a
    Gather and a Reshape per column.

    The pre graph gives each category a cell of a [columns, union] table (``pre/cell``) and
    looks its column's index up there; the network then gathers that index's embedding row
    per column and concatenates the rows. Here the embedding rows are looked up through
    the same table ahead of time, stacked into one [columns * union, width] initializer
    that ``pre/cell`` indexes directly, and the first layer's weight rows are reordered to
    the new concatenation (other inputs first, then the embeddings in column order). The
    same function with 10 nodes fewer. Returns the nodes removed (0 when the graph is not
    shaped as expected, e.g. embeddings of different widths).
    """
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers = _consumers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    split = producer.get(f"pre/{CATEGORICAL[0]}")
    lookup = producer.get("pre/index")
    if split is None or split.op_type != "Split" or lookup is None or "pre/table" not in constants:
        return 0
    gathers = [_only_consumer(consumers, name, "Gather") for name in split.output]
    if any(g is None or g.input[0] not in constants for g in gathers):
        return 0
    reshapes = [_only_consumer(consumers, g.output[0], "Reshape") for g in gathers]
    concats = {
        id(c): c for r in reshapes if r for c in [_only_consumer(consumers, r.output[0], "Concat")]
    }
    if None in reshapes or len(concats) != 1 or None in concats.values():
        return 0
    concat = next(iter(concats.values()))
    matmul = _only_consumer(consumers, concat.output[0], "MatMul")
    widths = {constants[g.input[0]].shape[1] for g in gathers}
    if matmul is None or matmul.input[1] not in constants or len(widths) != 1:
        return 0
    width = widths.pop()
    table = constants["pre/table"].reshape(len(gathers), -1)
    stacked = np.concatenate(
        [constants[g.input[0]][table[c]] for c, g in enumerate(gathers)]
    ).astype(np.float32)

    block_widths = _widths(graph)
    embedded = {r.output[0] for r in reshapes}
    blocks, start = {}, 0
    for name in concat.input:
        size = width if name in embedded else block_widths.get(name, 0)
        if not size:
            return 0
        blocks[name] = (start, start + size)
        start += size
    others = [name for name in concat.input if name not in embedded]
    order = others + [r.output[0] for r in reshapes]
    weights = constants[matmul.input[1]]
    reordered = np.concatenate([weights[slice(*blocks[name])] for name in order])

    removed = [lookup, split, *gathers, *reshapes]
    for node in removed:
        graph.node.remove(node)
    graph.initializer.extend(
        [
            numpy_helper.from_array(stacked, "pre/embedding_rows"),
            numpy_helper.from_array(
                np.array([-1, len(gathers) * width], np.int64), "pre/embeddings_shape"
            ),
            numpy_helper.from_array(reordered, f"{matmul.input[1]}/reordered"),
        ]
    )
    at = list(graph.node).index(concat)
    graph.node.insert(
        at,
        helper.make_node(
            "Reshape",
            ["pre/embedded", "pre/embeddings_shape"],
            ["pre/embeddings"],
            name="pre/embeddings",
        ),
    )
    graph.node.insert(
        at,
        helper.make_node(
            "Gather", ["pre/embedding_rows", "pre/cell"], ["pre/embedded"], name="pre/embed"
        ),
    )
    concat.input[:] = [*others, "pre/embeddings"]
    matmul.input[1] = f"{matmul.input[1]}/reordered"
    return len(removed) - 2


def metadata_value(value: object) -> str:
    """A metadata property's text: JSON with its numbers at the precision the graph
    computes in (:func:`models.reproducible.canonical_numbers`; a string that is JSON is
    rounded the same way, other strings are kept)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if not isinstance(parsed, dict | list | float):
            return value
        value = parsed
    return json.dumps(canonical_numbers(value))


def compose_model(
    pre: Preprocessing, network, calibration: Calibration, metadata: dict[str, object] | None = None
):
    """pre + network + calibration as one checked ONNX model with metadata properties."""
    import onnx
    from onnx import compose

    net = compose.add_prefix(network, prefix="net/")  # its inputs share the raw names
    first = compose.merge_models(
        pre_graph(pre),
        net,
        io_map=[("pre/numeric", f"net/{NUMERIC_INPUT}")]
        + [(f"pre/{name}", f"net/{name}") for name in CATEGORICAL],
    )
    full = compose.merge_models(
        first,
        _post_graph(calibration),
        io_map=[("net/logit", "post/logit"), ("net/hours", "post/hours")],
        outputs=list(OUTPUTS),
    )
    drop_negative_index_guards(full.graph)
    fold_affine_constants(full.graph)
    merge_embedding_lookups(full.graph)
    used = {name for node in full.graph.node for name in node.input}
    unused = [init for init in full.graph.initializer if init.name not in used]
    for init in unused:  # constants tf2onnx folded away
        full.graph.initializer.remove(init)
    seen = {}  # merge_models repeats each domain's opset import once per merged part
    for opset in full.opset_import:
        seen.setdefault(opset.domain, opset.version)
    del full.opset_import[:]
    full.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in seen.items())
    full.graph.name = "fermentation_completion"
    meta = {
        META_SCHEMA_FINGERPRINT: schema_fingerprint(),
        # The columns of each input matrix, in order: what a caller without brewcast needs.
        META_INPUT_COLUMNS: json.dumps({RAW_NUMERIC: NUMERIC, RAW_CATEGORICAL: CATEGORICAL}),
        META_CALIBRATION: metadata_value(
            {"method": calibration.method, "a": calibration.a, "b": calibration.b}
        ),
        META_VOCABULARIES: json.dumps({k: list(v) for k, v in pre.vocabularies.items()}),
        **{k: metadata_value(v) for k, v in (metadata or {}).items()},
    }
    onnx.helper.set_model_props(full, meta)
    onnx.checker.check_model(full, full_check=True)
    return full


def cpu_session(model_bytes: bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the CUDA provider's absence is not news on a CPU host
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(session, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Probability and hours for ``frame``, from this graph or an older one (the champion a
    gate compares against may take other columns, or one input per column)."""
    probability, hours = session.run(list(OUTPUTS), frame_inputs(session, frame))
    return probability.ravel().astype(np.float64), hours.ravel().astype(np.float64)


def export_model(
    pre: Preprocessing,
    net,
    calibration: Calibration,
    parity_frame: pd.DataFrame,
    reference: tuple[np.ndarray, np.ndarray],
    metadata: dict[str, object] | None = None,
) -> ExportResult:
    """Compose ``pre`` + ``net`` (a family's graph: :func:`network_to_onnx` or
    ``models.boosted.boosted_graph``) + calibration and check it on ``parity_frame`` (the
    test split) against ``reference``, the family's own (logit, hours) there."""
    full = compose_model(pre, net, calibration, metadata)
    session = cpu_session(full.SerializeToString())
    probability, hours = run_onnx(session, parity_frame)
    logit, reference_hours = reference
    error = float(np.max(np.abs(probability - calibration.apply(logit)))) if len(logit) else 0.0
    hours_error = (
        float(np.max(np.abs(hours - np.maximum(reference_hours, 0.0)))) if len(logit) else 0.0
    )
    result = ExportResult(full, error, hours_error, len(parity_frame), hours)
    if error > PARITY_LIMIT:
        raise ParityError(
            f"ONNX probability differs from its model by {error:.3g} "
            f"(limit {PARITY_LIMIT:g}) on {len(parity_frame)} test rows"
        )
    return result

"""The exported model's contract: what the ONNX graph takes, what it returns, what it says
about itself. Training (``models/``) writes graphs to it and serving (``serving/``) calls
them through it, so neither imports the other.

Inputs are two matrices in schema order (also written in the ``input_columns`` metadata,
for a caller without brewcast): ``numeric``, float32 ``[N, len(NUMERIC)]`` with NaN where
missing, and ``categorical``, strings ``[N, len(CATEGORICAL)]`` with ``""`` where missing.
Two tensors, not one per column: onnxruntime's Python API costs a fixed amount per input
before any work, which was most of a batch-1 call with one input per column. A registry may
still hold a graph exported before that (one ``[N, 1]`` input per column):
:func:`takes_per_column_inputs` recognises it and :func:`per_column_inputs` feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from brewcast.schema import categorical_features, numeric_features

NUMERIC = [c.name for c in numeric_features()]
CATEGORICAL = [c.name for c in categorical_features()]
RAW_NUMERIC = "numeric"
RAW_CATEGORICAL = "categorical"
#: The graph's outputs, in this order: calibrated P(finished within the horizon), hours left.
OUTPUTS = ("probability", "hours_remaining")

# The graph's metadata properties (strings; JSON where the value is not one).
META_SCHEMA_FINGERPRINT = "schema_fingerprint"
META_INPUT_COLUMNS = "input_columns"
META_CALIBRATION = "calibration"
META_THRESHOLD = "threshold"
META_HORIZON_HOURS = "horizon_hours"
META_DATA_SNAPSHOT_ID = "data_snapshot_id"


def raw_inputs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The graph's two inputs for the schema columns of ``frame``."""
    numbers = frame[NUMERIC].astype("float64").to_numpy(dtype=np.float32)
    categories = frame[CATEGORICAL].astype(object)
    categories = categories.where(categories.notna(), "").to_numpy(dtype=object)
    return {RAW_NUMERIC: np.ascontiguousarray(numbers), RAW_CATEGORICAL: categories}


def raw_inputs_from_records(records: list[dict]) -> dict[str, np.ndarray]:
    """:func:`raw_inputs` for request rows (dicts), without building a DataFrame: the serving
    hot path (pandas costs milliseconds a request, this microseconds)."""
    rows = len(records)
    return {
        # numpy reads None as NaN: one conversion for every number.
        RAW_NUMERIC: np.array(
            [r.get(name) for r in records for name in NUMERIC], dtype=np.float32
        ).reshape(rows, len(NUMERIC)),
        RAW_CATEGORICAL: np.array(
            [r.get(name) or "" for r in records for name in CATEGORICAL], dtype=object
        ).reshape(rows, len(CATEGORICAL)),
    }


def takes_per_column_inputs(input_names: Iterable[str]) -> bool:
    """Whether a graph with these input names was exported before the two-matrix contract
    (one input per schema column); a registry may still hold one, as champion."""
    return set(input_names) == {*NUMERIC, *CATEGORICAL}


def per_column_inputs(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`raw_inputs` as one ``[N, 1]`` array per schema column (the older contract)."""
    out = {name: inputs[RAW_NUMERIC][:, [i]] for i, name in enumerate(NUMERIC)}
    out.update({name: inputs[RAW_CATEGORICAL][:, [i]] for i, name in enumerate(CATEGORICAL)})
    return out


def inputs_for(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` shaped for an onnxruntime ``session``'s graph, of either contract."""
    if takes_per_column_inputs(i.name for i in session.get_inputs()):
        return per_column_inputs(inputs)
    return inputs


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """The metadata properties of a serialized graph."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}

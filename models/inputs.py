"""Model inputs derived from the schema: the raw arrays the ONNX graph takes (numbers and
categories as two matrices, in schema order) and the network's arrays (imputed numeric
matrix, vocabulary indices).

Index 0 of every vocabulary is the out-of-vocabulary bucket; 1..V follow the schema's
order. Missing numbers are filled with the training split's medians; the same fill values
are baked into the ONNX graph, so serving and training agree by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brewcast.schema import categorical_features, numeric_features

NUMERIC = [c.name for c in numeric_features()]
CATEGORICAL = [c.name for c in categorical_features()]
NUMERIC_INPUT = "numeric"  # the network's numeric matrix
#: The exported model's inputs (see :func:`raw_inputs`).
RAW_NUMERIC = "numeric"
RAW_CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Preprocessing:
    fill_values: dict[str, float]
    vocabularies: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> Preprocessing:
        fills = {}
        for name in NUMERIC:
            median = train[name].median()
            fills[name] = float(median) if pd.notna(median) else 0.0
        vocab = {c.name: tuple(c.vocabulary or ()) for c in categorical_features()}
        return cls(fills, vocab)

    def numeric_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[NUMERIC].astype("float64").to_numpy(copy=True)
        fill = np.array([self.fill_values[n] for n in NUMERIC])
        missing = ~np.isfinite(values)
        values[missing] = np.broadcast_to(fill, values.shape)[missing]
        return values.astype(np.float32)

    def index(self, name: str, values) -> np.ndarray:
        """Vocabulary index per value, 0 for anything unknown or missing; shape [N, 1]."""
        lookup = {v: i for i, v in enumerate(self.vocabularies[name], start=1)}
        series = pd.Series(values, dtype=object)
        return series.map(lookup).fillna(0).to_numpy(dtype=np.int64).reshape(-1, 1)

    def network_inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        out = {NUMERIC_INPUT: self.numeric_matrix(frame)}
        for name in CATEGORICAL:
            out[name] = self.index(name, frame[name].to_numpy(dtype=object))
        return out


def raw_inputs(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The exported model's two inputs: ``numeric``, float32 ``[N, len(NUMERIC)]`` in
    :data:`NUMERIC` order (NaN where missing), and ``categorical``, strings
    ``[N, len(CATEGORICAL)]`` in :data:`CATEGORICAL` order ("" where missing).

    Two tensors, not one per column: onnxruntime's Python API costs ~1.5 us per input
    before any work, which was most of a batch-1 call with 18 inputs."""
    numbers = frame[NUMERIC].astype("float64").to_numpy(dtype=np.float32)
    categories = frame[CATEGORICAL].astype(object)
    categories = categories.where(categories.notna(), "").to_numpy(dtype=object)
    return {RAW_NUMERIC: np.ascontiguousarray(numbers), RAW_CATEGORICAL: categories}


def raw_inputs_from_records(records: list[dict]) -> dict[str, np.ndarray]:
    """:func:`raw_inputs` for request rows (dicts), without building a DataFrame: the serving
    hot path (pandas costs ~1.7 ms a request here, this a few us)."""
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
    """:func:`raw_inputs` as one ``[N, 1]`` array per schema column: the input contract of
    models exported before the two-tensor one, which a registry may still hold."""
    out = {name: inputs[RAW_NUMERIC][:, [i]] for i, name in enumerate(NUMERIC)}
    out.update({name: inputs[RAW_CATEGORICAL][:, [i]] for i, name in enumerate(CATEGORICAL)})
    return out

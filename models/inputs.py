"""The network's inputs derived from the schema: the imputed numeric matrix and one
vocabulary index per categorical column (the exported graph's raw inputs are the model
contract's, :mod:`brewcast.contract`).

Index 0 of every vocabulary is the out-of-vocabulary bucket; 1..V follow the schema's
order. Missing numbers are filled with the training split's medians; the same fill values
are baked into the ONNX graph, so serving and training agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brewcast.contract import CATEGORICAL, NUMERIC
from brewcast.schema import categorical_features

NUMERIC_INPUT = "numeric"  # the network's numeric matrix


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

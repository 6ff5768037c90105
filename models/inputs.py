"""The network's inputs derived from the schema: the imputed numeric matrix and one
vocabulary index per categorical column (the exported graph's raw inputs are the model
contract's, :mod:`brewcast.contract`).

Vocabularies are learned from the training split, not declared: a value seen in at least
``min_batches`` batches gets its own index (1..V, most frequent first), every other value,
and a missing one, shares index 0, the out-of-vocabulary bucket. A brewery's own brands,
fermenters and strains are therefore what its model knows, and the vocabulary travels with
the model (this artifact, the ONNX graph's lookup and its metadata). Missing numbers are
filled with the training split's medians; the same fill values are baked into the ONNX
graph, so serving and training agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brewcast.contract import CATEGORICAL, NUMERIC

NUMERIC_INPUT = "numeric"  # the network's numeric matrix


def learn_vocabulary(train: pd.DataFrame, column: str, min_batches: int) -> tuple[str, ...]:
    """The values of ``column`` seen in at least ``min_batches`` batches, most batches first
    (ties by name, so a refit on the same data gives the same indices)."""
    values = train[["batch_id", column]].dropna().drop_duplicates()
    counts = values[column].astype(str).value_counts()
    kept = counts[counts >= min_batches]
    return tuple(sorted(kept.index, key=lambda v: (-int(kept[v]), v)))


def with_unknown_batches(
    train: pd.DataFrame, share: float, seed: int, columns: list[str] | None = None
) -> pd.DataFrame:
    """A copy of the training split where, per categorical column, a seeded ``share`` of the
    batches has its value blanked (served through index 0, out of vocabulary).

    Without it no training row reaches index 0 when every value is common (the simulator's
    brands, any brewery's fermenters), so that embedding keeps its random initial values
    and a brand, fermenter or strain the model never saw gets a random forecast. Whole
    batches, because a new brand arrives as a whole batch; each column draws its own.
    """
    out = train.copy()
    batches = train["batch_id"].unique()
    count = round(share * len(batches))
    if count == 0:
        return out
    rng = np.random.default_rng(seed)
    for column in columns or CATEGORICAL:
        chosen = rng.choice(batches, size=count, replace=False)
        out[column] = out[column].astype(object)
        out.loc[out["batch_id"].isin(chosen), column] = None
    return out


@dataclass(frozen=True)
class Preprocessing:
    fill_values: dict[str, float]
    vocabularies: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, train: pd.DataFrame, min_batches: int = 1) -> Preprocessing:
        fills = {}
        for name in NUMERIC:
            median = train[name].median()
            fills[name] = float(median) if pd.notna(median) else 0.0
        return cls(
            fills, {name: learn_vocabulary(train, name, min_batches) for name in CATEGORICAL}
        )

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

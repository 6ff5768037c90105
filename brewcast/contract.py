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

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

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
#: P(finished within the horizon) from which a hand-logged batch is asked for a reading
#: (the decision's threshold where a model does not say).
META_PROMPT_THRESHOLD = "prompt_threshold"
META_HORIZON_HOURS = "horizon_hours"
META_DATA_SNAPSHOT_ID = "data_snapshot_id"
#: {column: [value, ...]}: the categories the model learned (index 1..V, in order).
META_VOCABULARIES = "vocabularies"
#: {"batches", "rows", "until"}: the training split the model learned from.
META_TRAINED_ON = "trained_on"
#: Which model family the graph holds ("network", "boosted"): the serving contract is the
#: same for all, this says which won the run that made it.
META_MODEL_FAMILY = "model_family"
#: :class:`brewcast.intervals.FinishForecast` as JSON: intervals for the hours remaining
#: and P(finished by t), per group of snapshots.
META_FINISH_FORECAST = "finish_forecast"
#: :class:`Familiarity` as JSON: how far from its training data a snapshot may lie.
META_FAMILIARITY = "familiarity"
#: What :class:`Familiarity` reads besides the numeric inputs (a snapshot column the
#: network does not take), and the dimension it derives from it: how often gravity is read.
READINGS_COUNT = "gravity_readings_count"
READINGS_PER_DAY = "gravity_readings_per_day"


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


def frame_inputs(session, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What an onnxruntime ``session``'s graph takes, built from a frame of snapshot
    columns by the graph's own account of its inputs: the columns its ``input_columns``
    metadata lists (a champion exported with other inputs, a season among its categories
    before the season became a slice key, is still scored on this run's rows), or one
    ``[N, 1]`` input per column for a graph older than the two matrices."""
    meta = session.get_modelmeta().custom_metadata_map
    matrices = {i.name for i in session.get_inputs()} == {RAW_NUMERIC, RAW_CATEGORICAL}
    if matrices and META_INPUT_COLUMNS in meta:
        columns = json.loads(meta[META_INPUT_COLUMNS])
        numbers = frame[columns[RAW_NUMERIC]].astype("float64").to_numpy(dtype=np.float32)
        categories = frame[columns[RAW_CATEGORICAL]].astype(object)
        categories = categories.where(categories.notna(), "").to_numpy(dtype=object)
        return {RAW_NUMERIC: np.ascontiguousarray(numbers), RAW_CATEGORICAL: categories}
    out = {}
    for graph_input in session.get_inputs():
        column = frame[[graph_input.name]]
        if graph_input.type == "tensor(string)":
            out[graph_input.name] = column.astype(object).where(column.notna(), "").to_numpy()
        else:
            out[graph_input.name] = column.astype("float64").to_numpy(dtype=np.float32)
    return out


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """The metadata properties of a serialized graph."""
    import onnx

    return {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}


@dataclass(frozen=True)
class Familiarity:
    """How far a snapshot lies from what the model was trained on, one definition for the
    training run that chooses the threshold and the service that flags requests.

    Each numeric input, plus the gravity reading cadence (readings per day, which another
    brewery's hydrometer or hand log changes most, though the network does not read it),
    is put on a robust scale fitted on the
    training split (median, and the 2.5-97.5 % range / 3.92, a standard deviation for
    normal data). The distance is the largest absolute scaled value over the inputs a
    snapshot has, so the response can name the input furthest out; inputs missing in the
    snapshot, or never present in training, do not count. A snapshot beyond ``threshold``
    (a high quantile of the validation split's distances) is out of distribution.
    """

    columns: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    threshold: float = float("inf")

    @staticmethod
    def inputs(frame: pd.DataFrame) -> np.ndarray:
        """What a familiarity is judged on, from snapshot columns: the numeric inputs and
        the reading count (NaN where missing)."""
        return frame.reindex(columns=[*NUMERIC, READINGS_COUNT]).to_numpy(dtype=np.float64)

    @staticmethod
    def inputs_from_records(records: list[dict]) -> np.ndarray:
        """:meth:`inputs` for request rows (dicts), without building a DataFrame."""
        names = [*NUMERIC, READINGS_COUNT]
        return np.array([r.get(name) for r in records for name in names], dtype=np.float64).reshape(
            len(records), len(names)
        )

    @staticmethod
    def dimensions(inputs: np.ndarray) -> np.ndarray:
        """:meth:`inputs` with the reading count turned into readings per day."""
        numeric, count = inputs[:, :-1], inputs[:, -1]
        days = np.maximum(numeric[:, NUMERIC.index("hours_since_pitch")], 6.0) / 24.0
        return np.column_stack([numeric, count / days])

    @classmethod
    def fit(cls, train: np.ndarray) -> Familiarity:
        """Fitted on the training split's :meth:`inputs`."""
        values = cls.dimensions(train)
        with np.errstate(all="ignore"):
            low, center, high = np.nanquantile(values, [0.025, 0.5, 0.975], axis=0)
        scale = np.where(np.isfinite(high - low), np.maximum((high - low) / 3.92, 1e-6), np.nan)
        return cls(
            (*NUMERIC, READINGS_PER_DAY),
            tuple(float(c) for c in center),
            tuple(float(s) for s in scale),
        )

    def scaled(self, inputs: np.ndarray) -> np.ndarray:
        """|value - center| / scale per dimension, NaN where it does not count."""
        z = np.abs(self.dimensions(inputs) - np.asarray(self.center)) / np.asarray(self.scale)
        return np.where(np.isfinite(z), z, np.nan)

    def distance(self, inputs: np.ndarray) -> np.ndarray:
        """The largest scaled dimension per row (0 when none counts). ``fmax`` skips NaN
        without the warnings and copies of ``nanmax``: this runs on every request."""
        d = np.fmax.reduce(self.scaled(inputs), axis=1)
        return np.where(np.isnan(d), 0.0, d)

    def furthest(self, inputs: np.ndarray) -> list[str]:
        """The dimension furthest from the training data, per row."""
        z = np.nan_to_num(self.scaled(inputs), nan=-1.0)
        return [self.columns[i] for i in np.argmax(z, axis=1)]

    def with_threshold(self, validation: np.ndarray, quantile: float) -> Familiarity:
        d = self.distance(validation)
        limit = float(np.quantile(d, quantile)) if d.size else float("inf")
        return Familiarity(self.columns, self.center, self.scale, limit)

    def to_json(self) -> str:
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, list | tuple) else _finite_or_none(v)

        return json.dumps({k: plain(v) for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> Familiarity:
        data = json.loads(text)
        if list(data["columns"]) != [*NUMERIC, READINGS_PER_DAY]:
            raise ValueError("familiarity was fitted on other inputs than this schema's")
        return cls(
            tuple(data["columns"]),
            tuple(float("nan") if v is None else v for v in data["center"]),
            tuple(float("nan") if v is None else v for v in data["scale"]),
            float("inf") if data["threshold"] is None else float(data["threshold"]),
        )


def _finite_or_none(value):
    """A float for strict JSON: NaN and infinities become null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

"""The one definition of brewcast's data: batch metadata, readings and snapshot features.

Everything else derives from the tables here: the simulator's catalogue, the ingest
sources' output, the lake's Parquet schema, the Great Expectations suites, the Keras
inputs, the ONNX input names, the serving request model and the monitoring slices.
``tests/test_schema.py`` asserts that those derived views agree with this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

#: The bucket every categorical value outside its vocabulary maps to.
OOV = "__oov__"

DType = Literal["float64", "int64", "string", "timestamp", "bool"]
Role = Literal["key", "time", "feature", "label", "meta"]


class SchemaError(ValueError):
    """Data does not match the schema: the message names the source and what is wrong."""


@dataclass(frozen=True)
class Column:
    """One column: what it holds, in which unit, which values are valid, and its role."""

    name: str
    dtype: DType
    description: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    #: The closed set of valid values (a reading's tag, the season), or None. A brewery's
    #: own names (brands, fermenters, strains) are ``open``: their vocabulary is learned.
    vocabulary: tuple[str, ...] | None = None
    role: Role = "feature"
    slice_key: bool = False
    open: bool = False
    #: A file may lack it (a column added after files were written): read as all null.
    optional: bool = False

    def __post_init__(self) -> None:
        if self.open and self.vocabulary is not None:
            raise ValueError(f"column {self.name!r}: an open category declares no vocabulary")

    @property
    def is_categorical(self) -> bool:
        return self.open or self.vocabulary is not None


@dataclass(frozen=True)
class Table:
    """A lake table: its columns, its unique key and the timestamp it is partitioned by."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    partition_by: str
    description: str = ""
    _by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {c.name: c for c in self.columns}
        if len(by_name) != len(self.columns):
            raise ValueError(f"table {self.name}: duplicate column names")
        missing = [k for k in (*self.key, self.partition_by) if k not in by_name]
        if missing:
            raise ValueError(f"table {self.name}: key/partition columns {missing} not defined")
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> Column:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def by_role(self, role: Role) -> list[Column]:
        return [c for c in self.columns if c.role == role]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, _ARROW_TYPES[c.dtype], c.nullable) for c in self.columns]
        )

    def conform(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """Return ``frame`` with exactly this table's columns, in order, cast to their dtypes.

        Types and presence are enforced here (a reader cannot go on without them);
        value ranges and vocabularies are the validation stage's job, so rows with
        out-of-range values pass through untouched and are never dropped here.
        Raises :class:`SchemaError` naming ``source`` and the offending columns.
        """
        absent = [c.name for c in self.columns if c.optional and c.name not in frame.columns]
        if absent:
            frame = frame.assign(**dict.fromkeys(absent, None))
        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            raise SchemaError(
                f"{source}: table {self.name!r} is missing column(s) {missing}; "
                f"got {list(frame.columns)}"
            )
        extra = [n for n in frame.columns if n not in self._by_name]
        if extra:
            raise SchemaError(f"{source}: table {self.name!r} has unexpected column(s) {extra}")
        out = {}
        for col in self.columns:
            try:
                out[col.name] = _cast(frame[col.name], col)
            except (ValueError, TypeError) as exc:
                raise SchemaError(
                    f"{source}: column {col.name!r} cannot be read as {col.dtype}: {exc}"
                ) from exc
            if not col.nullable and out[col.name].isna().any() and col.role in ("key", "time"):
                n = int(out[col.name].isna().sum())
                raise SchemaError(f"{source}: key column {col.name!r} has {n} missing value(s)")
        return pd.DataFrame(out, index=frame.index).reset_index(drop=True)

    def empty(self) -> pd.DataFrame:
        return self.conform(
            pd.DataFrame({n: [] for n in self.names}), source=f"<empty {self.name}>"
        )


_ARROW_TYPES: dict[str, pa.DataType] = {
    "float64": pa.float64(),
    "int64": pa.int64(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "bool": pa.bool_(),
}


#: The pandas dtype each column type is conformed to (what reading our own Parquet gives);
#: dtype objects, not aliases: ``"string"`` would also match pandas' NaN-missing ``str``.
_PANDAS_DTYPES = {
    name: pd.api.types.pandas_dtype(dtype)
    for name, dtype in {
        "float64": "float64",
        "int64": "int64",
        "nullable int64": "Int64",
        "string": "string",
        "timestamp": "datetime64[us, UTC]",
        "bool": "boolean",
    }.items()
}


def _clip(text: str, limit: int = 200) -> str:
    """A value quoted in an error, cut: a 50 MB cell must not become a 50 MB reason."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text)} characters]"


def _cast(series: pd.Series, col: Column) -> pd.Series:
    nullable_int = col.dtype == "int64" and col.nullable
    if series.dtype == _PANDAS_DTYPES["nullable int64" if nullable_int else col.dtype]:
        return series  # already right, e.g. read back from the lake: nothing to convert
    if col.dtype == "float64":
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            numeric = pd.to_numeric(series, errors="coerce")
            bad = numeric.isna() & series.notna() & (series.astype(str).str.strip() != "")
            if bad.any():
                examples = [_clip(e) for e in series[bad].astype(str).unique()[:3]]
                raise ValueError(f"{int(bad.sum())} non-numeric value(s), e.g. {examples}")
            series = numeric
        return series.astype("float64")
    if col.dtype == "int64":
        values = pd.to_numeric(series, errors="raise")
        if col.nullable:
            return values.astype("Int64")
        if values.isna().any():
            raise ValueError("missing values in a non-nullable integer column")
        return values.astype("int64")
    if col.dtype == "string":
        return series.astype("string").astype(object).where(series.notna(), None).astype("string")
    if col.dtype == "timestamp":
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            ts = series
        else:
            ts = pd.to_datetime(series, errors="raise", utc=True, format="mixed")
        if getattr(ts.dt, "tz", None) is None:
            ts = ts.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if col.dtype == "bool":
        return series.astype("boolean")
    raise TypeError(col.dtype)


# ---------------------------------------------------------------------------------------------
# Closed vocabularies. A brewery's own names are learned by training (models.inputs).
# ---------------------------------------------------------------------------------------------

SEASONS = ("winter", "spring", "summer", "autumn")
READING_TAGS = ("gravity_plato", "temperature_c")

# Physical bounds: outside them a value is impossible (a typo), not merely unusual. Gravity
# goes below 0 °P: SG 1.000 is -0.003 °P, a dry cider or mead ends near 0.990 (-2.6 °P) and
# a beer attenuated past 100% below 0 too; nothing fermented reads under SG 0.984 (-4 °P).
PLATO_RANGE = (-4.0, 30.0)
TEMPERATURE_RANGE = (-2.0, 40.0)


def _brand() -> Column:
    return Column(
        "brand",
        "string",
        "Beer brand (recipe) brewed in the batch.",
        open=True,
        slice_key=True,
        nullable=True,
    )


def _style(optional: bool = False) -> Column:
    return Column(
        "style",
        "string",
        "Beer style (NEIPA, lager, saison...): a brewery's brands come and go, its styles "
        "stay, so a new brand's history is its style's.",
        open=True,
        slice_key=True,
        nullable=True,
        optional=optional,
    )


def _yeast() -> Column:
    return Column(
        "yeast_strain",
        "string",
        "Yeast strain pitched.",
        open=True,
        slice_key=True,
        nullable=True,
    )


def _fermenter() -> Column:
    return Column(
        "fermenter",
        "string",
        "Fermentation vessel (differs in cooling capacity).",
        open=True,
        slice_key=True,
        nullable=True,
    )


_BATCH_NUMERIC = (
    Column(
        "original_gravity_plato",
        "float64",
        # from 2 °P: low- and no-alcohol beers are brewed from 2..6 °P worts (a brewery's
        # low-alcohol brands were quarantined whole at 6), while an SG read as °P is
        # 1.0..1.13, below it
        "Original gravity at pitch.",
        "°P",
        2.0,
        25.0,
        nullable=True,
    ),
    Column(
        "pitch_temperature_c",
        "float64",
        "Wort temperature at pitch.",
        "°C",
        4.0,
        30.0,
        nullable=True,
    ),
    Column(
        "pitch_rate_million_cells_per_ml_plato",
        "float64",
        "Yeast pitch rate.",
        "10^6 cells/mL/°P",
        0.1,
        3.0,
        nullable=True,
    ),
    Column(
        "dissolved_oxygen_ppm",
        "float64",
        "Dissolved oxygen in the wort at pitch.",
        "ppm",
        0.0,
        20.0,
        nullable=True,
    ),
    Column(
        "ambient_temperature_c",
        "float64",
        "Cellar ambient temperature at pitch.",
        "°C",
        -20.0,
        45.0,
        nullable=True,
    ),
    Column(
        "yeast_generation",
        "float64",
        "Repitch count of the yeast (no causal effect).",
        None,
        0.0,
        20.0,
        nullable=True,
    ),
)


def _snapshot_batch_columns() -> list[Column]:
    """The batch's numbers as snapshot features (every one may be missing), with the flag
    that says the OG was derived right after the OG."""
    out = []
    for c in _BATCH_NUMERIC:
        out.append(Column(c.name, c.dtype, c.description, c.unit, c.min, c.max, nullable=True))
        if c.name == "original_gravity_plato":
            out.append(
                Column(
                    "original_gravity_derived",
                    "bool",
                    "Whether original_gravity_plato came from the batch's first readings (no "
                    "valid OG was recorded) rather than from its metadata.",
                    nullable=True,
                    role="meta",
                )
            )
    return out


BATCHES = Table(
    name="batches",
    description="One row per fermentation batch (a Brewery Pi EventFrame on a fermenter).",
    columns=(
        Column("batch_id", "string", "Batch identifier (EventFrame name).", role="key"),
        _fermenter(),
        _brand(),
        _style(optional=True),
        _yeast(),
        *_BATCH_NUMERIC,
        Column("start_time", "timestamp", "Pitch time (EventFrame start).", role="time"),
        Column(
            "end_time",
            "timestamp",
            "EventFrame end, when known at ingest time.",
            nullable=True,
            role="meta",
        ),
        Column(
            "time_resolution_h",
            "float64",
            "How finely the batch's reading times are known: 24 for a log that gives dates "
            "only (a day's readings are spread over it in their order); empty where each "
            "reading carries its time.",
            unit="h",
            min=0.0,
            max=24.0 * 7,
            nullable=True,
            role="meta",
            optional=True,
        ),
    ),
    key=("batch_id",),
    partition_by="start_time",
)

READINGS = Table(
    name="readings",
    description="Long-format sensor and manual readings (Brewery Pi TagValues) per batch.",
    columns=(
        Column("batch_id", "string", "Batch the reading belongs to.", role="key"),
        Column("tag", "string", "What was measured.", vocabulary=READING_TAGS, role="key"),
        Column("timestamp", "timestamp", "When it was measured.", role="key"),
        Column(
            "value",
            "float64",
            "Measured value (°P for gravity, °C for temperature).",
            nullable=True,
            role="meta",
        ),
    ),
    key=("batch_id", "tag", "timestamp"),
    partition_by="timestamp",
)

#: Valid ranges of a reading's value, per tag (the ``value`` column's unit depends on the tag).
READING_VALUE_RANGES: dict[str, tuple[float, float]] = {
    "gravity_plato": PLATO_RANGE,
    "temperature_c": TEMPERATURE_RANGE,
}

FEATURES = Table(
    name="features",
    description="Snapshots: what was known about a batch at a time t after pitch, and its label.",
    columns=(
        Column("batch_id", "string", "Batch of the snapshot.", role="key"),
        Column("snapshot_time", "timestamp", "Time t of the snapshot.", role="key"),
        _fermenter(),
        _brand(),
        _style(),
        _yeast(),
        Column(
            "season",
            "string",
            "Season at pitch (northern hemisphere). A slice key, not a model input: what a "
            "season does to a fermentation reaches it as the cellar's ambient temperature, "
            "which is an input, and a split by time cannot give the model every season to "
            "learn from (a season only in the test split would meet an untrained embedding).",
            vocabulary=SEASONS,
            slice_key=True,
            role="meta",
        ),
        Column("hours_since_pitch", "float64", "t minus pitch time.", "h", 0.0, 2000.0),
        *_snapshot_batch_columns(),
        Column(
            "current_gravity_plato",
            "float64",
            "Last gravity reading at or before t.",
            "°P",
            *PLATO_RANGE,
            nullable=True,
        ),
        Column(
            "apparent_attenuation",
            "float64",
            "(OG - SG) / OG with the last reading (above 1 once SG is below 0 °P).",
            None,
            -0.5,
            1.5,
            nullable=True,
        ),
        Column(
            "gravity_slope_plato_per_day",
            "float64",
            "Least-squares gravity slope over the last 24 h of readings, or the last three "
            "readings where they reach further back (at most 7 days): any cadence has one.",
            "°P/day",
            -30.0,
            30.0,
            nullable=True,
        ),
        Column(
            "gravity_slope_span_hours",
            "float64",
            "Hours between the first and last reading the slope is fitted on: a slope over "
            "days (a hand log) is coarser than one over hours (a probe).",
            "h",
            0.0,
            200.0,
            nullable=True,
        ),
        Column(
            "hours_since_last_gravity",
            "float64",
            "Age of the last gravity reading.",
            "h",
            0.0,
            2000.0,
            nullable=True,
        ),
        # Not a model input: it counts the reading cadence (a hydrometer every 15 minutes,
        # or two hand readings a day) more than the fermentation, so a model that learned it
        # from one brewery's habit misreads another's; the service still judges how familiar
        # a snapshot's cadence is with it (brewcast.contract.Familiarity).
        Column(
            "gravity_readings_count",
            "float64",
            "Gravity readings so far.",
            None,
            0.0,
            5000.0,
            nullable=True,
            role="meta",
        ),
        Column(
            "current_temperature_c",
            "float64",
            "Last temperature reading.",
            "°C",
            *TEMPERATURE_RANGE,
            nullable=True,
        ),
        Column(
            "mean_temperature_c",
            "float64",
            "Mean temperature since pitch.",
            "°C",
            *TEMPERATURE_RANGE,
            nullable=True,
        ),
        Column(
            "finished_within_horizon",
            "bool",
            "Label: the plateau started by t + horizon.",
            role="label",
        ),
        Column(
            "hours_remaining",
            "float64",
            "Label: hours from t until the plateau started (0 if it had; missing for a "
            "stuck batch and for a censored one).",
            "h",
            0.0,
            2000.0,
            nullable=True,
            role="label",
        ),
        Column(
            "censored",
            "bool",
            "Label: the batch's finish is not known (still running, or its log closed with "
            "no plateau confirmed): the snapshot is a sure negative, taken at least a "
            "horizon before the batch had surely not finished, with no hours target.",
            role="label",
        ),
    ),
    key=("batch_id", "snapshot_time"),
    partition_by="snapshot_time",
)

#: The label the classifier predicts, and the regression target.
LABEL = "finished_within_horizon"
REGRESSION_TARGET = "hours_remaining"

TABLES: dict[str, Table] = {t.name: t for t in (BATCHES, READINGS, FEATURES)}


def numeric_features() -> list[Column]:
    """Model inputs normalised as numbers (the order is the ONNX/Keras input order)."""
    return [c for c in FEATURES.by_role("feature") if not c.is_categorical]


def categorical_features() -> list[Column]:
    """Model inputs embedded from a vocabulary with an OOV bucket."""
    return [c for c in FEATURES.by_role("feature") if c.is_categorical]


def slice_keys(frame: pd.DataFrame | None = None) -> list[str]:
    """Columns that monitoring and evaluation slice by; those ``frame`` has, where given (a
    prediction log or a report from before a key existed has no column for it)."""
    keys = [c.name for c in FEATURES.columns if c.slice_key]
    return keys if frame is None else [k for k in keys if k in frame]


def season_of(timestamps: pd.Series) -> pd.Series:
    """Northern-hemisphere meteorological season of each timestamp."""
    month = pd.DatetimeIndex(timestamps).month.to_numpy()
    names = np.array(
        [
            "winter",
            "winter",
            "spring",
            "spring",
            "spring",
            "summer",
            "summer",
            "summer",
            "autumn",
            "autumn",
            "autumn",
            "winter",
        ]
    )
    return pd.Series(names[month - 1], index=timestamps.index, dtype="string")


def schema_fingerprint() -> str:
    """A short hash of the feature table's structure (names, types, units, ranges, roles,
    closed vocabularies): models and services built from different schemas refuse to be
    mixed up. A brewery's own names are not part of it; they travel with each model."""
    import hashlib
    import json
    from dataclasses import asdict

    structure = [{k: v for k, v in asdict(c).items() if k != "optional"} for c in FEATURES.columns]
    spec = json.dumps(structure, sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]

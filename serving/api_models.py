"""The REST API's request and response models, generated from the one schema.

Numbers must be finite and inside the schema's valid range (a 422 names the field
otherwise); categories are free strings, and values outside the vocabulary are served
through the out-of-vocabulary bucket and flagged in the response. Unknown fields are
refused, so a misspelt feature name cannot silently become a missing value.

Types are strict (a machine API: ``"12.3"`` or ``true`` is no number, an integer is no
timestamp), and every string on every endpoint shares one limit (:data:`Text`): the
prediction log's columns are 64 characters, and a control character (NUL above all) is
refused by PostgreSQL, which would fail the shared group commit of other clients' rows.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from brewcast.contract import READINGS_COUNT
from brewcast.intervals import LEVELS, forecast_status
from brewcast.schema import BATCHES, FEATURES, categorical_features, numeric_features

#: The longest string any field takes: the prediction log's ``String(64)`` columns.
MAX_TEXT_LENGTH = 64
#: No C0 control character (NUL, tab, newline...) nor DEL; the JSON schema's ``pattern``.
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
#: What no text field may hold (the request models and the device names of pushes alike).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
#: Timestamps outside these years are typos (or epochs read as years), never data.
YEARS = (1900, 2200)


def _no_control(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("control characters (NUL, tab, newline...) are not allowed")
    return value


def _json_bool(value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _iso_text(value: Any) -> Any:
    """A timestamp is an ISO 8601 string, never a number (an epoch in seconds or ms?)."""
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str) or value.strip().lstrip("+-").replace(".", "").isdigit():
        raise ValueError("must be an ISO 8601 string such as 2026-03-01T12:00:00Z")
    return value


def _plausible_year(value: datetime | None) -> datetime | None:
    if value is not None and not YEARS[0] <= value.year <= YEARS[1]:
        raise ValueError(f"year {value.year} is outside {YEARS[0]}..{YEARS[1]}")
    return value


#: Every string field of every endpoint: one length limit, no control characters.
Text = Annotated[
    str,
    Field(max_length=MAX_TEXT_LENGTH, json_schema_extra={"pattern": NO_CONTROL_PATTERN}),
    AfterValidator(_no_control),
]
Timestamp = Annotated[datetime | None, BeforeValidator(_iso_text), AfterValidator(_plausible_year)]
#: A timestamp a request must give (null is refused with the field's name, not stored).
RequiredTimestamp = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_plausible_year)]
StrictBool = Annotated[bool | None, BeforeValidator(_json_bool)]


def _snapshot_model() -> type[BaseModel]:
    fields: dict = {
        "batch_id": (Text | None, Field(None, description="Batch, to join labels later.")),
        "snapshot_time": (Timestamp, Field(None, description="Time t of the snapshot.")),
    }
    # The reading count is no model input, but tells the service how familiar the
    # snapshot's reading cadence is.
    for col in [*numeric_features(), FEATURES[READINGS_COUNT]]:
        fields[col.name] = (
            # strict: a JSON number only (no "12.3", no true), checked by pydantic-core
            # itself: a Python validator per number was most of a 64-row request's cost
            Annotated[float, Field(strict=True, ge=col.min, le=col.max, allow_inf_nan=False)]
            | None,
            Field(
                None,
                description=f"{col.description} [{col.unit or '-'}], valid "
                f"{col.min}..{col.max}; missing: the training median.",
            ),
        )
    for col in categorical_features():
        fields[col.name] = (
            Text | None,
            Field(
                None,
                description=(
                    f"{col.description} "
                    + (
                        f"One of {list(col.vocabulary)}"
                        if col.vocabulary
                        else "The brewery's own name (the served model's vocabulary: /metadata)"
                    )
                    + "; anything else is served as out-of-vocabulary and flagged."
                ),
            ),
        )
    for col in FEATURES.columns:  # slice keys that are no model input: logged, not scored
        if col.slice_key and col.name not in fields:
            fields[col.name] = (
                Text | None,
                Field(None, description=f"{col.description} Logged to slice monitoring by."),
            )
    return create_model("Snapshot", __config__=ConfigDict(extra="forbid"), **fields)


Snapshot = _snapshot_model()
#: A snapshot's fields as ``/predict`` takes them, in order (what a forecast scores).
REQUEST_FIELDS = tuple(Snapshot.model_fields)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[Snapshot] = Field(min_length=1, description="Fermentation snapshots to score.")


class HoursInterval(BaseModel):
    low: float = Field(description="Hours from the snapshot (never below 0).")
    high: float | None = Field(
        description="Hours from the snapshot; null: open-ended, the batch may never finish."
    )


class FinishWindow(BaseModel):
    earliest: datetime = Field(description="UTC, ISO 8601.")
    latest: datetime | None = Field(description="UTC, ISO 8601; null: it may never finish.")


#: A forecast as /predict answers it (a german_lager batch 126 h after pitch; it finished
#: 31.6 h later): what the API docs show.
PREDICTION_EXAMPLE = {
    "prediction_id": "01a2375e-54a5-7014-bf7b-fb168f9ff97a",
    "probability": 0.591,
    "decision": False,
    "hours_remaining": 21.1,
    "interval_80": {"low": 13.2, "high": 37.3},
    "interval_95": {"low": 7.0, "high": 40.6},
    "predicted_finish_time": "2026-04-09T21:39:41Z",
    "finish_time_80": {"earliest": "2026-04-09T13:43:53Z", "latest": "2026-04-10T13:47:29Z"},
    "finish_time_95": {"earliest": "2026-04-09T07:30:05Z", "latest": "2026-04-10T17:06:41Z"},
    "finish_probabilities": {"12": 0.073, "24": 0.545, "48": 0.994, "72": 0.994},
    "forecast_status": "fermenting",
    "forecast_group": "german_lager|0-24",
    "never_probability": 0.004,
    "unknown_categories": [],
    "out_of_distribution": False,
    "familiarity_distance": 1.43,
}


class Prediction(BaseModel):
    # OpenAPI 3.0's singular "example": BentoML's schema objects take no "examples"
    model_config = ConfigDict(json_schema_extra={"example": PREDICTION_EXAMPLE})

    prediction_id: str
    probability: float = Field(description="Calibrated P(terminal gravity within the horizon).")
    decision: bool = Field(description="probability >= the model's threshold.")
    hours_remaining: float = Field(description="Point forecast of the hours to terminal gravity.")
    interval_80: HoursInterval | None = Field(
        None,
        description="hours_remaining's 80% interval (conformal: 80% of calibration batches' "
        "snapshots like this one finished inside it). Null when the model gives none.",
    )
    interval_95: HoursInterval | None = Field(None, description="The 95% interval.")
    predicted_finish_time: datetime | None = Field(
        None, description="snapshot_time (or the time served) + hours_remaining, UTC."
    )
    finish_time_80: FinishWindow | None = Field(None, description="interval_80 as UTC times.")
    finish_time_95: FinishWindow | None = Field(None, description="interval_95 as UTC times.")
    finish_probabilities: dict[str, float] | None = Field(
        None,
        description="P(finished within t hours of the snapshot) for t = 12, 24, 48, 72: "
        "rising with t. The decision uses `probability` (the classifier for the horizon); "
        "the two agree at the horizon within what the promotion gate allows. Null where no "
        "answer can be given (a stalled batch without calibration data).",
    )
    forecast_status: str | None = Field(
        None,
        description="fermenting; rate_unknown (fewer than two readings in the last day: "
        "wider intervals); stalled (four days after pitch, below 60% attenuation and falling "
        "less than 1 °P a day: it may be stuck, upper bounds open). Null when the model "
        "gives no forecast.",
    )
    forecast_group: str | None = Field(
        None, description="The calibration group of the intervals, e.g. german_lager|24-48."
    )
    never_probability: float | None = Field(
        None,
        description="P(the batch never finishes: stuck), its own number beside the windows: "
        "the share of the calibration group's snapshots that never finished (mid p-value, "
        "so never 0), 1 minus P(finished by t) as t grows without end. An 80% window has no "
        "upper bound where this is above about 0.10 (the 95% window: 0.025). Null where no "
        "answer can be given.",
    )
    unknown_categories: list[str] = Field(
        default_factory=list,
        description="Categorical inputs whose value the model never learned (served through "
        "its out-of-vocabulary bucket: a forecast from other brands', fermenters' or strains' "
        "data).",
    )
    out_of_distribution: bool | None = Field(
        None,
        description="The snapshot lies outside what the model was trained on (an unknown "
        "category, or numbers beyond the familiarity threshold in /metadata): treat the "
        "forecast with caution. Null when the model does not say.",
    )
    familiarity_distance: float | None = Field(
        None, description="Largest robust z-score of the inputs against the training data."
    )


class PredictResponse(BaseModel):
    model_version: str
    threshold: float
    horizon_hours: float
    predictions: list[Prediction]
    notes: list[str] = Field(
        default_factory=list,
        description="Plain words when forecasts come from data unlike the request's (a "
        "brewery the model never saw, snapshots outside its training data).",
    )


def predict_response_json(
    model_version: str,
    threshold: float,
    horizon_hours: float,
    log_rows: list[dict],
    notes: list[str] | None = None,
) -> bytes:
    """A :class:`PredictResponse` as JSON, built with orjson from the prediction-log rows
    (our own, already-typed values) instead of a pydantic model per row and its serialiser:
    the per-row cost of a response."""
    return orjson.dumps(
        {
            "model_version": model_version,
            "threshold": threshold,
            "horizon_hours": horizon_hours,
            "predictions": [
                {
                    "prediction_id": row["prediction_id"],
                    "probability": row["probability"],
                    "decision": row["decision"],
                    "hours_remaining": row["hours_remaining"],
                    "unknown_categories": unknown_categories(row),
                    "out_of_distribution": row["out_of_distribution"],
                    "familiarity_distance": row["familiarity_distance"],
                    **finish_forecast_json(row),
                }
                for row in log_rows
            ],
            "notes": notes or [],
        },
        option=orjson.OPT_UTC_Z,
    )


def _at(start: datetime, hours: float) -> datetime:
    """``start`` + ``hours``, to the second (a cellar plans in minutes, not microseconds)."""
    return (start + timedelta(seconds=round(hours * 3600.0))).replace(microsecond=0)


def _window(start: datetime, low: float | None, high: float | None) -> dict | None:
    if low is None:
        return None
    return {"earliest": _at(start, low), "latest": None if high is None else _at(start, high)}


def unknown_categories(row: dict) -> list[str]:
    """The categorical inputs a prediction-log row's model never saw (its OOV columns)."""
    return row["unknown_categories"].split(",") if row["unknown_categories"] else []


def finish_forecast_json(row: dict) -> dict:
    """A prediction-log row's finish forecast as the response gives it: each interval in
    hours and as UTC times from the snapshot (or the time served), P(finished by t)."""
    start = row["snapshot_time"] or row["served_at"]
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC)
    out: dict[str, Any] = {
        "predicted_finish_time": _at(start, row["hours_remaining"]),
        "forecast_group": row["forecast_group"],
        "forecast_status": forecast_status(row["forecast_group"]),
        "never_probability": row.get("never_probability"),
        "finish_probabilities": None
        if row["finish_probabilities"] is None
        else orjson.loads(row["finish_probabilities"]),
    }
    for level in LEVELS:
        tag = round(level * 100)
        low, high = row[f"interval_{tag}_low"], row[f"interval_{tag}_high"]
        out[f"interval_{tag}"] = None if low is None else {"low": low, "high": high}
        out[f"finish_time_{tag}"] = _window(start, low, high)
    return out


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: Text | None = Field(None, description="Label one prediction...")
    batch_id: Text | None = Field(None, description="...or every prediction of a batch.")
    finished_within_horizon: StrictBool = Field(
        None,
        description="Ground truth of one prediction. A different label for an already "
        "labelled prediction is a conflict (409); the same one again is a no-op.",
    )
    finished_at: Timestamp = Field(
        None, description="When the batch reached terminal gravity (labels all its predictions)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Label:
        """A label is either one prediction's outcome or one batch's finish, never both."""
        if (self.prediction_id is None) == (self.batch_id is None):
            raise ValueError("give exactly one of prediction_id or batch_id")
        if self.prediction_id is not None and self.finished_within_horizon is None:
            raise ValueError("a prediction_id label needs finished_within_horizon")
        if self.batch_id is not None and self.finished_at is None:
            raise ValueError("a batch_id label needs finished_at")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Labels stored by this request.")
    repeated: int = Field(0, description="Labels already stored (the same again: a no-op).")
    unknown_prediction_ids: list[str] = Field(
        default_factory=list, description="Never served: not stored."
    )
    unknown_batch_ids: list[str] = Field(
        default_factory=list, description="No prediction of these batches was served: not stored."
    )


class ErrorResponse(BaseModel):
    """Every error the service answers (4xx and 5xx)."""

    detail: str = Field(description="What was wrong, naming the field when one is.")


def _batch_model(name: str, required: tuple[str, ...], columns: tuple[str, ...]) -> type[BaseModel]:
    """A batch request model from the one schema: its numbers in their valid ranges."""
    fields: dict = {}
    for column in (c for c in BATCHES.columns if c.name in columns):
        if column.dtype.startswith("float"):
            kind = Annotated[
                float, Field(strict=True, ge=column.min, le=column.max, allow_inf_nan=False)
            ]
        elif column.dtype == "timestamp":
            kind = RequiredTimestamp if column.name in required else Timestamp
        else:
            kind = Text
        described = f"{column.description} [{column.unit or '-'}]"
        if column.name in required:
            fields[column.name] = (kind, Field(description=described))
        else:
            fields[column.name] = (kind | None, Field(None, description=described))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


#: ``POST /batches``: an id and the pitch time, the rest if known (an OG left out is derived
#: from the first readings, as in training).
BatchStart = _batch_model(
    "BatchStart", ("batch_id", "start_time"), tuple(n for n in BATCHES.names if n != "end_time")
)
#: ``PATCH /batches/{id}``: edit a batch (its pitch time too: a time typed wrong), or end
#: it (``end_time``).
BATCH_CHANGES = tuple(n for n in BATCHES.names if n != "batch_id")
BatchUpdate = _batch_model("BatchUpdate", (), BATCH_CHANGES)


class DeviceAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fermenter: Text = Field(description="The vessel the device is in.")
    gravity_unit: Literal["SG", "°P", "P", "Plato"] | None = Field(
        None, description="An iSpindel's gravity unit (its owner's calibration): SG or °P."
    )
    gravity_offset_plato: float | None = Field(
        None,
        ge=-5.0,
        le=5.0,
        description="Added to every gravity the device sends from now on, in °P (a "
        "hydrometer that reads 0.4 °P high: -0.4).",
    )
    temperature_offset_c: float | None = Field(
        None, ge=-10.0, le=10.0, description="Added to every temperature it sends, in °C."
    )
    correct_gravity_since: Timestamp = Field(
        None,
        description="Re-read the device's gravity readings stored since this time in "
        "gravity_unit (a device that was declared in the wrong unit); each old value is "
        "kept in the corrections history.",
    )


class ReadyAnswer(BaseModel):
    """The operator's answer to a batch's "ready" event."""

    model_config = ConfigDict(extra="forbid")
    answer: Literal["acknowledged", "overridden"] = Field(
        description="acknowledged: the next step goes ahead; overridden: not ready."
    )
    by: Text = Field(description="Who answers (shown on the board).")
    reason: str | None = Field(
        None,
        max_length=500,
        description='Why not ready, in the operator\'s words ("still 0.4 °P above terminal"); '
        "required for an override.",
    )
    model_version: Text | None = Field(
        None, description="The event's model version (default: the batch's latest event)."
    )

    @model_validator(mode="after")
    def _reason_for_override(self) -> ReadyAnswer:
        if self.answer == "overridden" and not (self.reason or "").strip():
            raise ValueError("an override needs a reason")
        return self

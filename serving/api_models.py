"""The REST API's request and response models, generated from the one schema.

Numbers must be finite and inside the schema's valid range (a 422 names the field
otherwise); categories are free strings, and values outside the vocabulary are served
through the out-of-vocabulary bucket and flagged in the response. Unknown fields are
refused, so a misspelt feature name cannot silently become a missing value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from brewcast.contract import READINGS_COUNT
from brewcast.schema import FEATURES, categorical_features, numeric_features


def _snapshot_model() -> type[BaseModel]:
    fields: dict = {
        "batch_id": (
            str | None,
            Field(None, max_length=64, description="Batch, to join labels later."),
        ),
        "snapshot_time": (datetime | None, Field(None, description="Time t of the snapshot.")),
    }
    # The reading count is no model input, but tells the service how familiar the
    # snapshot's reading cadence is.
    for col in [*numeric_features(), FEATURES[READINGS_COUNT]]:
        fields[col.name] = (
            Annotated[float | None, Field(ge=col.min, le=col.max, allow_inf_nan=False)],
            Field(
                None,
                description=f"{col.description} [{col.unit or '-'}], valid "
                f"{col.min}..{col.max}; missing: the training median.",
            ),
        )
    for col in categorical_features():
        fields[col.name] = (
            str | None,
            Field(
                None,
                max_length=64,
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
    return create_model("Snapshot", __config__=ConfigDict(extra="forbid"), **fields)


Snapshot = _snapshot_model()


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[Snapshot] = Field(min_length=1, description="Fermentation snapshots to score.")


class Prediction(BaseModel):
    prediction_id: str
    probability: float = Field(description="Calibrated P(terminal gravity within the horizon).")
    decision: bool = Field(description="probability >= the model's threshold.")
    hours_remaining: float
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
                    "unknown_categories": (
                        row["unknown_categories"].split(",") if row["unknown_categories"] else []
                    ),
                    "out_of_distribution": row["out_of_distribution"],
                    "familiarity_distance": row["familiarity_distance"],
                }
                for row in log_rows
            ],
            "notes": notes or [],
        }
    )


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str | None = Field(None, description="Label one prediction...")
    batch_id: str | None = Field(None, description="...or every prediction of a batch.")
    finished_within_horizon: bool | None = Field(
        None, description="Ground truth of one prediction."
    )
    finished_at: datetime | None = Field(
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
    accepted: int
    unknown_prediction_ids: list[str] = Field(default_factory=list)

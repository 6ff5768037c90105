"""The training reference: per-feature statistics that later data is compared against.

Training saves the statistics of its training split here; validation turns them into
distribution expectations (mean and median within tolerance), so gross drift fails loudly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast.lake import write_text
from brewcast.schema import FEATURES, numeric_features
from brewcast.settings import Settings


def reference_path(settings: Settings) -> Path:
    return settings.paths.validation_reference


def compute_reference(features: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean, std, median and count of every numeric model input."""
    stats = {}
    for column in numeric_features():
        values = features[column.name].dropna()
        if len(values) < 2:
            continue
        stats[column.name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(values.median()),
            "n": len(values),
        }
    return stats


def known_categories(features: pd.DataFrame) -> dict[str, list[str]]:
    """The values of each open category (brand, fermenter, strain) the training split had:
    anything else that later data brings is new to the model, and validation says so."""
    return {
        c.name: sorted(features[c.name].dropna().astype(str).unique().tolist())
        for c in FEATURES.columns
        if c.open
    }


#: The age at which each batch is compared for drift: one row per batch (a long batch
#: repeats its static features in every snapshot, which makes snapshot histograms lumpy).
DRIFT_AGE_HOURS = 48.0
#: How far from that age a batch's nearest snapshot may be.
DRIFT_AGE_SLACK_HOURS = 6.0


def at_age(frame: pd.DataFrame, age_hours: float = DRIFT_AGE_HOURS) -> pd.DataFrame:
    """Each batch's snapshot nearest ``age_hours`` after pitch (within the slack), one row
    per batch: the unit drift is measured in."""
    away = (frame["hours_since_pitch"].astype(float) - age_hours).abs()
    near = frame.assign(_away=away)[away <= DRIFT_AGE_SLACK_HOURS]
    nearest = near.sort_values("_away").drop_duplicates("batch_id", keep="first")
    return nearest.drop(columns="_away").sort_values("batch_id", ignore_index=True)


def reference_batches(frame: pd.DataFrame, probabilities=None) -> dict:
    """The training batches at :data:`DRIFT_AGE_HOURS`: their season and numeric features
    (and the model's probability there), column by column."""
    rows = frame if probabilities is None else frame.assign(probability=np.asarray(probabilities))
    rows = at_age(rows)
    columns = [c.name for c in numeric_features()] + (
        ["probability"] if probabilities is not None else []
    )
    return {
        "age_hours": DRIFT_AGE_HOURS,
        "season": rows["season"].astype(str).tolist(),
        "values": {
            name: [None if pd.isna(v) else float(v) for v in rows[name]] for name in columns
        },
    }


def save_reference(settings: Settings, features: pd.DataFrame, probabilities=None) -> Path:
    """Save the statistics of ``features`` (a training split), its batches at the drift age
    and the last time they cover: only snapshots after that time are compared against them.
    With the model's ``probabilities`` on those rows, monitoring watches prediction drift
    and ranks feature drift by importance."""
    reference = {
        "until": features["snapshot_time"].max().isoformat(),
        "features": compute_reference(features),
        "categories": known_categories(features),
        "batches": reference_batches(features, probabilities),
    }
    return write_text(reference_path(settings), json.dumps(reference, indent=2))


def load_reference(settings: Settings) -> dict | None:
    path = reference_path(settings)
    return json.loads(path.read_text()) if path.exists() else None

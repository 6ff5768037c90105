"""The training reference: per-feature statistics that later data is compared against.

Training saves the statistics of its training split here; validation turns them into
distribution expectations (mean and median within tolerance), so gross drift fails loudly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brewcast.lake import write_text
from brewcast.schema import numeric_features
from brewcast.settings import Settings


def reference_path(settings: Settings) -> Path:
    return settings.home / "validation" / "reference.json"


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


def save_reference(settings: Settings, features: pd.DataFrame) -> Path:
    """Save the statistics of ``features`` (a training split) and the last time they cover:
    only snapshots after that time are compared against them."""
    reference = {
        "until": features["snapshot_time"].max().isoformat(),
        "features": compute_reference(features),
    }
    return write_text(reference_path(settings), json.dumps(reference, indent=2))


def load_reference(settings: Settings) -> dict | None:
    path = reference_path(settings)
    return json.loads(path.read_text()) if path.exists() else None

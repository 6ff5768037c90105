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


def bin_counts(edges, values) -> np.ndarray:
    """Counts of ``values`` in the bins ``edges`` (outside values go to the end bins)."""
    inner = np.searchsorted(np.asarray(edges, float)[1:-1], values, side="right")
    return np.bincount(inner, minlength=len(edges) - 1)


def reference_bins(frame: pd.DataFrame, probabilities=None, bins: int = 10) -> dict:
    """Decile bins of every numeric feature (and of the model's probabilities) for PSI."""
    out = {}
    columns = {c.name: frame[c.name] for c in numeric_features()}
    if probabilities is not None:
        columns["probability"] = pd.Series(probabilities)
    for name, series in columns.items():
        values = series.dropna().to_numpy(dtype=float)
        if values.size < bins:
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        if edges.size < 3:
            continue
        counts = bin_counts(edges, values)
        out[name] = {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist()}
    return out


def save_reference(settings: Settings, features: pd.DataFrame, probabilities=None) -> Path:
    """Save the statistics of ``features`` (a training split) and the last time they cover:
    only snapshots after that time are compared against them. With the model's
    ``probabilities`` on those rows, monitoring can watch prediction drift too."""
    reference = {
        "until": features["snapshot_time"].max().isoformat(),
        "features": compute_reference(features),
        "categories": known_categories(features),
        "bins": reference_bins(features, probabilities),
    }
    return write_text(reference_path(settings), json.dumps(reference, indent=2))


def load_reference(settings: Settings) -> dict | None:
    path = reference_path(settings)
    return json.loads(path.read_text()) if path.exists() else None

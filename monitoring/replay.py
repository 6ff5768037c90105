"""Replay a brewery through a model, the way a cellar uses the service.

Every ``snapshot_every_hours`` each running batch is scored from what was known then; once
a batch finishes, its finish time arrives as a label. The monitoring acceptance test replays
a simulated year in process (rows logged as the service logs them, served at their snapshot
time); the demo streams the same world's readings into the running BentoML service, which
builds the snapshots itself, and sends the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd

from models.dataset import LabelRules, build_snapshots
from serving.api_models import REQUEST_FIELDS


def snapshot_requests(
    batches: pd.DataFrame,
    readings: pd.DataFrame,
    rules: LabelRules,
    since: pd.Timestamp,
    until: pd.Timestamp,
    outcomes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The snapshots taken in ``[since, until)``, in time order, as request rows.

    Built from the whole world (which knows how every batch ends), cut to what each
    snapshot could see: ``build_snapshots`` never looks past the snapshot time. Pass the
    world's ``outcomes`` when you have them (they are derived otherwise).
    """
    snapshots = build_snapshots(batches, readings, rules, outcomes)
    at = snapshots["snapshot_time"]
    chosen = snapshots[(at >= since) & (at < until)]
    return chosen.sort_values(["snapshot_time", "batch_id"], kind="mergesort")[
        list(REQUEST_FIELDS)
    ].reset_index(drop=True)


def finish_labels(outcomes: pd.DataFrame, since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    """``/feedback`` rows (batch id, finish time) for batches that finished in the span, in
    the order they finished (``outcomes`` from :func:`models.dataset.derive_outcomes`)."""
    finished = outcomes[
        (outcomes["status"] == "finished")
        & (outcomes["finish_time"] >= since)
        & (outcomes["finish_time"] < until)
    ]
    return (
        finished.rename(columns={"finish_time": "finished_at"})[["batch_id", "finished_at"]]
        .sort_values(["finished_at", "batch_id"], kind="mergesort")
        .reset_index(drop=True)
    )


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready dicts: missing values as None, times as ISO strings."""
    out = []
    for row in frame.to_dict("records"):
        clean = {}
        for key, value in row.items():
            if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
                clean[key] = None
            elif isinstance(value, pd.Timestamp):
                clean[key] = value.isoformat()
            else:
                clean[key] = value
        out.append(clean)
    return out


def chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]

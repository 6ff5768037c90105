"""When a batch will finish: intervals for the hours remaining and P(finished by t), one
definition for the training run that fits and checks them (``models.intervals``) and the
service that answers with them.

The method is a Mondrian conformal predictive system (Vovk et al.; ``crepes`` implements
the same, and every export checks this module against it). Its calibration set is the
validation split's pre-finish snapshots, whose batches the model was not fitted on (and
the test split never sees): per *group* of snapshots, the sorted residuals
``actual - predicted`` hours are the forecast's distribution around the model's point
forecast. A snapshot's group is known when it is served:

* its **bucket**: ``stalled`` (four days after pitch, below the attenuation yeast stops at
  and falling less than 1 °P a day: possibly stuck), ``no-slope`` (fewer than two readings
  in the last day: the rate is unknown), else the predicted hours remaining, ``0-24``,
  ``24-48``, ``48-96`` or ``96+``
  (errors grow with the horizon);
* crossed with the value of one slice column (the yeast strain by default) where that
  strain has enough calibration batches in the bucket: ``german_lager|24-48``; else the
  bucket over every strain, ``*|24-48``; else every calibration snapshot, ``*|*``.

Coverage then holds per group by construction (finite-sample, for batches exchangeable
with the calibration batches), not only on average. A stuck batch's residual is +inf (it
never finishes): a group with stuck batches gives open-ended upper bounds (``None``, "may
never finish") and finish probabilities that keep their share. A ``stalled`` snapshot
whose group has too little calibration data gets no finite answer at all: upper bounds
``None``, probabilities ``None``, status ``stalled``; a finite time would be false
confidence. Lower bounds are clipped at 0 h: a forecast is from the snapshot time on,
also for a batch past an earlier forecast's finish.

``P(finished by t)`` is the predictive distribution at ``t`` hours from the snapshot, the
mid p-value ``(#{predicted + r <= t} + 1/2) / (n + 1)``: monotone in ``t`` by
construction. The served decision stays with the classifier trained for the horizon; the
two agree at the horizon within what the gate allows (``models.intervals``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import pairwise

import numpy as np
import orjson
import pandas as pd

#: The interval levels served: hours_remaining's ``interval_80`` and ``interval_95``.
LEVELS = (0.8, 0.95)
#: The horizons, in hours from the snapshot, of the served ``finish_probabilities``.
HORIZONS = (12.0, 24.0, 48.0, 72.0)
#: Predicted-hours bucket edges (hours): 0-24, 24-48, 48-96, 96+.
BUCKET_EDGES = (24.0, 48.0, 96.0)
STALLED, NO_SLOPE, EVERY = "stalled", "no-slope", "*"
#: A stall: gravity falling slower than this (°P per day over the last day; a fermenting
#: batch below 60% attenuation falls several °P a day, and the slope of a day's readings
#: is noisy)...
STALL_SLOPE_ABOVE = -1.0
#: ...at an apparent attenuation below what strains reach (0.63-0.80, DOMAIN.md)...
STALL_ATTENUATION_BELOW = 0.60
#: ...four days after pitch (a lager below 60% then is rare, a stuck batch common).
STALL_AFTER_HOURS = 96.0
#: What a snapshot's bucket is read from (snapshot columns).
BUCKET_INPUTS = ("gravity_slope_plato_per_day", "apparent_attenuation", "hours_since_pitch")
#: Residuals are stored to this many decimals of an hour (0.01 h = 36 s).
DECIMALS = 2


def min_group_rows(levels: Sequence[float] = LEVELS) -> int:
    """Calibration snapshots a group needs for finite bounds at every level: with ``n``
    residuals the upper bound at level L is the ``ceil((1 + L)/2 * (n + 1))``-th smallest,
    which exists only from ``n + 1 >= 2 / (1 - L)``."""
    return max(math.ceil(2.0 / (1.0 - level) - 1e-9) - 1 for level in levels)


def bucket_names(edges: Sequence[float] = BUCKET_EDGES) -> list[str]:
    bounds = [0.0, *edges]
    names = [f"{lo:g}-{hi:g}" for lo, hi in pairwise(bounds)]
    return [*names, f"{bounds[-1]:g}+"]


@lru_cache(maxsize=8)
def _bucket_arrays(edges: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(bucket_names(edges), dtype=object), np.asarray(edges, float)


def buckets(
    hours: np.ndarray,
    slope: np.ndarray,
    attenuation: np.ndarray,
    hours_since_pitch: np.ndarray,
    edges: Sequence[float] = BUCKET_EDGES,
) -> np.ndarray:
    """Each snapshot's bucket, from its point forecast and its own features."""
    hours, slope = np.asarray(hours, float), np.asarray(slope, float)
    attenuation = np.asarray(attenuation, float)
    since = np.asarray(hours_since_pitch, float)
    names, bounds = _bucket_arrays(tuple(edges))
    out = names[np.searchsorted(bounds, hours, side="right")]
    # comparisons with NaN are False, without a warning: a missing value is no stall
    stalled = (
        (slope > STALL_SLOPE_ABOVE)
        & (attenuation < STALL_ATTENUATION_BELOW)
        & (since >= STALL_AFTER_HOURS)
    )
    out = np.where(np.isnan(slope), NO_SLOPE, out)
    return np.where(stalled, STALLED, out).astype(object)


def group_value(value) -> str:
    """A slice value as a group names it (a missing one is its own value)."""
    if (
        value is None
        or value is pd.NA
        or value == ""
        or (isinstance(value, float) and value != value)
    ):
        return "(missing)"
    return str(value)


@dataclass(frozen=True)
class Group:
    """One group's calibration: sorted finite residuals (actual - predicted hours), how many
    of its snapshots never finished (stuck: residual +inf), and its batches."""

    residuals: tuple[float, ...]
    never: int = 0
    batches: int = 0

    @property
    def size(self) -> int:
        return len(self.residuals) + self.never

    def sorted_residuals(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.residuals, float), np.full(self.never, np.inf)])


@dataclass
class Forecasts:
    """The finish forecasts of N snapshots (hours from each snapshot's time)."""

    #: {level: (low, high)}; high is +inf where open-ended (may never finish), both NaN
    #: where no interval can be given (a stall without calibration data).
    intervals: dict[float, tuple[np.ndarray, np.ndarray]]
    #: [N, len(horizons)] P(finished by t); NaN where none can be given.
    finish_probabilities: np.ndarray
    #: Each snapshot's group key, and its bucket.
    groups: list[str]
    buckets: list[str]
    #: Calibration snapshots behind each answer (0: none).
    support: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: P(never finishes): 1 - P(finished by t) as t grows without end, the share of the
    #: group's calibration snapshots that never finished (stuck), mid p-value; NaN where no
    #: answer can be given.
    never_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def take(self, rows: np.ndarray) -> Forecasts:
        """The forecasts of the rows ``rows`` selects (a boolean mask or indexes)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Forecasts(
            {level: (low[rows], high[rows]) for level, (low, high) in self.intervals.items()},
            self.finish_probabilities[rows],
            [self.groups[i] for i in rows],
            [self.buckets[i] for i in rows],
            self.support[rows],
            self.never_probability[rows],
        )


@dataclass(frozen=True)
class FinishForecast:
    """A fitted conformal predictive system for hours remaining (see the module's text)."""

    group_column: str
    groups: dict[str, Group]
    levels: tuple[float, ...] = LEVELS
    horizons: tuple[float, ...] = HORIZONS
    bucket_edges: tuple[float, ...] = BUCKET_EDGES
    method: str = "Mondrian conformal predictive system (split conformal, crepes-compatible)"

    @cached_property
    def _calibration(self) -> dict[str, tuple[np.ndarray, dict]]:
        """Per group, its sorted residuals (never-finished as +inf) and each level's bound
        offsets (None: too few for that bound), computed once: this runs on every request."""
        out = {}
        for key, group in self.groups.items():
            residuals = group.sorted_residuals()
            offsets = {}
            for level in self.levels:
                low, high = percentile_indexes(residuals.size, level)
                offsets[level] = (
                    None if low is None else float(residuals[low]),
                    None if high is None or np.isinf(residuals[high]) else float(residuals[high]),
                )
            out[key] = (residuals, offsets)
        return out

    @cached_property
    def _horizons(self) -> np.ndarray:
        return np.asarray(self.horizons, float)

    def keys(self, values: Sequence, bucket: Sequence[str]) -> list[str]:
        """The group each snapshot is forecast from: its own value's in its bucket, else
        the bucket's over every value, else every snapshot's; ``""`` for a stall without
        a calibration group of its own (no answer)."""
        out = []
        for value, b in zip(values, bucket, strict=True):
            own = f"{group_value(value)}|{b}"
            if own in self.groups:
                out.append(own)
            elif f"{EVERY}|{b}" in self.groups:
                out.append(f"{EVERY}|{b}")
            else:
                out.append("" if b == STALLED else f"{EVERY}|{EVERY}")
        return out

    def forecast(
        self,
        hours: np.ndarray,
        values: Sequence,
        slope: np.ndarray,
        attenuation: np.ndarray,
        hours_since_pitch: np.ndarray,
    ) -> Forecasts:
        """Intervals and finish probabilities around the point forecasts ``hours``."""
        hours = np.maximum(np.asarray(hours, float), 0.0)
        bucket = buckets(hours, slope, attenuation, hours_since_pitch, self.bucket_edges)
        keys = self.keys(values, bucket)
        n = len(hours)
        bounds = {level: (np.zeros(n), np.full(n, np.inf)) for level in self.levels}
        probabilities = np.full((n, len(self.horizons)), np.nan)
        support = np.zeros(n, int)
        never = np.full(n, np.nan)
        key_array = np.asarray(keys, dtype=object) if n > 1 else None
        for key in dict.fromkeys(keys):
            if not key:  # no answer: [0, never), no probabilities
                continue
            rows = np.flatnonzero(key_array == key) if n > 1 else slice(None)
            residuals, offsets = self._calibration[key]
            size = residuals.size
            support[rows] = size
            for level, (low, high) in offsets.items():
                if low is not None:
                    bounds[level][0][rows] = np.maximum(hours[rows] + low, 0.0)
                if high is not None:
                    bounds[level][1][rows] = hours[rows] + high
            # (#{hours + r <= t} + 1/2) / (n + 1): every row and horizon in one searchsorted
            limits = self._horizons[None, :] - hours[rows, None]
            at_most = np.searchsorted(residuals, limits.ravel(), side="right").reshape(limits.shape)
            probabilities[rows] = (at_most + 0.5) / (size + 1)
            # t -> infinity: every finite residual is below it, the +inf (stuck) ones never
            never[rows] = (self.groups[key].never + 0.5) / (size + 1)
        return Forecasts(bounds, probabilities, keys, list(bucket), support, never)

    def row_columns(self, forecasts: Forecasts) -> list[dict]:
        """Per snapshot, the forecast as the prediction log stores it: each level's bounds
        (hours; a high of ``None`` is open-ended), P(finished by t) per horizon as JSON
        (``null``: no answer), the group, and P(never finishes) (``None``: no answer)."""
        columns = {}
        for level, (low, high) in forecasts.intervals.items():
            tag = round(level * 100)
            columns[f"interval_{tag}_low"] = low.tolist()
            columns[f"interval_{tag}_high"] = np.where(np.isinf(high), np.nan, high).tolist()
        names = [f"{t:g}" for t in self.horizons]
        probabilities = forecasts.finish_probabilities.tolist()
        out = []
        for i, group in enumerate(forecasts.groups):
            row = {k: (None if v[i] != v[i] else v[i]) for k, v in columns.items()}
            p = probabilities[i]
            row["finish_probabilities"] = (
                None if p[0] != p[0] else orjson.dumps(dict(zip(names, p, strict=True))).decode()
            )
            row["forecast_group"] = group
            stuck = forecasts.never_probability[i]
            row["never_probability"] = None if stuck != stuck else float(stuck)
            out.append(row)
        return out

    def forecast_records(self, records: list[dict], hours: np.ndarray) -> Forecasts:
        """:meth:`forecast` for request rows (dicts of snapshot columns)."""

        def column(name: str) -> np.ndarray:
            return np.array([r.get(name) for r in records], dtype=float)

        return self.forecast(
            hours,
            [r.get(self.group_column) for r in records],
            *(column(name) for name in BUCKET_INPUTS),
        )

    def describe(self) -> dict:
        """What ``/metadata`` says of it (the residuals stay in the model file)."""
        return {
            "method": self.method,
            "levels": list(self.levels),
            "horizons_hours": list(self.horizons),
            "group_column": self.group_column,
            "groups": {
                key: {"snapshots": g.size, "batches": g.batches, "never_finished": g.never}
                for key, g in self.groups.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "group_column": self.group_column,
                "levels": list(self.levels),
                "horizons": list(self.horizons),
                "bucket_edges": list(self.bucket_edges),
                "groups": {
                    key: {"residuals": list(g.residuals), "never": g.never, "batches": g.batches}
                    for key, g in self.groups.items()
                },
            },
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> FinishForecast:
        data = json.loads(text)
        groups = {
            key: Group(tuple(float(r) for r in g["residuals"]), int(g["never"]), int(g["batches"]))
            for key, g in data["groups"].items()
        }
        for key, g in groups.items():
            values = np.asarray(g.residuals, float)
            if not np.isfinite(values).all() or np.any(np.diff(values) < 0) or g.never < 0:
                raise ValueError(f"finish forecast group {key!r}: residuals must be finite, sorted")
        if f"{EVERY}|{EVERY}" not in groups:
            raise ValueError("a finish forecast needs its every-snapshot group '*|*'")
        return cls(
            data["group_column"],
            groups,
            tuple(float(x) for x in data["levels"]),
            tuple(float(x) for x in data["horizons"]),
            tuple(float(x) for x in data["bucket_edges"]),
            data.get("method", cls.method),
        )


#: What ``forecast_status`` says of a served forecast (``None``: the model gives none).
STATUS_FERMENTING = "fermenting"
STATUS_RATE_UNKNOWN = "rate_unknown"
STATUS_STALLED = "stalled"


def forecast_status(group: str | None) -> str | None:
    """A served forecast's status from its group: ``stalled`` (four days after pitch, below
    the attenuation yeast stops at and barely falling: it may be stuck; without stalled
    calibration batches, group ``""``, it has no finite answer), ``rate_unknown`` (fewer
    than two readings in the last day), else ``fermenting``."""
    if group is None:
        return None
    if group == "" or group.endswith(f"|{STALLED}"):
        return STATUS_STALLED
    if group.endswith(f"|{NO_SLOPE}"):
        return STATUS_RATE_UNKNOWN
    return STATUS_FERMENTING


def percentile_indexes(size: int, level: float) -> tuple[int | None, int | None]:
    """Indexes into ``size`` sorted residuals of a central ``level`` interval's bounds, as
    conformal predictive systems take them (``crepes``: lower ``int(p (n+1)) - 1``, upper
    ``ceil(q (n+1)) - 1``); None where the group is too small for that bound."""
    lower = (1 - level) / 2 * 100  # crepes' own arithmetic, so the indexes agree exactly
    upper = (level + (1 - level) / 2) * 100
    low = int(lower / 100 * (size + 1)) - 1
    high = math.ceil(upper / 100 * (size + 1)) - 1
    return (low if low >= 0 else None), (high if high <= size - 1 else None)

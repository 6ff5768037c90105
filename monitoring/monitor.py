"""Monitoring: what was predicted against what happened, window by window and slice by slice.

Labels come from three places, best first: a label sent for the prediction itself
(``/feedback`` with a prediction id), a batch finish time sent to ``/feedback``, or the
batch's outcome derived from its readings in the validated lake. A prediction is labelled
``finished_within_horizon = finish_time <= snapshot_time + horizon`` (a stuck batch never
finishes).

Per window: the metrics of ``models.metrics`` overall, per slice key, and per pair of slice
keys where support allows; an alarm needs enough support, a bias beyond its limit *and* a
bias test that survives the Holm correction over every (window, slice) tested, so many
slices times many windows do not page on noise. The finish forecast's live coverage (80%
and 95% intervals, on finished batches) is tested the same way, one-sided: a slice whose
intervals hold clearly less often than nominal alarms. Small slices get a sequential test
(:mod:`monitoring.sequential`), nested alarms one root cause (:mod:`monitoring.causes`),
and label-free drift its batch-level tests (:mod:`monitoring.drift`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import t as t_dist

from brewcast.intervals import LEVELS
from brewcast.schema import slice_keys
from brewcast.settings import Settings
from models.dataset import KNOWN_OUTCOMES
from models.metrics import Z95, classification_report, holm, prediction_bias
from monitoring.causes import resolve
from monitoring.drift import drift_table
from monitoring.sequential import Finding, sequential_tests

log = logging.getLogger(__name__)

#: Likely causes per slice key (DOMAIN.md), named in every alert.
LIKELY_CAUSES = {
    "yeast_strain": "yeast health or vitality (pitch rate, oxygen, repitching), a supplier "
    "change of the strain, or an attenuation shift",
    "fermenter": "cooling capacity or a temperature sensor of that vessel, a CIP problem",
    "brand": "a recipe change (original gravity, grist), or a new hop/yeast combination",
    "style": "yeast health or vitality of the strain the style is brewed with, its "
    "fermentation temperature, or a change its brands share (grist, hopping)",
    "season": "cellar ambient temperature reaching the fermenters",
}


@dataclass
class Alert:
    window: str
    slice: str
    value: str
    metric: str
    observed: float
    limit: float
    support: int
    batches: int
    p_value: float | None
    likely_causes: str
    #: "window": a fixed window's test; "cusum": the slice's sequential test since deployment
    #: (:mod:`monitoring.sequential`), whose window runs from the estimated change on.
    test: str = "window"
    statistic: float | None = None  # the CUSUM when it crossed, against ``threshold``
    threshold: float | None = None
    detected_at: str | None = None  # when the batch that crossed it finished
    batch_ids: list[str] = field(default_factory=list)
    model_version: str | None = None
    #: Other metrics of the same family that alarmed for the same cause: {metric: observed}.
    also: dict[str, float] = field(default_factory=dict)
    #: A sequential alert from an earlier run whose CUSUM has not returned to 0: still open.
    carried: bool = False
    #: The alarmed parent slices this one explains ("all=all", "brand=pils"): they alarm
    #: for its batches and are not reported on their own.
    explains: list[str] = field(default_factory=list)

    def evidence(self) -> str:
        if self.test == "cusum" and self.carried:
            return (
                f"CUSUM crossed {self.threshold:.1f} when the batch finished at "
                f"{self.detected_at}; {self.statistic:.1f} now, open until it falls to 0"
            )
        if self.test == "cusum":
            return (
                f"CUSUM {self.statistic:.1f} above its threshold {self.threshold:.1f}, "
                f"about one false alarm per slice-year"
            )
        if self.p_value is None:
            return "calibration error, no test"
        return f"Holm-adjusted p={self.p_value:.2g}"

    def for_brewers(self) -> str:
        """The alert as the cellar board says it: which batches, what, since when, what to
        check ("german_lager batches have been finishing ~45 h later than forecast since 24
        Oct: check yeast health ...")."""
        keys, values = self.slice.split("*"), self.value.split("*")
        named = [
            f"batches in {v}" if k == "fermenter" else f"{v} batches"
            for k, v in zip(keys, values, strict=False)
        ]
        who = "all batches" if self.slice == "all" else " / ".join(named)
        since = self.window
        with contextlib.suppress(ValueError):
            since = window_span(self.window)[0].strftime("%d %b")
        if self.metric == "hours_remaining_bias":
            way = "later" if self.observed < 0 else "earlier"
            what = f"have been finishing ~{abs(self.observed):.0f} h {way} than forecast"
        elif self.metric.startswith(COVERAGE_METRIC):
            what = "have been finishing outside their forecast windows more often than stated"
        else:
            way = "too sure" if self.observed > 0 else "too doubtful"
            what = f"have had forecasts {way} that they would finish within the day"
        return f"{who} {what} since {since}: check {self.likely_causes}."

    def message(self) -> str:
        if self.metric.startswith(COVERAGE_METRIC):
            nominal = int(self.metric.removeprefix(COVERAGE_METRIC))
            text = (
                f"[{self.window}] {self.slice}={self.value}: "
                f"{measured(self.metric, self.observed)} of {self.support} finished forecasts "
                f"from {self.batches} batches "
                f"(alarm below {nominal / 100 - self.limit:.0%}; {self.evidence()}). The "
                f"finish-time forecast is over-confident here: plan with care."
            )
        else:
            text = (
                f"[{self.window}] {self.slice}={self.value}: {self.metric} {self.observed:+.3f} "
                f"beyond ±{self.limit:g} over {self.support} predictions from {self.batches} "
                f"batches ({self.evidence()})."
            )
        if self.also:
            text += " With it: " + "; ".join(measured(m, v) for m, v in self.also.items()) + "."
        if self.explains:
            text += f" It explains the alarms of {', '.join(self.explains)}."
        return f"{text} Likely causes: {self.likely_causes}."


def measured(metric: str, observed: float) -> str:
    """A metric's alarming value in words ("95% intervals held for 40%", "ece 0.210")."""
    if metric.startswith(COVERAGE_METRIC):
        nominal = int(metric.removeprefix(COVERAGE_METRIC))
        return f"{nominal}% intervals held for {max(nominal / 100 - observed, 0.0):.0%}"
    return f"{metric} {observed:+.3f}"


@dataclass
class MonitoringResult:
    windows: pd.DataFrame  # one row per (window, slice, value): metrics + support
    drift: pd.DataFrame  # one row per (season, feature): monitoring.drift.DRIFT_COLUMNS
    alerts: list[Alert] = field(default_factory=list)
    labelled: int = 0
    pending: int = 0
    #: {column: {value: predictions}} served out of vocabulary in the latest window.
    new_values: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Predictions of the latest window flagged out of distribution, overall and per slice.
    out_of_distribution: dict = field(default_factory=dict)
    #: The sequential tests' paths: one row per (version, slice, family, batch).
    sequential: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def retrain(self) -> bool:
        return bool(self.alerts)

    def summary(self) -> dict:
        return {
            "labelled_predictions": self.labelled,
            "pending_predictions": self.pending,
            "windows": sorted(self.windows["window"].unique().tolist())
            if len(self.windows)
            else [],
            "alerts": [
                {**asdict(a), "message": a.message(), "for_brewers": a.for_brewers()}
                for a in self.alerts
            ],
            "retrain": self.retrain,
            "drift_alarms": self.drift[self.drift["alarm"]].to_dict("records")
            if len(self.drift)
            else [],
            "new_values": self.new_values,
            "out_of_distribution": self.out_of_distribution,
        }


# ------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------


def _lookup(keys: pd.Series, values: pd.Series) -> pd.Series:
    """``values[key]`` per key, missing where absent (Series.map cannot do datetimes here)."""
    return pd.Series(values.reindex(keys.to_numpy()).array, index=keys.index)


def prediction_time(predictions: pd.DataFrame) -> pd.Series:
    """When a prediction is about: its snapshot time, else when it was served. Windows go by
    this, so a late replay of past snapshots lands in the windows it describes."""
    served = pd.to_datetime(predictions["served_at"], utc=True, format="mixed")
    return pd.to_datetime(predictions["snapshot_time"], utc=True, format="mixed").fillna(served)


def attach_labels(
    predictions: pd.DataFrame, labels: pd.DataFrame, outcomes: pd.DataFrame, horizon_hours: float
) -> pd.DataFrame:
    """``predictions`` with ``label`` (float: 1, 0, or NaN while pending) and its source."""
    out = predictions.copy()
    at = prediction_time(out)
    deadline = at + pd.Timedelta(hours=horizon_hours)
    out["label"] = np.nan
    out["label_source"] = None
    out["actual_hours"] = np.nan  # hours from the snapshot to the finish (finished batches)
    out["never_finished"] = False  # a stuck batch: only an open-ended interval covers it

    def by_finish(finish: pd.Series) -> pd.Series:
        return (finish <= deadline).astype(float)

    if len(outcomes):
        known = outcomes[outcomes["status"].isin(KNOWN_OUTCOMES)].set_index("batch_id")
        finish = pd.to_datetime(_lookup(out["batch_id"], known["finish_time"]), utc=True)
        status = _lookup(out["batch_id"], known["status"])
        lake = by_finish(finish).where(status == "finished", 0.0).where(status.notna())
        out.loc[lake.notna(), "label_source"] = "readings"
        out["label"] = lake
        out["actual_hours"] = ((finish - at).dt.total_seconds() / 3600).clip(lower=0)
        out["never_finished"] = (status == "stuck").fillna(False).astype(bool).to_numpy()
    if len(labels):
        batch = (
            labels.dropna(subset=["batch_id", "finished_at"])
            .drop_duplicates("batch_id", keep="last")
            .set_index("batch_id")
        )
        finish = pd.to_datetime(_lookup(out["batch_id"], batch["finished_at"]), utc=True)
        sent = by_finish(finish).where(finish.notna())
        out.loc[sent.notna(), "label"] = sent[sent.notna()]
        out.loc[sent.notna(), "label_source"] = "feedback_batch"
        hours = ((finish - at).dt.total_seconds() / 3600).clip(lower=0)
        out.loc[hours.notna(), "actual_hours"] = hours[hours.notna()]
        out.loc[hours.notna(), "never_finished"] = False
        direct = (
            labels.dropna(subset=["prediction_id", "finished_within_horizon"])
            .drop_duplicates("prediction_id", keep="last")
            .set_index("prediction_id")["finished_within_horizon"]
            .astype(float)
        )
        own = _lookup(out["prediction_id"], direct)
        out.loc[own.notna(), "label"] = own[own.notna()]
        out.loc[own.notna(), "label_source"] = "feedback_prediction"
    out["label_bound"] = _label_bound(out, outcomes, deadline)
    return out


def _label_bound(out: pd.DataFrame, outcomes: pd.DataFrame, deadline: pd.Series) -> pd.Series:
    """An upper bound on each label, known earlier than the label: the label itself once
    known; for a running batch whose horizon has passed (by the latest prediction), 0 when
    the batch was surely still fermenting at the horizon's end (a sure negative: its
    ``unfinished_until`` is later), else 1 (it may have finished). ``mean(p - bound)`` is
    then at most the true prediction bias, so a slice whose bound alone is too high is
    too sure, days before its labels arrive (right-censored, never a false label)."""
    bound = out["label"].copy()
    if not len(outcomes) or "unfinished_until" not in outcomes:
        return bound
    running = outcomes[~outcomes["status"].isin(KNOWN_OUTCOMES)].set_index("batch_id")
    until = pd.to_datetime(_lookup(out["batch_id"], running["unfinished_until"]), utc=True)
    as_of = prediction_time(out).max()
    pending = bound.isna() & until.notna() & (deadline <= as_of)
    bound[pending] = np.where(deadline[pending] < until[pending], 0.0, 1.0)
    return bound


# ------------------------------------------------------------------------------------------
# metrics, alarms
# ------------------------------------------------------------------------------------------


def _groups(frame: pd.DataFrame, min_support: int):
    """(slice name, value, rows) overall, per key, and per pair of keys with support."""
    yield "all", "all", frame
    keys = slice_keys(frame)
    for key in keys:
        for value, part in frame.groupby(frame[key].fillna("(missing)"), sort=True):
            yield key, str(value), part
    for a, b in combinations(keys, 2):
        for (va, vb), part in frame.groupby(
            [frame[a].fillna("(missing)"), frame[b].fillna("(missing)")], sort=True
        ):
            if len(part) >= min_support:
                yield f"{a}*{b}", f"{va}*{vb}", part


def slice_metrics(part: pd.DataFrame) -> dict:
    """One slice's labelled predictions: the classification report, the hours bias and
    the live coverage, each with its test."""
    report = classification_report(
        part["label"],
        part["probability"],
        float(part["threshold"].iloc[0]),
        part["batch_id"].fillna(part["prediction_id"]),
    )
    finished = part["actual_hours"].notna()
    hours = prediction_bias(
        part.loc[finished, "actual_hours"],
        part.loc[finished, "hours_remaining"],
        part.loc[finished, "batch_id"].fillna(part.loc[finished, "prediction_id"]),
    )
    report.update(
        bias_p_value=_p_value(report["bias"], report["bias_high"], report["batches"]),
        hours_bias=hours.value,
        hours_bias_low=hours.low,
        hours_bias_high=hours.high,
        hours_rows=hours.n,
        hours_bias_p_value=_p_value(hours.value, hours.high, hours.groups),
        **coverage_metrics(part),
    )
    return report


def early_metrics(part: pd.DataFrame) -> dict:
    """The lower bound of a slice's prediction bias from its label bounds
    (:func:`_label_bound`): every prediction whose horizon has passed, labelled or not."""
    bounded = part[part["label_bound"].notna()]
    bias = prediction_bias(
        bounded["label_bound"],
        bounded["probability"],
        bounded["batch_id"].fillna(bounded["prediction_id"]),
    )
    # tested only where it knows more than the labels (rows not labelled yet): elsewhere it
    # is the bias test again, weaker, and would only dilute Holm's correction
    ahead = bool(bounded["label"].isna().any())
    return {
        "early_bias": bias.value,
        "early_bias_high": bias.high,
        "early_bias_rows": bias.n,
        "early_bias_batches": bias.groups,
        "early_bias_p_value": _p_value(bias.value, bias.high, bias.groups)
        if ahead
        else float("nan"),
        # sure negatives not yet labelled: what the bound knows before the labels
        "early_negatives": int(((bounded["label_bound"] == 0) & bounded["label"].isna()).sum()),
    }


def window_metrics(
    labelled: pd.DataFrame, window: str, min_support: int, min_batches: int
) -> pd.DataFrame:
    """Every slice's metrics in a window: on its labelled predictions (``label``), and the
    early bound on every prediction with a ``label_bound``; a slice with no label yet has
    the early bound alone (and no support)."""
    rows = []
    for name, value, part in _groups(labelled, min_support):
        known = part[part["label"].notna()]
        if known.empty:
            rows.append(
                {"window": window, "slice": name, "value": value, "rows": 0, "batches": 0,
                 **early_metrics(part), "supported": False}
            )  # fmt: skip
            continue
        report = {**slice_metrics(known), **early_metrics(part)}
        rows.append(
            {
                "window": window,
                "slice": name,
                "value": value,
                **report,
                "supported": report["rows"] >= min_support and report["batches"] >= min_batches,
            }
        )
    return pd.DataFrame(rows)


#: The live coverage alarms' metric names: ``interval_coverage_80``, ``interval_coverage_95``.
COVERAGE_METRIC = "interval_coverage_"


def coverage_metrics(part: pd.DataFrame) -> dict[str, float]:
    """Per served level: the share of finished forecasts whose actual hours to the finish
    fell inside the interval (a stuck batch only inside an open-ended one), and its
    shortfall below the nominal level with a cluster-robust (by batch) interval and p-value,
    the standard error never below the null's with one observation per batch.
    Predictions served without intervals do not count."""
    out: dict[str, float] = {}
    for level in LEVELS:
        tag = round(level * 100)
        low_column, high_column = f"interval_{tag}_low", f"interval_{tag}_high"
        if low_column not in part:
            continue
        known = part[low_column].notna() & (part["actual_hours"].notna() | part["never_finished"])
        target = part["actual_hours"].where(~part["never_finished"], np.inf)[known]
        high = part.loc[known, high_column].astype(float).fillna(np.inf)
        hit = ((target >= part.loc[known, low_column]) & (target <= high)).astype(float)
        batches = part.loc[known, "batch_id"].fillna(part.loc[known, "prediction_id"])
        shortfall = prediction_bias(hit, np.full(len(hit), level), batches)
        # A slice whose every interval missed (or held) has no spread to estimate a standard
        # error from: the null's own, with a batch as one observation, is the floor.
        clustered = (shortfall.high - shortfall.value) / Z95 if shortfall.n else float("nan")
        floor = np.sqrt(level * (1 - level) / max(shortfall.groups, 1))
        se = max(np.nan_to_num(clustered), floor)
        out.update(
            {
                f"coverage_{tag}": float(hit.mean()) if len(hit) else float("nan"),
                f"coverage_{tag}_shortfall": shortfall.value,
                f"coverage_{tag}_shortfall_low": shortfall.value - Z95 * se,
                f"coverage_{tag}_shortfall_high": shortfall.value + Z95 * se,
                f"coverage_{tag}_rows": shortfall.n,
                f"coverage_{tag}_batches": shortfall.groups,
                f"coverage_{tag}_p_value": _p_value(
                    shortfall.value, shortfall.value + Z95 * se, shortfall.groups
                )
                if shortfall.n
                else float("nan"),
            }
        )
    return out


def _p_value(value: float, high: float, clusters: int) -> float:
    """Two-sided p of value == 0 from its 95% interval, against t with clusters-1 dof (few
    batches make a cluster-robust standard error optimistic)."""
    se = (high - value) / Z95 if np.isfinite(high) else float("nan")
    if not se or not np.isfinite(se) or se <= 0:
        return float("nan")
    return float(2 * t_dist.sf(abs(value) / se, max(clusters - 1, 1)))


#: (metric, value column, p-value column, limit setting, one-sided) of the statistically
#: tested alarms; a one-sided one alarms only above its limit (coverage short of nominal,
#: not intervals wider than needed), and its support is its own rows and batches.
TESTED = (
    ("prediction_bias", "bias", "bias_p_value", "monitor_max_abs_bias", False),
    ("hours_remaining_bias", "hours_bias", "hours_bias_p_value", "monitor_max_hours_bias", False),
    *(
        (
            f"{COVERAGE_METRIC}{round(level * 100)}",
            f"coverage_{round(level * 100)}_shortfall",
            f"coverage_{round(level * 100)}_p_value",
            "monitor_max_coverage_shortfall",
            True,
        )
        for level in LEVELS
    ),
    # too sure, days before the labels: the lower bound of the bias (one-sided)
    ("early_prediction_bias", "early_bias", "early_bias_p_value", "monitor_max_abs_bias", True),
)


def _sided(p_value: float, observed: float, one_sided: bool) -> float:
    """A test's p-value: the two-sided one, or for a one-sided test half of it on the
    alarming side (its complement on the other)."""
    if not one_sided:
        return p_value
    return p_value / 2 if observed > 0 else 1 - p_value / 2


def _beyond(observed: float, limit: float, one_sided: bool) -> bool:
    """Whether a tested value is past its limit (one-sided: above it)."""
    return observed > limit if one_sided else abs(observed) > limit


def find_alerts(windows: pd.DataFrame, settings: Settings) -> list[Alert]:
    """Alarms with support, beyond their limit, and significant after Holm's correction over
    every test of the run (both bias families, every window and slice)."""
    supported = windows[windows["supported"]]
    tests = []
    for metric, column, p_column, limit_name, one_sided in TESTED:
        frame = windows if one_sided else supported  # one-sided: their own support
        if p_column not in frame:
            continue
        for row in frame[frame[p_column].notna()].itertuples(index=False):
            rows, batches = int(row.rows), int(row.batches)
            if one_sided:  # coverage: its own support (finished forecasts with intervals)
                prefix = column.removesuffix("_shortfall")
                rows, batches = (
                    int(getattr(row, f"{prefix}_rows")),
                    int(getattr(row, f"{prefix}_batches")),
                )
                if rows < settings.monitor_min_support or batches < settings.monitor_min_batches:
                    continue
            p_value = _sided(float(getattr(row, p_column)), float(getattr(row, column)), one_sided)
            tests.append((metric, column, limit_name, one_sided, p_value, rows, batches, row))
    alerts = []
    adjusted = holm(np.array([test[4] for test in tests])) if tests else []
    for (metric, column, limit_name, one_sided, _, rows, batches, row), p_adjusted in zip(
        tests, adjusted, strict=True
    ):
        observed, limit = float(getattr(row, column)), float(getattr(settings, limit_name))
        if _beyond(observed, limit, one_sided) and p_adjusted < settings.monitor_alpha:
            alerts.append(
                Alert(
                    row.window,
                    row.slice,
                    row.value,
                    metric,
                    observed,
                    limit,
                    rows,
                    batches,
                    float(p_adjusted),
                    _causes(row.slice),
                    model_version=str(row.model_version),
                )
            )
    for row in supported.itertuples(index=False):
        if row.ece > settings.monitor_max_ece and row.rows >= ece_support(settings):
            alerts.append(
                Alert(
                    row.window,
                    row.slice,
                    row.value,
                    "ece",
                    float(row.ece),
                    settings.monitor_max_ece,
                    int(row.rows),
                    int(row.batches),
                    None,
                    _causes(row.slice),
                    model_version=str(row.model_version),
                )
            )
    return alerts


def sequential_alert(finding: Finding, settings: Settings) -> Alert:
    """The alert of a slice's CUSUM crossing: the bias over the batches since the estimated
    change, those batches, the window from that change to the crossing, and the alarmed
    parent slices it explains."""
    crossing, family = finding.crossing, finding.family
    since = finding.part.iloc[crossing.start : crossing.at + 1]
    began, detected = since["known_at"].iloc[0], since["known_at"].iloc[-1]
    days = max(math.ceil((detected - began) / pd.Timedelta(days=1)), 1)
    return Alert(
        span_name(began, began + pd.Timedelta(days=days)),
        finding.slice,
        finding.value,
        family.metric,
        float(since[family.column].mean()),
        float(getattr(settings, family.limit_setting)),
        int(since["snapshots"].sum()),
        len(since),
        None,
        _causes(finding.slice),
        test="cusum",
        statistic=float(crossing.statistic),
        threshold=float(crossing.threshold),
        detected_at=detected.isoformat(),
        batch_ids=since["batch_id"].astype(str).tolist(),
        model_version=str(finding.model_version),
        explains=finding.explains,
    )


#: A cause gets one alert per family: its finish times (hours, intervals) or its
#: probabilities (bias, calibration); the first metric listed leads.
FAMILY_OF = {
    "hours_remaining_bias": "finish",
    **{f"{COVERAGE_METRIC}{round(level * 100)}": "finish" for level in LEVELS},
    "prediction_bias": "probability",
    "early_prediction_bias": "probability",
    "ece": "probability",
}


def slice_rows(frame: pd.DataFrame, name: str, value: str) -> np.ndarray:
    """Which rows of ``frame`` are in slice ``name = value`` ("all", "brand", "a*b")."""
    mask = np.ones(len(frame), bool)
    if name != "all":
        for key, wanted in zip(name.split("*"), value.split("*"), strict=True):
            mask &= (frame[key].fillna("(missing)").astype(str) == wanted).to_numpy()
    return mask


def _holds(parent: Alert, child: Alert) -> bool:
    """Whether slice ``child`` is, by its definition, inside slice ``parent``."""
    if (parent.slice, parent.value) == (child.slice, child.value) or child.slice == "all":
        return False
    if parent.slice == "all":
        return True
    outer = dict(zip(parent.slice.split("*"), parent.value.split("*"), strict=True))
    inner = dict(zip(child.slice.split("*"), child.value.split("*"), strict=True))
    return set(outer) < set(inner) and all(inner[k] == v for k, v in outer.items())


def ece_support(settings: Settings) -> int:
    """Labelled predictions an ECE alarm needs: twice the support, as ECE is biased
    upwards on few rows."""
    return 2 * settings.monitor_min_support


def alarms_alone(part: pd.DataFrame, metric: str, settings: Settings) -> bool:
    """Whether ``part`` alone, with support, alarms on ``metric`` by its own (uncorrected)
    test: a parent slice without a child's rows, to see whether the child explains it."""
    if metric != "early_prediction_bias":
        part = part[part["label"].notna()]
    supported = len(part) >= settings.monitor_min_support
    if not supported or part["batch_id"].nunique() < settings.monitor_min_batches:
        return False
    early = metric == "early_prediction_bias"
    values = early_metrics(part) if early else slice_metrics(part)
    if metric == "ece":
        return bool(values["ece"] > settings.monitor_max_ece and len(part) >= ece_support(settings))
    _, column, p_column, limit_name, one_sided = next(t for t in TESTED if t[0] == metric)
    observed, limit = float(values[column]), float(getattr(settings, limit_name))
    p_value = _sided(float(values[p_column]), observed, one_sided)
    return bool(_beyond(observed, limit, one_sided) and p_value < settings.monitor_alpha)


def one_cause_per_alert(
    alerts: list[Alert], windows: dict[tuple[str, str], pd.DataFrame], settings: Settings
) -> list[Alert]:
    """The fixed windows' alerts reduced to one per cause and family. In a window, a slice
    that alarms (all, a season) is *explained* by an alarmed slice inside it (a strain, a
    strain in that season) when, without that slice's rows, it no longer alarms; of two
    slices with the same rows the coarser stays. Each remaining alert lists the parents it
    explains, its batches, and the other metrics of its family that alarmed with it.
    ``windows``: each (window, model version)'s labelled rows."""
    out = [a for a in alerts if a.test != "window"]
    groups: dict[tuple, list[Alert]] = {}
    for alert in alerts:
        if alert.test == "window":
            key = (alert.window, alert.model_version, FAMILY_OF[alert.metric])
            groups.setdefault(key, []).append(alert)
    for (window, version, _), group in groups.items():
        rows = windows[(window, version)]
        roots = _window_roots(group, rows, settings)
        leads: dict[tuple[str, str], Alert] = {}
        for i, alert in enumerate(group):
            root = group[roots[i]]
            lead = leads.setdefault((root.slice, root.value), root)
            if (alert.slice, alert.value) == (lead.slice, lead.value):
                if alert is not lead:
                    lead.also.setdefault(alert.metric, alert.observed)
            elif f"{alert.slice}={alert.value}" not in lead.explains:
                lead.explains.append(f"{alert.slice}={alert.value}")
        for (name, value), lead in leads.items():
            lead.batch_ids = sorted(
                rows.loc[slice_rows(rows, name, value), "batch_id"].dropna().astype(str).unique()
            )
            out.append(lead)
    return out


def window_span(window: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """A window name's start and end ("2026-03-01+7d": 1 March to 8 March, UTC)."""
    start, days = window.split("+")
    begin = pd.Timestamp(start, tz="UTC")
    return begin, begin + pd.Timedelta(days=float(days.removesuffix("d")))


def span_name(begin: pd.Timestamp, end: pd.Timestamp) -> str:
    """The name of the window from ``begin`` to ``end`` ("2026-03-01+7d"): the one naming
    that :func:`window_span` reads back."""
    days = (end - begin) / pd.Timedelta(days=1)
    return f"{begin:%Y-%m-%d}+{days:g}d"


def merge_windows(alerts: list[Alert]) -> list[Alert]:
    """One alert per cause across back-to-back windows: the same model version and metric
    alarming the same way in consecutive windows, on the same slice or on one that holds
    the other (at a season boundary a strain's root can be the strain one week and the
    strain in one season the next), is one alert "since" the first, under the wider name
    (the finer one listed as explained), its window the whole span, its support, batches
    and explained slices pooled and its value the support-weighted mean (each window's was
    beyond the limit)."""
    out = [a for a in alerts if a.test != "window"]

    def same_cause(run: Alert, alert: Alert) -> bool:
        return (str(run.model_version), run.metric, run.observed > 0) == (
            str(alert.model_version),
            alert.metric,
            alert.observed > 0,
        ) and (
            (run.slice, run.value) == (alert.slice, alert.value)
            or _holds(run, alert)
            or _holds(alert, run)
        )

    def started(a: Alert) -> tuple:
        return (window_span(a.window)[0], a.slice.count("*"), a.slice, a.value)

    runs: list[Alert] = []
    for alert in sorted((a for a in alerts if a.test == "window"), key=started):
        begin, end = window_span(alert.window)
        run = next(
            (r for r in runs if same_cause(r, alert) and begin <= window_span(r.window)[1] < end),
            None,
        )
        if run is None:
            runs.append(alert)
            continue
        if _holds(alert, run):  # the wider name leads
            run.explains.append(f"{run.slice}={run.value}")
            run.slice, run.value, run.likely_causes = alert.slice, alert.value, alert.likely_causes
        elif _holds(run, alert):
            run.explains.append(f"{alert.slice}={alert.value}")
        first = window_span(run.window)[0]
        total = run.support + alert.support
        run.observed = (run.observed * run.support + alert.observed * alert.support) / total
        run.window, run.support = span_name(first, end), total
        run.batch_ids = sorted(set(run.batch_ids) | set(alert.batch_ids))
        run.batches = len(run.batch_ids) or run.batches + alert.batches
        named = f"{run.slice}={run.value}"
        run.explains = [e for e in dict.fromkeys(run.explains + alert.explains) if e != named]
        run.also.update(alert.also)
        if alert.p_value is not None and run.p_value is not None:
            run.p_value = max(run.p_value, alert.p_value)
    return out + runs


def _window_roots(group: list[Alert], rows: pd.DataFrame, settings: Settings) -> list[int]:
    """:func:`~monitoring.causes.resolve` for one window's alerts of one family."""
    masks = [slice_rows(rows, a.slice, a.value) for a in group]
    return resolve(
        len(group),
        inside=lambda p, c: _holds(group[p], group[c]),
        same_rows=lambda p, c: masks[p].sum() == masks[c].sum(),
        alarms_without=lambda p, c: alarms_alone(
            rows[masks[p] & ~masks[c]], group[p].metric, settings
        ),
        size=lambda i: int(masks[i].sum()),
        overlaps=lambda p, c: (
            bool((masks[p] & masks[c]).any())
            and not (_holds(group[p], group[c]) or _holds(group[c], group[p]))
            and (group[p].slice, group[p].value) != (group[c].slice, group[c].value)
        ),
    )


def alert_path(paths: pd.DataFrame, alert: Alert) -> pd.DataFrame:
    """The CUSUM path (:attr:`MonitoringResult.sequential`) of a sequential alert's
    version, slice and metric, in the order tested."""
    if paths.empty:
        return paths
    return paths[
        (paths["model_version"].astype(str) == str(alert.model_version))
        & (paths["slice"] == alert.slice)
        & (paths["value"] == alert.value)
        & (paths["metric"] == alert.metric)
    ]


def still_open(previous: list[Alert], paths: pd.DataFrame, current: list[Alert]) -> list[Alert]:
    """Earlier runs' sequential alerts that this run's CUSUM no longer crosses but whose
    statistic, on the alarm's side, has not fallen back to 0: a CUSUM alarm stays open
    until the evidence is gone (a batch labelled late is put in its finish order, which can
    move the statistics after it and would otherwise make it flap). Those not explained by
    an alert of this run."""

    def key(a: Alert) -> tuple:
        return (str(a.model_version), a.slice, a.value, a.metric)

    raised = {key(a) for a in current if a.test == "cusum"}
    explained = {(a.metric, name) for a in current for name in a.explains}
    kept = []
    for alert in previous:
        name = f"{alert.slice}={alert.value}"
        if alert.test != "cusum" or key(alert) in raised or (alert.metric, name) in explained:
            continue
        path = alert_path(paths, alert)
        if path.empty:
            continue
        statistic = float(path["upper" if alert.observed > 0 else "lower"].iloc[-1])
        if statistic > 0:
            kept.append(replace(alert, statistic=statistic, carried=True))
    return kept


def _causes(slice_name: str) -> str:
    return LIKELY_CAUSES.get(
        slice_name.split("*")[0],
        "a change across the whole cellar (data pipeline, sensors, or the process itself)",
    )


# ------------------------------------------------------------------------------------------
# drift (label-free)
# ------------------------------------------------------------------------------------------


def unseen_categories(predictions: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{column: {value: predictions}} the served model had no embedding for (a brand,
    fermenter or strain new to it), from what the service logged per prediction."""
    out: dict[str, Counter] = {}
    for row in predictions[predictions["unknown_categories"].fillna("") != ""].itertuples():
        for column in row.unknown_categories.split(","):
            out.setdefault(column, Counter())[str(getattr(row, column, None))] += 1
    return {column: dict(counts) for column, counts in out.items()}


def out_of_distribution_counts(predictions: pd.DataFrame) -> dict:
    """How many predictions the service flagged as outside the model's training data
    (a forecast the model is out of its depth on), overall and per slice value."""
    if "out_of_distribution" not in predictions:
        return {}
    flags = predictions["out_of_distribution"]
    said = predictions[flags.notna()]
    flagged = said[said["out_of_distribution"].astype(bool)]
    return {
        "predictions": len(said),
        "flagged": len(flagged),
        "by_slice": {
            key: flagged[key].fillna("(missing)").value_counts().to_dict()
            for key in slice_keys(flagged)
            if len(flagged)
        },
    }


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------


#: Bumped when window metrics change meaning: a cached window of another version is
#: computed again.
WINDOW_CACHE_VERSION = "1"
#: What a window's metrics depend on, row by row (its fingerprint hashes them).
FINGERPRINTED = (
    "prediction_id", "probability", "hours_remaining", "label", "label_bound", "actual_hours",
    "never_finished",
)  # fmt: skip


def window_fingerprint(rows: pd.DataFrame, settings: Settings) -> str:
    """A window's predictions and labels as they are now (with the support settings its
    metrics depend on): equal fingerprints, equal metrics."""
    columns = [c for c in FINGERPRINTED if c in rows]
    hashed = pd.util.hash_pandas_object(rows[columns], index=False).to_numpy()
    total = int(hashed.sum(dtype=np.uint64))
    return (
        f"{WINDOW_CACHE_VERSION}:{len(rows)}:{total:x}:"
        f"{settings.monitor_min_support}:{settings.monitor_min_batches}"
    )


def labelled_predictions(
    predictions: pd.DataFrame, labels: pd.DataFrame, outcomes: pd.DataFrame, settings: Settings
) -> pd.DataFrame:
    """``predictions`` with their labels (:func:`attach_labels`) and the time each was
    made for (``at``): what the windows and the sequential test read."""
    joined = attach_labels(predictions, labels, outcomes, settings.horizon_hours)
    joined["at"] = prediction_time(joined)
    return joined


def sequential_alerts(labelled: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, list]:
    """The sequential test over labelled predictions: every slice's CUSUM paths and an
    alert per root-cause crossing (what :func:`monitor` adds to its windows' alerts)."""
    paths, crossings = sequential_tests(labelled, settings) if len(labelled) else ([], [])
    alerts = [sequential_alert(finding, settings) for finding in crossings]
    return (paths if len(paths) else pd.DataFrame()), alerts


def monitor(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    outcomes: pd.DataFrame,
    reference: dict | None,
    settings: Settings,
    previous: pd.DataFrame | None = None,
    previous_alerts: list[Alert] | None = None,
) -> MonitoringResult:
    """Metrics per window and slice, alerts, drift, for every logged prediction.
    ``previous``: an earlier run's windows; a window whose predictions and labels have not
    changed since (its fingerprint) is taken from it, not computed again, so a daily run
    costs what its new data costs. ``previous_alerts``: an earlier run's alerts, whose
    sequential ones stay open until their CUSUM falls to 0 (:func:`still_open`)."""
    cached = {}
    if previous is not None and len(previous) and "fingerprint" in previous:
        for key, table in previous.groupby(["window", "model_version", "fingerprint"]):
            cached[(str(key[0]), str(key[1]), str(key[2]))] = table
    if predictions.empty:
        return MonitoringResult(pd.DataFrame(), pd.DataFrame(), [], 0, 0)
    joined = labelled_predictions(predictions, labels, outcomes, settings)
    labelled = joined[joined["label"].notna()]
    bounded = joined[joined["label_bound"].notna()]  # labelled, and early bounds
    days = settings.monitor_window_days
    frames, rows = [], {}
    if len(bounded):
        start = bounded["at"].min().floor("D")
        index = ((bounded["at"] - start) / pd.Timedelta(days=days)).astype(int)
        for i, part in bounded.groupby(index, sort=True):
            lo = start + pd.Timedelta(days=days * i)
            name = span_name(lo, lo + pd.Timedelta(days=days))
            for version, by_version in part.groupby("model_version", sort=True):
                fingerprint = window_fingerprint(by_version, settings)
                table = cached.get((name, str(version), fingerprint))
                if table is None:
                    table = window_metrics(
                        by_version, name, settings.monitor_min_support, settings.monitor_min_batches
                    )
                    table.insert(1, "model_version", str(version))
                    table["fingerprint"] = fingerprint
                    table["fresh"] = True  # computed by this run (MLflow logs it)
                else:
                    table = table.assign(fresh=False)
                frames.append(table)
                rows[(name, str(version))] = by_version
    windows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    alerts = find_alerts(windows, settings) if len(windows) else []
    alerts = merge_windows(one_cause_per_alert(alerts, rows, settings))
    paths, sequential = sequential_alerts(labelled, settings)
    alerts += sequential + still_open(previous_alerts or [], paths, alerts + sequential)
    latest = joined[joined["at"] >= joined["at"].max() - pd.Timedelta(days=days)]
    recent = joined[
        joined["at"] >= joined["at"].max() - pd.Timedelta(days=settings.monitor_drift_days)
    ]
    drift = drift_table(recent, reference, settings)
    return MonitoringResult(
        windows,
        drift,
        alerts,
        len(labelled),
        int(joined["label"].isna().sum()),
        unseen_categories(latest),
        out_of_distribution_counts(latest),
        paths,
    )

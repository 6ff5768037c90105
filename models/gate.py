"""The promotion gate: a candidate becomes champion only if every check passes.

Every check is scored on the test split's pre-finish rows (``models.dataset.before_finish``),
and says its value, limit, interval and support, so a rejected model says why and a
passed one says by how much:

* **parity** of the ONNX graph with the model it was exported from;
* **overall ECE** under its limit (hundreds of batches: the point estimate);
* **bias, overall and per slice**: fails only when its interval (cluster-robust, by batch)
  lies wholly beyond the tolerance. A stuck batch in a small slice widens the interval
  instead of failing the model; a slice that is biased fails;
* **slice ECE**: fails only when the low end of its batch-bootstrap interval is above the
  limit (ECE is biased upwards in small samples);
* slices are tested when they hold at least ``min_slice_batches`` batches (support counts
  batches, not rows: a batch's snapshots are correlated) and once per set of rows (a brand
  brewed with one strain only is the same rows as that strain's slice); the others are
  listed as not tested, with their size;
* **baselines**: the candidate's log loss, minus each baseline's on the same resampled
  batches (paired bootstrap): below 0 over the whole interval for a non-ML rule, or within
  noise where the candidate's hours remaining beat the rule's over their whole interval (a
  model that cannot show it adds something to the rule adds nothing: on plateau labels a
  slope rule's 24 h probability is as good as a model's on simulated worlds, its hours are
  days off); for a learned baseline, a failure when
  the whole interval is above 0 (the baseline is better, not by the luck of the test
  split); the same within noise passes, and the check's note says so;
* **finish forecast**: the 80% and 95% intervals' coverage, overall and per tested slice
  (strains, brands, fermenters, forecast buckets), fails when its batch-bootstrap interval
  lies wholly below the nominal level minus the tolerance; and its P(finished by the
  horizon) must agree with the classifier's probability on average;
* **what the brewer already knows**: log loss lower than the brand history's over the whole
  paired interval (with the baselines above), hours MAE not higher over it, and a median
  80% window no wider than the brand history's where that window covers within the limit;
* **a decision that fires**: recall at the chosen threshold at least ``min_recall`` (a
  model that never says "ready" is no use, however calibrated);
* **champion**: log loss no worse than the champion's by more than the tolerance and AUC no
  lower by more than it, on the same rows (the first model has none, and says so).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from models.export import PARITY_LIMIT

PASSED, FAILED, NOT_TESTED = "passed", "failed", "not tested"


@dataclass(frozen=True)
class GateLimits:
    max_ece: float = 0.05
    max_slice_ece: float = 0.10
    max_abs_bias: float = 0.05
    min_slice_batches: int = 15
    tolerance: float = 0.01
    parity: float = PARITY_LIMIT
    max_coverage_shortfall: float = 0.05
    max_slice_coverage_shortfall: float = 0.07
    max_horizon_disagreement: float = 0.10
    min_recall: float = 0.30
    max_width_ratio: float = 1.0

    @classmethod
    def from_settings(cls, s) -> GateLimits:
        return cls(
            s.gate_max_ece,
            s.gate_max_slice_ece,
            s.gate_max_abs_bias,
            s.gate_min_slice_batches,
            s.gate_tolerance,
            max_coverage_shortfall=s.gate_max_coverage_shortfall,
            max_slice_coverage_shortfall=s.gate_max_slice_coverage_shortfall,
            max_horizon_disagreement=s.gate_max_horizon_disagreement,
            min_recall=s.gate_min_recall,
            max_width_ratio=s.gate_max_width_ratio,
        )


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    low: float | None = None
    high: float | None = None
    #: Batches the value was measured on (None where that is not what it rests on).
    support: int | None = None
    status: str = ""
    note: str = ""

    def __post_init__(self):
        if not self.status:
            self.status = PASSED if self.passed else FAILED

    def describe(self) -> str:
        interval = (
            f" (95% interval {self.low:.4g}..{self.high:.4g})"
            if self.low is not None and np.isfinite(self.low)
            else ""
        )
        support = f", {self.support} batches" if self.support is not None else ""
        return f"{self.name}: {self.value:.4g}{interval} vs limit {self.limit:.4g}{support}"


@dataclass
class Verdict:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    #: The champion compared against, or None for the first model (said in ``note``).
    champion_version: str | None = None
    note: str = ""

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks if c.status == FAILED]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "not_tested": [c.name for c in self.checks if c.status == NOT_TESTED],
            "champion_version": self.champion_version,
            "first_model": self.champion_version is None,
            "note": self.note,
        }


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def beyond_tolerance(low: float, high: float, tolerance: float) -> bool:
    """Whether an interval lies wholly outside ``[-tolerance, tolerance]``: evidence of a
    bias, not a point estimate that noise can put there."""
    return bool(np.isfinite(low) and np.isfinite(high) and (low > tolerance or high < -tolerance))


def _bias_check(name: str, value, low, high, support, limits: GateLimits) -> Check:
    return Check(
        name,
        value,
        limits.max_abs_bias,
        not beyond_tolerance(low, high, limits.max_abs_bias),
        _finite(low),
        _finite(high),
        support,
    )


def _slice_checks(slices: pd.DataFrame, limits: GateLimits, all_rows: int) -> list[Check]:
    """Each (slice key, value) tested once per set of rows, when it has the batches (a
    slice of all ``all_rows`` rows is the overall check's)."""
    checks: list[Check] = []
    tested_rows: dict[str, str] = {}
    for row in slices.itertuples(index=False):
        if int(row.rows) == all_rows:
            tested_rows.setdefault(row.rows_key, "the overall checks")
        where = f"slice {row.slice}={row.value}"
        batches = int(row.batches)
        same = tested_rows.get(row.rows_key)
        if batches < limits.min_slice_batches or same is not None:
            checks.append(
                Check(
                    where,
                    float(row.rows),
                    limits.min_slice_batches,
                    True,
                    support=batches,
                    status=NOT_TESTED,
                    note=f"{batches} batches ({int(row.rows)} rows): too few to test"
                    if batches < limits.min_slice_batches
                    else f"the same rows as {same}, tested there",
                )
            )
            continue
        tested_rows[row.rows_key] = where
        checks.append(
            _bias_check(f"{where} bias", row.bias, row.bias_low, row.bias_high, batches, limits)
        )
        if np.isfinite(row.ece):
            low = row.ece_low if np.isfinite(row.ece_low) else row.ece
            checks.append(
                Check(
                    f"{where} ece",
                    row.ece,
                    limits.max_slice_ece,
                    not low > limits.max_slice_ece,
                    _finite(row.ece_low),
                    _finite(row.ece_high),
                    batches,
                )
            )
    return checks


def _coverage_checks(coverage: pd.DataFrame, limits: GateLimits) -> list[Check]:
    """Per level: the overall coverage and each gated slice's with the batches (once per set
    of rows) fail only when their whole interval lies below the nominal level minus the
    tolerance: an over-confident forecast, not the luck of a small test split."""
    checks: list[Check] = []
    levels = sorted(
        int(c.split("_")[1])
        for c in coverage.columns
        if c.count("_") == 1 and c.startswith("coverage_")
    )
    tested_rows: dict[str, str] = {}
    gated = coverage[coverage["gated"].astype(bool)]
    for row in gated.sort_values("slice", key=lambda s: s != "all", kind="stable").itertuples(
        index=False
    ):
        overall = row.slice == "all"
        where = "coverage" if overall else f"slice {row.slice}={row.value} coverage"
        same = tested_rows.get(row.rows_key)
        if not overall and (int(row.batches) < limits.min_slice_batches or same is not None):
            continue  # listed with the slice checks (too few batches, or the same rows)
        tested_rows.setdefault(row.rows_key, where)
        tolerance = (
            limits.max_coverage_shortfall if overall else limits.max_slice_coverage_shortfall
        )
        for tag in levels:
            value = float(getattr(row, f"coverage_{tag}"))
            high = getattr(row, f"coverage_{tag}_high")
            limit = tag / 100 - tolerance
            top = high if np.isfinite(high) else value
            checks.append(
                Check(
                    f"{where} {tag}%",
                    value,
                    limit,
                    not top < limit,
                    _finite(getattr(row, f"coverage_{tag}_low")),
                    _finite(high),
                    int(row.batches),
                    note=f"nominal {tag}%; fails when the interval lies wholly below {limit:.0%}",
                )
            )
    return checks


def _baseline_checks(
    baselines: dict[str, dict],
    significantly_better_than: Collection[str],
    support,
    hours_baselines: dict[str, dict],
) -> list[Check]:
    checks = []
    for name, difference in baselines.items():
        value, low, high = difference["value"], difference["low"], difference["high"]
        if name in significantly_better_than:
            hours = hours_baselines.get(name)
            if value < 0 and high < 0:
                passed, note = True, "lower over its whole interval"
            elif hours is not None and hours["high"] < 0 and not low > 0:
                passed = True
                note = (
                    "the same within noise, and its hours remaining are better over their "
                    f"whole interval ({hours['value']:+.1f} h MAE): it adds the hours"
                )
            else:
                passed = False
                note = (
                    "must be lower over its whole interval, or the hours remaining must be "
                    "with this not worse: the rule gives what the model does"
                )
        else:
            passed = not low > 0
            note = (
                "lower, significantly"
                if high < 0
                else "the same within noise (the interval holds 0)"
                if passed
                else "higher over its whole interval: the baseline is better"
            )
        checks.append(_paired(f"log_loss - {name}", difference, passed, support, note))
    return checks


def _paired(name: str, difference: dict, passed: bool, support, note: str) -> Check:
    """A check on a paired difference (candidate - baseline), against 0."""
    low, high = _finite(difference["low"]), _finite(difference["high"])
    return Check(name, difference["value"], 0.0, passed, low, high, support, note=note)


def _history_checks(
    hours_baselines: dict[str, dict],
    window_baselines: dict[str, dict],
    windows: dict,
    limits: GateLimits,
    support,
) -> list[Check]:
    """The candidate against what the brewer already knows, in words when it fails: its
    hours MAE not worse over the whole paired interval (the note says when it is no better
    either), and its median 80% window no wider than a baseline's that covers within the
    limit (a window that misses its level is no yardstick for width)."""
    checks = []
    for name, difference in hours_baselines.items():
        low, high = difference["low"], difference["high"]
        words = _WORDS.get(name, name)
        passed = not low > 0
        note = (
            "lower, significantly"
            if high < 0
            else f"the same within noise: no better than {words} at the hours remaining"
            if passed
            else f"worse over its whole interval than {words} at the hours remaining"
        )
        checks.append(_paired(f"hours_mae - {name}", difference, passed, support, note))
    width = windows.get("median_width_80")
    for name, window in window_baselines.items():
        if width is None or "median_width_80" not in window:
            continue
        theirs, covers = float(window["median_width_80"]), float(window["coverage_80"])
        ratio = float(width) / theirs if theirs > 0 else float("inf")
        words = _WORDS.get(name, name)
        if covers < 0.80 - limits.max_coverage_shortfall:
            checks.append(
                Check(
                    f"median_width_80 / {name}",
                    ratio,
                    1.0,
                    True,
                    support=support,
                    status=NOT_TESTED,
                    note=f"{words} covers {covers:.0%} with its 80% window: no yardstick for width",
                )
            )
            continue
        passed = bool(np.isinf(limits.max_width_ratio) or width <= limits.max_width_ratio * theirs)
        checks.append(
            Check(
                f"median_width_80 / {name}",
                ratio,
                limits.max_width_ratio,
                passed,
                support=support,
                note=f"its median 80% window {width:.0f} h against {theirs:.0f} h"
                + ("" if passed else f": wider than {words}"),
            )
        )
    return checks


#: How a refusal names each baseline, in a brewer's words.
_WORDS = {
    "brand_history": "this brewery's own history for the brand",
    "slope_rule": "extrapolating the gravity's slope",
}


def _champion_checks(champion: dict, limits: GateLimits, support) -> list[Check]:
    loss, auc = champion["log_loss"], champion["auc"]
    return [
        Check(
            "log_loss - champion",
            loss["value"],
            limits.tolerance,
            loss["value"] <= limits.tolerance,
            _finite(loss["low"]),
            _finite(loss["high"]),
            support,
        ),
        Check(
            "auc - champion",
            auc["value"],
            -limits.tolerance,
            auc["value"] >= -limits.tolerance,
            _finite(auc["low"]),
            _finite(auc["high"]),
            support,
        ),
    ]


def promotion_gate(
    parity_error: float,
    overall: dict,
    slices: pd.DataFrame,
    limits: GateLimits,
    baselines: dict[str, dict] | None = None,
    champion: dict | None = None,
    champion_version: str | None = None,
    significantly_better_than: Collection[str] = (),
    coverage: pd.DataFrame | None = None,
    horizon_disagreement: float | None = None,
    hours_baselines: dict[str, dict] | None = None,
    window_baselines: dict[str, dict] | None = None,
    windows: dict | None = None,
) -> Verdict:
    """``overall``: the candidate's metrics (``models.metrics.classification_report`` with
    ``ece_low``/``ece_high``); ``slices``: :func:`models.evaluate.slice_table`;
    ``baselines``: name -> the paired log-loss difference candidate - baseline
    (``models.metrics.paired_difference``): lower over the whole interval for those in
    ``significantly_better_than``, not higher over it for the others; ``champion``:
    ``{"log_loss": difference, "auc": difference}`` on the same rows, None only for the
    first model (a champion that cannot be scored stops training before the gate), and the
    verdict says so; ``coverage``: the finish forecast's :func:`models.intervals.coverage_table`;
    ``horizon_disagreement``: its mean |P(finished by the horizon) - probability|;
    ``hours_baselines``: name -> the paired hours-MAE difference candidate - baseline, not
    higher over its whole interval; ``window_baselines``: name -> that baseline's
    ``median_width_80`` and ``coverage_80``: where it covers within the limit, the
    candidate's (``windows``, the coverage table's overall row) must not be wider."""
    if (champion is None) != (champion_version is None):
        raise ValueError("a champion's scores and its version come together")
    support = int(overall.get("batches", 0)) or None
    checks = [
        Check("parity_max_abs_error", parity_error, limits.parity, parity_error <= limits.parity),
        Check(
            "ece",
            overall["ece"],
            limits.max_ece,
            overall["ece"] <= limits.max_ece,
            _finite(overall.get("ece_low")),
            _finite(overall.get("ece_high")),
            support,
        ),
        _bias_check(
            "bias", overall["bias"], overall["bias_low"], overall["bias_high"], support, limits
        ),
        *_slice_checks(slices, limits, int(overall.get("rows", -1))),
    ]
    if coverage is not None and len(coverage):
        checks += _coverage_checks(coverage, limits)
    if horizon_disagreement is not None:
        checks.append(
            Check(
                "finish forecast vs probability at the horizon",
                horizon_disagreement,
                limits.max_horizon_disagreement,
                horizon_disagreement <= limits.max_horizon_disagreement,
                support=support,
                note="mean |P(finished by the horizon) - the classifier's probability|",
            )
        )
    checks += _baseline_checks(
        baselines or {}, significantly_better_than, support, hours_baselines or {}
    )
    checks += _history_checks(
        hours_baselines or {}, window_baselines or {}, windows or {}, limits, support
    )
    if "recall" in overall:
        recall = float(overall["recall"])
        checks.append(
            Check(
                "recall at the threshold",
                recall,
                limits.min_recall,
                recall >= limits.min_recall,
                support=support,
                note="the decision must fire: a model that never says ready is refused",
            )
        )
    if champion is not None:
        checks += _champion_checks(champion, limits, support)
    note = "" if champion is not None else "first model: no champion to compare against"
    return Verdict(all(c.passed for c in checks), checks, champion_version, note)

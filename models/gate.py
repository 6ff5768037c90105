"""The promotion gate: a challenger becomes champion only if every check passes.

Checks: ONNX parity; ECE and |prediction bias| under their limits overall and in every
slice with enough rows (a slice's bias fails only when its batch-bootstrap interval also
excludes 0: a few odd batches in a small slice are noise, not a biased model); better
than the non-ML slope rule; and not worse than the current champion beyond a tolerance,
all scored on the same test rows. The verdict lists every check with its value and limit,
so a rejected model says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from models.export import PARITY_LIMIT


@dataclass(frozen=True)
class GateLimits:
    max_ece: float = 0.05
    max_slice_ece: float = 0.10
    max_abs_bias: float = 0.05
    min_slice_rows: int = 200
    tolerance: float = 0.01
    parity: float = PARITY_LIMIT

    @classmethod
    def from_settings(cls, s) -> GateLimits:
        return cls(
            s.gate_max_ece,
            s.gate_max_slice_ece,
            s.gate_max_abs_bias,
            s.gate_min_slice_rows,
            s.gate_tolerance,
        )


@dataclass
class Check:
    name: str
    value: float
    limit: float
    passed: bool


@dataclass
class Verdict:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    #: The champion compared against, or None for the first model (said in ``note``).
    champion_version: str | None = None
    note: str = ""

    @property
    def reasons(self) -> list[str]:
        return [
            f"{c.name}: {c.value:.4g} vs limit {c.limit:.4g}" for c in self.checks if not c.passed
        ]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "champion_version": self.champion_version,
            "first_model": self.champion_version is None,
            "note": self.note,
        }


def _interval_holds_zero(row) -> bool:
    """Whether a slice's bias interval (batch bootstrap, ``models.metrics``) contains 0: its
    mean residual is then not told apart from noise, whatever the point estimate."""
    low, high = getattr(row, "bias_low", np.nan), getattr(row, "bias_high", np.nan)
    return bool(np.isfinite(low) and np.isfinite(high) and low <= 0.0 <= high)


def promotion_gate(
    parity_error: float,
    overall: dict,
    slices: pd.DataFrame,
    limits: GateLimits,
    champion: dict | None = None,
    rule: dict | None = None,
    champion_version: str | None = None,
) -> Verdict:
    """``overall``/``champion``/``rule``: metric dicts on the same test rows
    (``models.metrics``); ``rule`` is the non-ML baseline a model must beat to ship.
    ``champion`` is None only for the first model (a champion that cannot be scored stops
    training before the gate), and the verdict says so."""
    if (champion is None) != (champion_version is None):
        raise ValueError("a champion's scores and its version come together")
    checks = [
        Check("parity_max_abs_error", parity_error, limits.parity, parity_error <= limits.parity),
        Check("ece", overall["ece"], limits.max_ece, overall["ece"] <= limits.max_ece),
        Check(
            "abs_bias",
            abs(overall["bias"]),
            limits.max_abs_bias,
            abs(overall["bias"]) <= limits.max_abs_bias,
        ),
    ]
    supported = slices[slices["rows"] >= limits.min_slice_rows]
    for row in supported.itertuples(index=False):
        where = f"slice {row.slice}={row.value}"
        if np.isfinite(row.ece):
            checks.append(
                Check(
                    f"{where} ece", row.ece, limits.max_slice_ece, row.ece <= limits.max_slice_ece
                )
            )
        checks.append(
            Check(
                f"{where} abs_bias",
                abs(row.bias),
                limits.max_abs_bias,
                abs(row.bias) <= limits.max_abs_bias or _interval_holds_zero(row),
            )
        )
    if rule is not None:
        checks.append(
            Check(
                "log_loss vs slope rule",
                overall["log_loss"],
                rule["log_loss"],
                overall["log_loss"] < rule["log_loss"],
            )
        )
    if champion is not None:
        worst_loss = champion["log_loss"] + limits.tolerance
        checks.append(
            Check(
                "log_loss vs champion",
                overall["log_loss"],
                worst_loss,
                overall["log_loss"] <= worst_loss,
            )
        )
        worst_auc = champion["auc"] - limits.tolerance
        checks.append(
            Check("auc vs champion", overall["auc"], worst_auc, overall["auc"] >= worst_auc)
        )
    note = "" if champion is not None else "first model: no champion to compare against"
    return Verdict(all(c.passed for c in checks), checks, champion_version, note)

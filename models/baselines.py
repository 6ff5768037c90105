"""Baselines reported next to the model families, on the same split: a candidate must beat
every one of them.

* ``slope_rule`` — no ML: extrapolate the recent gravity slope to the strain's typical
  terminal gravity (learned from finished training batches). Its hours are the
  hours-remaining baseline, capped at the longest wait seen in training;
* ``brand_history`` — what the brewer already knows, "this brand takes about N days": a
  Kaplan-Meier (lifelines) of the past durations of the batch's brand (then of its style,
  its yeast strain, every batch, where a brand has fewer than :data:`MIN_HISTORY_BATCHES`),
  censoring-aware, conditional on the batch's age: P(finished within the horizon), the
  median hours remaining and an 80% window, from the durations alone;
* ``logistic_regression`` (scikit-learn) on the same features: the simplest learned model.

Each baseline turns its score into a probability the way the families do: the same
calibration method, fitted on the same validation rows (pre-finish), so log loss and
calibration compare fairly. (Gradient boosting is no longer a baseline: it is a model
family, ``models.boosted``, that can win.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brewcast.contract import CATEGORICAL, NUMERIC
from brewcast.schema import LABEL, REGRESSION_TARGET
from models.calibrate import Calibration, fit_calibration
from models.dataset import before_finish

#: The baselines without machine learning: a candidate must beat these over the whole
#: interval of the difference (``models.gate``).
NON_ML = ("slope_rule", "brand_history")
#: Where a batch's history comes from, first to last: its brand, its style, its strain
#: (then every batch).
HISTORY_LEVELS = ("brand", "style", "yeast_strain")
#: A brand (or style, or strain) needs this many past batches for a history of its own.
MIN_HISTORY_BATCHES = 3
#: The brand history's window: the 10% and 90% quantiles of the hours remaining.
HISTORY_WINDOW = (0.1, 0.9)
#: Apparent attenuation assumed for a strain never seen finishing in training.
DEFAULT_ATTENUATION = 0.75


class SlopeRule:
    """Hours remaining = (gravity - expected terminal gravity) / current rate of fall."""

    def __init__(self, terminal_tolerance_plato: float = 0.3, horizon_hours: float = 24.0):
        self.tolerance = terminal_tolerance_plato
        self.horizon = horizon_hours
        self.attenuation: dict[str, float] = {}
        self.longest_wait = 10 * horizon_hours

    def fit(self, train: pd.DataFrame) -> SlopeRule:
        done = train[train[REGRESSION_TARGET] == 0]
        self.attenuation = done.groupby("yeast_strain")["apparent_attenuation"].median().to_dict()
        self.default = (
            float(done["apparent_attenuation"].median()) if len(done) else (DEFAULT_ATTENUATION)
        )
        waits = train[REGRESSION_TARGET].dropna()
        if len(waits):
            self.longest_wait = float(waits.max())
        return self

    def hours_remaining(self, frame: pd.DataFrame) -> np.ndarray:
        """The extrapolation, capped at the longest wait of a finishing training batch (a
        flat slope would otherwise promise years); unknown slope: that cap."""
        attenuation = (
            frame["yeast_strain"].map(self.attenuation).astype("float64").fillna(self.default)
        )
        terminal = frame["original_gravity_plato"] * (1.0 - attenuation)
        to_go = (frame["current_gravity_plato"] - terminal - self.tolerance).clip(lower=0.0)
        falling_per_hour = (-frame["gravity_slope_plato_per_day"] / 24.0).clip(lower=1e-3)
        hours = (to_go / falling_per_hour).fillna(self.longest_wait)
        return hours.clip(upper=self.longest_wait).to_numpy()

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Larger when sooner: log(horizon) - log(1 + predicted hours), near-logistic in p."""
        return np.log(self.horizon) - np.log1p(self.hours_remaining(frame))


def batch_durations(frame: pd.DataFrame, horizon_hours: float) -> pd.DataFrame:
    """Per batch of a snapshot frame: brand, strain, hours from pitch to finish and whether
    it finished (``event``). A stuck batch is censored at its last snapshot (it had not
    finished then: it never does), a censored one a horizon later (its snapshots are sure
    negatives: it had surely not finished by then)."""
    rows = frame.assign(
        finish=frame["hours_since_pitch"] + frame[REGRESSION_TARGET],
        seen=frame["hours_since_pitch"] + np.where(frame["censored"], horizon_hours, 0.0),
    )
    out = rows.groupby("batch_id", sort=True).agg(
        brand=("brand", "first"),
        style=("style", "first"),
        yeast_strain=("yeast_strain", "first"),
        finish=("finish", "min"),
        seen=("seen", "max"),
    )
    out["event"] = out["finish"].notna()
    out["duration"] = out["finish"].where(out["event"], out["seen"])
    return out.drop(columns=["finish", "seen"])


class _Survival:
    """One group's Kaplan-Meier: S(t) as a step function of hours since pitch."""

    def __init__(self, durations: pd.Series, events: pd.Series):
        from lifelines import KaplanMeierFitter

        fitted = KaplanMeierFitter().fit(durations.to_numpy(), events.to_numpy())
        self.times = fitted.survival_function_.index.to_numpy(dtype="float64")
        self.survival = fitted.survival_function_.iloc[:, 0].to_numpy(dtype="float64")
        self.longest = float(durations.max())

    def at(self, hours: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.times, hours, side="right") - 1
        return np.where(index >= 0, self.survival[np.maximum(index, 0)], 1.0)

    def remaining(self, age: np.ndarray, alive: np.ndarray, share: float) -> np.ndarray:
        """Hours after ``age`` until the conditional probability of having finished reaches
        ``share``; +inf where the history never gets there (censored tails)."""
        target = (1.0 - share) * alive
        index = np.searchsorted(-self.survival, -target, side="left")
        reached = index < self.times.size
        at = np.where(reached, self.times[np.minimum(index, self.times.size - 1)], np.inf)
        return np.maximum(at - age, 0.0)


class BrandHistory:
    """ "This brand takes about N days", as a censoring-aware survival curve per brand, then
    per strain, then over all batches, conditional on the batch's age (hours since pitch).
    A batch older than every past batch of its group is overdue: finishing now."""

    def __init__(self, horizon_hours: float = 24.0):
        self.horizon = horizon_hours

    def fit(self, train: pd.DataFrame) -> BrandHistory:
        durations = batch_durations(train, self.horizon)
        self.groups: dict[tuple[str, str], _Survival] = {}
        for column in HISTORY_LEVELS:
            for value, part in durations.groupby(column, sort=True):
                if len(part) >= MIN_HISTORY_BATCHES and part["event"].any():
                    self.groups[(column, str(value))] = _Survival(part["duration"], part["event"])
        self.everyone = _Survival(durations["duration"], durations["event"])
        return self

    def _rows_by_survival(self, frame: pd.DataFrame) -> list[tuple[_Survival, np.ndarray]]:
        """Each history that answers for some of ``frame``'s rows, with those rows (by
        position): the first level of :data:`HISTORY_LEVELS` with a history of its own."""
        rows: dict[int, list[int]] = {}
        histories: dict[int, _Survival] = {}
        for i, values in enumerate(zip(*(frame[c] for c in HISTORY_LEVELS), strict=True)):
            found = (
                self.groups.get((column, str(value)))
                for column, value in zip(HISTORY_LEVELS, values, strict=True)
                if pd.notna(value)
            )
            survival = next((s for s in found if s is not None), self.everyone)
            histories[id(survival)] = survival
            rows.setdefault(id(survival), []).append(i)
        return [(histories[key], np.asarray(index)) for key, index in rows.items()]

    def forecast(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per row: ``probability`` of finishing within the horizon, ``hours`` (median
        remaining, the longest past duration's remainder where the median is never reached)
        and the 80% window ``lower``/``upper`` (+inf: open-ended)."""
        age = frame["hours_since_pitch"].to_numpy(dtype="float64")
        n = len(frame)
        out = {name: np.empty(n) for name in ("probability", "hours", "lower", "upper")}
        for survival, rows in self._rows_by_survival(frame):
            a = age[rows]
            alive = survival.at(a)
            overdue = alive <= 0.0
            alive = np.where(overdue, 1.0, alive)
            later = survival.at(a + self.horizon)
            out["probability"][rows] = np.where(overdue, 1.0, 1.0 - later / alive)
            median = survival.remaining(a, alive, 0.5)
            fallback = np.maximum(survival.longest - a, 0.0)
            out["hours"][rows] = np.where(
                overdue, 0.0, np.where(np.isfinite(median), median, fallback)
            )
            low, high = HISTORY_WINDOW
            out["lower"][rows] = np.where(overdue, 0.0, survival.remaining(a, alive, low))
            out["upper"][rows] = np.where(overdue, 0.0, survival.remaining(a, alive, high))
        return out

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The log-odds of its probability (clipped away from 0 and 1), for calibration."""
        p = np.clip(self.forecast(frame)["probability"], 1e-4, 1 - 1e-4)
        return np.log(p) - np.log1p(-p)

    def hours_remaining(self, frame: pd.DataFrame) -> np.ndarray:
        return self.forecast(frame)["hours"]


def _tabular_pipeline(estimator):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="__oov__"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                CATEGORICAL,
            ),
        ]
    )
    return make_pipeline(columns, estimator)


def _as_object(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[NUMERIC + CATEGORICAL].copy()
    for name in CATEGORICAL:
        out[name] = out[name].astype(object).where(out[name].notna(), np.nan)
    return out


class Baseline:
    """A fitted score, calibrated like the families: ``predict_proba`` and, where the
    baseline forecasts one, ``hours`` (else None)."""

    def __init__(self, score, calibration: Calibration, hours=None):
        self._score, self.calibration, self._hours = score, calibration, hours
        #: where the baseline gives a window: frame -> {"lower", "upper", ...} (80%)
        self.window = None

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibration.apply(self._score(frame))

    def hours(self, frame: pd.DataFrame) -> np.ndarray | None:
        return None if self._hours is None else self._hours(frame)


def fit_baselines(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    terminal_tolerance_plato: float,
    horizon_hours: float,
    calibration_method: str,
) -> dict[str, Baseline]:
    """Name -> fitted :class:`Baseline`, each calibrated on the validation split's
    pre-finish rows with ``calibration_method`` (the families' own)."""
    from sklearn.linear_model import LogisticRegression

    y = train[LABEL].astype(int).to_numpy()
    logistic = _tabular_pipeline(LogisticRegression(max_iter=2000)).fit(_as_object(train), y)
    rule = SlopeRule(terminal_tolerance_plato, horizon_hours).fit(train)
    history = BrandHistory(horizon_hours).fit(train)
    scores = {
        "slope_rule": (rule.score, rule.hours_remaining),
        "brand_history": (history.score, history.hours_remaining),
        "logistic_regression": (
            lambda frame: logistic.decision_function(_as_object(frame)),
            None,
        ),
    }
    decided = validation[before_finish(validation)]
    out = {}
    for name, (score, hours) in scores.items():
        calibration = fit_calibration(score(decided), decided[LABEL], calibration_method)
        out[name] = Baseline(score, calibration, hours)
    out["brand_history"].window = history.forecast
    return out

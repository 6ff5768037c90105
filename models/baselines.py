"""Baselines reported next to the model families, on the same split: a candidate must beat
every one of them.

* ``slope_rule`` — no ML: extrapolate the recent gravity slope to the strain's typical
  terminal gravity (learned from finished training batches). Its hours are the
  hours-remaining baseline, capped at the longest wait seen in training;
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
NON_ML = ("slope_rule",)
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
    scores = {
        "slope_rule": rule.score,
        "logistic_regression": lambda frame: logistic.decision_function(_as_object(frame)),
    }
    decided = validation[before_finish(validation)]
    out = {}
    for name, score in scores.items():
        calibration = fit_calibration(score(decided), decided[LABEL], calibration_method)
        out[name] = Baseline(
            score, calibration, rule.hours_remaining if name == "slope_rule" else None
        )
    return out

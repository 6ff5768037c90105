"""Baselines reported next to the network, on the same split: the model must beat them.

* ``slope_rule`` — no ML: extrapolate the recent gravity slope to the strain's typical
  terminal gravity (learned from finished training batches) and call it finished when that
  is within the horizon;
* ``logistic_regression`` and ``gradient_boosting`` (scikit-learn) on the same features.

Every baseline returns probabilities; the rule's score is turned into one by a Platt fit
on the validation split, so log loss and calibration compare fairly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brewcast.contract import CATEGORICAL, NUMERIC
from brewcast.schema import LABEL
from models.calibrate import fit_calibration

#: Apparent attenuation assumed for a strain never seen finishing in training.
DEFAULT_ATTENUATION = 0.75


class SlopeRule:
    """Hours remaining = (gravity - expected terminal gravity) / current rate of fall."""

    def __init__(self, terminal_tolerance_plato: float = 0.3, horizon_hours: float = 24.0):
        self.tolerance = terminal_tolerance_plato
        self.horizon = horizon_hours
        self.attenuation: dict[str, float] = {}
        self.calibration = None

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame) -> SlopeRule:
        done = train[train["hours_remaining"] == 0]
        self.attenuation = done.groupby("yeast_strain")["apparent_attenuation"].median().to_dict()
        self.default = (
            float(done["apparent_attenuation"].median()) if len(done) else (DEFAULT_ATTENUATION)
        )
        self.calibration = fit_calibration(self.score(validation), validation[LABEL], "platt")
        return self

    def hours_remaining(self, frame: pd.DataFrame) -> np.ndarray:
        attenuation = (
            frame["yeast_strain"].map(self.attenuation).astype("float64").fillna(self.default)
        )
        terminal = frame["original_gravity_plato"] * (1.0 - attenuation)
        to_go = (frame["current_gravity_plato"] - terminal - self.tolerance).clip(lower=0.0)
        falling_per_hour = (-frame["gravity_slope_plato_per_day"] / 24.0).clip(lower=1e-3)
        hours = (to_go / falling_per_hour).fillna(10 * self.horizon)
        return hours.clip(upper=2000.0).to_numpy()

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Larger when sooner: log(horizon) - log(1 + predicted hours), near-logistic in p."""
        return np.log(self.horizon) - np.log1p(self.hours_remaining(frame))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibration.apply(self.score(frame))


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


def fit_baselines(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    seed: int,
    terminal_tolerance_plato: float,
    horizon_hours: float,
) -> dict:
    """Name -> fitted object with ``predict_proba(frame) -> P(finished within horizon)``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    y = train[LABEL].astype(int).to_numpy()
    logistic = _tabular_pipeline(LogisticRegression(max_iter=2000)).fit(_as_object(train), y)
    boosted = _tabular_pipeline(HistGradientBoostingClassifier(random_state=seed)).fit(
        _as_object(train), y
    )

    class _Sklearn:
        def __init__(self, model):
            self.model = model

        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            return self.model.predict_proba(_as_object(frame))[:, 1]

    return {
        "slope_rule": SlopeRule(terminal_tolerance_plato, horizon_hours).fit(train, validation),
        "logistic_regression": _Sklearn(logistic),
        "gradient_boosting": _Sklearn(boosted),
    }

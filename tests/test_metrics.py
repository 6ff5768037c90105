"""Metrics, calibration and threshold choice against hand examples and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from models import metrics as m
from models.calibrate import fit_calibration, sigmoid
from models.threshold import choose_threshold

RNG = np.random.default_rng(0)


def test_domain_hand_example_and_accuracy_paradox():
    # DOMAIN.md: TN=90, FP=3, FN=5, TP=2.
    y = np.r_[np.zeros(93), np.ones(7)]
    p = np.r_[np.zeros(90), np.ones(3), np.zeros(5), np.ones(2)]
    c = m.Confusion.at(y, p, 0.5)
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 3, 90, 5)
    assert c.precision == pytest.approx(0.40)
    assert c.recall == pytest.approx(0.2857, abs=1e-4)
    assert c.f1 == pytest.approx(0.3333, abs=1e-4)
    assert c.accuracy == pytest.approx(0.92)
    assert c.majority_rate == pytest.approx(0.93)  # the all-negative model
    assert "does not beat the majority rate 0.930" in c.accuracy_note()
    assert m.Confusion.at(y, y, 0.5).accuracy_note() is None


def test_against_scikit_learn():
    y = RNG.integers(0, 2, 2000)
    p = np.clip(0.3 * y + 0.7 * RNG.random(2000), 0.001, 0.999)
    p[::7] = 0.5  # ties
    assert m.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-12)
    assert m.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    c = m.Confusion.at(y, p, 0.6)
    d = (p >= 0.6).astype(int)
    assert c.precision == pytest.approx(skm.precision_score(y, d))
    assert c.recall == pytest.approx(skm.recall_score(y, d))
    assert c.f1 == pytest.approx(skm.f1_score(y, d))
    assert c.accuracy == pytest.approx(skm.accuracy_score(y, d))
    table = m.reliability_table(y, p, bins=10)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(table["observed_rate"], observed)
    np.testing.assert_allclose(table["mean_predicted"], predicted)


def test_auc_is_threshold_and_scale_invariant_and_nan_without_both_classes():
    y = RNG.integers(0, 2, 500)
    s = y + RNG.normal(0, 1, 500)
    assert m.roc_auc(y, s) == pytest.approx(m.roc_auc(y, 1 / (1 + np.exp(-3 * s))))
    assert np.isnan(m.roc_auc(np.ones(5), np.arange(5)))


def test_ece_hand_example():
    # two buckets: 0.1 predicted vs 0.0 observed (n=2); 0.9 vs 0.5 (n=2)
    y = [0, 0, 1, 0]
    p = [0.1, 0.1, 0.9, 0.9]
    assert m.expected_calibration_error(y, p, bins=10) == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)
    assert m.expected_calibration_error(y, p, bins=2, strategy="quantile") == pytest.approx(0.25)


def test_bias_interval_and_clusters():
    y = np.r_[np.zeros(50), np.ones(50)]
    p = np.full(100, 0.5)
    b = m.prediction_bias(y, p)
    assert b.value == pytest.approx(0.0) and not b.significant and b.n == 100
    # Base-rate predictor: zero bias, no skill (DOMAIN.md): AUC 0.5.
    assert m.roc_auc(y, p) == 0.5
    biased = m.prediction_bias(y, p + 0.2)
    assert biased.value == pytest.approx(0.2) and biased.significant
    # Same residuals repeated within 5 batches: the cluster-robust interval is wider.
    groups = np.repeat(np.arange(5), 20)
    noisy = np.clip(0.5 + RNG.normal(0, 0.1, 5).repeat(20), 0, 1)
    plain = m.prediction_bias(y, noisy)
    clustered = m.prediction_bias(y, noisy, groups)
    assert clustered.groups == 5 and (clustered.high - clustered.low) > (plain.high - plain.low)


def test_platt_matches_unregularised_logistic_regression():
    logit = RNG.normal(0, 2, 3000)
    y = (RNG.random(3000) < sigmoid(0.5 * logit - 0.7)).astype(float)
    cal = fit_calibration(logit, y, "platt")
    ref = LogisticRegression(C=1e12, tol=1e-10, max_iter=10_000).fit(logit[:, None], y)
    assert cal.a == pytest.approx(ref.coef_[0, 0], rel=1e-3)
    assert cal.b == pytest.approx(ref.intercept_[0], abs=1e-3)
    assert abs(cal.a - 0.5) < 0.1 and abs(cal.b + 0.7) < 0.15
    assert m.log_loss(y, cal.apply(logit)) < m.log_loss(y, sigmoid(logit))
    temp = fit_calibration(logit, y, "temperature")
    assert temp.b == 0.0 and 0.3 < temp.a < 0.7
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(logit, np.zeros_like(y))


def test_threshold_by_cost_matches_brute_force():
    y = RNG.integers(0, 2, 400).astype(float)
    p = np.clip(0.35 * y + 0.65 * RNG.random(400), 0, 1)
    report = choose_threshold(y, p, "cost", cost_false_finished=10, cost_late=1)
    grid = np.r_[np.unique(p), 1.1]
    costs = [(10 * m.Confusion.at(y, p, t).fp + m.Confusion.at(y, p, t).fn) / 400 for t in grid]
    assert report.expected_cost_per_row == pytest.approx(min(costs))
    c = m.Confusion.at(y, p, report.threshold)
    assert (10 * c.fp + c.fn) / 400 == pytest.approx(min(costs))
    # A false "finished" ten times as costly pushes the threshold above 0.5.
    assert report.threshold > 0.5


def test_threshold_by_precision_target():
    y = RNG.integers(0, 2, 400).astype(float)
    p = np.clip(0.4 * y + 0.6 * RNG.random(400), 0, 1)
    report = choose_threshold(y, p, "precision_target", precision_target=0.9)
    assert report.precision >= 0.9
    best = max(
        m.Confusion.at(y, p, t).recall
        for t in np.unique(p)
        if m.Confusion.at(y, p, t).precision >= 0.9
    )
    assert report.recall == pytest.approx(best)
    with pytest.raises(ValueError, match="policy"):
        choose_threshold(y, p, "vibes")

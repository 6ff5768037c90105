"""The finish forecast: conformal intervals for the hours remaining and P(finished by t).

Synthetic cases with a known answer first (coverage, per-group calibration, the hand
arithmetic of the bounds and probabilities, the edge cases), then the trained model's:
its metadata, parity with crepes, its evaluation and gate, and monitoring's alarm.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from brewcast.intervals import (
    EVERY,
    STALLED,
    FinishForecast,
    Group,
    buckets,
    forecast_status,
    min_group_rows,
)
from brewcast.schema import LABEL, REGRESSION_TARGET
from models.gate import GateLimits, promotion_gate
from models.intervals import (
    coverage_table,
    crepes_parity,
    fit_finish_forecast,
    forecast_frame,
    horizon_report,
    plain_split_conformal,
)


def _snapshots(n_batches: int, spread: dict[str, float], seed: int, rows: int = 10):
    """Batches of ``rows`` snapshots each, strains with residual spreads ``spread`` (hours,
    normal): actual = predicted + noise; every snapshot fermenting, 30-40 h forecast."""
    rng = np.random.default_rng(seed)
    strains = list(spread)
    frames = []
    for b in range(n_batches):
        strain = strains[b % len(strains)]
        predicted = rng.uniform(30, 40, rows)
        frames.append(
            pd.DataFrame(
                {
                    "batch_id": f"B{seed}-{b}",
                    "yeast_strain": strain,
                    "brand": f"brand{b % 3}",
                    "fermenter": f"FV{b % 4}",
                    "season": "spring",
                    "gravity_slope_plato_per_day": -2.0,
                    "apparent_attenuation": 0.4,
                    "hours_since_pitch": 60.0,
                    "predicted": predicted,
                    REGRESSION_TARGET: predicted + rng.normal(0, spread[strain], rows),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    frame[LABEL] = frame[REGRESSION_TARGET] <= 24
    return frame


SPREAD = {"steady_ale": 2.0, "wild_lager": 10.0}


def test_coverage_holds_per_strain_where_one_width_for_all_does_not():
    """Two strains, residual sd 2 h and 10 h: the Mondrian forecast covers 80% and 95% in
    each (known answer: normal quantiles), plain split conformal over- and under-covers."""
    calibration = _snapshots(600, SPREAD, seed=1)
    test = _snapshots(400, SPREAD, seed=2)
    forecast = fit_finish_forecast(calibration, calibration["predicted"], "yeast_strain", 10)
    assert {"steady_ale|24-48", "wild_lager|24-48", "*|24-48", "*|*"} <= set(forecast.groups)
    served = forecast_frame(forecast, test, test["predicted"].to_numpy())
    plain = plain_split_conformal(
        calibration,
        calibration["predicted"].to_numpy(),
        test,
        test["predicted"].to_numpy(),
        (0.8, 0.95),
    )
    target = test[REGRESSION_TARGET].to_numpy()
    for level in (0.8, 0.95):
        low, high = served.intervals[level]
        hit = (target >= low) & (target <= high)
        plain_hit = (target >= plain[level][0]) & (target <= plain[level][1])
        for strain, sd in SPREAD.items():
            mine = (test["yeast_strain"] == strain).to_numpy()
            assert hit[mine].mean() == pytest.approx(level, abs=0.025)
            # the width is the normal quantile's, within sampling error
            width = np.median(high[mine] - low[mine])
            assert width == pytest.approx(2 * norm.ppf((1 + level) / 2) * sd, rel=0.1)
        steady = (test["yeast_strain"] == "steady_ale").to_numpy()
        assert plain_hit[steady].mean() > level + 0.04  # one width: far too wide for one
        assert plain_hit[~steady].mean() < level - 0.04  # and too narrow for the other


def test_bounds_and_probabilities_by_hand():
    """Ten residuals 1..10 h around a forecast of 10 h: the 80% interval is the 1st and the
    10th (crepes' indexes: int(0.1 * 11) - 1 = 0, ceil(0.9 * 11) - 1 = 9), 11..20 h;
    P(finished by 12 h) = (#{10 + r <= 12} + 1/2) / 11 = 2.5 / 11. Ten are too few for a
    95% interval (39 are needed): open at both ends (0 h and never)."""
    residuals = tuple(float(r) for r in range(1, 11))
    forecast = FinishForecast("yeast_strain", {"*|*": Group(residuals)})
    got = forecast.forecast(
        np.array([10.0]), ["x"], np.array([-1.0]), np.array([0.5]), np.array([30.0])
    )
    assert (got.intervals[0.8][0][0], got.intervals[0.8][1][0]) == (11.0, 20.0)
    assert got.intervals[0.95][0][0] == 0.0 and np.isinf(got.intervals[0.95][1][0])
    expected = [2.5 / 11, 10.5 / 11, 10.5 / 11, 10.5 / 11]
    assert got.finish_probabilities[0].tolist() == pytest.approx(expected)
    assert got.groups == ["*|*"] and min_group_rows() == 39


def test_finish_probabilities_rise_with_the_horizon_and_match_crepes():
    calibration = _snapshots(120, SPREAD, seed=3)
    test = _snapshots(60, SPREAD, seed=4)
    test["predicted"] = np.random.default_rng(5).uniform(0, 120, len(test))  # every bucket
    calibration.loc[calibration.index[:40], REGRESSION_TARGET] = np.nan  # a stuck batch: never
    forecast = fit_finish_forecast(calibration, calibration["predicted"], "yeast_strain", 10)
    served = forecast_frame(forecast, test, test["predicted"].to_numpy())
    assert np.all(np.diff(served.finish_probabilities, axis=1) >= 0)
    parity = crepes_parity(forecast, test, test["predicted"].to_numpy())
    assert parity["rows"] == len(test)
    assert parity["bounds_max_abs_error"] == 0.0
    assert parity["probability_max_abs_error"] < 1e-12
    # the JSON the ONNX metadata carries gives the same forecast back
    again = FinishForecast.from_json(forecast.to_json())
    assert again == forecast


def test_a_stuck_batch_a_stall_and_a_single_reading_have_explicit_answers():
    """A group where a tenth of the snapshots never finished: its 95% (and 80%) upper bound
    is open, its P(finished by 72 h) keeps the tenth out. A stall with no stalled
    calibration batches gets no finite answer (status stalled). One reading (no slope)
    falls back to every snapshot's group. A batch past its forecast finish: never a bound
    before now."""
    residuals = tuple(float(r) for r in np.linspace(-5, 5, 90))
    forecast = FinishForecast(
        "yeast_strain",
        {
            "lager|24-48": Group(residuals, never=10, batches=20),
            "*|*": Group(tuple(float(r) for r in np.linspace(-20, 20, 100)), batches=40),
        },
    )
    hours = np.array([30.0, 30.0, 30.0, 0.0])
    slope = np.array([-2.0, 0.0, np.nan, -0.5])
    attenuation = np.array([0.4, 0.35, 0.1, 0.7])
    since = np.array([60.0, 120.0, 6.0, 200.0])
    got = forecast.forecast(hours, ["lager", "lager", "lager", "ale"], slope, attenuation, since)
    assert got.groups == ["lager|24-48", "", "*|*", "*|*"]
    assert np.isinf(got.intervals[0.95][1][0]) and np.isinf(got.intervals[0.8][1][0])
    assert got.finish_probabilities[0, -1] == pytest.approx((90 + 0.5) / 101)
    assert np.isnan(got.finish_probabilities[1]).all() and np.isinf(got.intervals[0.8][1][1])
    assert [forecast_status(g) for g in got.groups] == [
        "fermenting",
        "stalled",
        "fermenting",
        "fermenting",
    ]
    assert list(got.buckets) == ["24-48", STALLED, "no-slope", "0-24"]
    assert (got.intervals[0.95][0] >= 0).all() and got.intervals[0.8][0][3] == 0.0
    rows = forecast.row_columns(got)
    assert rows[0]["interval_95_high"] is None and rows[1]["finish_probabilities"] is None
    assert json.loads(rows[2]["finish_probabilities"])["72"] > 0.9
    # P(never finishes) is its own number: the stuck tenth (mid p-value), 1 - P(by t) for
    # a t past every finite residual; none where there is no answer, almost 0 elsewhere
    assert rows[0]["never_probability"] == pytest.approx((10 + 0.5) / 101)
    far = forecast.forecast(np.array([30.0]), ["lager"], slope[:1], attenuation[:1], since[:1])
    assert far.never_probability[0] == pytest.approx(1 - far.finish_probabilities[0, -1])
    assert rows[1]["never_probability"] is None
    assert rows[2]["never_probability"] == pytest.approx(0.5 / 101)
    assert got.take(np.array([2, 0])).never_probability.tolist() == pytest.approx(
        [0.5 / 101, 10.5 / 101]
    )


def test_buckets_by_forecast_and_by_what_the_snapshot_shows():
    got = buckets(
        np.array([5.0, 30.0, 60.0, 200.0, 30.0, 30.0]),
        np.array([-3.0, -3.0, -3.0, -3.0, np.nan, -0.1]),
        np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.3]),
        np.array([100.0] * 6),
    )
    assert got.tolist() == ["0-24", "24-48", "48-96", "96+", "no-slope", STALLED]


def test_a_small_strain_falls_back_to_every_strain_and_an_unknown_one_too():
    calibration = _snapshots(60, {"common": 5.0, "rare": 5.0}, seed=6)
    calibration.loc[calibration["yeast_strain"] == "rare", "batch_id"] = "one-batch"
    forecast = fit_finish_forecast(calibration, calibration["predicted"], "yeast_strain", 10)
    assert "common|24-48" in forecast.groups and "rare|24-48" not in forecast.groups
    assert forecast.keys(["rare", "new_strain", None], ["24-48"] * 3) == [f"{EVERY}|24-48"] * 3


def _coverage(shrink: float):
    calibration = _snapshots(200, SPREAD, seed=7)
    test = _snapshots(60, SPREAD, seed=8)
    calibration["residual"] = calibration[REGRESSION_TARGET] - calibration["predicted"]
    # an over-confident model: its calibration residuals shrunk
    calibration[REGRESSION_TARGET] = calibration["predicted"] + shrink * calibration["residual"]
    forecast = fit_finish_forecast(calibration, calibration["predicted"], "yeast_strain", 10)
    served = forecast_frame(forecast, test, test["predicted"].to_numpy())
    return coverage_table(test, served, min_batches=15, replicates=100, seed=0), served, test


def test_the_gate_refuses_an_over_confident_forecast():
    limits = GateLimits(min_slice_batches=15)
    overall = {
        "ece": 0.01,
        "bias": 0.0,
        "bias_low": -0.01,
        "bias_high": 0.01,
        "rows": 600,
        "batches": 60,
    }
    empty_slices = pd.DataFrame(columns=["slice", "value", "rows", "batches", "rows_key"])
    honest, _, _ = _coverage(1.0)
    verdict = promotion_gate(0.0, overall, empty_slices, limits, coverage=honest)
    names = [c.name for c in verdict.checks]
    assert verdict.passed, verdict.reasons
    assert {"coverage 80%", "coverage 95%", "slice yeast_strain=wild_lager coverage 95%"} <= set(
        names
    )
    assert not any("time_to_finish" in n for n in names)  # reported, never gated
    over_confident, _, _ = _coverage(0.4)
    verdict = promotion_gate(0.0, overall, empty_slices, limits, coverage=over_confident)
    assert not verdict.passed
    assert any(r.startswith("coverage 95%") for r in verdict.reasons)
    assert any("wild_lager coverage" in r for r in verdict.reasons)
    disagreeing = promotion_gate(
        0.0, overall, empty_slices, limits, coverage=honest, horizon_disagreement=0.3
    )
    assert disagreeing.reasons == [
        "finish forecast vs probability at the horizon: 0.3 vs limit 0.1, 60 batches"
    ]


def test_the_coverage_table_matches_a_direct_count():
    table, served, test = _coverage(1.0)
    target = test[REGRESSION_TARGET].to_numpy()
    low, high = served.intervals[0.8]
    wild = (test["yeast_strain"] == "wild_lager").to_numpy()
    row = table[(table["slice"] == "yeast_strain") & (table["value"] == "wild_lager")].iloc[0]
    assert row["coverage_80"] == pytest.approx(((target >= low) & (target <= high))[wild].mean())
    assert (
        row["batches"] == 30
        and row["coverage_80_low"] < row["coverage_80"] < row["coverage_80_high"]
    )
    report = horizon_report(
        served, test, (12.0, 24.0, 48.0, 72.0), np.full(len(test), 0.1), 24.0, 50
    )
    assert report["monotone"]
    expected = np.abs(served.finish_probabilities[:, 1] - 0.1).mean()
    assert report["classifier_agreement"]["mean_abs_difference"] == pytest.approx(expected)


def test_the_trained_model_carries_checks_and_reports_its_finish_forecast(trained):
    from brewcast.contract import META_FINISH_FORECAST, read_metadata
    from models.dataset import before_finish
    from models.workdir import TrainingWorkdir

    _, workdir = trained
    work = TrainingWorkdir(workdir)
    meta = read_metadata(work.model.read_bytes())
    assert FinishForecast.from_json(meta[META_FINISH_FORECAST]) == work.load_finish_forecast()
    exported = work.read_json(work.export)
    for family, parity in exported["families"].items():
        assert parity["parity_interval_max_abs_error"] == 0.0, family
        assert parity["parity_finish_probability_max_abs_error"] < 1e-12, family
    # coverage.csv against a count of its own from the per-row predictions
    predictions = pd.read_parquet(work.predictions)
    rows = predictions[predictions["before_finish"]]
    target = rows[REGRESSION_TARGET].fillna(np.inf)
    coverage = work.load_coverage()
    overall = coverage[coverage["slice"] == "all"].iloc[0]
    for tag in (80, 95):
        hit = (target >= rows[f"interval_{tag}_low"]) & (target <= rows[f"interval_{tag}_high"])
        assert overall[f"coverage_{tag}"] == pytest.approx(hit.mean())
        assert overall[f"coverage_{tag}_low"] <= overall[f"coverage_{tag}"]
    assert len(rows) == before_finish(pd.read_parquet(work.test)).sum()
    probabilities = rows[[f"finished_by_{h}h" for h in (12, 24, 48, 72)]].dropna().to_numpy()
    assert (np.diff(probabilities, axis=1) >= 0).all()
    intervals = work.read_json(work.evaluation)["intervals"]
    assert intervals["finish_probabilities"]["monotone"]
    assert set(intervals["plain_split_conformal"]["width_48h_before_finish"]) == {"80", "95"}
    assert set(intervals["families"]) == set(exported["families"])
    for plot in ("coverage.png", "finish_probability_calibration.png"):
        assert (work.plots / plot).stat().st_size > 10_000


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps(
            {
                "group_column": "yeast_strain",
                "levels": [0.8],
                "horizons": [24],
                "bucket_edges": [24],
                "groups": {},
            }
        ),
        json.dumps(
            {
                "group_column": "yeast_strain",
                "levels": [0.8],
                "horizons": [24],
                "bucket_edges": [24],
                "groups": {"*|*": {"residuals": [3.0, 1.0], "never": 0, "batches": 2}},
            }
        ),
        '{"group_column": "yeast_strain", "levels": [0.8], "horizons": [24], "bucket_edges": [24], '
        '"groups": {"*|*": {"residuals": [NaN], "never": 0, "batches": 1}}}',
    ],
)
def test_a_model_with_an_unreadable_finish_forecast_is_refused(text):
    from brewcast.contract import META_CALIBRATION, META_FINISH_FORECAST, META_THRESHOLD
    from serving.model import ModelRefusedError, checked_metadata

    meta = {
        META_THRESHOLD: "0.5",
        META_CALIBRATION: json.dumps({"method": "platt", "a": 1.0, "b": 0.0}),
        META_FINISH_FORECAST: text,
    }
    with pytest.raises(ModelRefusedError, match="unreadable finish forecast"):
        checked_metadata(meta, "models:/m/3", 24.0)

"""The sequential test's parts against hand examples and an independent simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brewcast.settings import Settings
from monitoring.monitor import MonitoringResult, sequential_alert
from monitoring.report import cusum_figure
from monitoring.sequential import (
    CLIP,
    FAMILIES,
    MIN_ALARM_BATCHES,
    MIN_VERSION_BATCHES,
    batch_residuals,
    cusum,
    expected_delay,
    run_length,
    sequential_tests,
    threshold,
    thresholds,
)


def test_cusum_hand_example():
    # k = 0.5, h = 4: the upper path is 0, 0, 2.5, 5.0, 7.5 -> above h from the 4th value,
    # but the change began at the 3rd (the last zero was the 2nd), and an alarm needs three
    # batches since the change: the 5th
    upper, lower, crossing = cusum(np.array([0.0, -1.0, 3.0, 3.0, 3.0]), 0.5, 4.0)
    assert upper.tolist() == [0.0, 0.0, 2.5, 5.0, 7.5]
    assert lower.tolist() == [0.0, 0.5, 0.0, 0.0, 0.0]
    assert MIN_ALARM_BATCHES == 3
    assert (crossing.side, crossing.at, crossing.start, crossing.statistic) == (1, 4, 2, 7.5)
    # downwards the same, and one value at the clip (CLIP sigmas) alone never alarms
    assert cusum(-np.array([0.0, 0.0, 3.0, 3.0, 3.0]), 0.5, 4.0)[2].side == -1
    assert cusum(np.array([0.0, CLIP, 0.0, 0.0]), 0.5, 4.0)[2] is None


def _simulated_run_length(h: float, k: float, shift: float, runs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        statistic, n = 0.0, 0
        while statistic <= h:
            statistic = max(0.0, statistic + rng.normal(shift) - k)
            n += 1
        lengths.append(n)
    return float(np.mean(lengths))


@pytest.mark.parametrize(("h", "k", "shift"), [(3.0, 0.5, 0.0), (4.0, 0.5, 1.5)])
def test_siegmund_run_length_matches_a_simulation(h, k, shift):
    simulated = _simulated_run_length(h, k, shift, 3000 if shift else 1500, seed=3)
    assert run_length(h, k - shift) == pytest.approx(simulated, rel=0.12)
    assert expected_delay(shift, k, h) == run_length(h, k - shift)


def test_threshold_inverts_the_run_length():
    h = threshold(0.5, 400.0)
    assert run_length(h, 0.5) == pytest.approx(400.0)
    assert threshold(0.5, 800.0) > h  # rarer false alarms need a higher bar
    k = np.array([0.02, 0.1, 0.3, 0.5, 1.2, 2.0])
    runs = np.array([20.0, 30.0, 90.0, 400.0, 2000.0, 50.0])
    for kk, rr, hh in zip(k, runs, thresholds(k, runs), strict=True):
        assert run_length(hh, kk) == pytest.approx(rr, rel=1e-9)
    # a run length shorter than h = 0 gives is met by h = 0
    assert threshold(2.0, 1.0) == 0.0


def _labelled(batches: list[tuple[str, str, float, float]], start: pd.Timestamp) -> pd.DataFrame:
    """Two labelled snapshots per (batch, fermenter, hours residual, finish day)."""
    rows = []
    for batch, fermenter, residual, day in batches:
        finish = start + pd.Timedelta(days=day)
        for hours_left in (30.0, 6.0):
            rows.append(
                {
                    "model_version": "3",
                    "batch_id": batch,
                    "fermenter": fermenter,
                    "brand": "pils",
                    "yeast_strain": "lager",
                    "season": "winter",
                    "at": finish - pd.Timedelta(hours=hours_left),
                    "actual_hours": hours_left,
                    "hours_remaining": hours_left + residual,
                    "probability": 0.5,
                    "label": float(hours_left <= 24),
                }
            )
    return pd.DataFrame(rows)


def test_batch_residuals_weigh_each_batch_once_in_finish_order():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    frame = _labelled([("B2", "FV1", -4.0, 3.0), ("B1", "FV2", 2.0, 1.0)], start)
    residuals = batch_residuals(frame)
    assert residuals["batch_id"].tolist() == ["B1", "B2"]  # by finish, not by input order
    assert residuals["hours_residual"].tolist() == [2.0, -4.0]
    assert residuals["probability_residual"].tolist() == [0.0, 0.0]  # mean of +0.5 and -0.5
    assert residuals["snapshots"].tolist() == [2, 2]
    assert residuals["known_at"].tolist() == [
        start + pd.Timedelta(days=1),
        start + pd.Timedelta(days=3),
    ]


def test_one_slow_fermenter_among_many_alarms_in_its_own_slice():
    """80 batches over 280 days in two fermenters, noise of 6 h; from day 140 on FV07's
    batches come 16 h later than forecast (a predicted - actual of -16 h): its own CUSUM
    finds it within a few of them, its alert names those batches, and the whole cellar
    (with its one brand, strain and season), which alarms too, is explained by it."""
    rng = np.random.default_rng(11)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    batches = []
    for i in range(80):
        fermenter = f"FV{i % 2 + 6:02d}"
        drifted = fermenter == "FV07" and i >= 40
        residual = rng.normal(-16.0 if drifted else 0.0, 6.0)
        batches.append((f"B{i:03d}", fermenter, residual, i * 3.5))
    settings = Settings()
    paths, crossings = sequential_tests(_labelled(batches, start), settings)
    found = [f for f in crossings if f.family.metric == "hours_remaining_bias"]
    # one cause: the whole cellar, its one brand, strain and season alarm for FV07's batches
    assert [f.name for f in found] == ["fermenter=FV07"]
    assert {"all=all", "brand=pils", "yeast_strain=lager"} <= set(found[0].explains)
    alert = sequential_alert(found[0], settings)
    # the report draws its path against each batch's threshold (the first ones untested)
    figure = cusum_figure(
        MonitoringResult(pd.DataFrame(), pd.DataFrame(), [alert], sequential=paths)
    )
    threshold_line = next(
        line for line in figure.axes[0].get_lines() if line.get_label() == "threshold"
    )
    drawn = np.asarray(threshold_line.get_ydata(), float)
    assert np.isfinite(drawn).sum() >= len(drawn) - MIN_VERSION_BATCHES - 1 > 0
    drifted_seen = [b for b in alert.batch_ids if int(b[1:]) >= 40]
    assert 3 <= len(drifted_seen) <= 6 and alert.observed < -settings.monitor_max_hours_bias
    assert alert.test == "cusum" and alert.statistic > alert.threshold
    assert "CUSUM" in alert.message() and "batches in FV07" in alert.for_brewers()
    # every slice was tested, and each path is in finish order
    assert {"all", "fermenter", "brand"} <= set(paths["slice"])
    assert set(paths["metric"]) == {f.metric for f in FAMILIES}
    for _, path in paths.groupby(["slice", "value", "metric"]):
        assert path["known_at"].is_monotonic_increasing


def test_resolve_names_one_root_per_cause():
    """The cellar (0) holds the lagers (1) and FV03 (2), which brews lagers and ales; the
    lagers in FV03 (3) lie in both; the cellar's brand (4) is the cellar's very rows. The
    cellar without lagers is fine, FV03 without lagers too, the lagers without FV03 still
    alarm: every alarm is the lagers'."""
    from monitoring.causes import resolve

    rows = {0: set(range(10)), 1: {0, 1, 2, 3}, 2: {3, 4, 5}, 3: {3}, 4: set(range(10))}
    fine_without_lagers = {(0, 1), (2, 1), (4, 1), (2, 3)}
    roots = resolve(
        5,
        inside=lambda p, c: rows[c] <= rows[p],
        same_rows=lambda p, c: rows[c] == rows[p],
        alarms_without=lambda p, c: (p, c) not in fine_without_lagers,
        size=lambda i: len(rows[i]),
        overlaps=lambda p, c: (
            bool(rows[p] & rows[c]) and not (rows[p] <= rows[c] or rows[c] <= rows[p])
        ),
    )
    assert roots == [1, 1, 1, 1, 1]


def test_a_sequential_alarm_stays_open_until_its_cusum_falls_to_zero():
    """A batch labelled late (its plateau) moves a CUSUM: it can drop under its threshold
    the day after it crossed. The alert stays open (carried) while its statistic is above
    0, and closes when it falls to 0 or when this run raised it again itself."""
    from monitoring.monitor import Alert, still_open

    def alert(value: str, observed: float) -> Alert:
        return Alert("2026-02-01+9d", "fermenter", value, "hours_remaining_bias", observed, 8.0,
                     40, 3, None, "x", test="cusum", statistic=5.2, threshold=4.8,
                     detected_at="2026-02-10T00:00:00+00:00", model_version="3")  # fmt: skip

    def path(value: str, upper: float, lower: float) -> dict:
        return {"model_version": "3", "slice": "fermenter", "value": value,
                "metric": "hours_remaining_bias", "upper": upper, "lower": lower}  # fmt: skip

    previous = [alert("FV07", -15.0), alert("FV02", -12.0), alert("FV03", 11.0)]
    paths = pd.DataFrame(
        [path("FV07", 0.0, 5.0), path("FV07", 0.0, 3.1),  # still up: open
         path("FV02", 0.0, 2.0), path("FV02", 0.4, 0.0),  # back to 0: closed
         path("FV03", 1.2, 0.0)]  # raised again below: not carried twice
    )  # fmt: skip
    kept = still_open(previous, paths, [alert("FV03", 11.0)])
    assert [(a.value, a.statistic, a.carried) for a in kept] == [("FV07", 3.1, True)]
    assert "open until it falls to 0" in kept[0].message()


def test_a_path_already_tested_does_not_change_when_later_batches_arrive():
    """The daily run and a look back over the same months must agree: each batch is
    standardised by the spread of the batches before it and tested against the threshold
    of the batch rate known then, so later batches (here: a noisier spring) never rewrite
    an earlier statistic, and an alarm raised live is the alarm found looking back."""
    rng = np.random.default_rng(5)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    batches = []
    for i in range(120):
        fermenter = f"FV{i % 4 + 1:02d}"
        noise = 4.0 if i < 60 else 12.0
        drifted = fermenter == "FV02" and 40 <= i < 60
        batches.append((f"B{i:03d}", fermenter, rng.normal(-12.0 if drifted else 0.0, noise), i))
    settings = Settings()
    frame = _labelled(batches, start)
    early = frame[frame["at"] < start + pd.Timedelta(days=60)]
    live_paths, live = sequential_tests(early, settings)
    paths, later = sequential_tests(frame, settings)
    key = ["slice", "value", "metric", "batch_id"]
    merged = live_paths.merge(paths, on=key, suffixes=("_live", ""))
    assert len(merged) == len(live_paths) > 0
    for column in ("upper", "lower", "threshold", "spread"):
        assert np.allclose(merged[f"{column}_live"], merged[column], equal_nan=True), column
    assert [f.name for f in live if f.family.metric == "hours_remaining_bias"] == ["fermenter=FV02"]
    # once FV02 behaves again (from batch 60) its statistic falls back to 0: closed
    fv02 = paths[(paths["value"] == "FV02") & (paths["metric"] == "hours_remaining_bias")]
    assert (fv02.loc[fv02["batch_id"] >= "B060", "lower"] == 0).any()
    assert "fermenter=FV02" not in [f.name for f in later]
    # the first batches only set the spread: not tested
    first = paths[paths["batch_id"] < f"B{MIN_VERSION_BATCHES:03d}"]
    assert first["spread"].isna().all() and (first[["upper", "lower"]] == 0).all().all()


def test_an_alarm_closes_when_its_cusum_falls_back_to_zero():
    # up past h = 4 at the 4th value, then well-behaved batches bring it back to 0: closed;
    # a new run of high residuals opens a new alarm, whose change starts after the zero
    rising, falling = [0.0, 3.0, 3.0, 3.0, 3.0], [-0.5] * 10
    assert cusum(np.array(rising), 0.5, 4.0)[2].at == 3
    assert cusum(np.array(rising + falling), 0.5, 4.0)[2] is None
    again = cusum(np.array(rising + falling + rising), 0.5, 4.0)[2]
    assert (again.side, again.start) == (1, 16) and again.at == 18

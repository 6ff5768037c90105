"""Monitoring's acceptance test on the simulator: a model trained on a whole clean year
serves the next months; a sluggish finish injected into one yeast strain is caught in that
strain within days, and nothing alarms on the clean world or on slices without that strain.

The model is trained by the real pipeline (Keras, calibration, ONNX export) and served by
the real onnxruntime session; predictions are logged as the service logs them and labelled
from the batches' readings.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from brewcast import lake
from brewcast.schema import FEATURES
from brewcast.settings import Settings
from ingest.simulator import RECIPES, Drift, SimulationConfig, simulate
from models.dataset import LabelRules, build_snapshots, derive_outcomes
from models.pipeline import score_model
from monitoring.monitor import (
    attach_labels,
    labelled_predictions,
    monitor,
    sequential_alerts,
)
from monitoring.replay import chunks, records, snapshot_requests
from serving.model import served_model
from serving.prediction_log import PredictionLog
from tests.conftest import build_model
from validation.reference import load_reference, save_reference

pytestmark = pytest.mark.slow

DEPLOYED = pd.Timestamp("2026-01-01", tz="UTC")
DRIFT = Drift("yeast_strain", "german_lager", pd.Timestamp("2026-02-01", tz="UTC"), 0.5)
MONITORED_DAYS = 120
WORLD = SimulationConfig(
    start=pd.Timestamp("2025-01-01", tz="UTC"),
    days=365 + MONITORED_DAYS + 30,
    fermenters=12,
    seed=5,
    bad_reading_rate=0.0,
    bad_batch_rate=0.0,
)


def log_in_process(model, requests: pd.DataFrame, prediction_log, chunk: int = 512) -> int:
    """Score ``requests`` with a :class:`serving.model.ServedModel` and log every row as the
    service would, served at its snapshot time; rows logged."""
    logged = 0
    for part in chunks(requests, chunk):
        rows = model.score(records(part), None)
        for row, at in zip(rows, part["snapshot_time"], strict=True):
            row["served_at"] = at.to_pydatetime()
            row["snapshot_time"] = at.to_pydatetime()
        prediction_log.write(rows)
        logged += len(rows)
    return logged


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A champion trained on every batch that finished in the clean year before deployment."""
    home = tmp_path_factory.mktemp("drift")
    settings = Settings(home=home, seed=WORLD.seed)
    rules = LabelRules.from_settings(settings)
    year = simulate(WORLD)
    outcomes = derive_outcomes(year.batches, year.readings, rules)
    snapshots = build_snapshots(year.batches, year.readings, rules, outcomes)
    known_by_deployment = snapshots.groupby("batch_id")["snapshot_time"].transform("max") < DEPLOYED
    train = snapshots[known_by_deployment].reset_index(drop=True)
    assert train["snapshot_time"].min() < DEPLOYED - pd.Timedelta(days=330)  # a whole year
    lake.write_partitions(train, FEATURES, settings.paths.lake, "features", "year")
    workdir = build_model(settings, home / "training")
    model = served_model((workdir / "model.onnx").read_bytes(), "1", "drift-test", settings)
    # the reference promotion saves: the training split, scored by the champion
    train_split = pd.read_parquet(workdir / "train.parquet")
    probability, _ = score_model((workdir / "model.onnx").read_bytes(), train_split)
    save_reference(settings, train_split, probability)
    return settings, rules, model


def _served(served, world: SimulationConfig, name: str, days: int = MONITORED_DAYS):
    """``world`` simulated, its snapshots from deployment on served by the champion and
    logged as the service logs them: (simulation, outcomes, predictions, labels)."""
    settings, rules, model = served
    sim = simulate(world)
    outcomes = derive_outcomes(sim.batches, sim.readings, rules)
    requests = snapshot_requests(
        sim.batches,
        sim.readings,
        rules,
        DEPLOYED,
        DEPLOYED + pd.Timedelta(days=days),
        outcomes,
    )
    prediction_log = PredictionLog(f"sqlite:///{settings.home / name}.db", "sync")
    try:
        assert log_in_process(model, requests, prediction_log) == len(requests)
        predictions, labels = prediction_log.read_predictions(), prediction_log.read_labels()
    finally:
        prediction_log.close()
    return sim, outcomes, predictions, labels


def _monitor_world(served, world: SimulationConfig, name: str, days: int = MONITORED_DAYS):
    """Monitoring's whole run over ``world``'s served months: (simulation, result)."""
    sim, outcomes, predictions, labels = _served(served, world, name, days)
    settings = served[0]
    return sim, monitor(predictions, labels, outcomes, load_reference(settings), settings)


def _sequential_alerts(served, world: SimulationConfig, name: str):
    """Only the sequential test of monitoring's run over ``world`` (the same alerts the
    whole run raises from it, without the weekly windows' cost): (simulation, alerts,
    slice-years followed)."""
    settings = served[0]
    sim, outcomes, predictions, labels = _served(served, world, name)
    joined = labelled_predictions(predictions, labels, outcomes, settings)
    paths, alerts = sequential_alerts(joined[joined["label"].notna()], settings)
    followed = paths.groupby(["slice", "value"]).ngroups * MONITORED_DAYS / 365.0
    return sim, alerts, followed


#: Worlds that replay a fault: seeds the tests do not train on, each simulated from two
#: months before deployment (the batches then running) to a month after the monitored days.
FAULT_SEEDS = range(5, 15)


def fault_worlds(fault: Drift):
    for seed in FAULT_SEEDS:
        yield dataclasses.replace(
            WORLD,
            seed=seed,
            drift=fault,
            start=DEPLOYED - pd.Timedelta(days=60),
            days=60 + MONITORED_DAYS + 30,
        )


def slice_years(result, days: float) -> float:
    """Slices the sequential test followed, times the years it followed them."""
    return result.sequential.groupby(["slice", "value"]).ngroups * days / 365.0


def assert_within_false_alarm_budget(alerts, result, settings: Settings, days: float) -> None:
    """Sequential alerts on distinct slices, per slice-year, within the budget the
    thresholds are set for (``monitor_false_alarms_per_slice_year``); each one a bias on
    the side of its alarm over at least three batches. Not always beyond the limit: the
    CUSUM alarms on the evidence that the bias passed it, and with the plateau labels one
    clean world's FV01 alarmed at +7.85 h against the 8 h limit over 12 batches.
    ``result``: a monitoring result, or the slice-years followed."""
    slices = {(a.slice, a.value) for a in alerts}
    followed = result if isinstance(result, float) else slice_years(result, days)
    budget = settings.monitor_false_alarms_per_slice_year * followed
    assert len(slices) <= budget, ([a.message() for a in alerts], budget)
    for alert in alerts:
        assert abs(alert.observed) > alert.limit / 2 and len(alert.batch_ids) >= 3, alert.message()


def test_clean_months_raise_no_window_alarm_and_few_sequential_ones(served):
    """A clean world: no fixed-window alert, no drift alarm, and sequential alerts within
    the budget of one per slice-year. Seed 5 raised one in 9.2 slice-years
    (red_rail_amber_lager, 12 h late over 6 winter batches, beyond the 8 h limit: a slice
    the champion gets wrong, which a brewer would want to know about)."""
    settings = served[0]
    _, result = _monitor_world(served, WORLD, "clean")
    supported = result.windows[result.windows["supported"]]
    # A long run: many windows and slices were tested, and none paged.
    assert supported["window"].nunique() >= 15
    assert len(supported) >= 40  # (window, slice) cells with support, two bias tests each
    assert [a for a in result.alerts if a.test != "cusum"] == []
    assert_within_false_alarm_budget(result.alerts, result, settings, MONITORED_DAYS)
    # nor does label-free drift: its batches at 48 h were tested against the training
    # year's batches of the same season, every feature and the probability
    assert len(result.drift) >= 10 and result.drift["served_batches"].min() >= 10
    assert not result.drift["alarm"].any(), result.drift.head()
    # the finish forecast's intervals hold live about as often as they say (pooled over the
    # windows: single weeks of a cold spell dip, without significance). Training's float
    # round-off differs between CPUs (oneDNN), and with it the pooled 95% coverage: 0.90 to
    # 0.95 on the machines this ran on, so both levels get the same 0.06.
    overall = result.windows[result.windows["slice"] == "all"]
    weights = overall["coverage_80_rows"]
    assert (overall["coverage_80"] * weights).sum() / weights.sum() == pytest.approx(0.8, abs=0.06)
    assert (overall["coverage_95"] * weights).sum() / weights.sum() == pytest.approx(0.95, abs=0.06)


def test_sluggish_lager_is_caught_within_days_and_only_where_lagers_are(served):
    """german_lager turns sluggish (late slope x 0.5) a month into service. The first
    weekly window holding its drifted batches' labels alarms on the strain, in hours, in
    probability and in coverage; every fixed-window alert is on a slice that holds lagers.
    Sequential alerts on slices without lagers are false alarms the thresholds budget for
    (one per slice-year), so they are held to that budget rather than to none: with the
    reproducible champion (any machine trains the same one) this world raises one,
    brand=wheat_wave_hefeweizen, a probability bias of -0.148 over 4 batches whose CUSUM
    crossed its threshold by 0.5 (6.3 against 5.8), the margin by which a model's round-off
    flipped this assertion between machines before training was reproducible."""
    sim, result = _monitor_world(served, dataclasses.replace(WORLD, drift=DRIFT), "drifted")
    window = pd.Timedelta(days=served[0].monitor_window_days)
    assert sim.truth["drifted"].sum() >= 20
    alerts = result.alerts
    assert alerts, "the drift went unnoticed"
    # in this world the lager style is the german_lager strain's batches, the same rows:
    # a sequential test follows them once, under the style (the first key of the two)
    strain_alerts = [
        a
        for a in alerts
        if (a.slice, a.value) in {("yeast_strain", "german_lager"), ("style", "lager")}
    ]
    first = min(pd.Timestamp(a.window.split("+")[0], tz="UTC") for a in strain_alerts)
    # The first window holding drifted batches' labels already alarms on the strain.
    assert first <= DRIFT.start + window
    by_metric = {a.metric for a in strain_alerts}
    # the hours come too early, and the probabilities show it too: as a prediction bias or
    # as miscalibration, depending on which model family won the training run
    assert "hours_remaining_bias" in by_metric and by_metric & {"prediction_bias", "ece"}
    # and the finish-time intervals stop holding for lagers
    assert {"interval_coverage_80", "interval_coverage_95"} & by_metric
    hours = [a.observed for a in strain_alerts if a.metric == "hours_remaining_bias"]
    assert max(hours) < -8  # predicted finishes come too early: the yeast is slower now
    assert all("yeast health" in a.likely_causes for a in strain_alerts)
    # Fixed windows alarm only on slices that hold lagers: never another strain, nor a
    # brand without lager; the sequential test's other alarms stay within its budget.
    lager_brands = {brand for brand, r in RECIPES.items() if "german_lager" in r.strains}

    def about_lagers(alert) -> bool:
        pairs = dict(zip(alert.slice.split("*"), alert.value.split("*"), strict=True))
        strain = pairs.get("yeast_strain", "german_lager")
        lager = strain == "german_lager" and pairs.get("style", "lager") == "lager"
        return lager and pairs.get("brand", strain) in lager_brands | {strain}

    elsewhere = [a for a in alerts if not about_lagers(a)]
    assert all(a.test == "cusum" for a in elsewhere), [a.message() for a in elsewhere]
    assert_within_false_alarm_budget(elsewhere, result, served[0], MONITORED_DAYS)
    for alert in alerts:
        if not about_lagers(alert):
            continue
        began = pd.Timestamp(alert.window.split("+")[0], tz="UTC")
        if alert.test == "cusum":  # the change estimate may take in the batch before it
            assert began > DRIFT.start - 2 * window, alert.message()
            assert pd.Timestamp(alert.detected_at) > DRIFT.start, alert.message()
        else:
            assert began > DRIFT.start - window, alert.message()
    # the strain's sequential test finds it too, and the cellar's, if it alarms, is its
    sequential = [a for a in alerts if a.test == "cusum"]
    assert "hours_remaining_bias" in {a.metric for a in sequential if a in strain_alerts}
    assert not [a for a in sequential if a.slice == "all"], [a.message() for a in sequential]


def test_another_clean_cellar_for_half_a_year_raises_few_alarms(served):
    """A second clean world (another seed, 180 served days, the same champion): with the
    first, 300 clean served days on every slice. No fixed-window alert, sequential ones
    within the budget (seed 11 raised none in 14.3 slice-years)."""
    days = 180
    world = dataclasses.replace(WORLD, seed=11, days=365 + days + 30)
    _, result = _monitor_world(served, world, "clean-11", days)
    tested = result.sequential
    assert tested["slice"].nunique() == 6 and tested["value"].nunique() >= 20
    assert [a for a in result.alerts if a.test != "cusum"] == []
    assert_within_false_alarm_budget(result.alerts, result, served[0], days)
    assert len(result.drift) >= 10 and not result.drift["alarm"].any(), result.drift.head()


def test_one_sluggish_fermenter_is_found_by_its_fourth_batch_in_most_worlds(served):
    """One fermenter in twelve turns sluggish (late slope x 0.6) 40 days into service:
    about one of its batches a week, never the 8 a weekly window needs. Over ten worlds
    (FAULT_SEEDS) its CUSUM finds it in every one, by the 4th drifted batch to finish in at
    least 6 (measured: 7 of 10; the 2nd to the 7th batch, median the 3rd) and by the 8th in
    all (measured: by the 7th). Each alert names drifted batches, and the other slices'
    alarms stay within the false-alarm budget in every world. The margins are counts of
    worlds and batches: a champion's round-off moves a crossing by a batch at most."""
    fault = Drift("fermenter", "FV07", DEPLOYED + pd.Timedelta(days=40), 0.6)
    settings, nth = served[0], []
    for world in fault_worlds(fault):
        sim, alerts, followed = _sequential_alerts(served, world, f"fv07-{world.seed}")
        found = [a for a in alerts if a.value == "FV07"]
        assert found, (world.seed, [a.message() for a in alerts])
        first = min(found, key=lambda a: pd.Timestamp(a.detected_at))
        drifted = sim.truth[sim.truth["drifted"]]
        assert len(drifted) >= 8
        nth.append(int((drifted["finish_time"] <= pd.Timestamp(first.detected_at)).sum()))
        assert first.slice == "fermenter" and set(first.batch_ids) & set(drifted["batch_id"])
        others = [a for a in alerts if a.value != "FV07"]
        assert_within_false_alarm_budget(others, followed, settings, MONITORED_DAYS)
    assert sum(n <= 4 for n in nth) >= 6 and max(nth) <= 8, nth


def test_a_milder_strain_fault_is_found_in_every_world(served):
    """belgian_saison turns mildly sluggish (late slope x 0.75) 20 days into service: no
    weekly window alarmed on it in 100 days before the sequential test. Over ten worlds a
    slice of saison batches (the strain, or its brand, which explains it) alarms in every
    one within the 120 monitored days; by the 12th drifted batch to finish in at least 8
    (measured: 9 of 10, the 3rd to the 13th, median the 6th to 7th) and within 60 days of
    the fault in at least 6 (measured: 7 of 10, 23 to 101 days, median 37). A mild fault
    in a strain brewed about twice a week takes weeks, not days: the one world this test
    replayed before (seed 5 from a year before deployment) found it in 8.6 days, and an
    acceptance written on that world alone promised two weeks. The other slices stay
    within the false-alarm budget."""
    fault = Drift("yeast_strain", "belgian_saison", DEPLOYED + pd.Timedelta(days=20), 0.75)
    saison_brands = {b for b, r in RECIPES.items() if set(r.strains) == {"belgian_saison"}}

    def about_saison(alert) -> bool:
        pairs = dict(zip(alert.slice.split("*"), alert.value.split("*"), strict=True))
        return (
            pairs.get("yeast_strain") == "belgian_saison"
            or pairs.get("brand") in saison_brands
            or "yeast_strain=belgian_saison" in alert.explains
        )

    nth, days = [], []
    for world in fault_worlds(fault):
        sim, alerts, followed = _sequential_alerts(served, world, f"saison-{world.seed}")
        found = [a for a in alerts if about_saison(a)]
        assert found, (world.seed, [a.message() for a in alerts])
        first = min(pd.Timestamp(a.detected_at) for a in found)
        drifted = sim.truth[sim.truth["drifted"]]
        nth.append(int((drifted["finish_time"] <= first).sum()))
        days.append((first - fault.start) / pd.Timedelta(days=1))
        others = [a for a in alerts if not about_saison(a)]
        assert_within_false_alarm_budget(others, followed, served[0], MONITORED_DAYS)
    assert sum(n <= 12 for n in nth) >= 8, nth
    assert sum(d <= 60 for d in days) >= 6, days


def test_live_daily_runs_raise_the_saison_alert_once_and_keep_it_open(served):
    """The daily DAG's view: each day's run sees the readings and predictions so far, the
    last run's windows and alerts. The saison fault's alert, once raised, stays open every
    following day (a batch labelled late can move the statistic), and early labels exist for
    drifted batches days before it (they are what it waits on: the labels). One world
    (seed 5), on the reproducible champion, with the plateau labels (a mildly slower
    finish moves the plateau's start less than it moved the old end-of-log finish):
    early labels from day 4, the alert on the saison brand from day 48, its 11th drifted
    batch to finish (it was 8.6 days, the 4th, under the old labels); the daily runs are
    replayed from day 40 to day 56. The other worlds' delays are the test above's."""
    settings, rules, model = served
    fault = Drift("yeast_strain", "belgian_saison", DEPLOYED + pd.Timedelta(days=20), 0.75)
    sim = simulate(dataclasses.replace(WORLD, drift=fault))
    complete = derive_outcomes(sim.batches, sim.readings, rules)
    end = fault.start + pd.Timedelta(days=56)
    requests = snapshot_requests(sim.batches, sim.readings, rules, DEPLOYED, end, complete)
    prediction_log = PredictionLog(f"sqlite:///{settings.home / 'live'}.db", "sync")
    try:
        log_in_process(model, requests, prediction_log)
        predictions = prediction_log.read_predictions()
    finally:
        prediction_log.close()
    at = pd.to_datetime(predictions["snapshot_time"], utc=True, format="mixed")
    drifted = set(sim.truth.loc[sim.truth["drifted"], "batch_id"])
    no_labels = pd.DataFrame(
        columns=["prediction_id", "batch_id", "finished_within_horizon", "finished_at"]
    )
    last, open_days, early_days = None, [], []
    for day in pd.date_range(fault.start + pd.Timedelta(days=40), end, freq="1D"):
        started = sim.batches[sim.batches["start_time"] <= day]
        frames = started.assign(end_time=started["end_time"].where(started["end_time"] <= day))
        outcomes = derive_outcomes(frames, sim.readings[sim.readings["timestamp"] <= day], rules)
        seen = predictions[at <= day]
        last = monitor(
            seen, no_labels, outcomes, None, settings,
            None if last is None else last.windows, None if last is None else last.alerts,
        )  # fmt: skip
        joined = attach_labels(seen, no_labels, outcomes, settings.horizon_hours)
        sure = joined[(joined["label_bound"] == 0) & joined["label"].isna()]
        if sure["batch_id"].isin(drifted).any():
            early_days.append(day)
        if any(a.test == "cusum" and "saison" in a.value for a in last.alerts):
            open_days.append(day)
    assert early_days and open_days, (early_days, open_days)
    # seed 5: early labels on days 43-47 of those replayed, the alert from day 48
    assert early_days[0] < open_days[0] <= end
    raised = pd.date_range(open_days[0], end, freq="1D")
    assert list(raised) == open_days  # open every day once raised

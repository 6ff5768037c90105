"""Monitoring: labels join by precedence, the statistics match hand examples, a biased slice
alarms (and only it), and a run writes its report, summary, MLflow runs and webhook."""

from __future__ import annotations

import http.server
import json
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from monitoring.monitor import attach_labels, holm, monitor

RNG = np.random.default_rng(3)
STRAINS = ["american_ale", "german_lager", "english_ale"]


def _log(biased_strain: str | None = None, batches: int = 360, start="2026-03-01"):
    """A prediction log as serving writes it, and the batches' outcomes: every batch has 10
    snapshots 6 h apart ending at its finish; the model is sharp and calibrated, except
    (optionally) on one strain where it calls 'finished' too early."""
    rows, outcomes = [], []
    t0 = pd.Timestamp(start, tz="UTC")
    for b in range(batches):
        strain = STRAINS[b % 3]
        fermenter = f"FV0{RNG.integers(1, 5)}"
        finish = t0 + pd.Timedelta(hours=float(RNG.uniform(60, 28 * 24)))
        batch_id = f"B{b:04d}"
        outcomes.append((batch_id, "finished", finish))
        for k in range(10):
            at = finish - pd.Timedelta(hours=6 * k)
            finished_soon = k <= 4
            p = 0.95 if finished_soon else 0.05
            hours = 6.0 * k
            if strain == biased_strain:
                p, hours = (0.95, hours) if finished_soon else (0.55, hours - 20.0)
            rows.append(
                {
                    "prediction_id": f"{batch_id}-{k}",
                    "served_at": at,
                    "model_version": "1",
                    "batch_id": batch_id,
                    "snapshot_time": at,
                    "fermenter": fermenter,
                    "brand": "golden_pilsner",
                    "yeast_strain": strain,
                    "season": "spring",
                    "features": json.dumps({"current_gravity_plato": 3 + k * 0.8}),
                    "probability": p,
                    "decision": p >= 0.8,
                    "hours_remaining": max(hours, 0.0),
                    "threshold": 0.8,
                    "unknown_categories": "",
                }
            )
    outcomes = pd.DataFrame(outcomes, columns=["batch_id", "status", "finish_time"])
    return pd.DataFrame(rows), outcomes


NO_LABELS = pd.DataFrame(
    columns=["prediction_id", "batch_id", "finished_within_horizon", "finished_at"]
)


def test_label_precedence_and_hours():
    predictions, outcomes = _log(batches=3)
    first = predictions["batch_id"] == "B0000"
    finish = outcomes.set_index("batch_id").loc["B0000", "finish_time"]
    labels = pd.DataFrame(
        [
            {
                "prediction_id": "B0000-9",
                "batch_id": None,
                "finished_within_horizon": True,
                "finished_at": None,
            },
            {
                "prediction_id": None,
                "batch_id": "B0001",
                "finished_at": finish,
                "finished_within_horizon": None,
            },
        ]
    )
    joined = attach_labels(predictions, labels, outcomes, 24.0).set_index("prediction_id")
    assert joined.loc["B0000-0", "label"] == 1.0 and joined.loc["B0000-8", "label"] == 0.0
    assert joined.loc["B0000-9", "label"] == 1.0  # the direct label wins over the readings
    assert joined.loc["B0000-9", "label_source"] == "feedback_prediction"
    assert (joined.loc[joined["batch_id"] == "B0001", "label_source"] == "feedback_batch").all()
    assert joined.loc["B0000-3", "actual_hours"] == pytest.approx(18.0)
    running = outcomes.assign(status="running")
    pending = attach_labels(predictions[first], NO_LABELS, running, 24.0)
    assert pending["label"].isna().all()


def test_holm_hand_examples():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    # sorted: 0.001 x5, 0.01 x4, 0.03 x3, 0.04 x2 (0.08, kept at 0.09: monotone), 0.2 x1
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.2, 0.005])


def _drift_world(shift: float, seed: int = 5):
    """A reference of 120 training batches (two seasons) at the drift age and 40 served
    batches of winter, whose pitch temperature moves by ``shift`` degrees. The model leans
    on pitch temperature, not on yeast generation."""
    from validation.reference import DRIFT_AGE_HOURS

    rng = np.random.default_rng(seed)
    n = 120
    pitch = rng.normal(12.0, 1.0, n)
    reference = {
        "batches": {
            "age_hours": DRIFT_AGE_HOURS,
            "season": ["winter"] * 60 + ["summer"] * 60,
            "values": {
                "pitch_temperature_c": pitch.tolist(),
                "yeast_generation": rng.integers(1, 8, n).astype(float).tolist(),
                "original_gravity_plato": rng.normal(12.0, 0.8, n).tolist(),
                "probability": (0.1 + 0.05 * (pitch - 12.0) + rng.normal(0, 0.01, n)).tolist(),
            },
        }
    }
    rows = []
    for b in range(40):
        served_pitch = rng.normal(12.0 + shift, 1.0)
        for hours in (42.0, 48.0, 54.0):  # three snapshots a batch; the 48 h one counts
            rows.append(
                {
                    "batch_id": f"S{b}",
                    "season": "winter",
                    "probability": 0.1 + 0.05 * (served_pitch - 12.0),
                    "features": json.dumps(
                        {
                            "hours_since_pitch": hours,
                            "pitch_temperature_c": served_pitch,
                            "yeast_generation": float(rng.integers(1, 8)),
                            "original_gravity_plato": float(rng.normal(12.0, 0.8)),
                        }
                    ),
                }
            )
    return reference, pd.DataFrame(rows)


def test_drift_is_per_batch_same_season_tested_and_ranked_by_the_model(settings):
    """A warmer pitch alarms, first, with the probability it moves; the features the model
    does not lean on and the unshifted world raise nothing; each batch counts once."""
    from scipy.stats import ks_2samp

    from monitoring.drift import drift_table

    reference, served = _drift_world(shift=2.0)
    table = drift_table(served, reference, settings)
    assert (table["served_batches"] == 40).all()  # one row per batch, not three
    assert set(table["value"]) == {"winter"}  # against the winter training batches
    assert (table["reference_batches"] == 60).all()
    alarmed = table[table["alarm"]]
    assert alarmed["feature"].tolist()[:2] in (
        ["probability", "pitch_temperature_c"],
        ["pitch_temperature_c", "probability"],
    )
    assert not table.loc[table["feature"] == "yeast_generation", "alarm"].any()
    pitch = table.set_index("feature").loc["pitch_temperature_c"]
    winter = np.array(reference["batches"]["values"]["pitch_temperature_c"][:60])
    served_pitch = (
        served.groupby("batch_id")["features"]
        .first()
        .map(lambda f: json.loads(f)["pitch_temperature_c"])
    )
    assert pitch["ks_statistic"] == pytest.approx(ks_2samp(served_pitch, winter).statistic)
    assert pitch["effect"] == pytest.approx(
        (served_pitch.mean() - winter.mean()) / winter.std(ddof=1)
    )
    calm = drift_table(_drift_world(shift=0.0, seed=8)[1], reference, settings)
    assert not calm["alarm"].any(), calm


def test_calibrated_log_raises_no_alarm(settings):
    predictions, outcomes = _log()
    result = monitor(predictions, NO_LABELS, outcomes, None, settings)
    assert result.labelled == len(predictions) and result.pending == 0
    assert result.alerts == []
    overall = result.windows[result.windows["slice"] == "all"]
    assert overall["bias"].abs().max() < 0.02


def test_a_biased_strain_alarms_in_its_slice_only(settings):
    # A third of the rows biased by +0.25 leaves the mixed slices (fermenters) near +0.08.
    settings = settings.model_copy(update={"monitor_max_abs_bias": 0.1})
    predictions, outcomes = _log(biased_strain="german_lager")
    result = monitor(predictions, NO_LABELS, outcomes, None, settings)
    assert result.alerts
    for alert in result.alerts:
        # Every alarmed slice holds drifted rows; slices without lager never alarm.
        rows = predictions
        if alert.slice != "all":
            for key, value in zip(alert.slice.split("*"), alert.value.split("*"), strict=True):
                rows = rows[rows[key].fillna("(missing)") == value]
        assert (rows["yeast_strain"] == "german_lager").mean() > 0.3, alert
        assert alert.support >= settings.monitor_min_support and alert.likely_causes
    strains = {a.value for a in result.alerts if a.slice == "yeast_strain"}
    assert strains == {"german_lager"}
    metrics = {a.metric for a in result.alerts if a.slice == "yeast_strain"}
    assert {"prediction_bias", "hours_remaining_bias"} <= metrics
    lager = next(
        a for a in result.alerts if a.slice == "yeast_strain" and a.metric == "prediction_bias"
    )
    assert lager.observed == pytest.approx(0.25, abs=0.03) and "yeast" in lager.message()


def test_run_writes_report_summary_mlflow_and_webhook(settings, monkeypatch):
    from serving.prediction_log import PredictionLog

    predictions, outcomes = _log(biased_strain="german_lager", batches=120)
    log = PredictionLog(settings.prediction_log, "sync")
    log.write(
        [
            {k: (v.to_pydatetime() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()}
            for row in predictions.to_dict("records")
        ]
    )
    finish = outcomes.set_index("batch_id")["finish_time"]
    log.add_labels(
        [{"batch_id": b, "finished_at": f.to_pydatetime()} for b, f in finish.items()],
        source="test",
    )
    log.close()
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    settings = settings.model_copy(
        update={
            "monitor_webhook_url": f"http://127.0.0.1:{server.server_port}/alerts",
            "monitor_min_support": 40,
            "monitor_min_batches": 6,
        }
    )
    from monitoring.report import run_monitoring

    summary = run_monitoring(settings)
    server.server_close()
    assert summary["retrain"] and summary["labelled_predictions"] == len(predictions)
    report = (settings.home / "monitoring" / "report.html").read_text()
    assert "german_lager" in report and "data:image/png;base64," in report
    saved = json.loads((settings.home / "monitoring" / "summary.json").read_text())
    assert saved["alerts"] == json.loads(json.dumps(summary["alerts"], default=str))
    assert received and received[0]["retrain"] is True
    import mlflow

    runs = mlflow.search_runs(experiment_names=[settings.monitor_experiment])
    assert len(runs) == len(summary["mlflow_runs"]) >= 1
    assert "metrics.slice/yeast_strain/german_lager/bias" in runs.columns
    # the report opens with the alerts in brewers' words, and names the batches
    opening = report[report.index("Alerts (") : report.index("The evidence")]
    assert "german_lager batches have" in opening
    lager = next(a for a in summary["alerts"] if a["value"] == "german_lager")
    assert lager["batch_ids"] and lager["batch_ids"][0] in report
    # the next run, with nothing new, computes no window and logs no MLflow run
    again = run_monitoring(settings)
    assert again.get("mlflow_runs", []) == [] and again["alerts"] == summary["alerts"]
    assert len(mlflow.search_runs(experiment_names=[settings.monitor_experiment])) == len(runs)


def test_replay_sends_what_was_known_then_and_finishes_in_order(small_world):
    """The replay's requests are snapshot rows in time order with JSON-ready values, and
    its labels are the batches that finished inside the span, in the order they did."""
    from models.dataset import LabelRules, derive_outcomes
    from monitoring.replay import REQUEST_FIELDS, finish_labels, records, snapshot_requests

    rules = LabelRules()
    since = small_world.config.start + pd.Timedelta(days=10)
    until = since + pd.Timedelta(days=10)
    outcomes = derive_outcomes(small_world.batches, small_world.readings, rules)
    requests = snapshot_requests(
        small_world.batches, small_world.readings, rules, since, until, outcomes
    )
    assert list(requests.columns) == list(REQUEST_FIELDS)
    assert requests["snapshot_time"].is_monotonic_increasing
    assert requests["snapshot_time"].between(since, until, inclusive="left").all()
    sent = records(requests)
    json.dumps(sent, allow_nan=False)  # nothing a JSON body cannot carry
    assert sent[0]["snapshot_time"] == requests["snapshot_time"].iloc[0].isoformat()
    missing = requests.isna()
    assert all(
        (sent[i][c] is None) == bool(missing.iloc[i][c]) for i in range(len(sent)) for c in missing
    )

    finishes = finish_labels(outcomes, since, until)
    inside = outcomes[
        (outcomes["status"] == "finished") & outcomes["finish_time"].between(since, until, "left")
    ]
    assert set(finishes["batch_id"]) == set(inside["batch_id"]) and len(finishes) > 0
    assert finishes["finished_at"].is_monotonic_increasing


def _with_intervals(predictions: pd.DataFrame, late_strain: str | None) -> pd.DataFrame:
    """Intervals as serving logs them: ±6 h (80%) and ±12 h (95%) around the forecast,
    which here is the truth; for ``late_strain`` the intervals end 30 h too early (its
    batches finish later than the forecast's band, not its point: only coverage moves)."""
    out = predictions.copy()
    shift = np.where(out["yeast_strain"] == late_strain, 30.0, 0.0)
    for tag, half in ((80, 6.0), (95, 12.0)):
        out[f"interval_{tag}_low"] = (out["hours_remaining"] - half - shift).clip(lower=0)
        out[f"interval_{tag}_high"] = out["hours_remaining"] + half - shift
    return out


def test_a_slice_whose_intervals_stop_holding_alarms_on_coverage(settings, tmp_path):
    from monitoring.report import write_html

    predictions, outcomes = _log()
    honest = monitor(_with_intervals(predictions, None), NO_LABELS, outcomes, None, settings)
    assert honest.alerts == []
    overall = honest.windows[honest.windows["slice"] == "all"]
    assert (overall["coverage_95"] == 1.0).all() and (overall["coverage_80"] == 1.0).all()
    drifted = monitor(
        _with_intervals(predictions, "german_lager"), NO_LABELS, outcomes, None, settings
    )
    coverage = [a for a in drifted.alerts if a.metric.startswith("interval_coverage_")]
    # one alert per cause and family: the 95% intervals' alarm rides with the 80%'s
    assert coverage and {m for a in coverage for m in (a.metric, *a.also)} == {
        "interval_coverage_80",
        "interval_coverage_95",
    }
    assert {a.value for a in coverage if a.slice == "yeast_strain"} == {"german_lager"}
    assert not [a for a in drifted.alerts if "bias" in a.metric]  # the point forecast held
    lager = next(a for a in coverage if a.slice == "yeast_strain" and a.value == "german_lager")
    assert lager.also["interval_coverage_95"] == pytest.approx(0.95)
    assert lager.batches >= settings.monitor_min_batches
    assert "95% intervals held for 0%" in lager.message() and "yeast" in lager.message()
    # the cellar's coverage, when it alarms, is this strain's: not a second alert
    assert not [a for a in coverage if a.slice == "all"], [a.message() for a in coverage]
    late = _with_intervals(predictions, "german_lager")
    page = write_html(drifted, late, NO_LABELS, outcomes, settings, tmp_path / "report.html")
    text = page.read_text()
    assert "Finish forecast: interval coverage" in text and "95% intervals held for 0%" in text


def test_an_alert_in_a_brewers_words():
    from monitoring.monitor import LIKELY_CAUSES, Alert

    def alert(slice_, value, metric, observed):
        return Alert("2026-10-24+7d", slice_, value, metric, observed, 12.0, 80, 9, 0.01, "x")

    late = alert("yeast_strain", "german_lager", "hours_remaining_bias", -45.2)
    assert late.for_brewers() == (
        "german_lager batches have been finishing ~45 h later than forecast since 24 Oct: check x."
    )
    vessel = alert("fermenter*season", "FV07*autumn", "prediction_bias", 0.2).for_brewers()
    assert vessel.startswith("batches in FV07 / autumn batches have had forecasts too sure")
    assert "yeast health" in LIKELY_CAUSES["yeast_strain"]


def test_one_cause_gets_one_alert_per_family_listing_what_it_explains(settings, monkeypatch):
    """The demo's "10 alerts for one problem": a drifted strain made the cellar, its one
    brand and season (the cellar's very rows) and every pair holding the strain alarm too,
    on the probabilities and the finish times, week after week. Now it is one alert per
    family, on the strain, since its first week, listing those it explains and its
    batches."""
    from collections import Counter

    from monitoring.monitor import FAMILY_OF

    settings = settings.model_copy(update={"monitor_max_abs_bias": 0.1})
    monkeypatch.setattr(sys.modules[__name__], "RNG", np.random.default_rng(7))  # its own log
    predictions, outcomes = _log(biased_strain="german_lager")
    result = monitor(predictions, NO_LABELS, outcomes, None, settings)
    windowed = [a for a in result.alerts if a.test == "window"]
    lager = [a for a in windowed if (a.slice, a.value) == ("yeast_strain", "german_lager")]
    # and the four weeks it lasted are one alert per family, since the first
    per_window = Counter((a.window, FAMILY_OF[a.metric]) for a in lager)
    assert sorted(per_window) == [("2026-03-01+28d", "finish"), ("2026-03-01+28d", "probability")]
    assert set(per_window.values()) == {1} and len(windowed) == 2
    assert all("since 01 Mar" in a.for_brewers() for a in lager)
    assert not [a for a in windowed if a.slice in ("all", "brand", "season")]
    assert not [a for a in windowed if "yeast_strain*" in a.slice or "*yeast_strain" in a.slice]
    explained = {e for a in lager for e in a.explains}
    assert {"all=all", "brand=golden_pilsner", "season=spring"} <= explained
    assert "yeast_strain*season=german_lager*spring" in explained
    assert any("ece" in a.also for a in lager if a.metric == "prediction_bias")
    strain_batches = set(predictions.loc[predictions["yeast_strain"] == "german_lager", "batch_id"])
    assert all(a.batch_ids and set(a.batch_ids) <= strain_batches for a in lager)
    first = next(a for a in lager if "all=all" in a.explains)
    assert "It explains the alarms of " in first.message() and "all=all" in first.message()


def test_label_bounds_from_a_running_batch_are_sure_negatives_or_an_upper_bound():
    """A running batch surely unfinished until 3 March 12:00: a prediction whose 24 h ended
    before then is a sure negative (bound 0), one whose horizon ended later but has passed
    may have finished (bound 1), one whose horizon has not passed has none; a finished
    batch's predictions are bounded by their labels. The bias on the bounds is at most
    the true one."""
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    rows = []
    for batch, hours in (("RUN", (0, 6, 14, 30, 40)), ("DONE", (0, 40))):
        for h in hours:
            at = t0 + pd.Timedelta(hours=h)
            rows.append(
                {"prediction_id": f"{batch}-{h}", "batch_id": batch, "served_at": at,
                 "snapshot_time": at, "probability": 0.9}
            )  # fmt: skip
    outcomes = pd.DataFrame(
        {
            "batch_id": ["RUN", "DONE"],
            "status": ["running", "finished"],
            "finish_time": [pd.NaT, t0 + pd.Timedelta(hours=50)],
            "terminal_gravity_plato": [np.nan, 2.5],
            "unfinished_until": [t0 + pd.Timedelta(hours=36), pd.NaT],
        }
    )
    joined = attach_labels(pd.DataFrame(rows), NO_LABELS, outcomes, 24.0)
    bound = dict(zip(joined["prediction_id"], joined["label_bound"], strict=True))
    assert bound["RUN-0"] == 0.0 and bound["RUN-6"] == 0.0  # 24 h and 30 h < 36 h
    assert bound["RUN-14"] == 1.0  # its horizon (38 h) passed by the last prediction (40 h)
    assert np.isnan(bound["RUN-30"]) and np.isnan(bound["RUN-40"])  # horizons not passed
    assert bound["DONE-0"] == 0.0 and bound["DONE-40"] == 1.0  # the labels themselves
    assert joined.loc[joined["batch_id"] == "RUN", "label"].isna().all()  # no label invented


def test_a_run_computes_only_the_windows_that_changed(settings, monkeypatch):
    """Given the last run's windows, an unchanged window is reused; a label arriving for one
    prediction recomputes its window alone, and the result equals a run from scratch."""
    import monitoring.monitor as monitoring

    monkeypatch.setattr(sys.modules[__name__], "RNG", np.random.default_rng(9))
    predictions, outcomes = _log(biased_strain="german_lager")
    first = monitor(predictions, NO_LABELS, outcomes, None, settings)
    computed = []
    real = monitoring.window_metrics
    monkeypatch.setattr(
        monitoring, "window_metrics", lambda *a, **k: computed.append(a[1]) or real(*a, **k)
    )
    again = monitor(predictions, NO_LABELS, outcomes, None, settings, first.windows)
    assert computed == [] and not again.windows["fresh"].any()
    same = ["fresh"]
    pd.testing.assert_frame_equal(
        again.windows.drop(columns=same), first.windows.drop(columns=same)
    )
    assert [a.message() for a in again.alerts] == [a.message() for a in first.alerts]
    one = predictions.sort_values("snapshot_time").iloc[-1]
    label = pd.DataFrame(
        [{"prediction_id": one.prediction_id, "batch_id": None, "finished_within_horizon": 0.0,
          "finished_at": None}]
    )  # fmt: skip
    updated = monitor(predictions, label, outcomes, None, settings, again.windows)
    assert len(set(computed)) == 1 and computed[0] == updated.windows["window"].max()
    scratch = monitor(predictions, label, outcomes, None, settings)
    pd.testing.assert_frame_equal(
        updated.windows.drop(columns=same), scratch.windows.drop(columns=same)
    )


def test_a_parent_without_a_child_needs_the_ece_support_an_alert_needs(settings):
    """ECE is biased upwards on few rows, so an ECE alert needs twice the support
    (find_alerts): the test of a parent without a child's rows must ask the same, or a
    thin remainder keeps a parent alarming that the child explains."""
    from monitoring.monitor import alarms_alone

    predictions, outcomes = _log(batches=40)
    joined = attach_labels(predictions, NO_LABELS, outcomes, 24.0)
    joined["probability"] = 0.95  # every prediction far too sure: ECE ~0.45
    support = settings.monitor_min_support
    thin, enough = joined.iloc[: int(1.5 * support)], joined.iloc[: 2 * support]
    assert thin["batch_id"].nunique() >= settings.monitor_min_batches
    assert not alarms_alone(thin, "ece", settings)
    assert alarms_alone(enough, "ece", settings)


def test_a_cause_named_by_a_finer_slice_in_the_next_window_is_still_one_alert():
    """At a season boundary a strain's weekly root alternates between the strain and the
    strain in one season (which holds all its rows that week): one cause, one alert since
    the first week, under the wider name, listing the finer one as explained. A slice
    that does not hold the other (another fermenter), or the other direction of bias,
    stays an alert of its own."""
    from monitoring.monitor import Alert, merge_windows

    def alert(window, name, value, observed=-20.0):
        batch = [f"{value}-{window}"]
        return Alert(window, name, value, "hours_remaining_bias", observed, 8.0, 80, 9, 0.001,
                     "yeast health", batch_ids=batch, model_version="2")  # fmt: skip

    finer = alert("2026-03-08+7d", "yeast_strain*season", "german_lager*spring", -24.0)
    finer.explains = ["yeast_strain=german_lager", "all=all"]  # that week, the finer root
    merged = merge_windows(
        [
            alert("2026-03-01+7d", "yeast_strain", "german_lager"),
            finer,
            alert("2026-03-15+7d", "yeast_strain", "german_lager"),
            alert("2026-03-08+7d", "fermenter", "FV01"),
            alert("2026-03-15+7d", "yeast_strain*season", "german_lager*spring", 12.0),
        ]
    )
    lager = [a for a in merged if a.slice == "yeast_strain"]
    assert [(a.window, a.value) for a in lager] == [("2026-03-01+21d", "german_lager")]
    assert lager[0].explains == ["yeast_strain*season=german_lager*spring", "all=all"]
    assert len(lager[0].batch_ids) == 3 and lager[0].observed == pytest.approx(-64 / 3)
    assert {(a.slice, a.observed) for a in merged if a is not lager[0]} == {
        ("fermenter", -20.0),
        ("yeast_strain*season", 12.0),
    }

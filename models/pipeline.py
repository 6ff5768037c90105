"""The training steps up to the gate: prepare -> fit -> calibrate -> export -> evaluate.

Each step reads what the previous ones wrote in a :class:`~models.workdir.TrainingWorkdir`
and writes its own files there (``models.workdir.STEP_FILES`` lists them), so an
orchestrator can run the steps as separate tasks passing only the path. The gate, the
registration and the promotion that follow are in :mod:`models.promotion`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict
from functools import partial, wraps

import numpy as np
import pandas as pd
import pyarrow as pa

from brewcast import lake
from brewcast.contract import CATEGORICAL
from brewcast.schema import FEATURES, LABEL, REGRESSION_TARGET, slice_keys
from brewcast.settings import Settings
from models import metrics
from models.baselines import NON_ML
from models.calibrate import fit_calibration, sigmoid
from models.dataset import SPLITS, before_finish, split_by_batch_time, unseen_in_training
from models.inputs import Preprocessing, with_unknown_batches
from models.intervals import fit_finish_forecast
from models.reproducible import (
    canonical_numbers,
    canonical_text,
    configure_tensorflow,
    fingerprint,
    pin_numerics,
)
from models.workdir import TrainingWorkdir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (too little data, a failed export...); the message says why."""


class NoTrainingDataError(TrainingError):
    """Nothing published to train on yet: a scheduled run skips, it does not fail."""


class ChampionUnavailableError(TrainingError):
    """A champion exists but cannot be loaded or scored: nothing may be gated against it, so
    the run stops (failing closed) instead of promoting without the comparison."""


def _targets(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "logit": frame[LABEL].astype("float32").to_numpy()[:, None],
        "hours": frame[REGRESSION_TARGET].astype("float32").to_numpy()[:, None],
    }


def _network_config(settings: Settings):
    from models.network import NetworkConfig

    return NetworkConfig(
        hidden_layers=tuple(int(x) for x in settings.hidden_layers.split(",") if x.strip()),
        activation=settings.activation,
        l1=settings.l1,
        l2=settings.l2,
        dropout=settings.dropout,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        patience=settings.patience,
        seed=settings.seed,
    )


def prepare(settings: Settings, work: TrainingWorkdir) -> dict:
    """Read the published features, split them by batch and time, fit the preprocessing.
    Every split is checked before anything is written: a refused run leaves no work
    directory behind."""
    files = lake.partition_files(settings.paths.lake, "features", FEATURES)
    features = lake.read_table(settings.paths.lake, "features", FEATURES)
    if features.empty:
        raise NoTrainingDataError(
            f"no published features under {settings.paths.lake}/features; run "
            "`brewcast features` (after ingest and validate) first"
        )
    snapshot_id = hashlib.sha256(
        "".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files).encode()
    ).hexdigest()[:16]
    split = split_by_batch_time(features)
    info: dict = {
        "data_snapshot_id": snapshot_id,
        "feature_files": len(files),
        "rows": len(features),
    }
    # A censored batch's sure negatives teach the classifier; every metric, calibration
    # and interval of the later splits needs a batch's whole outcome, so they keep none.
    complete = ~features["censored"].fillna(False).astype(bool)
    parts = {
        name: features[(split == name) & (complete | (split == "train"))].reset_index(drop=True)
        for name in SPLITS
    }
    info["train_censored_rows"] = int(((split == "train") & ~complete).sum())
    for name, part in parts.items():
        batches = part["batch_id"].nunique()
        if batches < settings.min_split_batches or part[LABEL].nunique() < 2:
            labels = sorted(part[LABEL].unique().tolist())
            raise TrainingError(
                f"the {name} split has {batches} batch(es) and labels {labels}: too little "
                f"labelled data to train (need {settings.min_split_batches} batches and both "
                f"classes per split)"
            )
    work.root.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        batches = part["batch_id"].nunique()
        part.to_parquet(work.split(name), index=False)
        info[f"{name}_rows"] = len(part)
        info[f"{name}_batches"] = batches
        info[f"{name}_positive_rate"] = float(part[LABEL].mean())
        info[f"{name}_until"] = part["snapshot_time"].max().isoformat()
        info[f"{name}_pre_finish_rows"] = int(before_finish(part).sum())
    train = pd.read_parquet(work.train)
    pre = Preprocessing.fit(train, settings.vocabulary_min_batches)
    for name in SPLITS[1:]:
        unseen = unseen_in_training(train, pd.read_parquet(work.split(name)), CATEGORICAL)
        info[f"{name}_unseen_in_training"] = unseen
        for column, values in unseen.items():
            log.warning(
                "the %s split has %s values the training split lacks (served as out of "
                "vocabulary): %s",
                name,
                column,
                values,
            )
    work.write_json(work.preprocessing, asdict(pre))
    work.write_json(work.data, info)
    return info


#: The rule that picks the run's candidate among the families it trains (the settings name
#: them), declared before any is trained: the serving contract is the same for all.
CANDIDATE_RULE = "lowest log loss on the validation split's pre-finish rows, after calibration"


def model_families(settings: Settings) -> list[str]:
    """The families this run trains, in the settings' order, each once."""
    return list(dict.fromkeys(n.strip() for n in settings.model_families.split(",") if n.strip()))


def _boosted_config(settings: Settings):
    from models.boosted import BoostedConfig

    return BoostedConfig(
        rounds=settings.boosted_rounds,
        learning_rate=settings.boosted_learning_rate,
        leaves=settings.boosted_leaves,
        min_child_rows=settings.boosted_min_child_rows,
        seed=settings.seed,
    )


def _fit_network(settings: Settings, work: TrainingWorkdir, frames, pre, progress) -> dict:
    from models.network import train_network

    configure_tensorflow(pin_numerics(settings.reproducible_training))
    config = _network_config(settings)
    net = train_network(
        pre,
        pre.network_inputs(frames["train"]),
        _targets(frames["train"]),
        pre.network_inputs(frames["validation"]),
        _targets(frames["validation"]),
        config,
        progress=progress,
    )
    net.model.save(work.network)
    work.write_json(work.history, net.history)
    return {
        "best_epoch": net.best_epoch,
        "epochs_run": len(net.history.get("loss", [])),
        "params": config.params(),
    }


def _fit_boosted(settings: Settings, work: TrainingWorkdir, frames, pre, progress) -> dict:
    from models.boosted import train_boosted

    model, info = train_boosted(
        pre, frames["train"], frames["validation"], _boosted_config(settings), progress
    )
    model.save(work.boosted)
    return info


def fit(settings: Settings, work: TrainingWorkdir, progress: bool = True) -> dict:
    """Train every model family and the baselines on the same split."""
    import shutil

    from models.baselines import fit_baselines

    frames = work.frames()
    pre = work.load_preprocessing()
    # the families learn the out-of-vocabulary index too (the baselines one-hot the values)
    fitting_frames = {
        **frames,
        "train": with_unknown_batches(
            frames["train"], settings.unknown_category_share, settings.seed
        ),
    }
    families = model_families(settings)
    # an earlier attempt's family that this run does not train must not be evaluated
    work.network.unlink(missing_ok=True)
    shutil.rmtree(work.boosted, ignore_errors=True)
    work.write_json(work.history, {})
    trained = {}
    for family in families:
        started = time.perf_counter()
        fitting = _fit_network if family == "network" else _fit_boosted
        trained[family] = fitting(settings, work, fitting_frames, pre, progress)
        trained[family]["train_seconds"] = time.perf_counter() - started
        log.info("%s fitted in %.1f s", family, trained[family]["train_seconds"])
    baselines = fit_baselines(
        frames["train"],
        frames["validation"],
        settings.terminal_tolerance_plato,
        settings.horizon_hours,
        settings.calibration_method,
    )
    test = frames["test"]
    scores = {}
    for name, model in baselines.items():
        hours = model.hours(test)
        scores[name] = {
            "probability": model.predict_proba(test).tolist(),
            "hours": None if hours is None else hours.tolist(),
        }
        if model.window is not None:
            window = model.window(test)
            scores[name]["window_80"] = [window["lower"].tolist(), window["upper"].tolist()]
    work.write_json(work.baseline_scores, scores)
    info = {
        "families": trained,
        "numerics_pinned": pin_numerics(settings.reproducible_training),
        "params": {
            "model_families": ",".join(families),
            **{k: v for f in trained.values() for k, v in f["params"].items()},
        },
    }
    work.write_json(work.fit, info)
    return info


def load_family(work: TrainingWorkdir, family: str):
    """A trained family's model as ``fit`` saved it (a Keras model, a ``BoostedModel``)."""
    return work.load_network() if family == "network" else work.load_boosted()


def family_scores(
    family: str, model, pre: Preprocessing, frame: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """A loaded family model's own (logit, hours) on ``frame``, before calibration."""
    if family == "network":
        from models.network import predict_network

        return predict_network(model, pre.network_inputs(frame))
    return model.raw(pre, frame)


def _calibration_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "ece": metrics.expected_calibration_error(y, p),
        "ece_quantile": metrics.expected_calibration_error(y, p, strategy="quantile"),
        "brier": metrics.brier(y, p),
        "log_loss": metrics.log_loss(y, p),
    }


def calibrate(settings: Settings, work: TrainingWorkdir) -> dict:
    """Per family: fit the calibration on validation logits, choose the threshold and fit
    the finish forecast's intervals (``models.intervals``), on the validation split's
    pre-finish rows (the rows a decision depends on); then pick the run's candidate by
    :data:`CANDIDATE_RULE`."""
    from models.threshold import choose_threshold

    validation = pd.read_parquet(work.validation)
    decided = validation[before_finish(validation)].reset_index(drop=True)
    pre = work.load_preprocessing()
    y = decided[LABEL].to_numpy(dtype=float)
    choose = partial(
        choose_threshold,
        policy=settings.threshold_policy,
        cost_false_finished=settings.cost_false_finished,
        cost_late=settings.cost_late,
        precision_target=settings.precision_target,
    )
    families, curves = {}, {}
    for family in work.read_json(work.fit)["families"]:
        logit, hours = family_scores(family, load_family(work, family), pre, decided)
        forecast = fit_finish_forecast(
            decided,
            np.maximum(hours, 0.0),
            settings.interval_group_column,
            settings.interval_min_group_batches,
        )
        calibration = fit_calibration(logit, y, settings.calibration_method)
        before, after = sigmoid(logit), calibration.apply(logit)
        report = choose(y, after)
        prompt = choose_threshold(
            y, after, "cost", settings.cost_needless_reading, settings.cost_late
        )
        curves[family] = report.curve
        low, high = _threshold_interval(settings, choose, decided["batch_id"], y, after)
        families[family] = {
            "calibration": asdict(calibration),
            "validation_rows": len(decided),
            "validation_before": _calibration_metrics(y, before),
            "validation_after": _calibration_metrics(y, after),
            "reliability_before": metrics.reliability_table(y, before).to_dict("records"),
            "reliability_after": metrics.reliability_table(y, after).to_dict("records"),
            "threshold": report.to_dict() | {"threshold_low": low, "threshold_high": high},
            # a reading asked for is cheap: never above the decision's own threshold
            "prompt_threshold": prompt.to_dict()
            | {"threshold": min(prompt.threshold, report.threshold)},
            "finish_forecast": canonical_text(forecast.to_json()),
            "finish_forecast_groups": forecast.describe()["groups"],
        }
    candidate = min(families, key=lambda f: families[f]["validation_after"]["log_loss"])
    info = {
        **families[candidate],
        "candidate": candidate,
        "rule": CANDIDATE_RULE,
        "families": families,
    }
    # at the graph's precision: what export writes into the graph is the same on any machine
    info = canonical_numbers(info)
    work.write_json(work.calibration, info)
    work.write_json(work.threshold_curve, curves[candidate])
    log.info(
        "candidate: %s (%s)",
        candidate,
        ", ".join(f"{f} {v['validation_after']['log_loss']:.4f}" for f, v in families.items()),
    )
    # what the step reports (an orchestrator's XCom): the forecasts' residuals stay in the file
    return {
        **{k: v for k, v in info.items() if k not in ("finish_forecast", "families")},
        "families": {
            f: {k: v for k, v in family.items() if k != "finish_forecast"}
            for f, family in families.items()
        },
    }


def _threshold_interval(
    settings: Settings, choose, batches: pd.Series, y: np.ndarray, p: np.ndarray
) -> tuple[float, float]:
    """The 95% range of the threshold ``choose`` (the run's policy) picks on resampled
    validation batches: how much of the choice is the luck of one validation split."""
    draws = metrics.bootstrap_replicates(
        batches,
        {"threshold": lambda rows: choose(y[rows], p[rows]).threshold},
        settings.bootstrap_replicates,
        settings.seed,
    )
    return metrics.percentile_interval(draws["threshold"])


def _family_graph(family: str, model):
    """A loaded family model as the ``net`` part of the exported graph."""
    if family == "network":
        from models.export import network_to_onnx

        return network_to_onnx(model)
    return model.to_onnx()


def _forecast_parity(family: str, forecast, hours: np.ndarray, test: pd.DataFrame) -> dict:
    """The served finish-forecast code on the exported graph's own hours on ``test``,
    against crepes'; a difference beyond the limit fails the export."""
    from models.export import ParityError
    from models.intervals import INTERVAL_PARITY_LIMIT, crepes_parity

    parity = crepes_parity(forecast, test, hours)
    if max(parity["bounds_max_abs_error"], parity["probability_max_abs_error"]) > (
        INTERVAL_PARITY_LIMIT
    ):
        raise ParityError(
            f"{family}: the served finish forecast differs from crepes' by {parity} "
            f"(limit {INTERVAL_PARITY_LIMIT:g})"
        )
    return parity


def export(settings: Settings, work: TrainingWorkdir) -> dict:
    """Compose every family's ONNX graph and check its parity with the family's own model
    on the test split (and its finish forecast's with crepes'); the candidate's is the
    run's ``model.onnx``."""
    from brewcast.contract import (
        META_DATA_SNAPSHOT_ID,
        META_FAMILIARITY,
        META_FINISH_FORECAST,
        META_HORIZON_HOURS,
        META_MODEL_FAMILY,
        META_PROMPT_THRESHOLD,
        META_THRESHOLD,
        META_TRAINED_ON,
        Familiarity,
    )
    from models.export import export_model

    data = work.read_json(work.data)
    frames = work.frames()
    pre = work.load_preprocessing()
    familiarity = Familiarity.fit(Familiarity.inputs(frames["train"])).with_threshold(
        Familiarity.inputs(frames["validation"]), settings.familiarity_quantile
    )
    test_distance = familiarity.distance(Familiarity.inputs(frames["test"]))
    calibrated = work.read_json(work.calibration)
    candidate = calibrated["candidate"]
    work.families.mkdir(parents=True, exist_ok=True)
    for stale in work.families.glob("*.onnx"):
        stale.unlink()
    parity = {}
    for family in calibrated["families"]:
        calibration, threshold = work.load_calibration(family)
        forecast = work.load_finish_forecast(family)
        model = load_family(work, family)
        result = export_model(
            pre,
            _family_graph(family, model),
            calibration,
            frames["test"],
            family_scores(family, model, pre, frames["test"]),
            metadata={
                META_MODEL_FAMILY: family,
                META_THRESHOLD: threshold,
                META_PROMPT_THRESHOLD: work.prompt_threshold(family),
                META_HORIZON_HOURS: settings.horizon_hours,
                META_DATA_SNAPSHOT_ID: data["data_snapshot_id"],
                META_FAMILIARITY: familiarity.to_json(),
                META_FINISH_FORECAST: forecast.to_json(),
                META_TRAINED_ON: {
                    "batches": data["train_batches"],
                    "rows": data["train_rows"],
                    "until": data["train_until"],
                },
            },
        )
        intervals = _forecast_parity(family, forecast, result.parity_hours, frames["test"])
        lake.write_bytes(work.family_model(family), result.serialized())
        parity[family] = {
            "parity_max_abs_error": result.parity_max_abs_error,
            "parity_hours_max_abs_error": result.parity_hours_max_abs_error,
            "parity_rows": result.parity_rows,
            "parity_interval_max_abs_error": intervals["bounds_max_abs_error"],
            "parity_finish_probability_max_abs_error": intervals["probability_max_abs_error"],
        }
    lake.write_bytes(work.model, work.family_model(candidate).read_bytes())
    work.write_json(
        work.fingerprint,
        fingerprint(
            settings,
            work.read_json(work.fit)["numerics_pinned"]
            and pin_numerics(settings.reproducible_training),
            data["data_snapshot_id"],
            work.model,
            {family: work.family_model(family) for family in parity},
        ),
    )
    info = {
        "candidate": candidate,
        **parity[candidate],
        "familiarity_threshold": familiarity.threshold,
        "test_out_of_distribution_rate": float(np.mean(test_distance > familiarity.threshold))
        if test_distance.size
        else 0.0,
        "families": parity,
    }
    work.write_json(work.export, info)
    return info


def score_model(model_bytes: bytes, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Probability and hours of an exported graph (of either input contract) on ``frame``."""
    from models.export import cpu_session, run_onnx

    return run_onnx(cpu_session(model_bytes), frame)


def _predictions(work: TrainingWorkdir, test: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Per test row: keys, labels, the pre-finish flag, slice keys and every model's
    forecast (``{model}_probability``, ``{model}_hours``); and each model's role."""
    frame = test[["batch_id", "snapshot_time", *slice_keys(), LABEL, REGRESSION_TARGET]].copy()
    frame["before_finish"] = before_finish(test)
    candidate = work.read_json(work.calibration)["candidate"]
    models = []
    for path in sorted(work.families.glob("*.onnx")):
        family = path.stem
        frame[f"{family}_probability"], frame[f"{family}_hours"] = score_model(
            path.read_bytes(), test
        )
        role = "candidate" if family == candidate else "alternative"
        models.append({"name": family, "role": role, "kind": "family"})
    for name, scores in work.read_json(work.baseline_scores).items():
        frame[f"{name}_probability"] = scores["probability"]
        frame[f"{name}_hours"] = np.nan if scores["hours"] is None else scores["hours"]
        if "window_80" in scores:
            frame[f"{name}_low_80"], frame[f"{name}_high_80"] = scores["window_80"]
        models.append({"name": name, "role": "baseline", "kind": "baseline"})
    return frame, models


def _headline(settings: Settings, rows: pd.DataFrame, name: str) -> dict:
    return metrics.headline_report(
        rows[LABEL],
        rows[f"{name}_probability"],
        rows[REGRESSION_TARGET],
        rows[f"{name}_hours"],
        rows["batch_id"],
        settings.bootstrap_replicates,
        settings.seed,
    )


def evaluate(settings: Settings, work: TrainingWorkdir) -> dict:
    """Score every model (families as exported, baselines) on the test split and report on
    its pre-finish rows: headline metrics with batch-bootstrap intervals, slices, paired
    comparisons, plots, the per-row predictions; post-finish rows apart. The current
    champion is scored on the same rows (:func:`score_champion`)."""
    from models.evaluate import slice_table

    work.champion.unlink(missing_ok=True)  # never gate on an earlier attempt's comparison
    test = pd.read_parquet(work.test)
    _, threshold = work.load_calibration()
    predictions, models = _predictions(work, test)
    candidate = next(m["name"] for m in models if m["role"] == "candidate")
    decided = predictions[predictions["before_finish"]].reset_index(drop=True)
    y = decided[LABEL].to_numpy(dtype=float)
    probability = decided[f"{candidate}_probability"].to_numpy()
    overall = metrics.classification_report(y, probability, threshold, decided["batch_id"])
    headline = {m["name"]: _headline(settings, decided, m["name"]) for m in models}
    overall["hours_mae"] = headline[candidate]["hours_mae"]["value"]
    overall["ece_low"] = headline[candidate]["ece"]["low"]
    overall["ece_high"] = headline[candidate]["ece"]["high"]
    slices = slice_table(
        decided,
        probability,
        threshold,
        settings.gate_min_slice_batches,
        replicates=settings.bootstrap_replicates,
        seed=settings.seed,
    )
    slices.to_csv(work.slices, index=False)
    comparisons = {
        m["name"]: metrics.paired_difference(
            y,
            probability,
            decided[f"{m['name']}_probability"],
            decided["batch_id"],
            replicates=settings.bootstrap_replicates,
            seed=settings.seed,
        )
        for m in models
        if m["role"] != "candidate"
    }
    finite = np.isfinite(decided[REGRESSION_TARGET].to_numpy(dtype=float))
    hours_comparisons = {
        m["name"]: metrics.paired_difference(
            decided.loc[finite, REGRESSION_TARGET],
            decided.loc[finite, f"{candidate}_hours"],
            decided.loc[finite, f"{m['name']}_hours"],
            decided.loc[finite, "batch_id"],
            metric=metrics.mean_absolute_error,
            replicates=settings.bootstrap_replicates,
            seed=settings.seed,
        )
        for m in models
        if m["name"] in NON_ML and decided[f"{m['name']}_hours"].notna().any()
    }
    intervals, coverage = _interval_evaluation(settings, work, test, predictions, models)
    intervals["baselines"] = _baseline_windows(decided, models)
    coverage.to_csv(work.coverage, index=False)
    after = predictions[~predictions["before_finish"]]
    champion, champion_probability = score_champion(
        settings, work, test[before_finish(test)].reset_index(drop=True), threshold, probability
    )
    if champion_probability is not None:
        predictions.loc[predictions["before_finish"].to_numpy(), "champion_probability"] = (
            champion_probability
        )
    lake.write_file(work.predictions, pa.Table.from_pandas(predictions, preserve_index=False))
    _plot_evaluation(settings, work, decided, models, threshold, slices)
    info = _evaluation_report(
        work, overall, headline, models, comparisons, after, threshold, y, probability
    )
    info["intervals"] = intervals
    info["hours_comparisons"] = hours_comparisons
    for name, model in info["models"].items():
        model["intervals"] = intervals["families"].get(name) or intervals["baselines"].get(name)
    work.write_json(work.evaluation, info)
    work.write_json(work.champion, champion)
    return info


def _interval_evaluation(
    settings: Settings,
    work: TrainingWorkdir,
    test: pd.DataFrame,
    predictions: pd.DataFrame,
    models: list[dict],
) -> tuple[dict, pd.DataFrame]:
    """Every family's finish forecast on the pre-finish test rows, from its exported hours:
    coverage per level overall (and for the candidate per slice: the returned table, with
    :func:`_candidate_intervals`'s report). The candidate's intervals join ``predictions``."""
    from models.intervals import coverage_table, forecast_frame, plot_coverage

    mask = predictions["before_finish"].to_numpy()
    rows = test[mask].reset_index(drop=True)
    report: dict = {"families": {}}
    coverage = pd.DataFrame()
    for model in (m for m in models if m["kind"] == "family"):
        family = model["name"]
        forecast = work.load_finish_forecast(family)
        hours = predictions[f"{family}_hours"].to_numpy()
        forecasts = forecast_frame(forecast, test, hours)
        table = coverage_table(
            rows,
            forecasts.take(mask),
            settings.gate_min_slice_batches,
            settings.bootstrap_replicates,
            settings.seed,
        )
        overall = table[table["slice"] == "all"].iloc[0].to_dict()
        report["families"][family] = {
            k: v for k, v in overall.items() if k.startswith(("coverage_", "median_width_", "open"))
        }
        if model["role"] == "candidate":
            coverage = table
            for level, (low, high) in forecasts.intervals.items():
                tag = round(level * 100)
                predictions[f"interval_{tag}_low"], predictions[f"interval_{tag}_high"] = low, high
            for i, horizon in enumerate(forecast.horizons):
                predictions[f"finished_by_{horizon:g}h"] = forecasts.finish_probabilities[:, i]
            predictions["forecast_group"] = forecasts.groups
            report.update(
                _candidate_intervals(
                    settings, work, family, forecast, forecasts.take(mask), rows, predictions
                ),
                overall=report["families"][family],
            )
            plot_coverage(table, forecast.levels, work.plots / "coverage.png")
    return report, coverage


def window_widths(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Each window's width in hours; an open-ended one (no upper bound) is infinitely wide,
    also where its lower bound is open too (a history that never says)."""
    return np.where(np.isinf(high), np.inf, high - low)


def _baseline_windows(decided: pd.DataFrame, models: list[dict]) -> dict[str, dict]:
    """The 80% coverage and median width of each baseline that gives a window, on the
    pre-finish test rows (a stuck batch is covered only by an open-ended window)."""
    from models.intervals import actual_hours

    target = actual_hours(decided)
    out = {}
    for model in models:
        low_column = f"{model['name']}_low_80"
        if model["kind"] != "baseline" or low_column not in decided:
            continue
        low = decided[low_column].to_numpy(dtype=float)
        high = decided[f"{model['name']}_high_80"].to_numpy(dtype=float)
        out[model["name"]] = {
            "coverage_80": float(np.mean((target >= low) & (target <= high))),
            "median_width_80": float(np.median(window_widths(low, high))),
        }
    return out


def _candidate_intervals(
    settings: Settings,
    work: TrainingWorkdir,
    family: str,
    forecast,
    served,
    rows: pd.DataFrame,
    predictions: pd.DataFrame,
) -> dict:
    """The candidate's finish forecast against what happened on the pre-finish test
    ``rows``: its width two days before the finish against plain split conformal's, each
    horizon's P(finished by t) scored, and the calibration plot per horizon."""
    from brewcast.intervals import HORIZONS
    from models.intervals import (
        actual_hours,
        horizon_report,
        plain_split_conformal,
        width_before_finish,
    )

    mask = predictions["before_finish"].to_numpy()
    target = actual_hours(rows)
    validation = pd.read_parquet(work.validation)
    calibration_rows = validation[before_finish(validation)].reset_index(drop=True)
    _, calibration_hours = score_model(work.family_model(family).read_bytes(), calibration_rows)
    plain = plain_split_conformal(
        calibration_rows,
        calibration_hours,
        rows,
        predictions.loc[mask, f"{family}_hours"].to_numpy(),
        forecast.levels,
    )
    _plot_finish_probabilities(served, rows, forecast.horizons, work.plots)
    return {
        "candidate": family,
        "method": forecast.method,
        "levels": list(forecast.levels),
        "group_column": forecast.group_column,
        "groups": forecast.describe()["groups"],
        "width_48h_before_finish": width_before_finish(served.intervals, target),
        "plain_split_conformal": {
            "width_48h_before_finish": width_before_finish(plain, target),
            **{
                f"coverage_{round(level * 100)}": float(np.mean((target >= low) & (target <= high)))
                for level, (low, high) in plain.items()
            },
        },
        "finish_probabilities": horizon_report(
            served,
            rows,
            HORIZONS,
            predictions.loc[mask, f"{family}_probability"].to_numpy(),
            settings.horizon_hours,
            settings.bootstrap_replicates,
            settings.seed,
        ),
    }


def _plot_finish_probabilities(forecasts, rows: pd.DataFrame, horizons, plots) -> None:
    from models.evaluate import plot_reliability
    from models.intervals import actual_hours

    target = actual_hours(rows)
    answered = np.isfinite(forecasts.finish_probabilities).all(axis=1)
    plot_reliability(
        {
            f"P(finished by {t:g} h)": (
                (target[answered] <= t).astype(float),
                forecasts.finish_probabilities[answered, i],
            )
            for i, t in enumerate(horizons)
        },
        plots / "finish_probability_calibration.png",
        title="Finish forecast: calibration per horizon (pre-finish test rows)",
    )


def _evaluation_report(
    work: TrainingWorkdir,
    overall: dict,
    headline: dict,
    models: list[dict],
    comparisons: dict,
    after: pd.DataFrame,
    threshold: float,
    y: np.ndarray,
    probability: np.ndarray,
) -> dict:
    """``evaluation.json``: the candidate's numbers, every model's headline, the paired
    comparisons, the post-finish rows apart."""
    candidate = next(m["name"] for m in models if m["role"] == "candidate")
    calibration_info = work.read_json(work.calibration)
    return {
        "candidate": candidate,
        "rule": calibration_info["rule"],
        "rows": "pre-finish test rows (snapshots taken before the batch finished)",
        "test": overall,
        "headline": headline[candidate],
        "models": {m["name"]: {**m, "headline": headline[m["name"]]} for m in models},
        "comparisons": comparisons,
        "post_finish": {
            "rows": len(after),
            "batches": int(after["batch_id"].nunique()),
            "mean_probability": float(after[f"{candidate}_probability"].mean())
            if len(after)
            else None,
            "decided_finished_rate": float((after[f"{candidate}_probability"] >= threshold).mean())
            if len(after)
            else None,
        },
        "accuracy_note": metrics.Confusion.at(y, probability, threshold).accuracy_note(),
        "baselines": {
            m["name"]: {k: v["value"] for k, v in headline[m["name"]].items()}
            for m in models
            if m["role"] == "baseline"
        },
        "beats_baselines": {
            m["name"]: comparisons[m["name"]]["high"] < 0 for m in models if m["role"] == "baseline"
        },
        "calibration_validation": {
            k: calibration_info[k] for k in ("validation_before", "validation_after")
        },
    }


def _plot_evaluation(
    settings: Settings,
    work: TrainingWorkdir,
    decided: pd.DataFrame,
    models: list[dict],
    threshold: float,
    slices: pd.DataFrame,
) -> None:
    from models.evaluate import (
        plot_bias_by_slice,
        plot_loss_curves,
        plot_reliability,
        plot_roc_pr,
        plot_slice_reliability,
    )

    y = decided[LABEL].to_numpy(dtype=float)
    candidate = next(m["name"] for m in models if m["role"] == "candidate")
    probability = decided[f"{candidate}_probability"].to_numpy()
    plots = work.plots
    plot_reliability(
        {f"test (calibrated ONNX, {candidate})": (y, probability)}, plots / "calibration.png"
    )
    plot_reliability(
        {
            f"{m['name']} ({m['role']})": (y, decided[f"{m['name']}_probability"].to_numpy())
            for m in models
        },
        plots / "calibration_by_model.png",
        title="Calibration of every model (pre-finish test rows)",
    )
    for m in models:
        plot_reliability(
            {m["name"]: (y, decided[f"{m['name']}_probability"].to_numpy())},
            plots / "models" / m["name"] / "calibration.png",
            title=f"Calibration: {m['name']} ({m['role']})",
        )
    for key in slice_keys():
        plot_slice_reliability(
            decided,
            probability,
            key,
            plots / f"calibration_by_{key}.png",
            settings.gate_min_slice_batches,
        )
    plot_roc_pr(y, probability, plots / "roc_pr.png", threshold)
    plot_bias_by_slice(slices, plots / "bias_by_slice.png", settings.gate_max_abs_bias)
    history = work.read_json(work.history)
    if history:
        plot_loss_curves(history, plots / "loss_curves.png")


def score_champion(
    settings: Settings,
    work: TrainingWorkdir,
    rows: pd.DataFrame,
    threshold: float,
    candidate_probability: np.ndarray,
) -> tuple[dict, np.ndarray | None]:
    """The current champion scored on this run's pre-finish test ``rows`` (same data, fair
    comparison), and its paired differences with the candidate (candidate - champion, log
    loss and AUC); ``{"version": None, "first_model": True}`` when there is none. A
    champion that exists but cannot be downloaded or scored raises
    :class:`ChampionUnavailableError`. Also returns its probabilities (None: no champion)."""
    from brewcast.registry import CHAMPION, configure, download_onnx, version_by_alias

    configure(settings.tracking_uri)
    champion = version_by_alias(settings.model_name, CHAMPION)
    if champion is None:
        return {"version": None, "first_model": True, "test": None, "comparison": None}, None
    try:
        model_bytes = download_onnx(
            f"models:/{settings.model_name}/{champion.version}", work.champion_download
        )
        probability, _ = score_model(model_bytes, rows)
    except Exception as exc:  # any cause: the comparison is impossible, so is the gate
        raise ChampionUnavailableError(
            f"champion version {champion.version} of {settings.model_name} cannot be scored "
            f"on this run's test rows ({type(exc).__name__}: {exc}); nothing is promoted. "
            "Fix or re-point the champion alias, then re-run from evaluate"
        ) from exc
    y = rows[LABEL].to_numpy(dtype=float)
    report = metrics.classification_report(y, probability, threshold, rows["batch_id"])
    comparison = {
        name: metrics.paired_difference(
            y,
            candidate_probability,
            probability,
            rows["batch_id"],
            metric,
            settings.bootstrap_replicates,
            settings.seed,
        )
        for name, metric in (("log_loss", metrics.log_loss), ("auc", metrics.roc_auc))
    }
    result = {
        "version": str(champion.version),
        "first_model": False,
        "test": report,
        "comparison": comparison,
    }
    return result, probability


def _in_pinned_numerics(step):
    """``step`` run after :func:`models.reproducible.pin_numerics`: every step that runs the
    network (the fit, and the scores calibration, export and evaluation take from it)
    computes in the same environment."""

    @wraps(step)
    def pinned(settings: Settings, work: TrainingWorkdir, **kwargs):
        pin_numerics(settings.reproducible_training)
        return step(settings, work, **kwargs)

    return pinned


#: The steps of this module, in order.
STEPS = {
    name: _in_pinned_numerics(step)
    for name, step in {
        "prepare": prepare,
        "fit": fit,
        "calibrate": calibrate,
        "export": export,
        "evaluate": evaluate,
    }.items()
}

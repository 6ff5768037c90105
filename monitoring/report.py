"""A monitoring run: read the prediction log and the labels, compute, and tell people.

Outputs: one MLflow run per window in experiment ``brewcast-monitoring`` (stable keys
``all/bias``, ``slice/yeast_strain/german_lager/bias``, ``drift/effect/<feature>``...), an HTML
report a brewer can read (bias by slice over time, reliability diagrams, drift), a
machine-readable ``summary.json``, and alerts to the log and, optionally, a webhook.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import urllib.request
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast import lake
from brewcast.schema import BATCHES, READINGS, slice_keys
from brewcast.settings import Settings
from monitoring.monitor import (
    COVERAGE_METRIC,
    Alert,
    MonitoringResult,
    alert_path,
    attach_labels,
    measured,
    monitor,
    window_span,
)
from validation.reference import DRIFT_AGE_HOURS

log = logging.getLogger(__name__)

#: Logged to MLflow per slice and shown in the report's table.
METRICS = (
    "rows",
    "batches",
    "bias",
    "bias_low",
    "bias_high",
    "hours_bias",
    "ece",
    "auc",
    "log_loss",
    "precision",
    "recall",
    "decision_rate",
    "mean_prediction",
    "positive_rate",
    "coverage_80",
    "coverage_95",
)


def load_inputs(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Predictions and labels from the prediction log, batch outcomes from the lake."""
    from models.dataset import LabelRules, derive_outcomes
    from serving.prediction_log import PredictionLog

    prediction_log = PredictionLog(settings.prediction_log, "sync")
    try:
        predictions, labels = prediction_log.read_predictions(), prediction_log.read_labels()
    finally:
        prediction_log.close()
    batches = lake.read_table(settings.paths.lake, "validated", BATCHES)
    readings = lake.read_table(settings.paths.lake, "validated", READINGS)
    outcomes = (
        derive_outcomes(batches, readings, LabelRules.from_settings(settings))
        if len(batches)
        else pd.DataFrame(columns=["batch_id", "status", "finish_time"])
    )
    return predictions, labels, outcomes


def run_monitoring(settings: Settings, log_to_mlflow: bool = True) -> dict:
    from validation.reference import load_reference

    predictions, labels, outcomes = load_inputs(settings)
    out_dir = settings.paths.monitoring
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "windows.parquet"  # the last run's windows: unchanged ones are reused
    previous = _read_cache(cache)
    result = monitor(
        predictions,
        labels,
        outcomes,
        load_reference(settings),
        settings,
        previous,
        _previous_alerts(settings.paths.monitoring_summary),
    )
    summary = result.summary()
    report = write_html(result, predictions, labels, outcomes, settings, out_dir / "report.html")
    summary["report"] = str(report)
    if log_to_mlflow and len(result.windows):
        summary["mlflow_runs"] = log_windows(result, settings)
    lake.write_text(settings.paths.monitoring_summary, json.dumps(summary, indent=2, default=str))
    if len(result.windows):
        result.windows.to_csv(out_dir / "windows.csv", index=False)
        result.windows.astype({"model_version": str}).to_parquet(cache, index=False)
    deliver_alerts(result, settings)
    return summary


def _previous_alerts(summary: Path) -> list[Alert]:
    """The last run's alerts (from its ``summary.json``; none when there is none)."""
    if not summary.exists():
        return []
    try:
        alerts = json.loads(summary.read_text()).get("alerts", [])
    except (OSError, ValueError) as exc:
        log.warning("monitoring: the last summary %s is unreadable (%s)", summary, exc)
        return []
    names = {f.name for f in fields(Alert)}
    return [Alert(**{k: v for k, v in a.items() if k in names}) for a in alerts]


def _read_cache(path: Path) -> pd.DataFrame | None:
    """The last run's windows, or None (none yet, or unreadable: every window is computed)."""
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        log.warning("monitoring: the window cache %s is unreadable (%s); computing all", path, exc)
        return None


def log_windows(result: MonitoringResult, settings: Settings) -> list[str]:
    """One MLflow run per window this run computed (a window unchanged since the last run
    was logged when it was computed)."""
    import mlflow

    from brewcast.registry import configure, ensure_experiment
    from models.evaluate import metric_key

    configure(settings.tracking_uri)
    experiment = ensure_experiment(settings.monitor_experiment, settings.paths.mlflow_artifacts)
    run_ids = []
    fresh = result.windows[result.windows["fresh"]] if "fresh" in result.windows else result.windows
    for (window, version), part in fresh.groupby(["window", "model_version"]):
        values = {}
        for row in part.itertuples(index=False):
            prefix = ("all",) if row.slice == "all" else ("slice", row.slice, row.value)
            for name in METRICS:
                value = float(getattr(row, name, float("nan")))
                if np.isfinite(value):
                    values[metric_key(*prefix, name)] = value
        begin, end = window_span(window)
        alerts = [
            a
            for a in result.alerts
            if window_span(a.window)[0] < end and begin < window_span(a.window)[1]
        ]
        values["alerts"] = float(len(alerts))
        with mlflow.start_run(experiment_id=experiment, run_name=f"monitor-{window}-v{version}"):
            mlflow.set_tags(
                {
                    "window": window,
                    "model_version": str(version),
                    "alerts": "; ".join(a.message() for a in alerts)[:4000],
                }
            )
            mlflow.log_metrics(values)
            if len(result.drift):  # each feature's largest shift over the seasons tested
                largest = result.drift.groupby("feature")["effect"].agg(lambda e: e.abs().max())
                mlflow.log_metrics(
                    {metric_key("drift", "effect", f): float(e) for f, e in largest.items()}
                )
            run_ids.append(mlflow.active_run().info.run_id)
    return run_ids


def deliver_alerts(result: MonitoringResult, settings: Settings) -> None:
    for alert in result.alerts:
        log.warning("MONITORING ALERT %s", alert.message())
    for row in result.drift[result.drift["alarm"]].itertuples() if len(result.drift) else []:
        log.warning(
            "DRIFT %s=%s: %s moved %+.2f training sd over %d recent batches (Holm p=%.2g, "
            "impact %.2f)",
            row.slice,
            row.value,
            row.feature,
            row.effect,
            row.served_batches,
            row.p_adjusted,
            row.impact,
        )
    if settings.monitor_webhook_url and result.alerts:
        body = json.dumps(result.summary(), default=str).encode()
        request = urllib.request.Request(
            settings.monitor_webhook_url,
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except OSError as exc:  # the log above already carries every alert
            log.error("alert webhook %s failed: %s", settings.monitor_webhook_url, exc)


# ------------------------------------------------------------------------------------------
# the HTML report
# ------------------------------------------------------------------------------------------


def _png(fig) -> str:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _window_start(windows: pd.Series) -> pd.Series:
    """A window's start as a time ("2026-03-01+7d" -> 2026-03-01), so charts run in date
    order whatever order the slices' lines were drawn in."""
    return windows.map(lambda name: window_span(name)[0])


#: Panels of a small-multiples chart: the alarmed or worst values of a slice key.
PANELS = 6


def _bias_over_time(
    windows: pd.DataFrame, key: str, settings: Settings, alarmed: set[str] = frozenset()
) -> str | None:
    """Prediction and hours bias over time for ``key``'s alarmed or worst values, one
    panel per value against the whole cellar (grey), in date order, with the alarm
    limits (None: the key has no supported window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = windows[(windows["slice"] == key) & windows["supported"]]
    if part.empty:
        return None
    part = part.assign(start=_window_start(part["window"]))
    overall = (
        windows[windows["slice"] == "all"]
        .assign(start=lambda f: _window_start(f["window"]))
        .sort_values("start")
    )
    worst = part.groupby("value")["bias"].agg(lambda b: b.abs().max()).sort_values(ascending=False)
    values = sorted(alarmed & set(worst.index)) + [v for v in worst.index if v not in alarmed]
    values = values[:PANELS]
    metrics = [("bias", "prediction bias (p - y)", settings.monitor_max_abs_bias)]
    if "hours_bias" in part:
        metrics.append(
            ("hours_bias", "hours bias (predicted - actual)", settings.monitor_max_hours_bias)
        )
    fig, axes = plt.subplots(
        len(metrics), len(values), figsize=(max(2.6 * len(values) + 1, 5.0), 2.4 * len(metrics)),
        sharex=True, sharey="row", squeeze=False,
    )  # fmt: skip
    for row, (column, label, limit) in enumerate(metrics):
        for col, value in enumerate(values):
            ax = axes[row][col]
            rows = part[part["value"] == value].sort_values("start")
            ax.plot(overall["start"], overall[column], color="#999", lw=1, label="all batches")
            low, high = f"{column}_low", f"{column}_high"
            ax.errorbar(
                rows["start"], rows[column],
                yerr=[rows[column] - rows[low], rows[high] - rows[column]],
                marker="o", ms=3, capsize=2, lw=1.2,
                color="#b00" if value in alarmed else "#0b5cad", label=value,
            )  # fmt: skip
            for y in (-limit, limit):
                ax.axhline(y, color="red", ls=":", lw=0.8)
            ax.axhline(0, color="grey", lw=0.6)
            if row == 0:
                ax.set_title(f"{value}{' (alarmed)' if value in alarmed else ''}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=7)
            ax.tick_params(axis="x", rotation=40, labelsize=6)
            ax.tick_params(axis="y", labelsize=6)
    fig.suptitle(f"Bias by {key} over time, 95% intervals; grey: every batch", fontsize=9)
    return _png(fig)


def _cusum_paths(result: MonitoringResult) -> str | None:
    """Each sequential alert's CUSUM against its threshold, as a PNG (None: none)."""
    figure = cusum_figure(result)
    return None if figure is None else _png(figure)


def cusum_figure(result: MonitoringResult):
    """Each sequential alert's CUSUM against its threshold (each batch's own: it follows
    the slice's batch rate), batch by batch (None: no sequential alert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sequential = [a for a in result.alerts if a.test == "cusum"][:PANELS]
    if not sequential or result.sequential.empty:
        return None
    fig, axes = plt.subplots(
        1, len(sequential), figsize=(3.2 * len(sequential), 2.8), squeeze=False
    )
    paths = result.sequential
    for ax, alert in zip(axes[0], sequential, strict=True):
        path = alert_path(paths, alert)
        ax.step(path["known_at"], path["upper"], where="post", label="running high", color="#b00")
        ax.step(path["known_at"], path["lower"], where="post", label="running low", color="#0b5cad")
        ax.step(path["known_at"], path["threshold"], where="post", color="red", ls="--", lw=1,
                label="threshold")  # fmt: skip
        if alert.detected_at:
            ax.axvline(pd.Timestamp(alert.detected_at), color="black", lw=0.8)
        ax.set_title(f"{alert.slice}={alert.value}: {alert.metric}", fontsize=8)
        ax.tick_params(axis="x", rotation=40, labelsize=6)
        ax.tick_params(axis="y", labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(
        "Sequential tests that alarmed: CUSUM since deployment, by batch finish", fontsize=9
    )
    return fig


def _coverage_over_time(windows: pd.DataFrame, key: str) -> str | None:
    """Live coverage of the 80% and 95% intervals per window, overall and per ``key``
    value, against the nominal levels, in date order (None: no window had intervals and
    finishes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in ("coverage_80", "coverage_95") if c in windows]
    part = windows[windows["slice"].isin(["all", key])]
    if not columns or part[columns].isna().all().all():
        return None
    part = part.assign(start=_window_start(part["window"]))
    fig, axes = plt.subplots(1, len(columns), figsize=(9, 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        nominal = int(column.split("_")[1]) / 100
        for value, rows in part.groupby("value", sort=True):
            rows = rows.sort_values("start")
            style = {"color": "#999", "lw": 1} if value == "all" else {"marker": "o", "ms": 3}
            ax.plot(rows["start"], rows[column], label=value, alpha=0.85, **style)
        ax.axhline(nominal, color="red", ls="--", lw=1)
        ax.set(title=f"{column.split('_')[1]}% intervals: live coverage by {key}", ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    axes[0][0].legend(fontsize=7, ncol=2)
    return _png(fig)


def _reliability(joined: pd.DataFrame, key: str | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.metrics import reliability_table

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    groups = (
        [("all", joined)]
        if key is None
        else list(joined.groupby(joined[key].fillna("(missing)"), sort=True))
    )
    # Per slice: fewer, wider bins and only slices with the rows to fill them (otherwise
    # the plot is noise); overall: ten bins.
    bins, least = (10, 30) if key is None else (5, 100)
    for value, part in groups:
        if len(part) < least:
            continue
        table = reliability_table(part["label"], part["probability"], bins)
        ax.plot(
            table["mean_predicted"],
            table["observed_rate"],
            marker="o",
            ms=3,
            label=f"{value} (n={len(part)})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="predicted",
        ylabel="observed",
        title=f"Reliability{'' if key is None else ' by ' + key}",
    )
    ax.legend(fontsize=6)
    return _png(fig)


def _which(batch_ids: list[str], shown: int = 8) -> str:
    """An alert's batches for the table: the first few, and how many more."""
    more = len(batch_ids) - shown
    return ", ".join(batch_ids[:shown]) + (f" and {more} more" if more > 0 else "")


def _alerts_table(result: MonitoringResult) -> str:
    """One row per alert, then each slice key's likely causes once (not once per row). The
    sentences are above it; the log and the webhook carry each alert's full message."""
    rows = pd.DataFrame(
        [
            {
                "window": a.window,
                "slice": f"{a.slice} = {a.value}",
                "metric": a.metric,
                "observed": measured(a.metric, a.observed)
                if a.metric.startswith(COVERAGE_METRIC)
                else f"{a.observed:+.3f}",
                "limit": f"±{a.limit:g}",
                "predictions": a.support,
                "batches": a.batches,
                "which": _which(a.batch_ids),
                "with it": "; ".join(measured(m, v) for m, v in a.also.items()),
                "explains": ", ".join(a.explains),
                "evidence": a.evidence(),
            }
            for a in result.alerts
        ]
    )
    causes = {a.slice.split("*")[0]: a.likely_causes for a in result.alerts}
    notes = "".join(
        f"<li><b>{html.escape(key)}</b>: {html.escape(text)}</li>" for key, text in causes.items()
    )
    return rows.to_html(index=False) + f"<p>Likely causes, by slice:</p><ul>{notes}</ul>"


def _unfamiliar(result: MonitoringResult) -> str:
    """The drift section's second half: what the served model had not learned (new brands,
    fermenters, strains) and how many predictions it flagged as out of its depth."""
    rows = [
        {"column": column, "value": value, "predictions": n}
        for column, counts in sorted(result.new_values.items())
        for value, n in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    ood = result.out_of_distribution
    text = (
        f"<p>{ood.get('flagged', 0)} of {ood.get('predictions', 0)} prediction(s) of the "
        f"latest window were flagged out of distribution.</p>"
    )
    table = pd.DataFrame(rows).to_html(index=False) if rows else "<p>None.</p>"
    return "<h2>New to the model (latest window)</h2>" + table + text


def write_html(
    result: MonitoringResult,
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    outcomes: pd.DataFrame,
    settings: Settings,
    path: Path,
) -> Path:
    parts = [
        "<h1>brewcast monitoring</h1>",
        f"<p>{len(predictions)} predictions logged, {result.labelled} labelled, "
        f"{result.pending} waiting for their batch to finish. Windows of "
        f"{settings.monitor_window_days:g} days; a slice alarms with at least "
        f"{settings.monitor_min_support} labelled predictions, |bias| over "
        f"{settings.monitor_max_abs_bias:g} and a Holm-adjusted p below "
        f"{settings.monitor_alpha:g}.</p>",
    ]
    if result.alerts:
        parts.append(f"<h2 style='color:#b00'>Alerts ({len(result.alerts)})</h2>")
        parts.append(
            "<ol>"
            + "".join(f"<li>{html.escape(a.for_brewers())}</li>" for a in result.alerts)
            + "</ol><h3>The evidence</h3>"
        )
        parts.append(_alerts_table(result))
        cusum = _cusum_paths(result)
        if cusum:
            parts.append(f"<img src='{cusum}'>")
    else:
        parts.append("<h2 style='color:#070'>No alerts</h2>")
    if len(result.windows):
        alarmed = {a.slice for a in result.alerts}
        for key in sorted(slice_keys(predictions), key=lambda k: k not in alarmed):  # alarmed first
            values = {a.value for a in result.alerts if a.slice == key}
            chart = _bias_over_time(result.windows, key, settings, values)
            if chart:
                parts.append(f"<img src='{chart}'>")
        coverage = _coverage_over_time(
            result.windows,
            next((a.slice for a in result.alerts if a.slice in slice_keys()), "yeast_strain"),
        )
        if coverage:
            parts.append("<h2>Finish forecast: interval coverage</h2>")
            parts.append(f"<img src='{coverage}'>")
        joined = attach_labels(predictions, labels, outcomes, settings.horizon_hours)
        joined = joined[joined["label"].notna()]
        parts.append("<h2>Calibration</h2>")
        parts.append(f"<img src='{_reliability(joined, None)}'>")
        for key in slice_keys(joined):
            parts.append(f"<img src='{_reliability(joined, key)}'>")
        latest = result.windows[result.windows["window"] == result.windows["window"].max()]
        shown = latest[["slice", "value", "model_version", *(m for m in METRICS if m in latest)]]
        parts.append(
            "<h2>Latest window, every slice</h2>"
            + shown.to_html(index=False, float_format=lambda x: f"{x:.3f}")
        )
    if len(result.drift):
        drifted = result.drift.head(25)  # alarms first, by impact on the model
        parts.append(
            f"<h2>Drift: recent batches at {DRIFT_AGE_HOURS:g} h against training's of the "
            f"same season, by impact on the model</h2>"
            + drifted.to_html(index=False, float_format=lambda x: f"{x:.3f}")
        )
    parts.append(_unfamiliar(result))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>brewcast monitoring"
        "</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;font-size:12px;display:block;overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:2px 6px;overflow-wrap:break-word}"
        "img{display:block;max-width:100%;margin:6px 0}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    return lake.write_text(path, page)

"""The cellar's side of forecasts: every forecast made from stored readings kept as it was
answered (the board's latest forecast per batch, a batch's forecast history), and a batch's
"ready" event, which lets a brewery's software trigger the next step.

A batch is ready when a forecast's state turns ``ready`` (:func:`brewcast.plateau.cellar_state`:
the model's decision, and for a batch read by hand a reading that confirms it; until then the
board says "take a gravity reading", which raises no event). Its event is keyed by (batch, model
version) in the database, written in the transaction that keeps the forecast, so a repeated
forecast, a restart or a second worker can never emit it twice. :class:`ReadyNotifier`
delivers each event at least once, and records when: a webhook (``BREWCAST_READY_WEBHOOK_URL``,
:func:`webhook_body` documents the JSON) and an Airflow asset event of
``brewcast://cellar/batch-ready`` (``BREWCAST_READY_AIRFLOW_URL``), which a brewery's own DAG
can schedule on. The operator acknowledges an event, or overrides it ("not ready: still
0.4 °P above terminal"); an override is stored as a label of the forecast that caused it
(``finished_within_horizon`` false, source ``override``), so monitoring counts it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import orjson
import sqlalchemy as sa

from brewcast.assets import ASSETS
from brewcast.intervals import STATUS_STALLED
from brewcast.plateau import implausible_slope
from brewcast.readings_store import forecasts, metadata, ready_events
from brewcast.schema import PLATO_RANGE
from brewcast.units import SG_SPAN
from serving.readings import ReadingError

log = logging.getLogger(__name__)

#: How long an undelivered event waits before its next attempt, doubling up to the last.
RETRY_SECONDS = (2.0, 5.0, 15.0, 60.0, 300.0)
ANSWERS = ("acknowledged", "overridden")


def _json(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ForecastBook:
    """The forecasts made from readings and the ready events they raised (see the module)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine)
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._new_event = insert(ready_events).on_conflict_do_nothing(
            index_elements=["batch_id", "model_version"]
        )

    def record(self, answered: Sequence[dict], made_at: datetime) -> list[dict]:
        """Keep ``answered`` forecasts (the API's answers) and raise the ready event of each
        whose state is ``ready``, unless its batch has one for that model version; the events
        this raised."""
        if not answered:
            return []
        rows = [
            {
                "prediction_id": f["prediction_id"],
                "batch_id": f["batch_id"],
                "at": f["at"],
                "model_version": f["model_version"],
                "made_at": made_at,
                "body": _json(f),
            }
            for f in answered
        ]
        raised = []
        with self.engine.begin() as conn:
            conn.execute(forecasts.insert(), rows)
            for f in (f for f in answered if f["state"] == "ready"):
                event = {
                    "batch_id": f["batch_id"],
                    "model_version": f["model_version"],
                    "event_id": str(uuid.uuid4()),
                    "prediction_id": f["prediction_id"],
                    "emitted_at": made_at,
                    "forecast": _json(f),
                    "delivery_attempts": 0,
                }
                if conn.execute(self._new_event.values(**event)).rowcount:
                    raised.append(event)
        for event in raised:
            log.info("batch %s is ready (model %s)", event["batch_id"], event["model_version"])
        return raised

    def latest(self, batch_ids: Sequence[str]) -> dict[str, dict]:
        """Each batch's latest forecast (by the time it is for), as answered."""
        newest = (
            sa.select(sa.func.max(forecasts.c.at))
            .where(forecasts.c.batch_id == sa.bindparam("batch"))
            .scalar_subquery()
        )
        query = (
            sa.select(forecasts.c.body)
            .where(forecasts.c.batch_id == sa.bindparam("batch"), forecasts.c.at == newest)
            .order_by(forecasts.c.made_at.desc())
            .limit(1)
        )
        out = {}
        with self.engine.connect() as conn:
            for batch_id in batch_ids:
                body = conn.execute(query, {"batch": batch_id}).scalar()
                if body is not None:
                    out[batch_id] = json.loads(body)
        return out

    def history(self, batch_id: str) -> list[dict]:
        """The batch's forecasts in the order of the times they are for."""
        query = (
            sa.select(forecasts.c.body)
            .where(forecasts.c.batch_id == batch_id)
            .order_by(forecasts.c.at, forecasts.c.made_at)
        )
        with self.engine.connect() as conn:
            return [json.loads(body) for body in conn.execute(query).scalars()]

    def before(self, batch_id: str, until: datetime, hours: float) -> list[dict]:
        """The batch's forecasts for times in the ``hours`` before ``until``, in order."""
        query = (
            sa.select(forecasts.c.body)
            .where(
                forecasts.c.batch_id == batch_id,
                forecasts.c.at >= until - timedelta(hours=hours),
                forecasts.c.at <= until,
            )
            .order_by(forecasts.c.at, forecasts.c.made_at)
        )
        with self.engine.connect() as conn:
            return [json.loads(body) for body in conn.execute(query).scalars()]

    def events(self, batch_id: str | None = None, unanswered: bool = False) -> list[dict]:
        query = sa.select(ready_events).order_by(ready_events.c.emitted_at)
        if batch_id is not None:
            query = query.where(ready_events.c.batch_id == batch_id)
        if unanswered:
            query = query.where(ready_events.c.answer.is_(None))
        with self.engine.connect() as conn:
            return [_event(dict(r)) for r in conn.execute(query).mappings()]

    def answer(
        self, batch_id: str, model_version: str, answer: str, by: str, reason: str | None
    ) -> tuple[dict, dict | None]:
        """The operator's answer to a batch's event: the event, and (for an override) the
        label it became. The same answer again changes nothing; a different one is a
        conflict (409): the first answer stands."""
        if answer not in ANSWERS:
            raise ReadingError(f"answer: one of {', '.join(ANSWERS)}, got {answer!r}")
        key = (ready_events.c.batch_id == batch_id) & (
            ready_events.c.model_version == model_version
        )
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(ready_events).where(key)).mappings().first()
            if row is None:
                raise ReadingError(
                    f"batch {batch_id!r} has no ready event of model version {model_version}",
                    404,
                )
            if row["answer"] is not None and row["answer"] != answer:
                raise ReadingError(
                    f"the event was {row['answer']} already ({row['answered_at']:%Y-%m-%d %H:%M} "
                    f"by {row['answered_by']}): the first answer stands",
                    409,
                )
            if row["answer"] is None:
                conn.execute(
                    ready_events.update()
                    .where(key)
                    .values(
                        answer=answer, answered_at=datetime.now(UTC), answered_by=by, reason=reason
                    )
                )
        event = self._event(batch_id, model_version)
        label = None
        if answer == "overridden":
            label = {
                "prediction_id": event["prediction_id"],
                "finished_within_horizon": False,
            }
        return event, label

    def _event(self, batch_id: str, model_version: str) -> dict:
        found = [e for e in self.events(batch_id) if e["model_version"] == model_version]
        return found[0]

    def undelivered(self, webhook: bool, asset: bool) -> list[dict]:
        missing = []
        if webhook:
            missing.append(ready_events.c.webhook_delivered_at.is_(None))
        if asset:
            missing.append(ready_events.c.asset_delivered_at.is_(None))
        if not missing:
            return []
        query = sa.select(ready_events).where(sa.or_(*missing)).order_by(ready_events.c.emitted_at)
        with self.engine.connect() as conn:
            return [_event(dict(r)) for r in conn.execute(query).mappings()]

    def delivered(self, event_id: str, channel: str, error: str | None = None) -> None:
        """One delivery attempt of an event on ``channel`` (webhook, asset): its time when
        it succeeded, else the error; attempts counted."""
        values: dict = {"delivery_attempts": ready_events.c.delivery_attempts + 1}
        if error is None:
            values[f"{channel}_delivered_at"] = datetime.now(UTC)
            values["delivery_error"] = None
        else:
            values["delivery_error"] = f"{channel}: {error}"[:500]
        with self.engine.begin() as conn:
            conn.execute(
                ready_events.update().where(ready_events.c.event_id == event_id).values(**values)
            )


def _event(row: dict) -> dict:
    out = {k: _utc(v) if k.endswith("_at") else v for k, v in row.items()}
    out["forecast"] = json.loads(row["forecast"])
    return out


def webhook_body(event: dict) -> dict:
    """The JSON a ready event is POSTed as: ``event`` ("batch_ready"), ``event_id`` (the same
    on every retry: deduplicate on it), ``batch_id``, ``model_version``, ``emitted_at`` (UTC),
    ``confirmed_by`` (how the state became ready: the model's decision on a device's
    readings, or a hand reading that confirmed it, in words) and ``forecast``, the forecast
    that caused it as ``GET /batches/{id}/forecast`` answered it (probability, decision,
    state, threshold, hours remaining, intervals, finish times, features)."""
    forecast = event["forecast"]
    said = json.loads(forecast) if isinstance(forecast, str) else forecast
    return {
        "event": "batch_ready",
        "event_id": event["event_id"],
        "batch_id": event["batch_id"],
        "model_version": event["model_version"],
        "emitted_at": event["emitted_at"],
        "confirmed_by": said.get("state_detail"),
        "forecast": forecast,
    }


class ReadyNotifier:
    """Delivers ready events (webhook, Airflow asset event) from the database, so an event
    raised before a crash is delivered after the restart; each channel retried with a
    growing pause until it answers 2xx."""

    def __init__(self, book: ForecastBook, settings) -> None:
        self.book = book
        self.webhook_url = settings.ready_webhook_url
        self.airflow_url = (settings.ready_airflow_url or "").rstrip("/") or None
        self.airflow_user = (settings.ready_airflow_user, settings.ready_airflow_password)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_try: dict[tuple[str, str], tuple[float, int]] = {}
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=10)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.airflow_url)

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="ready-events", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_pending()
            except Exception:  # the database away for a moment: the next turn retries
                log.exception("ready events: delivery turn failed")
            self._wake.wait(2.0)
            self._wake.clear()

    def deliver_pending(self) -> int:
        """One turn: every event not yet delivered on a channel and due; how many succeeded."""
        done = 0
        channels = [("webhook", self.webhook_url, self._post_webhook)]
        channels.append(("asset", self.airflow_url, self._post_asset_event))
        for event in self.book.undelivered(bool(self.webhook_url), bool(self.airflow_url)):
            for channel, configured, send in channels:
                if not configured or event[f"{channel}_delivered_at"] is not None:
                    continue
                key = (event["event_id"], channel)
                due, tries = self._next_try.get(key, (0.0, 0))
                if time.monotonic() < due:
                    continue
                try:
                    send(event)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    pause = RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)]
                    self._next_try[key] = (time.monotonic() + pause, tries + 1)
                    self.book.delivered(event["event_id"], channel, str(exc) or type(exc).__name__)
                    log.warning("ready event %s: %s failed (%s)", event["batch_id"], channel, exc)
                    continue
                self._next_try.pop(key, None)
                self.book.delivered(event["event_id"], channel)
                done += 1
        return done

    def _post_webhook(self, event: dict) -> None:
        response = self._client.post(
            self.webhook_url,
            content=_json(webhook_body(event)),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()

    def _post_asset_event(self, event: dict) -> None:
        """An asset event of ``brewcast://cellar/batch-ready`` through Airflow's REST API
        (a token from the simple auth manager; the asset exists once a DAG names it)."""
        token = self._client.post(
            f"{self.airflow_url}/auth/token",
            json={"username": self.airflow_user[0], "password": self.airflow_user[1]},
        )
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        uri = ASSETS["ready"][0]
        found = self._client.get(
            f"{self.airflow_url}/api/v2/assets", params={"uri_pattern": uri}, headers=headers
        )
        found.raise_for_status()
        ids = [a["id"] for a in found.json()["assets"] if a["uri"] == uri]
        if not ids:
            raise ValueError(f"Airflow knows no asset {uri}: no DAG schedules on it yet")
        extra = orjson.loads(_json(webhook_body(event)))
        response = self._client.post(
            f"{self.airflow_url}/api/v2/assets/events",
            json={"asset_id": ids[0], "extra": extra},
            headers=headers,
        )
        response.raise_for_status()


# ------------------------------------------------------------------------------------------
# what the board shows
# ------------------------------------------------------------------------------------------

#: A hydrometer silent this long is stale (a Tilt posts every 15 minutes, an iSpindel
#: every 15 to 60).
STALE_AFTER_HOURS = 2.0
#: A batch whose last readings come this far apart or more (median) is read by hand; its
#: card asks for a reading once the last is :data:`HAND_READING_DUE_HOURS` old.
DEVICE_CADENCE_HOURS = 1.0
HAND_READING_DUE_HOURS = 36.0
#: The warnings that make a card's readings stale.
STALE_KINDS = ("hydrometer_silent", "reading_due", "no_readings")
#: A forecast finish past this multiple of the longest in the batch's history (brand, style,
#: strain, the cellar: the first with :data:`MIN_HISTORY_BATCHES` finished) is beyond
#: anything the cellar has done.
PLAUSIBLE_DURATION_FACTOR = 1.5
MIN_HISTORY_BATCHES = 3
#: The groups a batch's history and track record are looked for in, in this order.
HISTORY_GROUPS = ("brand", "style", "yeast_strain")
#: History: the forecasts compared with the finish this many hours before it (± the slack).
HISTORY_HOURS = (24, 48, 72)
HISTORY_SLACK_HOURS = 3.0
#: A card's track record: the last finished batches of its group, and the hours before
#: their finish it reads.
TRACK_RECORD_BATCHES = 10
TRACK_RECORD_HOURS = (48, 24)


def _hours_between(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / 3600


def _at(hours: float) -> datetime:
    """A float hour of :func:`brewcast.snapshots.hours_of` as a UTC time."""
    return datetime.fromtimestamp(round(hours * 3600, 3), UTC)


def points(series) -> list[list]:
    """A :class:`~brewcast.snapshots.Series` as [time, value] pairs for a chart."""
    return [[_at(h), v] for h, v in zip(series.hours.tolist(), series.values.tolist(), strict=True)]


#: Gravity readings a batch needs before its curve is fitted (four parameters).
MIN_FIT_READINGS = 12


def fitted_curve(gravity, until_hours: float | None = None, steps: int = 120) -> dict | None:
    """DOMAIN.md's four-parameter logistic ``P(t) = Pe + (P0 - Pe) / (1 + exp(B (t - M)))``
    fitted to a batch's gravity (a :class:`~brewcast.snapshots.Series`, hours and °P), drawn
    from its first reading to ``until_hours`` (the forecast finish) or its last reading:
    points, parameters and the fit's RMS residual. None when there are too few readings or
    the fit does not converge (the page then draws the readings alone)."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    from ingest.simulator import logistic_gravity as logistic

    hours, values = np.asarray(gravity.hours, float), np.asarray(gravity.values, float)
    if len(hours) < MIN_FIT_READINGS or np.ptp(values) < 0.5:
        return None
    t = hours - hours[0]

    start = (
        values[:3].max(),
        values[-3:].min(),
        0.05,
        float(t[np.argmin(abs(values - values.mean()))]),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(
                logistic,
                t,
                values,
                p0=start,
                bounds=(
                    [0.0, PLATO_RANGE[0], 1e-3, -48.0],
                    [40.0, PLATO_RANGE[1], 2.0, max(t[-1], 1.0) * 4 + 48],
                ),
                maxfev=5000,
            )
    except (RuntimeError, ValueError, OptimizeWarning):
        return None
    end = max(t[-1], (until_hours - hours[0]) if until_hours is not None else t[-1])
    grid = np.linspace(0.0, end, steps)
    residual = values - logistic(t, *params)
    p0, pe, slope, midpoint = (float(v) for v in params)
    return {
        "points": [
            [_at(hours[0] + x), float(v)]
            for x, v in zip(grid, logistic(grid, *params), strict=True)
        ],
        "original_gravity_plato": p0,
        "terminal_gravity_plato": pe,
        "slope_per_hour": slope,
        "midpoint_at": _at(hours[0] + midpoint),
        "rms_plato": float(np.sqrt(np.mean(residual**2))),
    }


def concerns(alert: dict, features: dict) -> bool:
    """Whether a monitoring alert's slice (``all``, ``yeast_strain``, ``a*b``...) holds a
    batch whose snapshot ``features`` are these."""
    if alert["slice"] == "all":
        return True
    keys, values = alert["slice"].split("*"), str(alert["value"]).split("*")
    return all(str(features.get(k)) == v for k, v in zip(keys, values, strict=False))


def board(
    running: list[dict],
    series: list,
    latest: dict,
    events: list[dict],
    alerts,
    now: datetime,
    troubles: dict[str, dict] | None = None,
    finished: list[dict] | None = None,
) -> list[dict]:
    """The board's rows: each running batch with its latest forecast, its ready event, the
    age of its last reading, the alerts that concern it (``alerts``: monitoring's), what
    says how far to believe it (:func:`trust_warnings`, with its readings' ``troubles`` of
    :meth:`serving.readings.ReadingsStore.troubles`) and the track record of its brand or
    style (:func:`track_record` over the ``finished`` batches of :func:`finished_row`)."""
    last_event = {e["batch_id"]: e for e in events}  # events come oldest first
    troubles, finished = troubles or {}, finished or []
    scored = _scored(finished)
    records: dict[tuple, dict | None] = {}  # one track record per group, not per card
    own = {r["batch_id"] for r in finished}
    rows = []
    for batch, (gravity, _) in zip(running, series, strict=True):
        forecast = latest.get(batch["batch_id"])
        features = (forecast or {}).get("features") or batch
        last = _at(gravity.hours[-1]) if len(gravity.hours) else None
        age = None if last is None else _hours_between(now, last)
        warnings = trust_warnings(
            batch, forecast, gravity, now, troubles.get(batch["batch_id"], {}), finished
        )
        group = (
            batch["batch_id"] if batch["batch_id"] in own else None,
            *(batch.get(k) for k in HISTORY_GROUPS),
        )
        if group not in records:
            records[group] = track_record(scored, batch)
        rows.append(
            {
                **{k: batch.get(k) for k in ("batch_id", "fermenter", "brand", "yeast_strain")},
                "style": batch.get("style"),
                "start_time": batch["start_time"],
                "hours_since_pitch": max(_hours_between(now, batch["start_time"]), 0.0),
                "warnings": warnings,
                "current_gravity_plato": None if last is None else float(gravity.values[-1]),
                "apparent_attenuation": features.get("apparent_attenuation"),
                "last_reading_at": last,
                "last_reading_hours_ago": age,
                "read_by": "hand" if _read_by_hand(gravity.hours) else "device",
                "stale": any(w["kind"] in STALE_KINDS for w in warnings),
                "forecast": forecast,
                "track_record": records[group],
                "ready": last_event.get(batch["batch_id"]),
                "alerts": [a for a in alerts if concerns(a, features)],
            }
        )
    return rows


def _read_by_hand(hours) -> bool:
    """Whether a batch's last readings (hours) come as far apart as a hand log's."""
    gaps = np.diff(np.asarray(hours, float)[-11:])
    return bool(len(gaps)) and float(np.median(gaps)) >= DEVICE_CADENCE_HOURS


def _warning(kind: str, text: str) -> dict:
    return {"kind": kind, "text": text}


def trust_warnings(
    batch: dict,
    forecast: dict | None,
    gravity,
    now: datetime,
    troubles: dict | None = None,
    finished: list[dict] | None = None,
) -> list[dict]:
    """How far to believe a card, in one short line each (``text``, with what to do) and
    its ``kind``: the batch's times, its readings (silent, due, held out, refused, never
    assigned, in the wrong unit), the model's view of it (out of distribution, a brand or
    brewery it never saw, stalled) and the forecast's plausibility (a slope no fermentation
    has, a finish beyond anything its history did). A batch with none has none."""
    out = []
    since_pitch = _hours_between(now, batch["start_time"])
    if since_pitch < 0:
        out.append(
            _warning(
                "future_pitch",
                f"The pitch time is {_duration(-since_pitch)} in the future: check the "
                "batch's start time.",
            )
        )
    out += _reading_warnings(batch, gravity, now, since_pitch, troubles or {})
    if forecast:
        out += _model_warnings(forecast)
        out += _plausibility_warnings(batch, forecast, since_pitch, finished or [])
    return out


def _reading_warnings(batch: dict, gravity, now, since_pitch: float, troubles: dict) -> list:
    out = []
    hours, values = np.asarray(gravity.hours, float), np.asarray(gravity.values, float)
    if not len(hours):
        if since_pitch > HAND_READING_DUE_HOURS:
            out.append(
                _warning(
                    "no_readings",
                    f"No gravity reading in {_duration(since_pitch)} since pitch: assign a "
                    f"hydrometer to {batch.get('fermenter') or 'its fermenter'} or log one "
                    "by hand.",
                )
            )
    else:
        silent = _hours_between(now, _at(hours[-1]))
        if _read_by_hand(hours):
            if silent > HAND_READING_DUE_HOURS:
                out.append(
                    _warning(
                        "reading_due",
                        f"No gravity reading for {_duration(silent)}: take one; the forecast "
                        "is from the last.",
                    )
                )
        elif silent > STALE_AFTER_HOURS:
            out.append(
                _warning(
                    "hydrometer_silent",
                    f"The hydrometer has been silent for {_duration(silent)}: check its "
                    "battery and Wi-Fi; the forecast is from its last reading.",
                )
            )
        low, high = SG_SPAN
        if len(values) >= 3 and low <= values.min() and values.max() <= high:
            out.append(
                _warning(
                    "unit_suspect",
                    f"Every gravity reading lies between {low} and {high}: SG stored as °P? "
                    "Check the device's unit.",
                )
            )
    held = troubles.get("held_out")
    if held:
        out.append(
            _warning(
                "held_out",
                f"{held['count']} reading(s) held out of the curve, the latest: "
                f"{_clip(held['reason'])}. Check which fermenter the device is in.",
            )
        )
    refused = troubles.get("refused")
    if refused:
        what = (
            "unit"
            if "unit" in refused["reason"] or " look like " in refused["reason"]
            else "settings"
        )
        out.append(
            _warning(
                "refused",
                f"{refused['count']} push(es) refused since pitch, the latest: "
                f"{_clip(refused['reason'])}. Check the device's {what}.",
            )
        )
    loose = troubles.get("unassigned")
    if loose:
        out.append(
            _warning(
                "unassigned",
                f"{loose['count']} reading(s) of {', '.join(loose['devices'])} found no batch "
                "(taken before the pitch time?): check the batch's start time.",
            )
        )
    return out


def _model_warnings(forecast: dict) -> list:
    out = []
    unknown = forecast.get("unknown_categories") or []
    if {"brand", "fermenter"} <= set(unknown):
        out.append(
            _warning(
                "other_brewery",
                "Trained on another brewery's batches: this brand and fermenter are new to "
                "the model; weigh the brewery's own history over it.",
            )
        )
    elif unknown:
        out.append(
            _warning(
                "unknown_category",
                f"The model never saw this {', '.join(unknown)}: its forecast comes from "
                "other batches.",
            )
        )
    if forecast.get("out_of_distribution"):
        out.append(
            _warning(
                "out_of_distribution",
                "Unlike the batches the model was trained on: take a gravity reading "
                "before acting on it.",
            )
        )
    if forecast.get("forecast_status") == STATUS_STALLED:
        out.append(
            _warning(
                "stalled",
                "Looks stalled: below 60% attenuation and barely falling four days after "
                "pitch. Its window has no end because batches like it have never finished: "
                "take a reading, rouse or re-pitch the yeast.",
            )
        )
    return out


def _plausibility_warnings(
    batch: dict, forecast: dict, since_pitch: float, finished: list[dict]
) -> list:
    out = []
    slope = (forecast.get("features") or {}).get("gravity_slope_plato_per_day")
    if implausible_slope(slope):
        out.append(
            _warning(
                "implausible_slope",
                f"Gravity {'falling' if slope < 0 else 'rising'} {abs(slope):.1f} °P a day: "
                "no fermentation does that. Check the readings (a device moved, a probe out "
                "of the liquid?) before trusting the forecast.",
            )
        )
    remaining = forecast.get("hours_remaining")
    group = _history_group(finished, batch, MIN_HISTORY_BATCHES)
    if remaining is not None and group is not None:
        key, members = group
        longest = max(r["duration_hours"] for r in members)
        total = max(since_pitch, 0.0) + remaining
        if total > PLAUSIBLE_DURATION_FACTOR * longest:
            out.append(
                _warning(
                    "beyond_history",
                    f"Forecast to finish {_duration(total)} after pitch: past "
                    f"{PLAUSIBLE_DURATION_FACTOR:g} × the longest of this {_GROUP_WORDS[key]}'s "
                    f"{len(members)} finished batches ({_duration(longest)}). Take a gravity "
                    "reading before acting on it.",
                )
            )
    return out


_GROUP_WORDS = {"brand": "brand", "style": "style", "yeast_strain": "strain", "all": "cellar"}


def _history_group(finished: list[dict], batch: dict, least: int):
    """The first group of ``finished`` batches that share ``batch``'s brand, style or
    strain (else all of them) with at least ``least`` members, as (key, members); None."""
    others = [r for r in finished if r["batch_id"] != batch.get("batch_id")]
    for key in HISTORY_GROUPS:
        if batch.get(key) is None:
            continue
        members = [r for r in others if r.get(key) == batch[key]]
        if len(members) >= least:
            return key, members
    return ("all", others) if len(others) >= least else None


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if abs(hours) < 48 else f"{hours / 24:.1f} days"


def _clip(text: str, limit: int = 160) -> str:
    text = str(text).rstrip(". ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def forecasts_before_finish(history: list[dict], finished_at: datetime) -> dict[int, dict | None]:
    """The live forecast (not a back-cast) nearest each of :data:`HISTORY_HOURS` before
    the finish (None: none within :data:`HISTORY_SLACK_HOURS`)."""
    out: dict[int, dict | None] = {}
    for hours in HISTORY_HOURS:
        best, gap = None, HISTORY_SLACK_HOURS
        for forecast in history:
            if forecast.get("backcast") or not forecast.get("predicted_finish_time"):
                continue
            away = abs(_hours_between(finished_at, _parse(forecast["at"])) - hours)
            if away <= gap:
                best, gap = forecast, away
        out[hours] = best
    return out


def finish_errors(history: list[dict], finished_at: datetime) -> dict[int, dict]:
    """For each of :data:`HISTORY_HOURS` before the finish, the live forecast nearest then
    (:func:`forecasts_before_finish`): ``error_hours``, its predicted finish minus the actual
    one (positive: it said later), and ``held_80``, whether its 80% window held the finish
    (None: no forecast then, or no window)."""
    out = {}
    for hours, forecast in forecasts_before_finish(history, finished_at).items():
        error = held = None
        if forecast is not None:
            error = _hours_between(_parse(forecast["predicted_finish_time"]), finished_at)
            window = forecast.get("finish_time_80")
            if window and window.get("earliest"):
                latest = window.get("latest")
                held = _parse(window["earliest"]) <= finished_at and (
                    latest is None or finished_at <= _parse(latest)
                )
        out[hours] = {"error_hours": error, "held_80": held}
    return out


def finished_row(batch: dict, finished_at: datetime, history: list[dict]) -> dict:
    """One finished batch for the history page and the track records: its groups, its
    duration from pitch and :func:`finish_errors` (``history``: its forecasts around the
    finish; empty where it had none)."""
    return {
        **{k: batch.get(k) for k in ("batch_id", *HISTORY_GROUPS)},
        "start_time": batch["start_time"],
        "finished_at": finished_at,
        "duration_hours": _hours_between(finished_at, batch["start_time"]),
        "before_finish": {str(h): e for h, e in finish_errors(history, finished_at).items()},
    }


def _scored(finished: list[dict]) -> list[dict]:
    """The finished batches with a live forecast near their finish."""
    return [
        r
        for r in finished
        if any(r["before_finish"][str(h)]["error_hours"] is not None for h in TRACK_RECORD_HOURS)
    ]


def track_record(finished: list[dict], batch: dict) -> dict | None:
    """How the forecasts of the batch's brand (else style, strain, the whole cellar) did on
    its last :data:`TRACK_RECORD_BATCHES` finished batches with a live forecast near their
    finish: per hours before the finish (:data:`TRACK_RECORD_HOURS`), the median error and
    how often the 80% window held, and those batches (oldest finish first) with theirs.
    None: no such batch yet."""
    group = _history_group(_scored(finished), batch, 1)
    if group is None:
        return None
    key, members = group
    members = sorted(members, key=lambda r: r["finished_at"])[-TRACK_RECORD_BATCHES:]
    hours = {}
    for h in TRACK_RECORD_HOURS:
        said = [r["before_finish"][str(h)] for r in members]
        errors = [s["error_hours"] for s in said if s["error_hours"] is not None]
        windows = [s["held_80"] for s in said if s["held_80"] is not None]
        hours[str(h)] = {
            "forecasts": len(errors),
            "median_error_hours": float(np.median(errors)) if errors else None,
            "windows": len(windows),
            "windows_held": int(sum(windows)),
        }
    return {
        "group": key,
        "value": "all" if key == "all" else batch.get(key),
        "batches": [
            {k: r[k] for k in ("batch_id", "finished_at", "before_finish")} for r in members
        ],
        "hours_before_finish": hours,
    }


def _parse(value) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)

"""The served model: the MLflow champion, imported into the BentoML model store, loaded into
an onnxruntime session, and swapped atomically when a new champion appears.

The ONNX file carries its own threshold, calibration, horizon and schema fingerprint
(metadata properties written at export), so what serving decides with is what the
registry versioned. Refused: a version whose registry tag does not say its promotion gate
passed, a model built from another schema, one whose threshold, horizon or calibration is
not a sane number, and a version holding more than one ``.onnx`` file. A refused champion
leaves the previous model serving, and the reason in ``/metadata`` (``model_error``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brewcast.contract import (
    META_CALIBRATION,
    META_FAMILIARITY,
    META_FINISH_FORECAST,
    META_HORIZON_HOURS,
    META_MODEL_FAMILY,
    META_PROMPT_THRESHOLD,
    META_SCHEMA_FINGERPRINT,
    META_THRESHOLD,
    META_TRAINED_ON,
    META_VOCABULARIES,
    OUTPUTS,
    Familiarity,
    raw_inputs_from_records,
    read_metadata,
)
from brewcast.intervals import STATUS_RATE_UNKNOWN, STATUS_STALLED, FinishForecast, forecast_status
from brewcast.registry import (
    CHAMPION,
    GATE_PASSED,
    GATE_TAG,
    configure,
    download_onnx,
    version_by_alias,
)
from brewcast.schema import schema_fingerprint
from brewcast.settings import Settings
from serving.prediction_log import new_prediction_ids, prediction_row
from serving.runtime import Session, create_session

log = logging.getLogger(__name__)

BENTO_MODEL = "fermentation-completion"
ONNX_FILE = "model.onnx"


class ModelUnavailableError(RuntimeError):
    """No champion could be loaded (none registered yet, or an incompatible one)."""


class ModelRefusedError(ModelUnavailableError):
    """The champion is not fit to serve (ungated, inconsistent metadata, ambiguous files)."""


def _finite_numbers(value) -> bool:
    """Every number inside ``value`` (nested lists and dicts) is finite."""
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return math.isfinite(value)


def checked_metadata(meta: dict, tag: str, default_horizon: float) -> tuple[float, float, dict]:
    """Threshold, horizon and calibration of a model's metadata, refused unless sane: a NaN
    threshold decides nothing, a horizon of 0 or a NaN calibration would serve nonsense."""
    try:
        threshold = float(meta[META_THRESHOLD])
        horizon = float(meta.get(META_HORIZON_HOURS, default_horizon))
        calibration = json.loads(meta[META_CALIBRATION])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelRefusedError(f"{tag}: unreadable model metadata ({exc!r})") from exc
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise ModelRefusedError(f"{tag}: threshold {threshold} is not a probability in (0, 1)")
    if not (math.isfinite(horizon) and horizon > 0):
        raise ModelRefusedError(f"{tag}: horizon {horizon} h is not a positive number")
    if not _finite_numbers(calibration):
        raise ModelRefusedError(f"{tag}: calibration parameters are not finite: {calibration}")
    _prompt_threshold(meta, threshold, tag)
    if META_FINISH_FORECAST in meta:
        try:
            FinishForecast.from_json(meta[META_FINISH_FORECAST])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelRefusedError(f"{tag}: unreadable finish forecast ({exc!r})") from exc
    return threshold, horizon, calibration


@dataclass
class ServedModel:
    version: str
    threshold: float
    horizon_hours: float
    calibration: dict
    fingerprint: str
    bento_tag: str
    session: Session
    #: The categories the model learned, per column (anything else is out of vocabulary).
    vocabularies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: How far from its training data a snapshot may lie (None: the model does not say).
    familiarity: Familiarity | None = None
    #: The training split's size and end ({} when the model does not say).
    trained_on: dict = field(default_factory=dict)
    #: The model family that won the run that made it ("network", "boosted"; "" if unsaid).
    family: str = ""
    #: Intervals for the hours remaining and P(finished by t) (None: the model has none).
    finish_forecast: FinishForecast | None = None
    #: From this probability a hand-logged batch is asked for a reading (None: the model
    #: does not say, so the decision's threshold).
    prompt_threshold: float | None = None
    loaded_at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now("UTC"))

    def __post_init__(self) -> None:
        self._known = {name: frozenset(values) for name, values in self.vocabularies.items()}

    def predict(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Probability and hours remaining for request rows (dicts of schema features)."""
        probability, hours = self.session.run(raw_inputs_from_records(records), list(OUTPUTS))
        return probability.ravel().astype(np.float64), hours.ravel().astype(np.float64)

    def score(self, records: list[dict], served_at) -> list[dict]:
        """Predict, decide at the model's threshold, and build one prediction-log row per
        record: what the service answers and logs (and what a replay logs in process)."""
        probability, hours = self.predict(records)
        return self.log_rows(records, served_at, probability, hours)

    def log_rows(
        self, records: list[dict], served_at, probability: np.ndarray, hours: np.ndarray
    ) -> list[dict]:
        """The prediction-log rows of ``records`` scored ``probability`` and ``hours``,
        decided at the model's threshold."""
        ids = new_prediction_ids(len(records))
        forecasts = (
            self.finish_forecast.row_columns(self.finish_forecast.forecast_records(records, hours))
            if self.finish_forecast is not None
            else [None] * len(records)
        )
        if self.familiarity is not None:
            inputs = Familiarity.inputs_from_records(records)
            distances: list = self.familiarity.distance(inputs).tolist()
            limit = self.familiarity.threshold
        else:
            distances, limit = [None] * len(records), None
        rows = []
        for prediction_id, record, p, h, d, forecast in zip(
            ids, records, probability.tolist(), hours.tolist(), distances, forecasts, strict=True
        ):
            unknown = [
                name
                for name, known in self._known.items()
                if record.get(name) is not None and record[name] not in known
            ]
            rows.append(
                prediction_row(
                    prediction_id,
                    served_at,
                    self.version,
                    self.threshold,
                    record,
                    p,
                    p >= self.threshold,
                    h,
                    unknown,
                    d,
                    None if d is None else bool(d > limit or unknown),
                    forecast,
                )
            )
        return rows

    def notes(self, log_rows: list[dict]) -> list[str]:
        """Plain words for a response whose forecasts come from data unlike the request's:
        a brewery the model never saw, or snapshots outside what it was trained on."""
        out = []
        strangers = [
            row
            for row in log_rows
            if {"brand", "fermenter"} <= set(row["unknown_categories"].split(","))
        ]
        if strangers:
            batches = self.trained_on.get("batches", "other")
            out.append(
                f"{len(strangers)} of {len(log_rows)} snapshot(s) are of a brand and fermenter "
                f"this model never saw: their forecasts come from a model trained on "
                f"{batches} batches of other brands and fermenters, not on this brewery's "
                f"own history."
            )
        status = [forecast_status(row["forecast_group"]) for row in log_rows]
        stalled = status.count(STATUS_STALLED)
        if stalled:
            out.append(
                f"{stalled} of {len(log_rows)} snapshot(s) look stalled: four days after pitch, "
                f"below 60% attenuation and falling less than 1 °P a day. The batch may be "
                f"stuck: "
                f"its intervals have no upper bound where the calibration batches say it may "
                f"never finish (high: null), and no finish probabilities where they cannot say."
            )
        unknown_rate = status.count(STATUS_RATE_UNKNOWN)
        if unknown_rate:
            out.append(
                f"{unknown_rate} of {len(log_rows)} snapshot(s) have fewer than two gravity "
                f"readings in the last day: the rate is unknown, so their intervals come from "
                f"calibration snapshots without a rate either (or from every snapshot): wider."
            )
        flagged = sum(bool(row["out_of_distribution"]) for row in log_rows)
        if flagged:
            out.append(
                f"{flagged} of {len(log_rows)} snapshot(s) lie outside the model's training "
                f"data (out_of_distribution): treat those forecasts with caution."
            )
        return out

    def describe(self) -> dict:
        return {
            "model_version": self.version,
            "threshold": self.threshold,
            "prompt_threshold": self.prompt_threshold,
            "horizon_hours": self.horizon_hours,
            "calibration": self.calibration,
            "schema_fingerprint": self.fingerprint,
            "vocabularies": {name: list(values) for name, values in self.vocabularies.items()},
            "trained_on": self.trained_on,
            "model_family": self.family or None,
            "finish_forecast": None
            if self.finish_forecast is None
            else self.finish_forecast.describe(),
            "familiarity": None
            if self.familiarity is None
            else {
                "threshold": self.familiarity.threshold,
                "inputs": list(self.familiarity.columns),
            },
            "bento_model": self.bento_tag,
            "execution_provider": self.session.provider,
            "requested_providers": self.session.requested,
            "intra_op_threads": self.session.intra_op_threads,
            "loaded_at": self.loaded_at.isoformat(),
        }


def champion_and_tags(settings: Settings) -> tuple[str, dict[str, str]] | None:
    """The version holding the champion alias and its registry tags (None: no champion)."""
    configure(settings.tracking_uri)
    version = version_by_alias(settings.model_name, CHAMPION)
    return None if version is None else (str(version.version), dict(version.tags or {}))


def check_gate(version: str, tags: dict[str, str]) -> None:
    """Only a version whose promotion gate passed is served, whatever holds the alias."""
    if tags.get(GATE_TAG) != GATE_PASSED:
        raise ModelRefusedError(
            f"version {version} is champion but its registry tag {GATE_TAG}="
            f"{tags.get(GATE_TAG, '(missing)')}: only a version whose gate passed is served"
        )


def _stored_models() -> list:
    import bentoml

    try:
        return list(bentoml.models.list(BENTO_MODEL))
    except bentoml.exceptions.NotFound:
        return []


def import_champion(settings: Settings, version: str, workdir: Path) -> str:
    """Copy ``version`` (the champion whose gate was checked: asking the registry again
    could find the alias moved) into the BentoML model store, once per version; its tag."""
    import bentoml

    for existing in _stored_models():
        if (
            existing.info.labels.get("mlflow_version") == version
            and existing.info.labels.get("mlflow_model") == settings.model_name
        ):
            return str(existing.tag)
    uri = f"models:/{settings.model_name}/{version}"
    try:
        model_bytes = download_onnx(uri, workdir)
    except ValueError as exc:  # more than one .onnx file
        raise ModelRefusedError(str(exc)) from exc
    meta = read_metadata(model_bytes)
    # refused before the store: what the store holds was checked (its fallback serves it)
    checked_metadata(meta, uri, settings.horizon_hours)
    _check_fingerprint(meta, uri)
    with bentoml.models.create(
        BENTO_MODEL,
        labels={
            "mlflow_model": settings.model_name,
            "mlflow_version": version,
            "schema_fingerprint": meta.get(META_SCHEMA_FINGERPRINT, ""),
            GATE_TAG: GATE_PASSED,
        },
        metadata={
            "threshold": float(meta[META_THRESHOLD]),
            "calibration": meta[META_CALIBRATION],
            "horizon_hours": float(meta.get(META_HORIZON_HOURS, settings.horizon_hours)),
            "tracking_uri": settings.tracking_uri,
        },
    ) as model:
        Path(model.path, ONNX_FILE).write_bytes(model_bytes)
    log.info(
        "imported %s version %s into the BentoML store as %s",
        settings.model_name,
        version,
        model.tag,
    )
    return str(model.tag)


def load_bento_model(tag: str, settings: Settings) -> ServedModel:
    import bentoml

    stored = bentoml.models.get(tag)
    return served_model(
        Path(stored.path, ONNX_FILE).read_bytes(),
        stored.info.labels.get("mlflow_version", "unknown"),
        str(stored.tag),
        settings,
    )


def _check_fingerprint(meta: dict, tag: str) -> str:
    fingerprint = meta.get(META_SCHEMA_FINGERPRINT, "")
    if fingerprint != schema_fingerprint():
        raise ModelRefusedError(
            f"{tag} was built for schema {fingerprint or '(unknown)'}, this service speaks "
            f"{schema_fingerprint()}: retrain, or serve the matching brewcast release"
        )
    return fingerprint


def served_model(model_bytes: bytes, version: str, tag: str, settings: Settings) -> ServedModel:
    """An exported ONNX model in an onnxruntime session, with what its metadata carries;
    refused when it was built for another schema."""
    meta = read_metadata(model_bytes)
    fingerprint = _check_fingerprint(meta, tag)
    threshold, horizon, calibration = checked_metadata(meta, tag, settings.horizon_hours)
    session = create_session(
        model_bytes,
        require_gpu=settings.require_gpu,
        prefer_gpu=settings.prefer_gpu,
        threads=settings.serving_threads or None,
        spinning=settings.serving_spinning,
        use_tensorrt=settings.use_tensorrt,
    )
    return ServedModel(
        version=version,
        threshold=threshold,
        horizon_hours=horizon,
        calibration=calibration,
        fingerprint=fingerprint,
        bento_tag=tag,
        session=session,
        vocabularies={k: tuple(v) for k, v in json.loads(meta[META_VOCABULARIES]).items()},
        familiarity=Familiarity.from_json(meta[META_FAMILIARITY])
        if META_FAMILIARITY in meta
        else None,
        trained_on=json.loads(meta.get(META_TRAINED_ON, "{}")),
        family=meta.get(META_MODEL_FAMILY, ""),
        finish_forecast=FinishForecast.from_json(meta[META_FINISH_FORECAST])
        if META_FINISH_FORECAST in meta
        else None,
        prompt_threshold=_prompt_threshold(meta, threshold, tag),
    )


def _prompt_threshold(meta: dict, threshold: float, tag: str) -> float | None:
    """The model's prompt threshold, refused unless a probability no higher than the
    decision's (None: a model from before it existed)."""
    if META_PROMPT_THRESHOLD not in meta:
        return None
    try:
        prompt = float(meta[META_PROMPT_THRESHOLD])
    except (TypeError, ValueError) as exc:
        raise ModelRefusedError(f"{tag}: unreadable prompt threshold ({exc!r})") from exc
    if not (math.isfinite(prompt) and 0 < prompt <= threshold):
        raise ModelRefusedError(
            f"{tag}: prompt threshold {prompt} is not a probability in (0, {threshold}]"
        )
    return prompt


class ModelHolder:
    """Holds the current model; :meth:`refresh` swaps in a new champion atomically.

    A request takes ``holder.current`` once and uses that object to the end, so a swap never
    changes a model under a request in flight, and nothing is dropped.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.swaps = 0
        #: Versions refused, and why: not downloaded again on every poll.
        self._refused: dict[str, str] = {}

    def refresh(self) -> bool:
        """Load the champion if it changed; True when a new model was swapped in. A refused
        champion is remembered (not downloaded again each poll) and the previous model
        goes on serving."""
        with self._lock:
            try:
                champion = champion_and_tags(self.settings)
                if champion is None:
                    raise ModelUnavailableError(
                        f"no champion of {self.settings.model_name} yet (no '{CHAMPION}' "
                        f"version in MLflow at {self.settings.tracking_uri}; run `brewcast "
                        f"train` first)"
                    )
                version, tags = champion
                if self.current is not None and self.current.version == version:
                    return False
                if version in self._refused:
                    self.last_error = self._refused[version]
                    return False
                check_gate(version, tags)
                tag = import_champion(self.settings, version, self.settings.paths.champion_download)
                model = load_bento_model(tag, self.settings)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ModelRefusedError):
                    self._refused[version] = self.last_error
                    log.error("champion refused, still serving %s: %s", self._serving(), exc)
                else:
                    log.warning("model refresh failed: %s", self.last_error)
                if self.current is None:
                    self._load_latest_stored()
                return False
            previous = self.current.version if self.current else None
            self.current = model  # the swap: one reference assignment
            self.last_error = None
            self.swaps += 1
            log.info(
                "serving %s version %s (was %s) on %s",
                self.settings.model_name,
                model.version,
                previous,
                model.session.provider,
            )
            return True

    def _serving(self) -> str:
        return f"version {self.current.version}" if self.current else "no model"

    def _load_latest_stored(self) -> None:
        """MLflow unreachable at start: serve the newest model already in the BentoML store."""

        stored = sorted(
            (m for m in _stored_models() if m.info.labels.get(GATE_TAG) == GATE_PASSED),
            key=lambda m: m.info.creation_time,
        )
        if stored:
            try:
                self.current = load_bento_model(str(stored[-1].tag), self.settings)
                log.warning("MLflow unavailable; serving %s from the BentoML store", stored[-1].tag)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"

    def poll(self, every_seconds: float) -> threading.Thread:
        """Check the champion alias every ``every_seconds`` in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(every_seconds):
                self.refresh()

        thread = threading.Thread(target=loop, name="champion-poller", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

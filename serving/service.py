"""The BentoML service: ``bentoml serve serving.service:FermentationService``.

* ``POST /predict``  body ``{"rows": [snapshot, ...]}`` -> per row a prediction id, the
  calibrated probability, the decision at the model's threshold, hours remaining; plus
  the model version and threshold. Every row is logged before the response is sent (sync
  mode).
* ``POST /feedback`` body ``{"labels": [...]}`` -> ground truth for earlier predictions.
* ``POST /reload`` -> check MLflow for a new champion now (also polled in the background).
* ``GET /metadata`` -> model version, threshold, calibration, execution provider in use,
  schema; BentoML's ``/healthz``, ``/livez``, ``/readyz`` (ready once a model is loaded) and
  ``/metrics`` (Prometheus, with brewcast's own metrics).

Known BentoML costs, avoided:

* a bare list/ndarray return regenerates a JSON schema per response: ``/predict`` answers
  JSON bytes it built with orjson (BentoML passes a returned ``Response`` through), while
  ``output_spec`` keeps ``PredictResponse`` as the documented schema;
* the request models are positional-only ("root") inputs, so BentoML hands the validated
  model over as it is instead of copying its fields one by one (through a pydantic
  deprecation warning on every request); the JSON body is the same;
* BentoML binds an API method anew on every request (``inspect.signature``,
  ``functools.wraps``): the service binds each once at start;
* OpenTelemetry is told to skip every URL.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import threading
import time
import urllib.parse
from collections import deque
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio.to_thread
import bentoml
import orjson
import pandas as pd
import sqlalchemy as sa
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from brewcast.plateau import PlateauRule
from brewcast.schema import FEATURES, schema_fingerprint, slice_keys
from brewcast.settings import get_settings
from brewcast.snapshots import hour_of
from serving import cellar
from serving.access import GRANTS, KeyBook, KeyCheck, needed_grant, scopes_with
from serving.api_models import (
    BatchStart,
    BatchUpdate,
    DeviceAssignment,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    ReadyAnswer,
    finish_forecast_json,
    predict_response_json,
    unknown_categories,
)
from serving.bento_config import service_config
from serving.cellar import ForecastBook, ReadyNotifier
from serving.coalesce import ScoringCoalescer
from serving.metrics import MODEL_VERSION, RequestMetrics, flush_all
from serving.model import ModelHolder
from serving.prediction_log import PredictionLog, RowsRefusedError, make_engine
from serving.readings import (
    ReadingError,
    ReadingsStore,
    UnitPending,
    named_device,
    now_utc,
    parse_brewfather,
    parse_ispindel,
    parse_readings,
    parse_tilt,
    push_schemas,
    score_running,
)

log = logging.getLogger("brewcast.serving")

# GET routes; docs off so BentoML's own Swagger UI at / and /docs stays the API's documentation.
routes = FastAPI(title="brewcast metadata", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


#: The most bytes one reading of ``POST /readings`` takes (a 48-character device name, a
#: time with microseconds and offset, both values and units, indented): that body's byte
#: limit is this many times ``BREWCAST_SERVING_MAX_ROWS``.
READING_BYTES = 512
#: A device's own push (iSpindel, Brewfather stream, Tilt form): one reading and the
#: firmware's other fields.
DEVICE_PUSH_BYTES = 64 * 1024

#: The board's files by suffix, and the media types they are served as.
BOARD_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
PAGE_TYPES = tuple(BOARD_TYPES.values())


@routes.exception_handler(RequestValidationError)
async def _invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 in the service's one error shape: ``detail`` one string naming fields."""
    return _error(422, _fields_and_messages(exc.errors()) or "the request is not valid")


def _instant(at: str | None) -> datetime:
    """``?at=`` as a UTC time (now without one); a ReadingError naming it when unreadable."""
    if at is None:
        return now_utc()
    try:
        when = pd.Timestamp(at)
    except ValueError as exc:
        raise ReadingError(f"at: ISO 8601 with an offset, got {at!r} ({exc})") from exc
    if when.tzinfo is None:
        raise ReadingError(f"at: ISO 8601 with an offset, got {at!r}")
    return when.tz_convert("UTC").to_pydatetime()


def _refuse(status: int, message: str) -> BentoMLException:
    """An error raised inside an API method; BentoML answers ``status`` with the message."""
    return BentoMLException(message, error_code=HTTPStatus(status))


def _parse_json(body: bytes):
    """orjson (~5x json.loads; this parse is on every request). What orjson refuses goes to
    the standard parser, which takes NaN and Infinity literals, so that validation can say
    which field holds one."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


_JSON_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
#: Every byte but brackets and braces (``bytes.translate`` deletes them at C speed).
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _shape_deeper(shape: bytes, limit: int) -> bool:
    """Brackets only: each round removes the innermost pairs; anything left after
    ``limit`` rounds nests deeper (or is unbalanced)."""
    for _ in range(limit):
        if not shape:
            return False
        shape = _INNERMOST.sub(b"", shape)
    return bool(shape)


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects deeper than ``limit``, before any
    parser or validator sees it (2,000 nested arrays took ~30 s to a 500). ~10 us for 64
    rows: the brackets alone first; only when those nest too deep are the strings (which
    may hold brackets) dropped for an exact answer. Unbalanced brackets count as too deep
    (the body is no JSON either)."""
    if not _shape_deeper(body.translate(None, _NOT_BRACKETS), limit):
        return False
    return _shape_deeper(_JSON_STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS), limit)


def _fields_and_messages(errors) -> str:
    """Pydantic error entries as one line: ``rows.0.brand: String should ...; ...``."""
    return "; ".join(
        ".".join(str(p) for p in e.get("loc", ()) if p != "root") + f": {e.get('msg')}"
        for e in errors
        if isinstance(e, dict)
    )


def error_detail(body: bytes) -> str:
    """One string out of whatever error body BentoML built (a pydantic error list, an
    ``{"error": ...}`` object, or a list of one)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")[:1000]
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return str(payload)
    detail = payload.get("detail")
    if isinstance(detail, list):
        return _fields_and_messages(detail)
    return str(detail if detail is not None else payload.get("error", payload))


#: The errors each operation answers itself, as ``{"detail": "..."}`` (the guard's 401 and
#: 403 on keyed routes and 413 on every write come on top: :func:`operation_errors`).
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/predict"): (400, 415, 422, 503),
    ("POST", "/feedback"): (400, 409, 415, 422, 503),
    ("POST", "/reload"): (400, 415),
    ("GET", "/metadata"): (),
    ("POST", "/batches"): (400, 409, 422),
    ("PATCH", "/batches/{batch_id}"): (400, 404, 422),
    ("GET", "/batches"): (422,),
    ("PUT", "/devices/{device_id}"): (400, 422),
    ("GET", "/devices/unassigned"): (),
    **{("POST", route): (400, 422, 503) for route in push_schemas()},
    ("GET", "/batches/{batch_id}/forecast"): (404, 409, 422, 503),
    ("GET", "/forecasts"): (422, 503),
    ("GET", "/board"): (),
    ("GET", "/board/batches/{batch_id}"): (),
    ("GET", "/board/history"): (),
    ("GET", "/board/assets/{name}"): (404,),
    ("GET", "/cellar"): (),
    ("GET", "/cellar/batches/{batch_id}"): (404,),
    ("GET", "/cellar/history"): (),
    ("GET", "/cellar/events"): (422,),
    ("POST", "/cellar/batches/{batch_id}/ready"): (400, 404, 409, 422),
}


def operation_errors(method: str, path: str) -> tuple[int, ...]:
    """Every error status ``method path`` can answer: its own, the guard's 401/403 where
    a key is needed, 413 for a body over the limit; 500 is documented everywhere."""
    own = set(ERRORS.get((method, path), ()))
    if RequestGuard.needs_key(path):
        own |= {401, 403}
    if method in ("POST", "PUT", "PATCH"):
        own.add(413)
    return tuple(sorted(own | {500}))


def _error_content() -> dict:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def document_errors(spec: dict) -> dict:
    """BentoML's OpenAPI document completed: each operation's errors with their body (one
    string ``detail``, as answered: FastAPI's list-shaped 422 is replaced), the push
    routes' request bodies, and their 202 (kept unassigned or pending)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
    bodies = push_schemas()
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if (method.upper(), path) not in ERRORS:
                continue  # BentoML's own: health, metrics
            responses = operation.setdefault("responses", {})
            for status in operation_errors(method.upper(), path):
                responses[str(status)] = {"description": HTTPStatus(status).phrase}
            for status, response in responses.items():
                if status[0] in "45":  # every error is answered {"detail": "..."}
                    response["content"] = _error_content()
            if path.startswith("/board"):
                media = PAGE_TYPES if path == "/board/assets/{name}" else ("text/html",)
                responses["200"]["content"] = {m: {"schema": {"type": "string"}} for m in media}
            if path in bodies:
                media, schema = bodies[path]
                operation["requestBody"] = {
                    "required": True,
                    "content": {media: {"schema": schema}},
                }
                responses["202"] = {
                    "description": "Stored, some readings without a batch yet (or kept "
                    "until the device's unit is known: status pending)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec


def _summary(exc: BaseException) -> str:
    """One line: a validation error's fields and messages, or the exception's first line."""
    if isinstance(exc, ValidationError):
        return _fields_and_messages(exc.errors(include_url=False))
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _ClientErrorsAtInfo(logging.Filter):
    """BentoML logs every refused request as an ERROR with a traceback; a client's mistake
    is no server error: one INFO line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        client = isinstance(exc, ValidationError) or (
            isinstance(exc, BentoMLException) and int(exc.error_code) < 500
        )
        if client:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: client error: %s"
            record.args = (*(record.args or ()), _summary(exc))
            record.exc_info, record.exc_text = None, None
        return True


async def _buffered(app, scope, receive) -> tuple[dict, bytes]:
    """Run ``app`` and keep its response: the start message and the whole body."""
    start: dict = {}
    chunks: list[bytes] = []

    async def keep(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    return start, b"".join(chunks)


async def _send_json(send, start: dict, body: bytes) -> None:
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorTarpit:
    """Answers a client that keeps sending what is refused later and later: past ``after``
    refusals (4xx) to one address within :attr:`WINDOW_S`, each further one waits
    :attr:`STEP_S` more (at most :attr:`MOST_S`). Waiting costs the service nothing (the
    event loop serves others meanwhile), so a client flooding it with bad bodies slows
    itself, not the devices beside it; their accepted pushes are never delayed."""

    WINDOW_S, STEP_S, MOST_S = 10.0, 0.02, 1.0

    def __init__(self, after: int) -> None:
        self.after = after
        self._refused: dict[str, deque] = {}
        self.pause = asyncio.sleep  # how an answer waits (a test records it instead)

    def delay(self, client: str) -> float:
        """Count one refusal of ``client`` now; how long its answer should wait."""
        if self.after <= 0:
            return 0.0
        now = time.monotonic()
        if len(self._refused) > 10_000:  # many addresses: forget the quiet ones
            self._refused = {k: q for k, q in self._refused.items() if q[-1] > now - self.WINDOW_S}
        times = self._refused.setdefault(client, deque())
        times.append(now)
        while times[0] < now - self.WINDOW_S:
            times.popleft()
        excess = len(times) - self.after
        return 0.0 if excess <= 0 else min(self.MOST_S, self.STEP_S * excess)


def _detail_errors(send, path: str, tarpit: ErrorTarpit | None = None, client: str = ""):
    """``send`` rewriting every error response into ``{"detail": "one string"}``, logged
    once: INFO for a client error, WARNING for the server's; a client error answered as
    late as ``tarpit`` says for ``client``."""
    start: dict = {}
    chunks: list[bytes] = []

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start.update(message)
            wait = tarpit.delay(client) if tarpit and message["status"] < 500 else 0.0
            if wait:
                await tarpit.pause(wait)
            return None
        if not start or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return None
        status, detail = start["status"], error_detail(b"".join(chunks))
        log.log(
            logging.INFO if status < 500 else logging.WARNING, "%s %d: %s", path, status, detail
        )
        return await _send_json(send, start, orjson.dumps({"detail": detail}))

    return wrapped


def _replay(body: bytes, receive):
    """A receive callable that gives ``body`` (read already) once, then the client's."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class RequestGuard:
    """ASGI middleware in front of the endpoints, answering ``{"detail": message}``:

    * 401 without a live ``X-API-Key`` (once any key is in force: ``BREWCAST_SERVING_API_KEY``
      or one issued with ``brewcast keys``; also on ``GET /metadata`` unless
      ``BREWCAST_SERVING_OPEN_METADATA``), 403 for a key whose scope lacks what the route
      needs (``serving.access.ROUTE_GRANTS``);
    * 413 for a body over the byte limit (before it is read whole) or over the row limit;
    * 400 for a body that is not JSON or nests too deep (before any parser sees it);
    * 422 for an empty ``rows`` list;

    rewrites BentoML's error bodies into the same shape, documents them in ``/docs.json``,
    and, before BentoML answers ``GET /metrics``, flushes the metrics this worker added up.
    """

    ROUTES = ("/predict", "/feedback", "/reload")
    #: The batches, devices, readings and forecasts API: keyed like /predict. A device that
    #: cannot send a header (a Tilt app, an iSpindel) gives the key as ``?key=`` instead.
    KEYED_PREFIXES = ("/batches", "/devices", "/readings", "/forecasts", "/board", "/cellar")
    #: Where the key may come as ``?key=``: devices, and a board's link on a cellar tablet.
    QUERY_KEY_PREFIXES = ("/readings", "/board")
    #: The board's code and style: no data in them, and a page's <script> sends no key.
    OPEN_PREFIXES = ("/board/assets/",)
    #: What ``BREWCAST_BOARD_OPEN`` opens: the board's pages and their data, to read.
    BOARD_PREFIXES = ("/board", "/cellar")

    @classmethod
    def needs_key(cls, path: str) -> bool:
        """Whether ``path`` is keyed once any key is in force (``/metadata`` unless opened)."""
        keyed = path in (*cls.ROUTES, "/metadata") or path.startswith(cls.KEYED_PREFIXES)
        return keyed and not path.startswith(cls.OPEN_PREFIXES)

    def __init__(self, app, max_bytes: int) -> None:
        settings = get_settings()
        self.app, self.max_bytes = app, max_bytes
        self.max_rows, self.max_depth = settings.serving_max_rows, settings.serving_max_json_depth
        book = KeyBook(make_engine(settings.prediction_log))
        self.keys = KeyCheck(book, settings.serving_api_key)
        self.open_metadata = settings.serving_open_metadata
        self.tarpit = ErrorTarpit(settings.serving_error_tarpit_after)
        self.board_open = settings.board_open

    async def _refusal(self, scope) -> tuple[int, str] | None:
        """401 or 403 with its reason where the request's key does not open its route."""
        if not self.keys.keyed():
            return None
        method, path = scope["method"], scope["path"]
        grant = needed_grant(method, path)
        if self.board_open and grant == "read" and path.startswith(self.BOARD_PREFIXES):
            return None
        given = dict(scope.get("headers", [])).get(b"x-api-key", b"")
        if not given and path.startswith(self.QUERY_KEY_PREFIXES):
            query = dict(
                part.split(b"=", 1)
                for part in scope.get("query_string", b"").split(b"&")
                if b"=" in part
            )
            given = urllib.parse.unquote_to_bytes(query.get(b"key", b""))
        known, key_scope = self.keys.remembered(given)
        if not known:  # a database query: off the event loop
            key_scope = await anyio.to_thread.run_sync(self.keys.scope, given)
        if key_scope is None:
            return 401, "missing, wrong or revoked X-API-Key header"
        if grant not in GRANTS[key_scope]:
            return 403, (
                f"this key's scope is {key_scope}: {method} {path} needs a "
                f"{' or '.join(scopes_with(grant))} key"
            )
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path == "/metrics":
            flush_all()  # what this worker added up, before BentoML reads the shared files
        # every error in one shape (a router's plain-text 404 too), logged once, tarpitted
        client = (scope.get("client") or ("",))[0]
        send = _detail_errors(send, f"{method} {path}", self.tarpit, client)
        keyed = self.needs_key(path) and not (path == "/metadata" and self.open_metadata)
        refusal = await self._refusal(scope) if keyed else None
        if refusal is not None:
            return await _error(*refusal)(scope, receive, send)
        if path == "/docs.json":
            start, body = await _buffered(self.app, scope, receive)
            if start.get("status") == 200:
                body = orjson.dumps(document_errors(orjson.loads(body)))
            return await _send_json(send, start, body)
        if method in ("POST", "PUT", "PATCH") and path not in self.ROUTES:
            body = await self._read(scope, receive)  # every write: the same body limit
            if isinstance(body, JSONResponse):
                return await body(scope, receive, send)
            return await self.app(scope, _replay(body, receive), send)
        if method != "POST" or path not in self.ROUTES:
            return await self.app(scope, receive, send)
        media = dict(scope.get("headers", [])).get(b"content-type", b"application/json")
        if media.split(b";")[0].strip().lower() != b"application/json":
            return await _error(415, "send the body as application/json")(scope, receive, send)
        body = await self._read(scope, receive)
        if isinstance(body, JSONResponse):
            return await body(scope, receive, send)
        if path != "/reload":
            problem = self._problem(path, body)
            if problem:
                return await _error(*problem)(scope, receive, send)
        return await self.app(scope, _replay(body, receive), send)

    def _byte_limit(self, path: str) -> tuple[int, str]:
        """The most bytes a body to ``path`` may have, and why: a list of readings is
        capped by its rows before any of it is read or parsed (one client's 40,000-reading
        body cost the others their throughput), a device's push holds one reading."""
        if path == "/readings":
            limit = min(self.max_bytes, self.max_rows * READING_BYTES)
            return limit, (
                f": {self.max_rows} readings (BREWCAST_SERVING_MAX_ROWS) of at most "
                f"{READING_BYTES} bytes each; send them in several requests"
            )
        if path.startswith("/readings/"):
            return DEVICE_PUSH_BYTES, ": a device's push holds one reading"
        return self.max_bytes, ""

    async def _read(self, scope, receive) -> bytes | JSONResponse:
        """The whole body, or a 413 as soon as it is over the limit."""
        limit, why = self._byte_limit(scope["path"])
        too_big = _error(413, f"request body over {limit} bytes{why}")
        headers = dict(scope.get("headers", []))
        if int(headers.get(b"content-length", b"0") or 0) > limit:
            return too_big
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return too_big
        return b"".join(chunks)

    def _problem(self, path: str, body: bytes) -> tuple[int, str] | None:
        if nests_deeper_than(body, self.max_depth):
            return 400, f"request body nests deeper than {self.max_depth} levels (or is no JSON)"
        try:
            payload = _parse_json(body)
        except (ValueError, RecursionError) as exc:
            return 400, f"request body is not valid JSON: {exc}"
        field = "rows" if path == "/predict" else "labels"
        items = payload.get(field) if isinstance(payload, dict) else None
        if not isinstance(items, list):
            return 400, f'body must be a JSON object with a list "{field}"'
        if not items:
            return 422, f"{field}: give at least one"
        if len(items) > self.max_rows:
            return 413, (
                f"{field}: {len(items)} in one request, the limit is {self.max_rows} "
                f"(BREWCAST_SERVING_MAX_ROWS)"
            )
        return None


#: The board's pages and assets, served as they are (no CDN: nothing to fetch at run time).
BOARD_FILES = Path(__file__).with_name("board")


def _page(name: str) -> Response:
    path = BOARD_FILES / name
    if path.parent != BOARD_FILES or path.suffix not in BOARD_TYPES or not path.is_file():
        return _error(404, f"no board file {name!r}")
    return Response(path.read_bytes(), media_type=BOARD_TYPES[path.suffix] + "; charset=utf-8")


def _json_response(body) -> Response:
    # OPT_NON_STR_KEYS: a database row's keys are SQLAlchemy's str subclass, which orjson refuses
    option = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
    return Response(orjson.dumps(body, option=option), media_type="application/json")


def _monitoring_alerts(settings) -> list[dict]:
    """The latest monitoring run's alerts (``summary.json``), none before the first run."""
    path = settings.paths.monitoring_summary
    try:
        return json.loads(path.read_text()).get("alerts", [])
    except (OSError, ValueError):
        return []


def _every(seconds: float, action, first: float = 10.0) -> threading.Event | None:
    """Run ``action`` ``first`` seconds after start (or ``seconds``, if sooner), then every
    ``seconds``, on a daemon thread until the event returned is set (None: ``seconds`` is 0,
    never). A failed round is logged; the next one runs."""
    if seconds <= 0:
        return None
    stop = threading.Event()

    def loop() -> None:
        wait = min(first, seconds)
        while not stop.wait(wait):
            wait = seconds
            try:
                action()
            except Exception:
                log.exception("%s failed; the next round runs in %g s", action.__name__, seconds)

    threading.Thread(target=loop, name=action.__name__, daemon=True).start()
    return stop


#: Read once at import: BentoML takes the service's configuration from its decorator.
_SETTINGS = get_settings()


@bentoml.service(name="brewcast", **service_config(_SETTINGS))
@bentoml.asgi_app(routes, path="/")
class FermentationService:
    def __init__(self) -> None:
        # BentoML's API descriptor builds a bound method on every request; an instance
        # attribute shadows it (a non-data descriptor), so each is bound once, here.
        for name in FermentationService.apis:
            setattr(self, name, getattr(self, name))
        self.settings = get_settings()
        # BentoML's logger of refused requests (its logging is configured by now)
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrorsAtInfo())
        self.holder = ModelHolder(self.settings)
        self.holder.refresh()
        if self.settings.serving_poll_seconds > 0:
            self.holder.poll(self.settings.serving_poll_seconds)
        self.log = PredictionLog(
            self.settings.prediction_log,
            self.settings.prediction_log_mode,
            self.settings.prediction_log_queue,
        )
        # batches, devices and their readings, beside the log (the same database)
        self.readings = ReadingsStore(
            self.log.engine,
            self.settings.serving_cached_batches,
            self.settings.max_gravity_cumulative_rise_plato,
        )
        self.book = ForecastBook(self.log.engine)
        # finished batches' rows for the history page and track records, by (batch, finish):
        # the forecasts before a finish do not change once it is known
        self._finished_rows: dict[tuple[str, datetime], dict | None] = {}
        self.plateau = PlateauRule.from_settings(self.settings)
        self.notifier = ReadyNotifier(self.book, self.settings)
        self.notifier.start()
        self._forecaster = _every(
            self.settings.serving_forecast_every_minutes * 60, self._forecast_running_now
        )
        self.metrics = RequestMetrics(
            lambda: (self.log.stats.rows_written, self.log.stats.rows_dropped)
        )
        self.metrics.start()
        self.coalescer = ScoringCoalescer()
        model = self.holder.current
        if model is not None:
            MODEL_VERSION.set(float(model.version) if model.version.isdigit() else 0)
            log.info("brewcast serving version %s on %s", model.version, model.session.provider)
        else:
            log.warning("brewcast serving started without a model: %s", self.holder.last_error)
        # Everything loaded so far (BentoML, pydantic, onnx, MLflow's client...) lives as long
        # as the worker: out of the collector's sight, a full collection no longer walks it.
        # Without this, p99 at concurrency 1 was 100-130 ms (a gen-2 collection) against 6.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        if self._forecaster is not None:
            self._forecaster.set()
        self.notifier.stop()
        self.log.close()
        self.metrics.stop()

    @bentoml.api(route="/predict", output_spec=PredictResponse)
    async def predict(self, request: PredictRequest, /) -> Response:
        """Score fermentation snapshots with the champion model."""
        model = self.holder.current  # this request's model, even if a swap happens now
        if model is None:
            raise _refuse(503, f"no model loaded yet: {self.holder.last_error}")
        # The validated fields (extra fields are refused), without model_dump's copy.
        records = [vars(r) for r in request.rows]
        served_at = pd.Timestamp.now("UTC").to_pydatetime()
        started = time.perf_counter()
        # Async, so a request waiting for its log commit holds no thread: every waiting
        # request joins the next group commit. Small requests score on the event loop, in
        # one onnxruntime call with the others of the same loop turn; big ones on a thread,
        # so they do not stall it (BREWCAST_SERVING_INLINE_ROWS).
        if len(records) <= self.settings.serving_inline_rows:
            log_rows = await self.coalescer.score(model, records, served_at)
        else:
            log_rows = await anyio.to_thread.run_sync(model.score, records, served_at)
        model_seconds = time.perf_counter() - started
        try:
            await self.log.write_async(log_rows)
        except RowsRefusedError as exc:  # this request's values; the others were committed
            raise _refuse(422, f"the prediction log refused these rows: {exc}") from exc
        except Exception as exc:  # never answer rows that were not logged
            log.exception("prediction log write failed")
            raise _refuse(503, f"prediction log unavailable, nothing served: {exc}") from exc
        self.metrics.record(model.version, records, log_rows, model_seconds)
        return Response(
            predict_response_json(
                model.version,
                model.threshold,
                model.horizon_hours,
                log_rows,
                model.notes(log_rows),
            ),
            media_type="application/json",
        )

    @bentoml.api(route="/feedback")
    def feedback(self, request: FeedbackRequest, /) -> FeedbackResponse:
        """Ground truth for earlier predictions: by prediction id, or by batch finish time.
        Unknown ids and batches are flagged, not stored; a label contradicting another (in
        the request or stored) is a 409; the same label again is a no-op."""
        labels = request.labels  # each one of a kind (``Label`` validates that)
        self.log.flush()  # predictions answered a moment ago are committed even in async mode
        ids = list(dict.fromkeys(x.prediction_id for x in labels if x.prediction_id))
        batches = list(dict.fromkeys(x.batch_id for x in labels if x.batch_id))
        unknown = sorted(set(ids) - self.log.known_prediction_ids(ids))
        unknown_batches = sorted(set(batches) - self.log.known_batch_ids(batches))
        outcomes = self.log.stored_outcomes([i for i in ids if i not in unknown])
        stored = {i: set(v) for i, v in outcomes.items()}
        for x in labels:
            if x.prediction_id:
                outcomes.setdefault(x.prediction_id, set()).add(x.finished_within_horizon)
        conflicts = sorted(i for i, seen in outcomes.items() if len(seen) > 1)
        if conflicts:
            raise _refuse(
                409,
                f"conflicting finished_within_horizon labels for prediction_id "
                f"{', '.join(conflicts[:20])}: nothing stored",
            )
        accepted, repeated, seen = [], 0, set()
        for x in labels:
            key = x.prediction_id or (x.batch_id, x.finished_at)
            if x.prediction_id in unknown or x.batch_id in unknown_batches:
                continue
            if key in seen or x.prediction_id in stored:
                repeated += 1
                continue
            seen.add(key)
            accepted.append(x.model_dump())
        try:
            self.log.add_labels(accepted, source="api")
        except sa.exc.IntegrityError as exc:  # a concurrent request labelled one first
            accepted, raced = self._after_a_race(accepted, exc)
            repeated += raced
        except (ValueError, sa.exc.DataError) as exc:
            raise _refuse(422, f"the prediction log refused these labels: {exc}") from exc
        return FeedbackResponse(
            accepted=len(accepted),
            repeated=repeated,
            unknown_prediction_ids=unknown,
            unknown_batch_ids=unknown_batches,
        )

    def _after_a_race(self, accepted: list[dict], error: Exception) -> tuple[list[dict], int]:
        """Labels a concurrent request stored between our check and our insert: the same
        outcome is a repeat, another is a 409; what is left is inserted again, once."""
        ids = [x["prediction_id"] for x in accepted if x["prediction_id"]]
        stored = self.log.stored_outcomes(ids)
        clash = sorted(
            x["prediction_id"]
            for x in accepted
            if x["prediction_id"] in stored
            and stored[x["prediction_id"]] != {x["finished_within_horizon"]}
        )
        if clash:
            raise _refuse(
                409,
                f"conflicting finished_within_horizon labels for prediction_id "
                f"{', '.join(clash[:20])} (stored by a concurrent request): nothing stored",
            ) from error
        left = [x for x in accepted if x["prediction_id"] not in stored]
        try:
            self.log.add_labels(left, source="api")
        except (ValueError, sa.exc.DataError, sa.exc.IntegrityError) as exc:
            raise _refuse(422, f"the prediction log refused these labels: {exc}") from exc
        return left, len(accepted) - len(left)

    @bentoml.api(route="/reload")
    def reload(self) -> dict:
        """Check MLflow for a new champion now; the swap is atomic, no request is dropped."""
        swapped = self.holder.refresh()
        model = self.holder.current
        if model is not None:
            MODEL_VERSION.set(float(model.version) if model.version.isdigit() else 0)
        return {
            "swapped": swapped,
            "model_version": model.version if model else None,
            "error": self.holder.last_error,
        }

    # -- batches, devices, readings, forecasts -------------------------------------------
    @routes.post("/batches", status_code=201)
    def start_batch(self, batch: BatchStart) -> dict:
        """Start following a batch: its id and pitch time, the rest if known."""
        return self._answer(lambda: self.readings.start_batch(batch.model_dump()))

    @routes.patch("/batches/{batch_id}")
    def update_batch(self, batch_id: str, changes: BatchUpdate) -> dict:
        """Edit a batch (a pitch time typed wrong too: its readings follow it), or end it
        (``end_time``)."""
        return self._answer(
            lambda: self.readings.update_batch(batch_id, changes.model_dump(exclude_unset=True))
        )

    @routes.get("/batches")
    def list_batches(self, active: bool | None = None) -> dict:
        """The batches, running ones only with ``?active=true``."""
        return {"batches": self.readings.batches(active)}

    @routes.put("/devices/{device_id}")
    def assign_device(self, device_id: str, assignment: DeviceAssignment) -> dict:
        """Put a device in a fermenter: ``tilt:<colour>``, ``ispindel:<name>``,
        ``brewfather:<name>``, or any name brewcast's own JSON uses."""
        unit = {"P": "°P", "Plato": "°P"}.get(assignment.gravity_unit, assignment.gravity_unit)
        return self._answer(
            lambda: self.readings.assign(
                device_id,
                assignment.fermenter,
                unit,
                assignment.gravity_offset_plato,
                assignment.temperature_offset_c,
                assignment.correct_gravity_since,
            )
        )

    @routes.get("/devices/unassigned")
    def unassigned_devices(self) -> dict:
        """Devices whose readings found no batch (kept, waiting for an assignment)."""
        return {"devices": self.readings.unassigned()}

    @routes.post("/readings/ispindel")
    async def push_ispindel(self, request: Request) -> Response:
        """An iSpindel or GravityMon "HTTP" post, unchanged."""

        def parse(body, now):
            name = (body.get("name") or body.get("ID")) if isinstance(body, dict) else None
            device = self.readings.device(f"ispindel:{name}") if name is not None else None
            return [parse_ispindel(body, now, (device or {}).get("gravity_unit"))]

        return await self._push(request, parse)

    @routes.post("/readings/brewfather")
    async def push_brewfather(self, request: Request) -> Response:
        """A Brewfather custom stream post, unchanged."""
        return await self._push(request, lambda body, now: [parse_brewfather(body, now)])

    @routes.post("/readings/tilt")
    async def push_tilt(self, request: Request) -> Response:
        """The Tilt app's cloud-URL post (a form), unchanged; its local time is read in
        ``BREWCAST_LOCAL_TIMEZONE``."""
        zone = ZoneInfo(self.settings.local_timezone)
        return await self._push(request, lambda form, now: [parse_tilt(form, zone, now)], form=True)

    @routes.post("/readings")
    async def push_readings(self, request: Request) -> Response:
        """brewcast's own JSON: ``{"readings": [{"device", "timestamp", "gravity",
        "gravity_unit", "temperature", "temperature_unit"}, ...]}``, at most
        ``BREWCAST_SERVING_MAX_ROWS`` readings a request (413 beyond)."""
        return await self._push(
            request, lambda body, now: parse_readings(body, self.settings.serving_max_rows)
        )

    @routes.get("/batches/{batch_id}/forecast")
    async def batch_forecast(self, batch_id: str, at: str | None = None) -> Response:
        """The forecast of a batch from its stored readings, at now or ``?at=``: the
        snapshot built by the training code, scored, logged. ``backcast`` is true where the
        store already held later readings (a forecast made after the fact: the board draws
        it apart from the live ones and leaves it out of the track record)."""
        try:
            when = _instant(at)
            running = await anyio.to_thread.run_sync(
                lambda: self.readings.running(batch_id=batch_id)
            )
            (forecast,) = await self._forecasts(running, when)
        except ReadingError as exc:
            return _error(exc.status, str(exc))
        if "error" in forecast:
            return _error(409, forecast["error"])
        return JSONResponse(orjson.loads(orjson.dumps(forecast, option=orjson.OPT_UTC_Z)))

    @routes.get("/forecasts")
    async def forecasts(self, at: str | None = None) -> Response:
        """The forecast of every batch running now (not ended), or at ``?at=`` (started by
        then and not ended before): scored in one call, logged in one commit."""
        try:
            when = _instant(at)
            running = await anyio.to_thread.run_sync(
                lambda: self.readings.running(None if at is None else when)
            )
            out = await self._forecasts(running, when)
        except ReadingError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse(orjson.loads(orjson.dumps({"forecasts": out}, option=orjson.OPT_UTC_Z)))

    async def _forecasts(self, running: list[dict], at) -> list[dict]:
        # the readings, the snapshots, the scoring and the commits off the event loop
        return await anyio.to_thread.run_sync(self._forecast_batches, running, at)

    def _forecast_batches(self, running: list[dict], at) -> list[dict]:
        """The forecasts of ``running`` batches at ``at``, scored in one call, logged in one
        commit, kept for the board (raising any ready event) before they are answered."""
        model = self.holder.current
        if model is None:
            raise ReadingError(f"no model loaded yet: {self.holder.last_error}", 503)
        scored = score_running(self.readings, model, running, at, self.plateau)
        self.log.write([s[1] for s in scored if not isinstance(s, str)])
        out = []
        for batch, found in zip(running, scored, strict=True):
            if isinstance(found, str):
                out.append({"batch_id": batch["batch_id"], "error": found})
                continue
            record, row = found
            out.append(
                {
                    "batch_id": batch["batch_id"],
                    "model_version": model.version,
                    "at": at,
                    "prediction_id": row["prediction_id"],
                    "probability": row["probability"],
                    "decision": row["decision"],
                    "state": row["state"],
                    "state_detail": row["state_detail"],
                    "backcast": row["backcast"],
                    "threshold": model.threshold,
                    "hours_remaining": row["hours_remaining"],
                    **finish_forecast_json(row),
                    "features": record,
                    "last_gravity_hours_ago": record.get("hours_since_last_gravity"),
                    "out_of_distribution": row["out_of_distribution"],
                    "unknown_categories": unknown_categories(row),
                    "notes": model.notes([row]),
                }
            )
        if self.book.record([f for f in out if "error" not in f], now_utc()):
            self.notifier.wake()
        return out

    def _forecast_running_now(self) -> None:
        """The service's own round: every running batch's forecast, now."""
        if self.holder.current is not None:
            self._forecast_batches(self.readings.running(), now_utc())

    async def _push(self, request: Request, parse, form: bool = False) -> Response:
        """Parse a push (a JSON body, or a form) and commit its readings before answering:
        200 when every reading found its batch, 202 when some are kept unassigned; a 4xx
        naming the field, with nothing stored, when the body is wrong (the refused body is
        kept with its reason: the board shows it on its device's batch)."""
        now = now_utc()
        raw = await request.body()
        try:
            if form:
                body = dict(await request.form())
            else:
                try:
                    body = _parse_json(raw)
                except (ValueError, RecursionError) as exc:
                    raise ReadingError(f"body: not JSON ({exc})", 400) from exc
            # the parse (a body of many readings) and one transaction for the request's
            # pushes, off the event loop: one client's bulk does not stall the others
            results = await anyio.to_thread.run_sync(
                lambda: self.readings.store_all(parse(body, now), now)
            )
        except ReadingError as exc:
            text = raw.decode("utf-8", "replace")
            try:
                route = request.url.path
                await anyio.to_thread.run_sync(self.readings.refuse, route, text, exc, now)
            except Exception:  # the answer still says what was wrong
                log.exception("a refused push could not be kept")
                if isinstance(exc, UnitPending):  # not kept after all: say so
                    return _error(503, f"the push could not be kept: {exc}")
            if isinstance(exc, UnitPending):
                device = named_device(request.url.path, text)
                return JSONResponse(
                    {"results": [{"device": device, "stored": 0, "status": "pending",
                                  "detail": str(exc)}]},
                    status_code=202,
                )  # fmt: skip
            return _error(exc.status, str(exc))
        assigned = not any(r.unassigned for r in results)
        return JSONResponse(
            {"results": [r.to_dict() for r in results]}, status_code=200 if assigned else 202
        )

    def _answer(self, action):
        try:
            return action()
        except ReadingError as exc:
            raise HTTPException(exc.status, str(exc)) from exc

    # -- the cellar board -------------------------------------------------------------------
    @routes.get("/board")
    def board_page(self) -> Response:
        """The cellar board: every running batch, its forecast, its ready event."""
        return _page("board.html")

    @routes.get("/board/batches/{batch_id}")
    def batch_page(self, batch_id: str) -> Response:
        """One batch: its readings, forecasts and events over time."""
        return _page("batch.html")

    @routes.get("/board/history")
    def history_page(self) -> Response:
        """Finished batches: how far the forecasts were from the finish."""
        return _page("history.html")

    @routes.get("/board/assets/{name}")
    def board_asset(self, name: str) -> Response:
        """The board's script and style sheet (no data in them: open without a key)."""
        return _page(name)

    @routes.get("/cellar")
    async def cellar_board(self) -> Response:
        """The board's data: the running batches with their latest forecast (as the API
        answered it), ready event, last reading's age and the alerts that concern them."""

        def read() -> dict:
            now = now_utc()
            running = self.readings.running()
            ids = [b["batch_id"] for b in running]
            rows = cellar.board(
                running,
                self.readings.series(running),
                self.book.latest(ids),
                self.book.events(),
                _monitoring_alerts(self.settings),
                now,
                self.readings.troubles(running),
                self._finished(),
            )
            return {
                "generated_at": now,
                "timezone": self.settings.local_timezone,
                "batches": rows,
                "stale_after_hours": cellar.STALE_AFTER_HOURS,
            }

        return _json_response(await anyio.to_thread.run_sync(read))

    @routes.get("/cellar/batches/{batch_id}")
    async def cellar_batch(self, batch_id: str) -> Response:
        """A batch's page data: its readings, every forecast made from them, its events, and
        once it finished, the actual finish beside the forecasts'."""

        def read() -> dict:
            (batch,) = self.readings.running(batch_id=batch_id)
            ((gravity, temperature),) = self.readings.series([batch])
            history = self.book.history(batch_id)
            finished = self.log.batch_finishes([batch_id]).get(batch_id)
            forecast_finish = next(
                (
                    f["predicted_finish_time"]
                    for f in reversed(history)
                    if f.get("predicted_finish_time")
                ),
                None,
            )
            return {
                "timezone": self.settings.local_timezone,
                "batch": batch,
                "readings": {
                    "gravity_plato": cellar.points(gravity),
                    "temperature_c": cellar.points(temperature),
                },
                "fitted": cellar.fitted_curve(
                    gravity, None if forecast_finish is None else hour_of(forecast_finish)
                ),
                "forecasts": history,
                "events": self.book.events(batch_id),
                "refused": self.readings.refused(batch),
                "held_out": self.readings.held_out(batch_id),
                "finished_at": finished,
                "before_finish": None
                if finished is None
                else {str(h): e for h, e in cellar.finish_errors(history, finished).items()},
                "track_record": cellar.track_record(self._finished(), batch),
            }

        try:
            return _json_response(await anyio.to_thread.run_sync(read))
        except ReadingError as exc:
            return _error(exc.status, str(exc))

    @routes.get("/cellar/history")
    async def cellar_history(self) -> Response:
        """Every finished batch (its finish as ``/feedback`` gave it) with its duration and
        how its live forecasts did 24, 48 and 72 h before the finish: the error and whether
        the 80% window held."""

        def read() -> dict:
            return {
                "timezone": self.settings.local_timezone,
                "batches": self._finished(),
                "hours_before_finish": list(cellar.HISTORY_HOURS),
            }

        return _json_response(await anyio.to_thread.run_sync(read))

    def _finished(self) -> list[dict]:
        """:func:`serving.cellar.finished_row` of every finished batch this service follows,
        oldest finish first (a finish of a batch it never followed, labelled from the
        lake, has none)."""
        rows = []
        for key in self.log.batch_finishes().items():
            if key not in self._finished_rows:
                batch_id, finished = key
                try:
                    batch = self.readings.batch(batch_id)
                except ReadingError:  # not one of the service's batches
                    self._finished_rows[key] = None
                    continue
                around = self.book.before(
                    batch_id, finished, max(cellar.HISTORY_HOURS) + cellar.HISTORY_SLACK_HOURS
                )
                self._finished_rows[key] = cellar.finished_row(batch, finished, around)
            if self._finished_rows[key] is not None:
                rows.append(self._finished_rows[key])
        return sorted(rows, key=lambda r: r["finished_at"])

    @routes.get("/cellar/events")
    async def ready_events(self, unanswered: bool = False) -> Response:
        """Every batch's ready events (oldest first), with their delivery and answer."""
        events = await anyio.to_thread.run_sync(lambda: self.book.events(unanswered=unanswered))
        return _json_response({"events": events})

    @routes.post("/cellar/batches/{batch_id}/ready")
    async def answer_ready(self, batch_id: str, answer: ReadyAnswer) -> Response:
        """Acknowledge a batch's ready event, or override it with a reason; an override is
        stored as a label of the forecast that caused the event."""

        def store() -> dict:
            events = self.book.events(batch_id)
            version = answer.model_version or (events[-1]["model_version"] if events else "")
            event, label = self.book.answer(
                batch_id, version, answer.answer, answer.by, answer.reason
            )
            if label is not None and not self.log.stored_outcomes([label["prediction_id"]]):
                self.log.add_labels([label], source="override")
            return {"event": event, "label": label}

        try:
            return _json_response(await anyio.to_thread.run_sync(store))
        except ReadingError as exc:
            return _error(exc.status, str(exc))

    @routes.get("/metadata")
    def metadata(self) -> dict:
        """The served model (version, family, threshold, calibration, finish forecast,
        vocabularies, familiarity threshold), the execution provider in use, threads, the
        schema and this worker's prediction-log counts."""
        model = self.holder.current
        return {
            "model": model.describe() if model else None,
            "model_error": self.holder.last_error,
            "execution_provider": model.session.provider if model else None,
            "schema": {
                "fingerprint": schema_fingerprint(),
                "features": [
                    {
                        "name": c.name,
                        "dtype": c.dtype,
                        "unit": c.unit,
                        "min": c.min,
                        "max": c.max,
                        "categorical": c.is_categorical,
                        # closed sets only; a brewery's own names are the model's
                        # ``model.vocabularies``
                        "vocabulary": list(c.vocabulary) if c.vocabulary else None,
                    }
                    for c in FEATURES.by_role("feature")
                ],
                "slice_keys": slice_keys(),
            },
            "prediction_log": {
                "mode": self.log.mode,
                "rows_written": self.log.stats.rows_written,
                "rows_dropped": self.log.stats.rows_dropped,
                "commits": self.log.stats.commits,
            },
            "max_rows_per_request": self.settings.serving_max_rows,
        }


FermentationService.add_asgi_middleware(RequestGuard, max_bytes=_SETTINGS.serving_max_body_bytes)

"""HTTP calls to brewcast's servers (Airflow's REST API, the BentoML service, health URLs):
one policy for timeouts and retries, and one error that says what failed.

* Timeouts: a short connect timeout (a server that does not accept a connection is down or
  swamped), a read timeout sized to the call's work (see the policies below).
* Retries, with exponential backoff, only where repeating a call is harmless: GET, HEAD,
  PUT and DELETE, and calls the caller declares idempotent by design (``idempotent=True``:
  Airflow's token request, a DAG run triggered with a fixed run id). Any call whose
  connection was never made (refused, connect timeout) is retried too: it reached nothing.
  Other POSTs (``/predict``, ``/feedback``: each one logs rows) are sent once.
* What still fails raises :class:`ServerCallError` naming the server, the method and URL
  path, the demo's step and how long it waited.

MLflow is reached through the ``mlflow`` client, which has its own policy
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); only its health
URL goes through here.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

#: Methods that HTTP defines as idempotent: repeating one leaves the server as one call did.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Answers worth another try: the server is busy or restarting, or a proxy gave up on it.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Failures before the request was sent: retrying any call is safe.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("brewcast_step", default=None)


@dataclass(frozen=True)
class Policy:
    """How long one call may take and how often an idempotent one is tried."""

    read: float  # seconds the server may take to answer: sized to what the call does
    connect: float = 5.0
    attempts: int = 5  # in all, for an idempotent call (or one that never connected)
    backoff: float = 1.0  # the first pause between attempts; it doubles each time
    max_backoff: float = 30.0

    def timeout(self) -> httpx.Timeout:
        """The httpx timeout: ``connect`` to connect, ``read`` for each read and write."""
        return httpx.Timeout(self.read, connect=self.connect)

    def pause(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


#: Airflow's REST calls are small database queries, but on SQLite they queue behind the
#: scheduler and the running tasks: a busy 2-core machine took more than 30 s to answer.
AIRFLOW = Policy(read=60.0)
#: ``/predict`` scores one tick's snapshots and commits them to the prediction log;
#: ``/feedback`` stores labels. Sent once (not idempotent), so the read timeout is generous.
SERVICE = Policy(read=120.0)
#: One probe of a server that is starting: its start-up loop is the retry, to its deadline.
HEALTH = Policy(read=10.0, connect=2.0, attempts=1)


class ServerCallError(RuntimeError):
    """A call to one of brewcast's servers that failed after the policy's attempts."""


def set_step(step: str | None) -> None:
    """Name what the caller is doing now (a demo step); errors from here on name it."""
    _step.set(step)


def current_step() -> str | None:
    return _step.get()


def request(
    client: httpx.Client,
    server: str,
    method: str,
    path: str,
    *,
    policy: Policy,
    idempotent: bool | None = None,
    accept: Collection[int] = (),
    step: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send ``method path`` through ``client`` under ``policy``; the response, when it is a
    success or its status is in ``accept``. ``idempotent`` defaults to the method's own
    (GET, HEAD, PUT, DELETE); pass True for a POST that is idempotent by design."""
    method = method.upper()
    if idempotent is None:
        idempotent = method in IDEMPOTENT_METHODS
    call = client.build_request(method, path, timeout=policy.timeout(), **kwargs)
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            response = client.send(call)
        except httpx.TransportError as exc:
            failure: httpx.TransportError | httpx.Response = exc
            transient, retry = True, idempotent or isinstance(exc, NOT_SENT)
        else:
            if response.is_success or response.status_code in accept:
                return response
            transient = response.status_code in RETRY_STATUSES
            failure, retry = response, idempotent and transient
        if not retry or attempt == policy.attempts:
            waited = time.monotonic() - started
            held_back = transient and not retry  # worth a retry, were it idempotent
            raise ServerCallError(
                _describe(server, call, failure, attempt, waited, policy, held_back, step)
            ) from (failure if isinstance(failure, Exception) else None)
        log.warning(
            "%s, %s %s %s; retrying in %g s (attempt %d of %d)",
            server,
            method,
            call.url.path,
            _short(failure),
            policy.pause(attempt),
            attempt + 1,
            policy.attempts,
        )
        time.sleep(policy.pause(attempt))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _describe(
    server: str,
    call: httpx.Request,
    failure: httpx.TransportError | httpx.Response,
    attempts: int,
    waited: float,
    policy: Policy,
    held_back: bool,
    step: str | None,
) -> str:
    """The error's message: server, method and path, step, what happened, how long."""
    step = step or current_step()
    where = f"{server} ({call.url.scheme}://{call.url.netloc.decode()})"
    what = f"{call.method} {call.url.path}" + (f" during '{step}'" if step else "")
    outcome = _short(failure)
    if isinstance(failure, httpx.Response):
        outcome += ": " + " ".join(failure.text.split())[:300]
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    note = f"; this {call.method} is not idempotent: not retried" if held_back else ""
    return (
        f"{where}: {what} {outcome} (after {tries}, waited {waited:.1f} s; timeouts "
        f"connect {policy.connect:g} s, read {policy.read:g} s{note})"
    )


def _short(failure: httpx.TransportError | httpx.Response) -> str:
    if isinstance(failure, httpx.Response):
        return f"answered {failure.status_code} {failure.reason_phrase}"
    return f"failed: {type(failure).__name__}: {str(failure) or 'no detail'}"


class Server:
    """One server's HTTP client: its name (for errors), base URL, headers and policy."""

    def __init__(
        self,
        name: str,
        base_url: str,
        policy: Policy,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name, self.policy = name, policy
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=policy.timeout()
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """:func:`request` to this server (``policy=`` overrides its policy)."""
        kwargs.setdefault("policy", self.policy)
        return request(self.client, self.name, method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """A POST: sent once, unless ``idempotent=True`` says repeating it is harmless."""
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe(url: str, policy: Policy = HEALTH) -> str | None:
    """One GET of a health URL: None when it answers 200, else what happened instead."""
    try:
        response = httpx.get(url, timeout=policy.timeout())
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {str(exc) or 'no detail'}"
    if response.status_code == 200:
        return None
    return f"answered {response.status_code} {response.reason_phrase}"

"""Who may call what: API keys with scopes, one per device or brewery role, stored hashed
and revocable.

A hydrometer keeps its key in plain text and often posts over plain HTTP, so the key it
holds opens only what a hydrometer needs: pushing readings. The scopes:

* ``device``: push readings (``POST /readings...``), nothing else;
* ``viewer``: read the board, batches, forecasts, the model's metadata, and ``/predict``;
* ``operator``: a viewer who also starts and edits batches, assigns devices, acknowledges
  or overrides a ready event and types readings in by hand;
* ``admin``: everything, including labels (``/feedback``) and ``/reload``.

:data:`ROUTE_GRANTS` is the one list of which route needs which grant; the guard
(``serving.service.RequestGuard``) and the tests read it, and a route missing from it
needs ``admin``. Keys are issued, listed and revoked with ``brewcast keys``; the service
keeps only each key's SHA-256 (a key is 32 random bytes, so a plain hash cannot be
guessed back) and remembers a lookup for :data:`KEY_CACHE_SECONDS`, the longest a revoked
key still opens anything. ``BREWCAST_SERVING_API_KEY``, where set, is an admin key.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa

from serving.prediction_log import create_tables

Scope = Literal["device", "viewer", "operator", "admin"]
Grant = Literal["push", "read", "operate", "administer"]
SCOPES: tuple[Scope, ...] = ("device", "viewer", "operator", "admin")
#: What each scope may do.
GRANTS: dict[Scope, frozenset[Grant]] = {
    "device": frozenset({"push"}),
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "push", "operate"}),
    "admin": frozenset({"read", "push", "operate", "administer"}),
}
#: How long a key's lookup is remembered: a revoked key is refused at most this late.
KEY_CACHE_SECONDS = 5.0
#: A key's printable prefix: says what the string is where it turns up (a config file).
KEY_PREFIX = "bc_"


@dataclass(frozen=True)
class RouteGrant:
    """``method`` on a path matching ``template`` (``{name}`` is one path segment) needs
    ``grant``."""

    method: str
    template: str
    grant: Grant

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and _pattern(self.template).fullmatch(path) is not None


#: Every keyed route and the grant it needs (anything keyed and not listed needs ``admin``).
ROUTE_GRANTS: tuple[RouteGrant, ...] = (
    RouteGrant("POST", "/readings", "push"),
    RouteGrant("POST", "/readings/ispindel", "push"),
    RouteGrant("POST", "/readings/brewfather", "push"),
    RouteGrant("POST", "/readings/tilt", "push"),
    RouteGrant("GET", "/batches", "read"),
    RouteGrant("GET", "/batches/{batch_id}/forecast", "read"),
    RouteGrant("GET", "/forecasts", "read"),
    RouteGrant("GET", "/devices/unassigned", "read"),
    RouteGrant("GET", "/board", "read"),
    RouteGrant("GET", "/board/batches/{batch_id}", "read"),
    RouteGrant("GET", "/board/history", "read"),
    RouteGrant("GET", "/cellar", "read"),
    RouteGrant("GET", "/cellar/batches/{batch_id}", "read"),
    RouteGrant("GET", "/cellar/history", "read"),
    RouteGrant("GET", "/cellar/events", "read"),
    RouteGrant("GET", "/metadata", "read"),
    RouteGrant("POST", "/predict", "read"),
    RouteGrant("POST", "/batches", "operate"),
    RouteGrant("PATCH", "/batches/{batch_id}", "operate"),
    RouteGrant("PUT", "/devices/{device_id}", "operate"),
    RouteGrant("POST", "/cellar/batches/{batch_id}/ready", "operate"),
    RouteGrant("POST", "/feedback", "administer"),
    RouteGrant("POST", "/reload", "administer"),
)


@functools.cache
def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def needed_grant(method: str, path: str) -> Grant:
    """The grant a request needs; ``administer`` for a keyed route nobody listed."""
    method = "GET" if method == "HEAD" else method
    for route in ROUTE_GRANTS:
        if route.matches(method, path):
            return route.grant
    return "administer"


def scopes_with(grant: Grant) -> list[Scope]:
    return [scope for scope in SCOPES if grant in GRANTS[scope]]


def key_hash(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)


class KeyRefused(ValueError):
    """A key cannot be issued or revoked as asked (the message says why)."""


@dataclass(frozen=True)
class IssuedKey:
    name: str
    scope: Scope
    issued_at: datetime
    revoked_at: datetime | None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "scope": self.scope,
            "issued_at": self.issued_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


class KeyBook:
    """The issued keys, in the prediction log's database (``BREWCAST_PREDICTION_LOG_URL``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, metadata)

    def issue(self, name: str, scope: str) -> str:
        """A new key for ``name`` with ``scope``; the key itself is returned once, here, and
        never stored."""
        if scope not in SCOPES:
            raise KeyRefused(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", name):
            raise KeyRefused(
                f"a key's name is 1-64 letters, digits, '_', '.', ':' or '-', not {name!r}"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    api_keys.insert().values(
                        name=name, scope=scope, key_sha256=key_hash(key), issued_at=_now()
                    )
                )
        except sa.exc.IntegrityError as exc:
            raise KeyRefused(
                f"a key named {name!r} exists already: revoke it or choose another name"
            ) from exc
        return key

    def revoke(self, name: str) -> IssuedKey:
        with self.engine.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            ).rowcount
        if not done:
            known = {k.name: k for k in self.issued()}
            if name in known:
                raise KeyRefused(f"the key {name!r} was revoked already")
            raise KeyRefused(f"no key named {name!r}; `brewcast keys list` shows them")
        return next(k for k in self.issued() if k.name == name)

    def issued(self) -> list[IssuedKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.issued_at)).all()
        return [IssuedKey(r.name, r.scope, _aware(r.issued_at), _aware(r.revoked_at)) for r in rows]

    def scope_of(self, key: bytes) -> Scope | None:
        """The scope of a live key, or None (unknown or revoked)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(api_keys.c.scope).where(
                    api_keys.c.key_sha256 == key_hash(key), api_keys.c.revoked_at.is_(None)
                )
            ).scalar()

    def any_live(self) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(api_keys.c.name).where(api_keys.c.revoked_at.is_(None)).limit(1)
                ).first()
                is not None
            )


class KeyCheck:
    """The guard's view of the keys: the configured admin key and the issued ones, each
    lookup remembered for :data:`KEY_CACHE_SECONDS` (the book is read at most that often
    per key, so a client retrying a wrong key costs no database work)."""

    def __init__(self, book: KeyBook | None, admin_key: str | None, clock=time.monotonic) -> None:
        self.book, self.admin_key = book, None if admin_key is None else admin_key.encode()
        self.clock = clock
        self._lock = threading.Lock()
        self._scopes: dict[str, tuple[float, Scope | None]] = {}
        self._keyed: tuple[float, bool] = (-1.0, False)

    def keyed(self) -> bool:
        """Whether any key is in force: without one, the service is open (a first run)."""
        if self.admin_key is not None:
            return True
        if self.book is None:
            return False
        expires, keyed = self._keyed
        if self.clock() >= expires:
            keyed = self.book.any_live()
            self._keyed = (self.clock() + KEY_CACHE_SECONDS, keyed)
        return keyed

    def remembered(self, key: bytes) -> tuple[bool, Scope | None]:
        """``(True, scope)`` where the answer needs no database (no key, the admin key, a
        lookup still remembered), else ``(False, None)``: then ask :meth:`scope`."""
        if not key:
            return True, None
        if self.admin_key is not None and secrets.compare_digest(key, self.admin_key):
            return True, "admin"
        if self.book is None:
            return True, None
        with self._lock:
            cached = self._scopes.get(key_hash(key))
        if cached is not None and self.clock() < cached[0]:
            return True, cached[1]
        return False, None

    def scope(self, key: bytes) -> Scope | None:
        """The key's scope, from the book (a blocking query: call it off the event loop)."""
        known, scope = self.remembered(key)
        if known or self.book is None:
            return scope
        digest, now = key_hash(key), self.clock()
        scope = self.book.scope_of(key)
        with self._lock:
            if len(self._scopes) > 10_000:  # a flood of made-up keys: start over
                self._scopes.clear()
            self._scopes[digest] = (now + KEY_CACHE_SECONDS, scope)
        return scope


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)

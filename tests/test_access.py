"""Scoped API keys (serving.access): a device's key opens only the push routes."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from serving import access
from serving.access import GRANTS, ROUTE_GRANTS, SCOPES, KeyBook, KeyRefused, needed_grant
from serving.prediction_log import make_engine
from tests.test_service_hardening import _guard_call, _ok_app


@pytest.fixture
def book(settings) -> KeyBook:
    return KeyBook(make_engine(settings.prediction_log))


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "b-1", template)


def test_keys_are_stored_hashed_scoped_named_and_revocable(book):
    key = book.issue("tilt-red", "device")
    assert key.startswith("bc_") and len(key) > 40
    with book.engine.connect() as conn:
        stored = [tuple(map(str, row)) for row in conn.execute(sa.select(access.api_keys))]
    assert stored and not any(key in cell for row in stored for cell in row)  # only its hash
    assert book.scope_of(key.encode()) == "device"
    assert book.scope_of(b"bc_guessed") is None
    with pytest.raises(KeyRefused, match="exists already"):
        book.issue("tilt-red", "viewer")
    with pytest.raises(KeyRefused, match="scope must be one of device, viewer"):
        book.issue("someone", "root")
    with pytest.raises(KeyRefused, match="a key's name"):
        book.issue("tilt\nred", "device")
    assert book.revoke("tilt-red").revoked_at is not None
    assert book.scope_of(key.encode()) is None
    with pytest.raises(KeyRefused, match="revoked already"):
        book.revoke("tilt-red")
    with pytest.raises(KeyRefused, match="no key named"):
        book.revoke("nobody")
    assert [k.name for k in book.issued()] == ["tilt-red"]


def test_every_route_of_the_service_needs_a_listed_grant():
    """The grant table covers every route the service has: a new route nobody listed would
    need admin (refused to everyone else), so it fails here first."""
    from serving import service

    served = {
        (method, route.path)
        for route in service.routes.routes
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD" and route.path not in ("/board/assets/{name}",)
    }
    served |= {("POST", api.route) for api in service.FermentationService.apis.values()}
    listed = {(grant.method, grant.template) for grant in ROUTE_GRANTS}
    assert served == listed


def test_a_device_key_opens_the_push_routes_and_nothing_else(settings, book):
    """Each scope against every listed route, through the real middleware: 403 exactly
    where the scope lacks the route's grant, never 401 for a live key."""
    from serving import service

    keys = {scope: book.issue(f"{scope}-key", scope) for scope in SCOPES}
    guard = service.RequestGuard(_ok_app, max_bytes=2**20)
    for route in ROUTE_GRANTS:
        path = _concrete(route.template)
        assert needed_grant(route.method, path) == route.grant
        for scope, key in keys.items():
            status = _guard_call(guard, route.method, path, {"X-API-Key": key}, b"{}")
            allowed = route.grant in GRANTS[scope]
            assert (status != 403) == allowed and status != 401, (scope, route, status)
        assert _guard_call(guard, route.method, path, {}, b"{}") == 401
    # a hydrometer that cannot send a header gives its key in the query, on /readings only
    device = keys["device"].encode()
    assert _guard_call(guard, "POST", "/readings/ispindel", {}, b"{}", b"key=" + device) == 200
    assert _guard_call(guard, "GET", "/forecasts", {}, b"", b"key=" + device) == 401
    # revoked: still remembered for a moment, refused once the lookup has expired
    book.revoke("device-key")
    assert _guard_call(guard, "POST", "/readings", {"X-API-Key": keys["device"]}, b"{}") == 200
    later = guard.keys.clock() + access.KEY_CACHE_SECONDS
    guard.keys.clock = lambda: later
    assert _guard_call(guard, "POST", "/readings", {"X-API-Key": keys["device"]}, b"{}") == 401


def test_without_any_key_the_service_is_open_and_the_first_key_closes_it(settings, book):
    from serving import service

    guard = service.RequestGuard(_ok_app, max_bytes=2**20)
    assert _guard_call(guard, "GET", "/forecasts", {}) == 200
    viewer = book.issue("tablet", "viewer")
    opened = service.RequestGuard(_ok_app, max_bytes=2**20)  # no remembered "open"
    assert _guard_call(opened, "GET", "/forecasts", {}) == 401
    assert _guard_call(opened, "GET", "/forecasts", {"X-API-Key": viewer}) == 200
    assert _guard_call(opened, "PATCH", "/batches/b-1", {"X-API-Key": viewer}, b"{}") == 403


def test_keys_are_issued_listed_and_revoked_from_the_command_line(settings):
    from typer.testing import CliRunner

    from application.cli import app

    runner = CliRunner()
    issued = runner.invoke(app, ["keys", "issue", "ispindel-fv1", "--scope", "device"])
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.splitlines()[0]
    assert key.startswith("bc_")
    listed = runner.invoke(app, ["keys", "list"])
    assert "ispindel-fv1\tdevice" in listed.stdout and key not in listed.stdout
    assert runner.invoke(app, ["keys", "issue", "x", "--scope", "root"]).exit_code == 2
    assert runner.invoke(app, ["keys", "revoke", "ispindel-fv1"]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", "ispindel-fv1"]).exit_code == 2

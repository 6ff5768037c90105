"""The documentation: references generated from the code, and a walk-through that works.

Fast, no server: the settings and the OpenAPI document are read from the code, the
walk-through's commands are checked against the command line's commands, the service's
routes and the request models and parsers the service runs. ``make docs`` (part of
``make test``) builds the site itself, strictly.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from devtools import docs_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WALKTHROUGH = DOCS / "getting-started" / "walkthrough-ispindel.md"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def spec() -> dict:
    return docs_reference.openapi_document()


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return docs_reference.generated_pages()


# --- every setting and every route is described, and appears in the references ---------


def test_every_setting_has_a_description():
    fields = docs_reference.setting_fields()
    assert len(fields) > 100
    missing = [name for name, field in fields.items() if not (field.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_every_settings_field_is_in_exactly_one_group():
    grouped = [name for _, _, fields in docs_reference.settings_groups() for name in fields]
    assert sorted(grouped) == sorted(docs_reference.setting_fields())


def test_configuration_reference_lists_every_variable(pages):
    page = pages[docs_reference.CONFIGURATION_PAGE]
    for name, field in docs_reference.setting_fields().items():
        variable = docs_reference.env_var(name)
        row = next((r for r in page.splitlines() if r.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"{variable} missing from the configuration reference"
        assert " ".join(field.description.split()).replace("|", "\\|") in row


def test_every_route_has_a_description(spec):
    operations = docs_reference.operations(spec)
    assert len(operations) > 25
    missing = [
        f"{method} {path}"
        for method, path, operation in operations
        if not (operation.get("description") or "").strip()
    ]
    assert not missing, f"routes without a docstring: {missing}"


def test_http_api_reference_lists_every_route(spec, pages):
    page = pages[docs_reference.HTTP_API_PAGE]
    for method, path, _ in docs_reference.operations(spec):
        assert f"## `{method} {path}`" in page, f"{method} {path} missing from the API page"


def test_every_service_route_is_in_the_openapi_document(spec):
    """The service's own route table (the errors each answers) and the document agree."""
    from serving.service import ERRORS

    documented = {(method, path) for method, path, _ in docs_reference.operations(spec)}
    assert set(ERRORS) <= documented


def test_cli_reference_has_every_command(pages):
    page = pages[docs_reference.CLI_PAGE]
    commands = docs_reference.cli_commands()
    assert ("keys", "issue") in commands and ("ingest",) in commands
    for path in commands:
        assert f"## `{' '.join(('brewcast', *path))}`" in page
        assert "Usage: brewcast" in page


# --- the walk-through's commands ---------------------------------------------------------


def _bash_lines(markdown: str) -> list[str]:
    """The commands of the page's ```bash blocks, continuation lines joined; a here-document
    is kept with its command as ``command <<EOF\\n<body>``."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        rows = iter(block.replace("\\\n", " ").splitlines())
        for row in rows:
            row = row.strip()
            if not row or row.startswith("#"):
                continue
            while _open_quote(row):  # a quoted body written over several lines
                row += " " + next(rows).strip()
            heredoc = re.search(r"<<\s*'?(\w+)'?", row)
            if heredoc:
                body = []
                for more in rows:
                    if more.strip() == heredoc.group(1):
                        break
                    body.append(more)
                row = row + "\n" + "\n".join(body)
            lines.append(row)
    return lines


def _open_quote(row: str) -> bool:
    try:
        shlex.split(row.split("<<")[0], comments=True)
    except ValueError:
        return True
    return False


def _substituted(text: str) -> str:
    pitched = datetime(2026, 3, 1, 8, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text.replace("$PITCHED", pitched)


def _curl_raw(line: str) -> tuple[str, str, str | None]:
    """(method, path, body as written or None) of a curl command line."""
    command, _, heredoc = line.partition("\n")
    words = shlex.split(command.split("<<")[0], comments=True)
    assert words[0] == "curl"
    method, body, url = "GET", None, None
    it = iter(words[1:])
    for word in it:
        if word == "-X":
            method = next(it)
        elif word in ("-d", "--data"):
            data = next(it)
            body = _substituted(heredoc if data == "@-" else data)
            method = method if method != "GET" else "POST"
        elif word == "-H":
            next(it)
        elif not word.startswith("-"):
            url = word
    assert url is not None, line
    path = "/" + url.split("/", 1)[1].split("?")[0] if "/" in url else "/"
    return method, path, body


def _curl(line: str, bodies: bool = True) -> tuple[str, str, dict | None]:
    """(method, path, JSON body or None) of a curl command line (``bodies``: parse them)."""
    method, path, raw = _curl_raw(line)
    return method, path, json.loads(raw) if bodies and raw is not None else None


def _route(spec: dict, method: str, path: str) -> str | None:
    """The document's path template that ``method path`` hits."""
    for _, template, _ in (op for op in docs_reference.operations(spec) if op[0] == method):
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return template
    return None


def _check_brewcast(words: list[str]) -> None:
    from application.cli import app

    command = typer.main.get_command(app)
    args = words[1:]
    while args and hasattr(command, "commands") and not args[0].startswith("-"):
        sub = command.commands.get(args[0])
        assert sub is not None, f"brewcast has no command {args[0]!r}"
        command, args = sub, args[1:]
    options = {name for p in command.params for name in getattr(p, "opts", [])}
    for word in args:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"{' '.join(words)}: no option {word}"


def test_walkthrough_commands_exist(spec):
    lines = _bash_lines(WALKTHROUGH.read_text())
    makefile = (ROOT / "Makefile").read_text()
    seen = set()
    for line in lines:
        first = line.split("\n")[0].split("<<")[0]
        assigned = re.fullmatch(r"\w+=\$\((.*)\)", first.strip())  # VAR=$(command)
        words = shlex.split(assigned.group(1) if assigned else first)
        program = Path(words[0]).name
        seen.add(program)
        if program == "make":
            for target in words[1:]:
                assert re.search(rf"^{target}:", makefile, flags=re.M), f"no make {target}"
        elif program == "brewcast":
            _check_brewcast(words)
        elif program == "curl":
            method, path, _ = _curl(line)
            assert _route(spec, method, path), f"the service has no {method} {path}"
        elif program != "date":
            raise AssertionError(f"the walk-through runs {program!r}, which this test ignores")
    assert {"make", "curl"} <= seen


@pytest.mark.parametrize(
    "page", sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")), ids=str
)
def test_every_page_commands_and_routes_exist(page, spec):
    """Every ``brewcast`` command and option, ``make`` target and ``curl`` route in a page's
    bash blocks is one the code has (other programs are the reader's own)."""
    makefile = (ROOT / "Makefile").read_text()
    for line in _bash_lines((DOCS / page).read_text()):
        first = line.split("\n")[0].split("<<")[0]
        words = shlex.split(first, comments=True)
        if not words:
            continue
        program = Path(words[0]).name
        if program == "brewcast":
            _check_brewcast(words)
        elif program == "make":
            for target in words[1:]:
                assert re.search(rf"^{target}:", makefile, flags=re.M), f"no make {target}"
        elif program == "curl":
            method, path, _ = _curl(" ".join(shlex.quote(w) for w in words), bodies=False)
            assert _route(spec, method, path), f"{page}: the service has no {method} {path}"


def _push_bodies() -> list[tuple[str, str, str, str | None]]:
    """(page, route, body, the gravity unit the page assigns its device) of every push a
    page's bash blocks send to a device route."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        units: dict[str, str] = {}
        pushes = []
        for line in _bash_lines(page.read_text()):
            if not line.startswith("curl"):
                continue
            method, path, raw = _curl_raw(line)
            if method == "PUT" and path.startswith("/devices/") and raw:
                unit = json.loads(raw).get("gravity_unit")
                if unit:
                    units[path.removeprefix("/devices/")] = unit
            elif method == "POST" and path.startswith("/readings") and raw:
                pushes.append((path, raw))
        name = str(page.relative_to(DOCS))
        for path, raw in pushes:
            device = None
            if path == "/readings/ispindel":
                device = "ispindel:" + str(json.loads(raw).get("name"))
            out.append((name, path, raw, units.get(device or "")))
    return out


def test_every_push_in_the_docs_is_accepted():
    """Every push a page shows is one the service's own parser for that route reads into
    readings (the iSpindel's with the unit the page assigns it, or its own)."""
    import urllib.parse
    from zoneinfo import ZoneInfo

    from serving.readings import parse_brewfather, parse_ispindel, parse_readings, parse_tilt

    now = datetime.now(UTC)
    pushes = _push_bodies()
    routes = {path for _, path, _, _ in pushes}
    assert {"/readings/ispindel", "/readings/tilt", "/readings/brewfather", "/readings"} <= routes
    for page, path, raw, unit in pushes:
        if path == "/readings/tilt":
            form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
            parsed = [parse_tilt(form, ZoneInfo("Europe/Berlin"), now)]
        elif path == "/readings/ispindel":
            parsed = [parse_ispindel(json.loads(raw), now, unit)]
        elif path == "/readings/brewfather":
            parsed = [parse_brewfather(json.loads(raw), now)]
        else:
            parsed = parse_readings(json.loads(raw))
        assert all(push.rows for push in parsed), f"{page}: {path} stored nothing"


def _walkthrough_bodies() -> dict[tuple[str, str], dict]:
    """The JSON body of each curl of the walk-through, by (method, path)."""
    bodies = {}
    for line in _bash_lines(WALKTHROUGH.read_text()):
        if line.startswith("curl"):
            method, path, body = _curl(line)
            if body is not None:
                bodies[(method, path)] = body
    return bodies


def test_walkthrough_bodies_are_accepted_and_the_ispindel_push_is_stored():
    """Each JSON body the page sends is one its route accepts: the batch and the device
    assignment by the service's request models, the iSpindel's post by the service's own
    parser, with the unit the assignment gave it, to a gravity and a temperature."""
    from serving.api_models import BatchStart, DeviceAssignment
    from serving.readings import parse_ispindel

    bodies = _walkthrough_bodies()
    batch = BatchStart.model_validate(bodies[("POST", "/batches")])
    (device_path,) = [p for m, p in bodies if m == "PUT" and p.startswith("/devices/")]
    assignment = DeviceAssignment.model_validate(bodies[("PUT", device_path)])
    assert assignment.fermenter == batch.fermenter
    post = bodies[("POST", "/readings/ispindel")]
    assert device_path == f"/devices/ispindel:{post['name']}"
    now = datetime.now(UTC)
    push = parse_ispindel(post, now, assignment.gravity_unit)
    tags = {row[1] for row in push.rows}
    assert tags == {"gravity_plato", "temperature_c"}
    assert batch.batch_id in WALKTHROUGH.read_text().split("/forecast")[0]


def test_walkthrough_reading_lands_in_its_batch(tmp_path):
    """The walk-through replayed on the service's readings store (the database the board
    reads): the batch pitched a day ago, the iSpindel assigned with its unit, its post
    stored as a gravity and a temperature of that batch; pushed before the assignment, it
    is kept pending (202), as the page says."""
    from datetime import timedelta

    from serving.api_models import BatchStart, DeviceAssignment
    from serving.prediction_log import make_engine
    from serving.readings import ReadingsStore, UnitPending, parse_ispindel

    bodies = _walkthrough_bodies()
    now = datetime.now(UTC)
    batch_body = dict(bodies[("POST", "/batches")])
    batch_body["start_time"] = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    batch = BatchStart.model_validate(batch_body)
    (device_path,) = [p for m, p in bodies if m == "PUT" and p.startswith("/devices/")]
    device = device_path.removeprefix("/devices/")
    assignment = DeviceAssignment.model_validate(bodies[("PUT", device_path)])
    post = bodies[("POST", "/readings/ispindel")]

    with pytest.raises(UnitPending):  # before step 3: kept until the unit is known
        parse_ispindel(post, now, None)

    store = ReadingsStore(make_engine(f"sqlite:///{tmp_path / 'predictions.db'}"))
    store.start_batch(batch.model_dump(), now)
    store.assign(device, assignment.fermenter, assignment.gravity_unit, None, None, None)
    (stored,) = store.store_all([parse_ispindel(post, now, assignment.gravity_unit)], now)
    assert (stored.batch_id, stored.stored, stored.unassigned) == (batch.batch_id, 2, 0)
    (running,) = store.running(batch_id=batch.batch_id)
    ((gravity, temperature),) = store.series([running])
    assert len(gravity.values) == 1 and 11 < gravity.values[0] < 12.5  # SG 1.046 in °P
    assert len(temperature.values) == 1


# --- the README and the site ---------------------------------------------------------------


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    assert "make demo" in text and "make test" in text


def test_readme_links_and_images_exist():
    text = re.sub(r"<!--.*?-->", "", README.read_text(), flags=re.S)  # notes, not links
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert any(t.startswith("docs/") for t in local)
    for target in local:
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_page_is_in_the_nav():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in pages(value)]
        return []

    in_nav = set(pages(config["nav"]))
    written = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    generated = {*docs_reference.generated_page_paths(), "benchmarks.md"}
    assert written - in_nav == set(), "pages missing from the nav"
    assert in_nav - written - generated == set(), "nav entries without a page"

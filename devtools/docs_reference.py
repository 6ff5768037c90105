"""The documentation site's reference pages, generated from the code they describe.

* the configuration reference from the settings object (``brewcast.settings``): every
  field of every group, its variable, type, default and description;
* the HTTP API from the service's OpenAPI document (what ``GET /docs.json`` serves, built
  without starting a server), with the key scope each route needs;
* the command line from ``brewcast ... --help``.

``devtools/docs_hooks.py`` (a MkDocs hook) renders them into the site at build time, and
``tests/test_docs.py`` checks them: nothing here is copied by hand, so nothing drifts.
"""

from __future__ import annotations

import json
import re
import types
import typing
import warnings

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ENV_PREFIX = "BREWCAST_"
#: The generated pages, by their path in the site's ``docs/``.
CONFIGURATION_PAGE = "reference/configuration.md"
HTTP_API_PAGE = "reference/http-api.md"
CLI_PAGE = "reference/cli.md"
#: The width ``--help`` is rendered at (a code block on the page, not a terminal).
HELP_COLUMNS = 100
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")


# --- configuration --------------------------------------------------------------------


def settings_groups() -> list[tuple[str, str, dict[str, FieldInfo]]]:
    """``(class name, its docstring, its own fields)`` for each settings group, in the
    order ``Settings`` lists them, then ``Settings``'s own fields (home, seed)."""
    from brewcast import settings

    groups, seen = [], set()
    for cls in (*settings.Settings.__bases__, settings.Settings):
        own = {
            name: field
            for name, field in cls.model_fields.items()
            if name not in seen and name in cls.__annotations__
        }
        seen |= set(own)
        doc = " ".join((cls.__doc__ or "").split())
        groups.append((cls.__name__, doc, own))
    return groups


def setting_fields() -> dict[str, FieldInfo]:
    """Every settings field by name (the whole ``Settings`` object)."""
    from brewcast.settings import Settings

    return dict(Settings.model_fields)


def env_var(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def type_name(annotation: object) -> str:
    """A field's type as a reader writes it: ``float``, ``str | None``, ``"rows" | "partition"``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if origin is not None:
        args = ", ".join(type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in the environment (unset: ``—``)."""
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def constraints(field: FieldInfo) -> str:
    """``> 0``, ``≤ 1``, a pattern: what the value must satisfy beyond its type."""
    words = []
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    for item in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(item, attribute, None)
            if value is not None:
                words.append(f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            words.append(f"matches `{pattern}`")
    return ", ".join(words)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def configuration_markdown() -> str:
    """The configuration reference page: one table per settings group."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from brewcast/settings.py by devtools/docs_reference.py: edit the "
        "fields' descriptions there, not this page. -->",
        "",
        "Every setting of brewcast, generated from its one settings object "
        "(`brewcast.settings.Settings`, pydantic-settings). Each is read from the environment "
        f"variable `{ENV_PREFIX}<NAME>` when a command or the service starts; the defaults are "
        "the embedded mode, everything under `BREWCAST_HOME`. A dictionary is given as JSON "
        '(`BREWCAST_BREWERYPI_UNITS=\'{"FV01_Temperature": "°F"}\'`), a boolean as '
        "`true`/`false` or `1`/`0`. `—` means unset.",
        "",
    ]
    for name, doc, fields in settings_groups():
        if not fields:
            continue
        title = "Settings: home and seed" if name == "Settings" else name
        lines += [f"## {title}", ""]
        if name != "Settings":
            lines += [doc, ""]
        lines += [
            "| variable | type | default | description |",
            "|---|---|---|---|",
        ]
        for field_name, field in fields.items():
            limits = constraints(field)
            description = _cell(field.description or "")
            if limits:
                description += f" *({_cell(limits)})*"
            lines.append(
                f"| `{env_var(field_name)}` | {_cell(type_name(field.annotation))} "
                f"| `{_cell(default_text(field))}` | {description} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- HTTP API -------------------------------------------------------------------------


def openapi_document() -> dict:
    """The service's OpenAPI document, as ``GET /docs.json`` answers it, built without a
    server: BentoML's spec of the service class, completed by the service's own
    ``document_errors`` (a JSON round trip first: BentoML's status keys are integers)."""
    with warnings.catch_warnings():  # BentoML's and its dependencies' deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from serving.service import FermentationService, document_errors

        spec = json.loads(json.dumps(FermentationService.openapi_spec.asdict()))
    return document_errors(spec)


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    """``(METHOD, path, operation)`` for every operation of the document."""
    return [
        (method.upper(), path, operation)
        for path, item in spec.get("paths", {}).items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def route_access(method: str, path: str) -> str:
    """Which key scopes open ``method path`` once keys are in force."""
    from serving.access import needed_grant, scopes_with
    from serving.service import RequestGuard

    if not RequestGuard.needs_key(path):
        return "open"
    return ", ".join(scopes_with(needed_grant(method, path)))


def _summary_of(operation: dict) -> str:
    text = operation.get("description") or operation.get("summary") or ""
    return " ".join(re.sub(r"</?code>", "`", text).split())


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(schema: dict | None) -> str:
    """A property's type in a few words: ``string``, ``number | null``, ``array of Snapshot``,
    ``"SG" | "°P"``, a link to a component schema."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#schema-{name.lower()})"
    if "enum" in schema:
        return " \\| ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " \\| ".join(dict.fromkeys(_type_of(s) for s in schema[key]))
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_type_of(schema.get('items'))}"
    if isinstance(kind, list):
        return " \\| ".join(kind)
    return str(kind)


def _properties_table(schema: dict, components: dict) -> list[str]:
    """A table of an object schema's properties (a ``$ref`` resolved one level)."""
    if "$ref" in schema:
        schema = components.get(_ref_name(schema["$ref"]), {})
    properties = schema.get("properties") or {}
    if not properties:
        return []
    required = set(schema.get("required") or [])
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in properties.items():
        description = _cell(prop.get("description", ""))
        lines.append(
            f"| `{name}` | {_type_of(prop)} | {'yes' if name in required else 'no'} "
            f"| {description} |"
        )
    return [*lines, ""]


def http_api_markdown(spec: dict | None = None) -> str:
    """The HTTP API reference page: a table of every operation, one section each, then
    the schemas of the bodies."""
    spec = spec if spec is not None else openapi_document()
    components = spec.get("components", {}).get("schemas", {})
    ops = operations(spec)
    lines = [
        "# HTTP API reference",
        "",
        "<!-- Generated from the service's OpenAPI document by devtools/docs_reference.py: "
        "edit the routes' docstrings in serving/service.py, not this page. -->",
        "",
        "Every route of the BentoML service (`serving/service.py`), generated from the "
        "OpenAPI document it serves at `GET /docs.json` (the Swagger UI at `/` shows the same "
        "document). *Keys* says which key scopes open the route once any "
        "key is in force ([security and keys](../operations/security.md)); without any key "
        'the service is open. Every error is answered as `{"detail": "..."}`.',
        "",
        "| method | path | keys | what |",
        "|---|---|---|---|",
    ]
    for method, path, operation in ops:
        first = _summary_of(operation).split(". ")[0].rstrip(".")
        lines.append(
            f"| `{method}` | [`{path}`](#{_anchor(method, path)}) "
            f"| {route_access(method, path)} | {_cell(first)} |"
        )
    lines.append("")
    for method, path, operation in ops:
        lines += [f"## `{method} {path}` {{#{_anchor(method, path)}}}", ""]
        lines += [_summary_of(operation), ""]
        lines += [f"**Keys:** {route_access(method, path)}.", ""]
        parameters = operation.get("parameters") or []
        if parameters:
            lines += ["| parameter | in | type | required |", "|---|---|---|---|"]
            for parameter in parameters:
                lines.append(
                    f"| `{parameter['name']}` | {parameter.get('in', '')} "
                    f"| {_type_of(parameter.get('schema'))} "
                    f"| {'yes' if parameter.get('required') else 'no'} |"
                )
            lines.append("")
        body = operation.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                schema = content.get("schema") or {}
                if "$ref" in schema:  # a component: described once, under Schemas
                    lines += [f"**Body** (`{media}`): {_type_of(schema)}.", ""]
                else:  # a device's own push: its fields here
                    described = _cell(schema.get("description", ""))
                    lines += [f"**Body** (`{media}`): {described}", ""]
                    lines += _properties_table(schema, components)
        responses = operation.get("responses", {})
        statuses = ", ".join(
            f"`{status}` {_cell(response.get('description', ''))}"
            for status, response in sorted(responses.items())
        )
        lines += [f"**Answers:** {statuses}.", ""]
    lines += ["## Schemas", "", "The bodies' and answers' schemas, as `/docs.json` gives them.", ""]
    for name, schema in components.items():
        lines += [f"### `{name}` {{#schema-{name.lower()}}}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        lines += _properties_table(schema, components) or [f"Type: {_type_of(schema)}.", ""]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------


def cli_commands() -> list[tuple[str, ...]]:
    """Every command path of ``brewcast``: ``()`` for the top, ``("keys", "issue")``..."""
    import typer

    from application.cli import app

    paths: list[tuple[str, ...]] = []

    def walk(command, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def cli_help(path: tuple[str, ...]) -> str:
    """``brewcast <path> --help`` as printed at :data:`HELP_COLUMNS` columns."""
    from typer.testing import CliRunner

    from application.cli import app

    env = {"COLUMNS": str(HELP_COLUMNS), "NO_COLOR": "1", "TERM": "dumb"}
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="brewcast", env=env)
    if result.exit_code != 0:
        raise RuntimeError(f"brewcast {' '.join(path)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")


def cli_markdown() -> str:
    """The command-line reference page: every command's ``--help``."""
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from `brewcast ... --help` by devtools/docs_reference.py: edit the "
        "commands' help in application/cli.py, not this page. -->",
        "",
        "`brewcast` is installed into `.venv/bin` by `make setup` (the entry point "
        "`application.cli:app`). Every command reads its [settings](configuration.md) from "
        "the environment; `-v` before the command logs at DEBUG. What follows is each "
        "command's own `--help`.",
        "",
    ]
    for path in cli_commands():
        title = " ".join(("brewcast", *path))
        lines += [f"## `{title}`", "", "```text", cli_help(path), "```", ""]
    return "\n".join(lines)


# --- all of them ----------------------------------------------------------------------


def generated_page_paths() -> tuple[str, ...]:
    """The paths under ``docs/`` of the pages :func:`generated_pages` renders."""
    return (CONFIGURATION_PAGE, HTTP_API_PAGE, CLI_PAGE)


def generated_pages() -> dict[str, str]:
    """Every generated page's Markdown by its path under ``docs/``."""
    return {
        CONFIGURATION_PAGE: configuration_markdown(),
        HTTP_API_PAGE: http_api_markdown(),
        CLI_PAGE: cli_markdown(),
    }

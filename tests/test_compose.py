"""docker-compose.yml, checked statically (no Docker engine on these machines): it parses,
every command exists in the project's environment, URLs point at services listening on
those ports, settings are real settings, and the GPU is reserved for the service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brewcast.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BIN = Path(sys.executable).parent
#: Where the images listen when the file does not say (their documented defaults).
IMAGE_PORTS = {"postgres": 5432, "redis": 6379, "minio": 9000}


def _help(*command: str) -> str:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-1000:]
    return result.stdout


def _listening(name: str, service: dict) -> set[int]:
    ports = {int(str(p).split(":")[-1]) for p in service.get("ports", [])}
    command = service.get("command") or []
    if "--port" in command:
        ports.add(int(command[command.index("--port") + 1]))
    env = service.get("environment") or {}
    if "AIRFLOW__API__PORT" in env and command[:2] == ["airflow", "api-server"]:
        ports.add(int(env["AIRFLOW__API__PORT"]))
    if name in IMAGE_PORTS:
        ports.add(IMAGE_PORTS[name])
    return ports


def test_every_service_has_an_image_and_long_runners_a_healthcheck():
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), name
    for name in ("postgres", "redis", "minio", "mlflow", "airflow-apiserver", "serving"):
        assert "healthcheck" in SERVICES[name], name
    assert (PROJECT_ROOT / "Dockerfile").exists()


def test_dependencies_and_volumes_are_declared():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for target in service.get("depends_on") or {}:
            assert target in SERVICES, f"{name} depends on unknown {target}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
            else:
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} missing"


def test_commands_exist_in_the_environment():
    from application.cli import app

    brewcast_commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    airflow_help = _help("airflow")
    checked = set()
    for name, service in SERVICES.items():
        command = service.get("command")
        if not command or service.get("image", "").startswith(("postgres", "redis", "minio")):
            continue
        tool = command[0]
        if tool == "brewcast":
            assert command[1] in brewcast_commands, name
            options = _help("brewcast", command[1])
        elif tool == "airflow":
            sub = command[1]
            assert re.search(rf"^\s+{re.escape(sub)}\s", airflow_help, re.M), f"{name}: {sub}"
            options = _help(*command[:3]) if sub in ("db", "celery") else _help(*command[:2])
        elif tool == "mlflow":
            options = _help("mlflow", command[1])
        else:
            pytest.fail(f"{name}: unexpected command {command}")
        for flag in (c for c in command if c.startswith("--")):
            assert flag in options, f"{name}: {tool} has no option {flag}"
        checked.add(name)
    assert {"mlflow", "serving", "airflow-worker", "airflow-scheduler"} <= checked


def test_urls_point_at_services_listening_there():
    listening = {name: _listening(name, service) for name, service in SERVICES.items()}
    text = yaml.safe_dump(COMPOSE)
    urls = re.findall(
        r"(?:https?|redis|postgresql\+psycopg2)://(?:[^@/\s]+@)?([a-z0-9-]+):(\d+)", text
    )
    assert urls
    for host, port in urls:
        if host == "localhost":
            continue
        assert host in SERVICES, f"URL to unknown service {host}"
        assert int(port) in listening[host], f"{host} does not listen on {port}"


def test_brewcast_settings_in_the_environment_are_real_settings():
    fields = {f"BREWCAST_{name.upper()}" for name in Settings.model_fields}
    for name, service in SERVICES.items():
        for key in service.get("environment") or {}:
            if key.startswith("BREWCAST_"):
                assert key in fields, f"{name}: {key} is not a brewcast setting"


def test_the_service_reserves_a_gpu_and_the_image_has_the_code():
    devices = SERVICES["serving"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    packages = re.search(r"packages = \[(.*?)\]", pyproject).group(1)
    for package in [*re.findall(r'"(\w+)"', packages), "dags"]:
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert "--extra production" in dockerfile  # boto3 for MLflow artifacts on MinIO

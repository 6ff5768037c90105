"""Long-running servers in subprocesses (MLflow, BentoML, Airflow), for the demo (and the
tests and benchmarks, which start the same servers): started in their own process group,
waited for on a health URL, stopped as a group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from application import http
from brewcast.paths import Paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal ``pid``'s process group, wait, and end any descendant that left the group
    (BentoML puts each worker in a group of its own, so a group signal misses them). What
    does not stop within ``timeout`` is killed: a stuck server is never left behind."""
    import psutil

    try:
        root = psutil.Process(pid)
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    _, alive = psutil.wait_procs([root], timeout=timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
    _, alive = psutil.wait_procs(descendants, timeout=0 if sig == signal.SIGKILL else 10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def brewcast_command(*args: str) -> list[str]:
    """``brewcast ARGS`` from this environment (the console script beside this Python)."""
    return [str(Path(sys.executable).with_name("brewcast")), *args]


class ServerProcess:
    def __init__(
        self,
        command: list[str],
        health_url: str,
        log_file: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ):
        self.command, self.health_url, self.log_file = command, health_url, Path(log_file)
        self.name = name or Path(command[0]).name  # for errors: "Airflow", "MLflow", ...
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 120.0, probe: http.Policy = http.HEALTH) -> ServerProcess:
        """Start the command; return once its health URL answers 200 (each ``probe`` of it
        under that policy), or stop it and raise after ``timeout`` s."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() < started + timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} ({self.command[0]}) exited with {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            last = http.probe(self.health_url, probe) or ""
            if not last:
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.name} not healthy at {self.health_url} after {time.monotonic() - started:.0f}"
            f" s (last probe: {last}; connect timeout {probe.connect:g} s, read {probe.read:g} s)"
            f"; see {self.log_file}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_tree(self.process.pid, sig, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)  # reap it

    def kill(self) -> None:
        """kill -9 the whole group: what a crash looks like."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def dags_folder() -> Path:
    """The DAG files Airflow runs: ``AIRFLOW__CORE__DAGS_FOLDER`` when set (an installed
    brewcast, a deployment), else the ``dags/`` folder of this source tree."""
    configured = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[1] / "dags"
    if not checkout.is_dir():
        raise RuntimeError(
            f"no DAG folder at {checkout}: set AIRFLOW__CORE__DAGS_FOLDER to brewcast's dags/"
        )
    return checkout


def airflow_env(
    brewcast_home: Path,
    sql_alchemy_conn: str | None = None,
    executor: str = "LocalExecutor",
    **extra: str,
) -> dict[str, str]:
    """Environment for Airflow in embedded mode: AIRFLOW_HOME under ``BREWCAST_HOME``,
    SQLite metadata DB (unless ``sql_alchemy_conn``), this project's ``dags/``, no examples,
    new DAGs unpaused (their asset triggers work from the start)."""
    home = Path(brewcast_home).resolve()
    airflow_home = Paths(home).airflow_home
    airflow_home.mkdir(parents=True, exist_ok=True)
    return {
        "BREWCAST_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn
        or f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        # standalone and the workers spawn `airflow ...`: this environment's one first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def bento_server(
    brewcast_home: Path,
    port: int,
    service: str = "serving.service:FermentationService",
    **env: str,
) -> ServerProcess:
    """``bentoml serve SERVICE`` (brewcast's by default) for ``brewcast_home`` (its BentoML
    store under it), ready when ``/readyz`` answers."""
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    home = Path(brewcast_home)
    return ServerProcess(
        [
            bentoml,
            "serve",
            service,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        health_url=f"http://127.0.0.1:{port}/readyz",
        log_file=home / f"bento-{port}.log",
        env={
            "BREWCAST_HOME": str(home),
            "BENTOML_HOME": str(Paths(home).bentoml_home),
            "BENTOML_DO_NOT_TRACK": "true",
            **env,
        },
        name="the BentoML service",
    )


class MlflowServer(ServerProcess):
    """A real ``mlflow server`` (tests, the demo) on a free port."""

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        artifacts_dir = Path(artifacts_dir)
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        super().__init__(
            [
                str(mlflow_cli),
                "server",
                "--backend-store-uri",
                backend_store_uri,
                "--artifacts-destination",
                str(artifacts_dir),
                "--host",
                host,
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            health_url=f"{self.url}/health",
            log_file=log_file or artifacts_dir.parent / f"mlflow-server-{self.port}.log",
            env={
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
                # the job runner adds 7 consumer processes and ~8 s of start-up; unused
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            name="MLflow",
        )

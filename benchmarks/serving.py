"""Serving: the BentoML service vs BentoML's own floor (an empty service configured the
same, with the same request model: what the framework costs) vs a bare Starlette+onnxruntime
app (the floor of HTTP cost) vs onnxruntime in-process (the ceiling), same model, same
rows, measured in one run.

A load generator in its own process (wrk when installed, else httpx) sends batch-1 requests
in a closed loop at concurrency 1, 16 and 64, 64-row requests at concurrency 16, and batch-1
requests in an open loop at 100 and at 2,000 req/s (the same offered load to every server;
latency from the scheduled send); non-2xx are counted apart, and so are open-loop requests
that found every allowed connection busy (``skipped``). Every server runs with 1 worker
process, then with 2 (one per core).
Reported:
req/s, rows/s, p50/p99, the servers' CPU time per request (their whole process trees), and
the ratios BentoML / bare, BentoML floor / bare (the framework's share of the gap) and
BentoML / BentoML floor (brewcast's own share).
Targets on 2 cores: batch-1 >= 2,000 req/s at p99 <= 20 ms; 64-row >= 150,000 rows/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from application.processes import ServerProcess, bento_server, free_port
from benchmarks import small_model
from brewcast.schema import FEATURES

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout

#: (body, rows per request, concurrency or outstanding limit, open-loop rate or None)
SCENARIOS = (
    ("batch1", 1, 1, None),
    ("batch1", 1, 16, None),
    ("batch1", 1, 64, None),
    ("batch64", 64, 16, None),
    ("batch1", 1, 64, 100.0),
    # the target's own load: 2,000 batch-1 requests a second, offered whatever the answers
    ("batch1", 1, 256, 2000.0),
)
SECONDS = 6.0


def _bodies(work: Path, folder: Path) -> dict[str, Path]:
    test = pd.read_parquet(work / "test.parquet")
    features = [c.name for c in FEATURES.by_role("feature")]
    out = {}
    for name, n in (("batch1", 1), ("batch64", 64)):
        rows = json.loads(test[features].head(n).to_json(orient="records"))
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"rows": rows}))
        out[name] = path
    return out


def _in_process(work: Path) -> dict:
    from brewcast.contract import OUTPUTS, raw_inputs
    from serving.runtime import create_session

    session = create_session((work / "model.onnx").read_bytes(), prefer_gpu=False, threads=1)
    test = pd.read_parquet(work / "test.parquet")
    out = {}
    for name, n in (("batch1", 1), ("batch64", 64)):
        inputs = raw_inputs(test.head(n))
        times = []
        for _ in range(300):
            started = time.perf_counter()
            session.run(inputs, list(OUTPUTS))
            times.append(time.perf_counter() - started)
        p50 = statistics.median(times)
        out[name] = {"p50_ms": p50 * 1000, "rows_per_s": n / p50}
    return out


def _log_rows(work: Path, folder: Path, body: Path) -> list[dict]:
    """The prediction-log rows of a request body's rows, as the service builds them."""
    from brewcast.settings import Settings
    from serving.model import served_model

    model = served_model(
        (work / "model.onnx").read_bytes(), "1", "ceiling", Settings(home=folder / "ceiling")
    )
    records = json.loads(body.read_text())["rows"]
    return model.score(records, pd.Timestamp.now("UTC").to_pydatetime())


def _log_ceiling(url: str, rows: list[dict], seconds: float) -> float:
    """Rows/s the prediction log alone commits at ``url``: sync mode, ``rows`` a commit
    (fresh ids each time), one writer, in process, nothing else running."""
    from serving.prediction_log import PredictionLog, new_prediction_ids

    log = PredictionLog(url, "sync")
    try:
        written, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            ids = new_prediction_ids(len(rows))
            log.write([{**row, "prediction_id": i} for row, i in zip(rows, ids, strict=True)])
            written += len(rows)
        return written / (time.perf_counter() - began)
    finally:
        log.close()


def _log_ceilings(work: Path, folder: Path, body: Path, seconds: float = 4.0) -> dict:
    """The prediction log's ceiling on SQLite (the default) and on this machine's PostgreSQL
    (production's database; measured in a scratch database when the server is there). A
    service that logs every row before answering cannot serve more rows/s than its log
    commits; on SQLite that holds for any number of workers (their commits take turns)."""
    rows = _log_rows(work, folder, body)
    out: dict = {"rows_per_commit": len(rows)}
    out["sqlite"] = _log_ceiling(f"sqlite:///{folder / 'ceiling' / 'log.db'}", rows, seconds)
    with _scratch_postgresql("brewcast_bench") as (url, why_not):
        out["postgresql"] = _log_ceiling(url, rows, seconds) if url else why_not
    return out


@contextlib.contextmanager
def _scratch_postgresql(prefix: str) -> Iterator[tuple[str | None, str | None]]:
    """A scratch database on this machine's PostgreSQL for the duration: (its URL, None),
    or (None, why it could not be made) where no server answers."""
    import sqlalchemy as sa

    from devtools.postgres import LOCAL_POSTGRES, scratch_postgres_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_postgres_database(prefix))
        except sa.exc.OperationalError as exc:
            yield None, f"not measured: no PostgreSQL at {LOCAL_POSTGRES} ({exc.orig})"
            return
        yield url, None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a server's process tree so far (its workers included)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _load(url: str, concurrency: int, body: Path, rate: float | None = None) -> dict:
    extra = [str(rate)] if rate else []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            url,
            str(concurrency),
            str(SECONDS),
            str(body),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Worker processes per server: one (the per-request overhead, process against process)
#: and one per core of these machines (what a dedicated 2-core host would run).
WORKERS = (1, 2)


def _servers(
    home: Path, work: Path, tmp: Path, workers: int, postgresql: str | None
) -> dict[str, tuple]:
    """brewcast's BentoML service, BentoML's floor and the bare app, each with ``workers``
    processes, and brewcast again with its prediction log on PostgreSQL at ``postgresql``
    (production's set-up) when given: (server, /predict URL)."""
    bento_port, floor_port, bare_port = free_port(), free_port(), free_port()
    brewcast_env = {
        "BREWCAST_SERVING_POLL_SECONDS": "0",
        "BREWCAST_SERVING_THREADS": "1",
        "BREWCAST_SERVING_WORKERS": str(workers),
    }
    bento = bento_server(home, bento_port, **brewcast_env)
    floor = bento_server(
        home,
        floor_port,
        "benchmarks.bentoml_floor:BentoMLFloor",
        BREWCAST_SERVING_WORKERS=str(workers),
    )
    bare = ServerProcess(
        [
            str(Path(sys.executable).with_name("uvicorn")),
            "benchmarks.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(bare_port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        f"http://127.0.0.1:{bare_port}/healthz",
        tmp / f"bare-{workers}.log",
        {"BARE_MODEL": str(work / "model.onnx")},
        cwd=PROJECT_ROOT,
    )
    servers = {
        "bentoml": (bento, f"http://127.0.0.1:{bento_port}/predict"),
        "bentoml_floor": (floor, f"http://127.0.0.1:{floor_port}/predict"),
        "bare": (bare, f"http://127.0.0.1:{bare_port}/predict"),
    }
    if postgresql:
        port = free_port()
        on_postgresql = bento_server(
            home, port, BREWCAST_PREDICTION_LOG_URL=postgresql, **brewcast_env
        )
        servers[POSTGRESQL] = (on_postgresql, f"http://127.0.0.1:{port}/predict")
    return servers


#: brewcast with its prediction log on this machine's PostgreSQL (a scratch database).
POSTGRESQL = "bentoml_postgresql"


def _compare(home: Path, work: Path, tmp: Path, bodies: dict, workers: int) -> dict:
    """All servers up at once; each scenario loads them one after the other, back to back,
    so that the machine's drift over minutes (2x here) falls on both sides of a ratio."""
    import sqlalchemy as sa

    results: dict = {"workers": workers, "bentoml": {}, "bentoml_floor": {}, "bare": {}}
    with _scratch_postgresql("brewcast_serving") as (postgresql, why_not):
        results[POSTGRESQL] = {} if postgresql else why_not
        metadata = _load_all(home, work, tmp, bodies, workers, postgresql, results)
        if postgresql:  # what reached the database, counted there
            engine = sa.create_engine(postgresql)
            with engine.connect() as connection:
                results["postgresql_rows_logged"] = connection.scalar(
                    sa.text("SELECT count(*) FROM predictions")
                )
            engine.dispose()
    stats = metadata["prediction_log"]
    results["execution_provider"] = metadata["execution_provider"]
    results["prediction_log"] = {
        **stats,
        "rows_per_commit": stats["rows_written"] / max(stats["commits"], 1),
    }
    for name, over, under in RATIOS:
        results[name] = {
            key: results[over][key]["req_per_s"] / results[under][key]["req_per_s"]
            for key in results[over]
        }
    return results


def _load_all(
    home: Path,
    work: Path,
    tmp: Path,
    bodies: dict,
    workers: int,
    postgresql: str | None,
    results: dict,
) -> dict:
    """Every scenario on every server, into ``results[server][scenario]``; brewcast's
    /metadata afterwards."""
    servers = _servers(home, work, tmp, workers, postgresql)
    try:
        for server, url in servers.values():
            server.start(timeout=180)
            _load(url, 4, bodies["batch1"])  # warm-up
        for body, rows, concurrency, rate in SCENARIOS:
            key = f"{body}_rate{rate:g}" if rate else f"{body}_c{concurrency}"
            for name, (server, url) in servers.items():
                print(f"serving: {name} x{workers} {key} ...", flush=True)
                cpu_before = _cpu_seconds(server.pid)
                r = _load(url, concurrency, bodies[body], rate)
                cpu = _cpu_seconds(server.pid) - cpu_before
                r["rows_per_s"] = r["req_per_s"] * rows
                r["cpu_ms_per_request"] = 1000 * cpu / max(r["requests"] + r["non_2xx"], 1)
                results[name][key] = r
        # How well the prediction log grouped its commits (the answering worker's counts).
        metadata_url = servers["bentoml"][1].replace("/predict", "/metadata")
        with urllib.request.urlopen(metadata_url) as m:
            return json.load(m)
    finally:
        for server, _ in servers.values():
            server.stop()


#: (JSON key, server, against server): req/s of one over the other, per scenario.
RATIOS = (
    ("ratio_bentoml_to_bare_req_per_s", "bentoml", "bare"),
    ("ratio_floor_to_bare_req_per_s", "bentoml_floor", "bare"),
    ("ratio_bentoml_to_floor_req_per_s", "bentoml", "bentoml_floor"),
)


def run(workers: tuple[int, ...] = WORKERS) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        print("serving: training a model to serve ...", flush=True)
        work = small_model(
            home,
            seed=3,
            register=True,
            epochs=8,
            patience=3,
            gate_max_ece=1.0,
            gate_max_slice_ece=1.0,
            gate_max_abs_bias=1.0,
        )
        bodies = _bodies(work, Path(tmp))
        results: dict = {
            "in_process": _in_process(work),
            "prediction_log_ceiling": _log_ceilings(work, Path(tmp), bodies["batch64"]),
            "cpus": os.cpu_count(),
        }
        results["by_workers"] = {
            str(n): _compare(home, work, Path(tmp), bodies, n) for n in workers
        }
        first = results["by_workers"][str(workers[0])]
        results["execution_provider"] = first.get("execution_provider")
        results["closed_loop_generator"] = first["bentoml"]["batch1_c1"]["generator"]
        return results


def _postgresql_line(one: dict) -> str:
    """brewcast with its log on PostgreSQL, per scenario, beside brewcast on SQLite."""
    on_postgresql = one.get(POSTGRESQL)
    if not isinstance(on_postgresql, dict):
        return f"\nbrewcast with its log on PostgreSQL: {on_postgresql}."
    cells = "; ".join(
        f"{key} {r['req_per_s']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, "
        f"{r['cpu_ms_per_request']:.2f} CPU ms/req "
        f"({r['req_per_s'] / one['bentoml'][key]['req_per_s']:.0%} of SQLite's)"
        for key, r in on_postgresql.items()
    )
    rows = one.get("postgresql_rows_logged")
    return (
        f"\nbrewcast with its log on PostgreSQL (sync, COPY; {rows:,} rows counted in the "
        f"database afterwards): {cells}."
    )


def markdown(result: dict) -> str:
    lines = []
    for workers, one in result["by_workers"].items():
        lines += [
            f"\nEach server with {workers} worker process{'es' if workers != '1' else ''}:\n",
            "| scenario | BentoML req/s | p50 / p99 ms | non-2xx + skipped (all) | CPU ms/req "
            "| floor req/s | p50 / p99 ms | CPU ms/req | bare req/s | p50 / p99 ms | CPU ms/req "
            "| BentoML / bare | floor / bare | BentoML / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in one["ratio_bentoml_to_bare_req_per_s"]:
            b, fl, f = (one[name][key] for name in ("bentoml", "bentoml_floor", "bare"))
            lines.append(
                f"| {key} | {b['req_per_s']:.0f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
                f"{sum(r['non_2xx'] + r.get('skipped', 0) for r in (b, fl, f))} | "
                f"{b['cpu_ms_per_request']:.2f} | "
                f"{fl['req_per_s']:.0f} | {fl['p50_ms']:.1f} / {fl['p99_ms']:.1f} | "
                f"{fl['cpu_ms_per_request']:.2f} | {f['req_per_s']:.0f} | "
                f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} | {f['cpu_ms_per_request']:.2f} | "
                + " | ".join(f"{one[name][key]:.0%}" for name, _, _ in RATIOS)
                + " |"
            )
        log_stats = one.get("prediction_log")
        if log_stats:
            lines.append(
                f"\nBentoML's prediction log (sync, SQLite; the answering worker's count): "
                f"{log_stats['rows_written']:,} rows in {log_stats['commits']:,} commits "
                f"({log_stats['rows_per_commit']:.1f} rows each)."
            )
        lines.append(_postgresql_line(one))
    ceiling = result.get("prediction_log_ceiling")
    if ceiling:
        rates = ", ".join(
            f"{database} {rate:,.0f} rows/s" if isinstance(rate, float) else f"{database} {rate}"
            for database, rate in ceiling.items()
            if database != "rows_per_commit"
        )
        lines.append(
            f"\nThe prediction log alone (sync, {ceiling['rows_per_commit']} rows a commit, "
            f"one writer, in process): {rates}."
        )
    ip = result["in_process"]
    lines.append(
        f"\nClosed loops by {result.get('closed_loop_generator', 'httpx')}, the open loops by "
        "raw HTTP/1.1 on asyncio (both in their own process, on the same cores as the "
        "servers); an open loop's req/s is what was answered of what it offered."
    )
    lines.append(
        f"\nIn-process onnxruntime (1 thread): batch 1 p50 {ip['batch1']['p50_ms']:.3f} ms "
        f"({ip['batch1']['rows_per_s']:.0f} rows/s); batch 64 p50 "
        f"{ip['batch64']['p50_ms']:.3f} ms ({ip['batch64']['rows_per_s']:.0f} rows/s)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    outcome = run()
    print(json.dumps(outcome, indent=2))
    print(markdown(outcome))

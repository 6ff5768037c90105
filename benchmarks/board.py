"""The cellar board in a real browser (``python -m benchmarks.board``): the time from asking
Chromium for ``/board`` to the page showing every card, for 50 running batches with 30 days
of 15-minute readings each, served by the real BentoML service (target: under 1 s). The
cellar also holds 200 finished batches with their forecasts near the finish, so every card
carries its brand's track record and its warnings, as in a cellar with a history.

The service is started on a home whose prediction log already holds the batches and their
readings; its own background forecaster forecasts them at start-up, as in a cellar. Each
load is a fresh page (no cache), measured from navigation to the 50th card with a forecast,
so the page, its script, ``GET /cellar`` and the drawing are all inside it.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import small_model

BATCHES = 50
FINISHED = 200
DAYS = 30
LOADS = 7
TARGET_S = 1.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]


def _fill(home: Path, now: datetime) -> None:
    """50 running batches, each with a device and 30 days of gravity and temperature."""
    from brewcast.settings import Settings
    from serving.prediction_log import make_engine
    from serving.readings import Push, ReadingsStore

    store = ReadingsStore(make_engine(Settings(home=home).prediction_log))
    start = now - timedelta(days=DAYS)
    for b in range(BATCHES):
        fermenter = f"FV{b:02d}"
        store.start_batch(
            {"batch_id": f"C{b:02d}", "fermenter": fermenter, "start_time": start,
             "brand": "golden_pilsner", "yeast_strain": "german_lager",
             "original_gravity_plato": 12.0}
        )  # fmt: skip
        store.assign(f"bench:{fermenter}", fermenter)
        rows = []
        for k in range(1, DAYS * 96):
            at = start + timedelta(minutes=15 * k)
            rows.append((at, "gravity_plato", 12.0 - 9.0 * min(k / (DAYS * 80), 1.0)))
            rows.append((at, "temperature_c", 12.0 + 0.01 * (k % 7)))
        store.store(Push(f"bench:{fermenter}", rows), now)
    _finished(store.engine, now)
    store.engine.dispose()


def _finished(engine, now: datetime) -> None:
    """:data:`FINISHED` ended batches, each with a forecast 24, 48 and 72 h before its
    finish (as the service keeps them) and its finish as ``/feedback`` stores it."""
    from brewcast.readings_store import batches
    from serving.cellar import ForecastBook
    from serving.prediction_log import create_tables, labels

    create_tables(engine)
    book, finishes = ForecastBook(engine), []
    for b in range(FINISHED):
        start = now - timedelta(days=DAYS + 10 + b * 0.5)
        finished = start + timedelta(days=8 + b % 5)
        with engine.begin() as conn:
            conn.execute(
                batches.insert().values(
                    batch_id=f"F{b:03d}", fermenter=f"FV{b % BATCHES:02d}", start_time=start,
                    end_time=finished + timedelta(days=2), brand="golden_pilsner",
                    yeast_strain="german_lager",
                )
            )  # fmt: skip
        forecasts = []
        for hours in (72, 48, 24):
            at = finished - timedelta(hours=hours)
            predicted = finished + timedelta(hours=(b % 7) - 3)
            window = {
                "earliest": predicted - timedelta(hours=12),
                "latest": predicted + timedelta(hours=12),
            }
            forecasts.append(
                {"prediction_id": f"F{b:03d}-{hours}", "batch_id": f"F{b:03d}", "at": at,
                 "model_version": "1", "state": "fermenting", "backcast": False,
                 "probability": 0.5, "predicted_finish_time": predicted.isoformat(),
                 "finish_time_80": {k: v.isoformat() for k, v in window.items()}}
            )  # fmt: skip
        book.record(forecasts, now)
        finishes.append(
            {
                "received_at": now,
                "batch_id": f"F{b:03d}",
                "finished_at": finished,
                "source": "feedback",
            }
        )
    with engine.begin() as conn:
        conn.execute(labels.insert(), finishes)


def _loads(url: str) -> list[float]:
    """Seconds from navigation to every card showing its forecast, one fresh page each."""
    from playwright.sync_api import sync_playwright

    cards = 'article[data-batch] [data-field="probability"]'
    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        for _ in range(LOADS + 1):  # the first warms the browser and the server
            page = browser.new_context(viewport={"width": 1024, "height": 768}).new_page()
            started = time.perf_counter()
            page.goto(f"{url}/board", wait_until="commit")
            page.wait_for_function(
                f"document.querySelectorAll('{cards}').length >= {BATCHES}", timeout=60_000
            )
            times.append(time.perf_counter() - started)
            page.context.close()
        browser.close()
    return times[1:]


def _forecasted(url: str, timeout: float = 300.0) -> None:
    """Wait for the service's start-up forecasts of every batch."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        board = httpx.get(f"{url}/cellar", timeout=30).json()["batches"]
        if len(board) == BATCHES and all(b.get("forecast") for b in board):
            return
        time.sleep(2)
    raise TimeoutError(f"the service had not forecast its {BATCHES} batches in {timeout:.0f} s")


def run() -> dict:
    import httpx

    from application.processes import bento_server, free_port

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        print("board: training and registering a model to serve ...", flush=True)
        small_model(  # as benchmarks.serving's, which its gate lets through
            home, seed=3, register=True, epochs=8, patience=3,
            gate_max_ece=1.0, gate_max_slice_ece=1.0, gate_max_abs_bias=1.0,
        )  # fmt: skip
        _fill(home, datetime.now(UTC))
        port = free_port()
        server = bento_server(home, port, BREWCAST_BOARD_OPEN="true")
        server.start(timeout=180)
        try:
            url = f"http://127.0.0.1:{port}"
            _forecasted(url)
            data = []
            for _ in range(LOADS):
                started = time.perf_counter()
                httpx.get(f"{url}/cellar", timeout=60).raise_for_status()
                data.append(time.perf_counter() - started)
            print(f"board: {LOADS} loads of {url}/board in Chromium ...", flush=True)
            times = _loads(url)
        finally:
            server.stop()
    return {
        "board_load_p50_s": statistics.median(times),
        "board_load_max_s": max(times),
        "cellar_data_p50_s": statistics.median(data),
    }


def markdown(result: dict) -> str:
    met = "yes" if result["board_load_max_s"] <= TARGET_S else "no"
    return (
        f"| the board, {BATCHES} batches x {DAYS} days, in Chromium: median / slowest of "
        f"{LOADS} loads | {result['board_load_p50_s']:.2f} / {result['board_load_max_s']:.2f} s"
        f" | {TARGET_S} s | {met} |\n"
        f"| its data alone (`GET /cellar`, {FINISHED} finished batches beside): median of "
        f"{LOADS} | {result['cellar_data_p50_s'] * 1000:.0f} ms | - | - |\n"
    )


def main() -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()

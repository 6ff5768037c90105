"""`brewcast demo` end to end (MLflow, Airflow standalone, BentoML, replay, monitoring), its
pages looked at in headless Chromium, and `brewcast stop` ending exactly what it started.

The demo also covers the embedded Airflow: `brewcast airflow standalone` on SQLite with
LocalExecutor, the simple auth manager's admin login, and the three DAGs over REST."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import psutil
import pytest

from application import demo
from application.processes import ServerProcess, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the source checkout

BREWCAST = str(Path(sys.executable).with_name("brewcast"))
#: The day the demo test's live weeks end: the world the demo replayed on 2026-12-03.
DEMO_LIVE_UNTIL = "2026-12-02"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Chromium's own network chatter is refused on these machines: keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _sleeper(tmp_path: Path) -> ServerProcess:
    """A process group with a child, like the servers the demo starts."""
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    process = ServerProcess([sys.executable, "-c", script], "http://unused", tmp_path / "s.log")
    process.process = subprocess.Popen(process.command, start_new_session=True)
    return process


def test_stop_ends_what_the_demo_recorded_and_nothing_else(tmp_path):
    home = tmp_path / "home"
    demo.demo_dir(home).mkdir(parents=True)
    assert demo.stop(home) == []  # nothing started: nothing to do
    ours, other = _sleeper(tmp_path), _sleeper(tmp_path)
    try:
        time.sleep(0.5)
        children = psutil.Process(ours.pid).children(recursive=True)
        assert children
        demo._record(home, "ours", ours)
        # A pid recorded by an earlier demo and since reused by another process is left alone.
        pids = json.loads((demo.demo_dir(home) / "pids.json").read_text())
        pids["recycled"] = {"pid": other.pid, "started": 0.0}
        (demo.demo_dir(home) / "pids.json").write_text(json.dumps(pids))
        assert demo.stop(home) == ["ours"]
        assert ours.process.wait(timeout=10) is not None
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        assert other.process.poll() is None
        assert not (demo.demo_dir(home) / "pids.json").exists()
    finally:
        for process in (ours, other):
            process.stop(signal.SIGKILL)


def test_demo_world_lies_in_the_past_with_the_drift_inside_the_live_weeks():
    world = demo.DemoWorld(history_days=100, live_days=30, drift_after_days=10)
    assert world.start < world.live_start < world.drift_start < world.live_end
    assert world.live_end < demo.pd.Timestamp.now("UTC")  # validation refuses the future
    env = world.environment()
    assert env["BREWCAST_DRIFT_START"] == f"{world.drift_start:%Y-%m-%d}"
    from brewcast.settings import Settings

    settings = Settings(**{k.removeprefix("BREWCAST_").lower(): v for k, v in env.items()})
    assert settings.drift_value == "german_lager" and settings.simulation_days == 150


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `make test` installs it")
def test_demo_runs_the_whole_loop_and_its_pages_render(tmp_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    ports = {"mlflow": free_port(), "airflow": free_port(), "serving": free_port()}
    # Airflow's tasks inherit these: a shorter fit keeps the test's minutes down.
    env = {
        **os.environ,
        "BREWCAST_HOME": str(home),
        "BREWCAST_EPOCHS": "25",
        "BREWCAST_BOOTSTRAP_REPLICATES": "100",
    }
    command = [
        BREWCAST,
        "demo",
        "--history-days",
        "240",
        "--live-days",
        "35",
        "--drift-after-days",
        "7",
        "--fermenters",
        "10",
        # the same world every day (one ending yesterday is another world each day: on
        # 2026-12-07 its model failed the gate, interval coverage in the no-slope bucket)
        "--live-until",
        DEMO_LIVE_UNTIL,
        *[f"--{name}-port={port}" for name, port in ports.items()],
    ]
    shots = Path(os.environ.get("BREWCAST_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        assert "brewcast demo: done" in out
        assert re.search(r"Latest forecast \S+ \(\w+\): finishes .* 80%: .* 95%: ", out), out[
            -3000:
        ]
        assert (home / "airflow" / "airflow.db").exists()  # embedded: SQLite under HOME
        urls = {
            line.split()[0]: line.split()[1]
            for line in (raw.strip() for raw in out.splitlines())
            if len(line.split()) > 1 and line.split()[1].startswith(("http://", "file://"))
        }
        # The service serves the champion the summary names, on the CPU here (no GPU).
        metadata = httpx.get(f"http://127.0.0.1:{ports['serving']}/metadata", timeout=10).json()
        assert f"(champion: version {metadata['model']['model_version']})" in out
        assert metadata["execution_provider"] == "CPUExecutionProvider"
        predictions = int(out.split(" predictions served")[0].split()[-1])
        assert predictions > 500
        # the batches the service said ready: each an asset event in Airflow, exactly once
        serving = f"http://127.0.0.1:{ports['serving']}"
        events = _delivered_ready_events(serving)
        assert f"{serving}/board" in out and events
        airflow = demo.AirflowApi(f"http://127.0.0.1:{ports['airflow']}").server
        (ready,) = airflow.get("/assets", params={"uri_pattern": "cellar/batch-ready"}).json()[
            "assets"
        ]
        asset_events = airflow.get(
            "/assets/events", params={"asset_id": ready["id"], "limit": 1000}
        ).json()["asset_events"]
        assert sorted(e["extra"]["event_id"] for e in asset_events) == sorted(
            e["event_id"] for e in events
        )

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 800})

            page.goto(urls["monitoring"])
            page.get_by_text("Comparing").first.wait_for(timeout=60_000)
            bias = page.get_by_text("all/bias", exact=True).first
            bias.wait_for(timeout=30_000)
            with contextlib.suppress(PlaywrightError):  # MLflow's assistant panel, if shown
                page.get_by_role("button", name="Close").first.click(timeout=3_000)
            bias.scroll_into_view_if_needed()  # the windows' metrics side by side
            page.screenshot(path=shots / "mlflow-compare.png")

            # the champion's run: its families and baselines, the same metric keys
            tall = browser.new_page(viewport={"width": 1400, "height": 2300})
            tall.goto(urls["models"])
            tall.get_by_text("test/auc", exact=True).first.wait_for(timeout=60_000)
            tall.get_by_text("logistic_regression (baseline)").first.wait_for(timeout=30_000)
            assert tall.get_by_text("(candidate)").count() >= 1
            with contextlib.suppress(PlaywrightError):
                tall.get_by_role("button", name="Close").first.click(timeout=3_000)
            tall.get_by_text("Run details", exact=True).first.scroll_into_view_if_needed()
            tall.wait_for_timeout(1000)
            tall.screenshot(path=shots / "mlflow-models.png")
            tall.close()

            page.goto(urls["training"])
            page.get_by_text("brewcast-training").first.wait_for(timeout=60_000)
            page.get_by_text("train-").first.wait_for(timeout=30_000)  # the training run
            page.screenshot(path=shots / "mlflow-training.png")

            airflow = f"http://127.0.0.1:{ports['airflow']}"
            trained = [
                run
                for run in demo.AirflowApi(airflow).runs("fermentation_training")
                if run["run_type"] == "asset_triggered" and run["state"] == "success"
            ]
            assert trained, "no asset-triggered training run succeeded"
            run_id = urllib.parse.quote(trained[-1]["dag_run_id"])
            page.goto(f"{airflow}/dags/fermentation_training/runs/{run_id}")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", "admin")
            page.click("button[type=submit]")
            page.get_by_role("button", name="Show Graph (Press g)").click()
            page.get_by_text("Asset Triggered").first.wait_for(timeout=60_000)
            for task in ("prepare", "fit", "register", "notify_serving"):
                page.get_by_text(task, exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # the graph's layout animation
            page.screenshot(path=shots / "airflow-graph.png")

            tablet = browser.new_page(viewport={"width": 1024, "height": 1100})
            tablet.goto(f"{serving}/board")
            tablet.locator("article[data-batch]").first.wait_for(timeout=30_000)
            tablet.wait_for_timeout(500)
            tablet.screenshot(path=shots / "cellar-board.png")
            tablet.locator("article[data-batch] h2 a").first.click()
            tablet.locator("#curve svg path").first.wait_for(timeout=30_000)
            tablet.screenshot(path=shots / "cellar-batch.png", full_page=True)
            tablet.close()

            page.goto(urls["Monitoring"])
            page.get_by_text("brewcast monitoring").first.wait_for(timeout=30_000)
            assert page.locator("img").count() >= 4  # bias over time and reliability plots
            page.screenshot(path=shots / "monitoring-report.png", full_page=True)
            # on a laptop's width the report reads without scrolling sideways: its tables
            # wrap, or scroll inside the page
            narrow = browser.new_page(viewport={"width": 1100, "height": 900})
            narrow.goto(urls["Monitoring"])
            narrow.get_by_text("brewcast monitoring").first.wait_for(timeout=30_000)
            assert narrow.evaluate("document.documentElement.scrollWidth") <= 1100
            narrow.close()
            browser.close()
        for name in (
            "cellar-board",
            "cellar-batch",
            "mlflow-models",
            "mlflow-compare",
            "mlflow-training",
            "airflow-graph",
            "monitoring-report",
        ):
            _assert_rendered(shots / f"{name}.png")
    finally:
        stopped = subprocess.run([BREWCAST, "stop"], env=env, capture_output=True, text=True)
    assert "mlflow" in stopped.stdout and "airflow" in stopped.stdout
    for port in ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=3)


def _delivered_ready_events(serving: str, timeout: float = 60) -> list[dict]:
    """The service's ready events once every one is delivered to Airflow (it retries)."""
    deadline = time.monotonic() + timeout
    while True:
        events = httpx.get(f"{serving}/cellar/events", timeout=10).json()["events"]
        if all(e["asset_delivered_at"] for e in events) or time.monotonic() > deadline:
            assert all(e["asset_delivered_at"] for e in events), events[:3]
            return events
        time.sleep(2)


def _assert_rendered(path: Path) -> None:
    """A real page: big enough, and not one flat colour (a blank or error screen)."""
    from PIL import Image, ImageStat

    image = Image.open(path).convert("L")
    assert image.width >= 1000 and image.height >= 600
    assert ImageStat.Stat(image).stddev[0] > 10, f"{path.name} looks blank"
    assert len(image.getcolors(1 << 20) or range(1 << 20)) > 50, f"{path.name} has no content"


def test_demo_refuses_ports_already_in_use():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = demo.DemoPorts(mlflow=free_port(), airflow=port, serving=free_port())
        with pytest.raises(RuntimeError, match=f"port {port} \\(airflow\\).*--airflow-port"):
            demo._require_free_ports(ports)
    demo._require_free_ports(demo.DemoPorts(free_port(), free_port(), free_port()))

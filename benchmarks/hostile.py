"""One hostile client against the readings routes (``python -m benchmarks.hostile``): how
much of the well-behaved clients' throughput survives it, in one run.

A real ``bentoml serve`` of brewcast; well-behaved devices push Brewfather streams (4
concurrent clients, one reading each, in their own process) for ``SECONDS`` alone, then as
long again while a hostile client (its own process, 2 concurrent connections) cycles
through :func:`hostile_bodies`: bodies of 40,000 readings, bodies at the byte limit, JSON
nested 100,000 deep, bodies that used to answer 500 (one key twice, a Tilt ``Timepoint``
of inf), a form that is not a Tilt's. Target: the good clients keep >= 70% of their
throughput alone, and no answer to anyone is a 5xx.

    python -m benchmarks.hostile [SECONDS]
    python -m benchmarks.hostile --attack URL SECONDS   (the hostile process itself)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

TARGET_RATIO = 0.70
GOOD_CLIENTS = 4
HOSTILE_CLIENTS = 2
DEVICE = "bench-stream"


def _many_readings(count: int) -> bytes:
    start = datetime.now(UTC) - timedelta(days=10)
    readings = [
        {
            "device": f"hostile-{k % 50}",
            "timestamp": (start + timedelta(seconds=k)).isoformat(),
            "gravity": 12.0 - k * 1e-5,
        }
        for k in range(count)
    ]
    return json.dumps({"readings": readings}).encode()


def hostile_bodies() -> list[tuple[str, str, bytes, str]]:
    """(name, route, body, content type): what a broken or hostile client sends."""
    json_type, form_type = "application/json", "application/x-www-form-urlencoded"
    now = datetime.now(UTC).isoformat()
    twice = {"device": "hostile-twice", "timestamp": now, "gravity": 10.0}
    padding = b'{"readings": ["' + b"x" * (8 * 2**20) + b'"]}'
    twice_in_one = json.dumps({"readings": [twice, {**twice, "gravity": 9.0}]}).encode()
    return [
        ("40k readings", "/readings", _many_readings(40_000), json_type),
        ("8 MiB of padding", "/readings", padding, json_type),
        ("nested 100k deep", "/readings", b"[" * 100_000 + b"]" * 100_000, json_type),
        ("one key twice", "/readings", twice_in_one, json_type),
        ("Timepoint inf", "/readings/tilt", b"Timepoint=inf&SG=1.050&Temp=68&Color=RED", form_type),
        (
            "Timepoint 1e308",
            "/readings/tilt",
            b"Timepoint=1e308&SG=1.05&Temp=68&Color=RED",
            form_type,
        ),
        ("not UTF-8", "/readings/ispindel", b'{"name": "\xff\xfe", "gravity": 1.05}', json_type),
        ("a list", "/readings/brewfather", b"[1, 2, 3]", json_type),
    ]


async def _attack(url: str, seconds: float) -> dict:
    """The hostile process: cycle through the bodies until the deadline; count answers."""
    bodies = hostile_bodies()
    counts: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(offset: int) -> None:
            k = offset
            while time.perf_counter() < deadline:
                _, route, body, media = bodies[k % len(bodies)]
                k += 1
                try:
                    answer = await client.post(
                        url + route, content=body, headers={"content-type": media}
                    )
                    key = str(answer.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(HOSTILE_CLIENTS)))
    return counts


def _good(url: str, seconds: float, body: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", url, str(GOOD_CLIENTS), str(seconds), str(body)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(seconds: float = 10.0) -> dict:
    """The defaults, and the same with the error tarpit off (what the answers alone do)."""
    measured = _measure(seconds, tarpit_after=None)
    measured["without_tarpit"] = _measure(seconds, tarpit_after=0)
    return measured


def _measure(seconds: float, tarpit_after: int | None) -> dict:
    from application.processes import bento_server, free_port

    env = {} if tarpit_after is None else {"BREWCAST_SERVING_ERROR_TARPIT_AFTER": str(tarpit_after)}
    with tempfile.TemporaryDirectory() as tmp:
        home, port = Path(tmp) / "home", free_port()
        server = bento_server(home, port, BREWCAST_SERVING_POLL_SECONDS="0", **env)
        server.health_url = f"http://127.0.0.1:{port}/livez"  # pushes need no model
        server.start(timeout=240)
        url = f"http://127.0.0.1:{port}"
        try:
            started = datetime.now(UTC) - timedelta(hours=1)
            httpx.post(
                f"{url}/batches",
                json={"batch_id": "B1", "start_time": started.isoformat(), "fermenter": "FV1"},
            ).raise_for_status()
            httpx.put(f"{url}/devices/brewfather:{DEVICE}", json={"fermenter": "FV1"})
            body = Path(tmp) / "stream.json"
            body.write_text(json.dumps({"name": DEVICE, "temp": 18.5, "temp_unit": "C"}))
            _good(f"{url}/readings/brewfather", 2, body)  # warm-up
            alone = _good(f"{url}/readings/brewfather", seconds, body)
            attacker = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.hostile", "--attack", url, str(seconds + 2)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # the attack under way before the good clients start again
            beside = _good(f"{url}/readings/brewfather", seconds, body)
            hostile = json.loads(attacker.communicate(timeout=seconds + 120)[0].splitlines()[-1])
        finally:
            server.stop()
    ratio = beside["req_per_s"] / alone["req_per_s"]
    server_errors = sum(n for status, n in hostile.items() if status.startswith("5"))
    return {
        "good_alone_req_per_s": alone["req_per_s"],
        "good_beside_hostile_req_per_s": beside["req_per_s"],
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "good_non_2xx": alone["non_2xx"] + beside["non_2xx"],
        "hostile_answers": hostile,
        "hostile_5xx": server_errors,
        "met": ratio >= TARGET_RATIO and server_errors == 0,
    }


def markdown(result: dict) -> str:
    lines = [
        "| service | well-behaved pushes, req/s alone | beside the hostile client | ratio | "
        "target | hostile client's answers |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("defaults", result), ("error tarpit off", result["without_tarpit"])):
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["hostile_answers"].items()))
        lines.append(
            f"| {name} | {r['good_alone_req_per_s']:.0f} | "
            f"{r['good_beside_hostile_req_per_s']:.0f} | {r['ratio']:.2f} | "
            f">= {r['target_ratio']:.2f} {'(met)' if r['met'] else '(missed)'} | {answers} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--attack"]:
        print(json.dumps(asyncio.run(_attack(sys.argv[2], float(sys.argv[3])))))
        return
    result = run(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""A load generator in its own process. Closed loop: N concurrent clients POST the same body
for D seconds, by ``wrk`` when it is installed (``make bench`` installs it), else by httpx.
Open loop (with RATE; raw HTTP/1.1 on asyncio): one request every 1/RATE s whatever the
server does, at most N outstanding (requests that would exceed it are counted as
``skipped``); latency is measured from the scheduled send time, so a slow server cannot hide
its queue (no coordinated omission).
Prints JSON: requests, non-2xx (counted apart), req/s, p50/p99.

python -m benchmarks.load URL CONCURRENCY SECONDS BODY_FILE [RATE]"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import httpx


def _summary(latencies: list[float], errors: int, elapsed: float, **extra: object) -> dict:
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "non_2xx": errors,
        "seconds": elapsed,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": pct(0.5) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
        **extra,
    }


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; reports each
    answer's status (None when the connection broke) to ``on_answer``."""

    def __init__(self, on_answer) -> None:
        self.on_answer = on_answer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled = 0.0
        self.waiting = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, request: bytes, scheduled: float) -> None:
        self.scheduled, self.waiting = scheduled, True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        length = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if length is None:  # the servers measured here always send one
            self.transport.close()
            return
        if len(self.buffer) < end + 4 + int(length[1]):
            return
        del self.buffer[: end + 4 + int(length[1])]
        self.waiting = False
        self.on_answer(self, int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.waiting = False
            self.on_answer(self, None)


async def open_loop(url: str, limit: int, seconds: float, body: bytes, rate: float) -> dict:
    """``rate`` requests a second for ``seconds``, each sent at its scheduled time on an idle
    keep-alive connection (a new one while fewer than ``limit`` are open; past that the
    request is counted as ``skipped``). Raw HTTP/1.1 on asyncio, so that the generator can
    offer thousands of requests a second on a core it shares with the server."""
    loop = asyncio.get_running_loop()
    target = urllib.parse.urlsplit(url)
    request = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    idle: list[_Connection] = []
    counts = {"errors": 0, "skipped": 0, "outstanding": 0, "opened": 0}
    drained = asyncio.Event()

    def on_answer(connection: _Connection, status: int | None) -> None:
        counts["outstanding"] -= 1
        if status is not None and 200 <= status < 300:
            latencies.append(time.perf_counter() - connection.scheduled)
        else:
            counts["errors"] += 1
        if status is not None and not connection.transport.is_closing():
            idle.append(connection)
        if counts["outstanding"] == 0:
            drained.set()

    async def connect() -> _Connection:
        counts["opened"] += 1
        _, connection = await loop.create_connection(
            lambda: _Connection(on_answer), target.hostname, target.port
        )
        return connection

    idle.extend([await connect() for _ in range(min(limit, 8))])
    total = int(rate * seconds)
    began = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - began) * rate) + 1)
        while sent < due:  # everything due by now, so the offered rate holds
            scheduled = began + sent / rate
            sent += 1
            while idle and idle[-1].transport.is_closing():  # closed by the server
                idle.pop()
                counts["opened"] -= 1
            if idle:
                connection = idle.pop()
            elif counts["opened"] < limit:
                connection = await connect()
            else:
                counts["skipped"] += 1
                continue
            counts["outstanding"] += 1
            drained.clear()
            connection.send(request, scheduled)
        await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
    if counts["outstanding"]:
        try:
            await asyncio.wait_for(drained.wait(), timeout=30)
        except TimeoutError:
            counts["errors"] += counts["outstanding"]
    elapsed = time.perf_counter() - began
    for connection in idle:
        connection.transport.close()
    return _summary(
        latencies,
        counts["errors"],
        elapsed,
        offered_per_s=rate,
        skipped=counts["skipped"],
        connections=counts["opened"],
        generator="raw HTTP/1.1 on asyncio",
    )


def _run(coroutine) -> dict:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def main(url: str, concurrency: int, seconds: float, body: bytes) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    ok = response.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return _summary(latencies, errors, elapsed, generator="httpx")


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = io.open(os.getenv("BODY_FILE"), "rb")
wrk.body = file:read("*a")
file:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if number is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(number[1]) * _UNITS[number[2]]


def _find(pattern: str, out: str) -> str:
    found = re.search(pattern, out)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in wrk's output:\n{out}")
    return found[1]


def wrk(url: str, concurrency: int, seconds: float, body_file: str) -> dict:
    """The closed loop by ``wrk`` (C, one thread): it costs the shared cores far less CPU
    per request than Python does, so more of them go to the server being measured."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",  # the service's own (a slow answer is latency, not an error)
                "30s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
            env={**os.environ, "BODY_FILE": body_file},
        ).stdout
    finally:
        os.unlink(script.name)
    done = re.search(r"([0-9]+) requests in ([0-9.]+)(us|ms|s)", out)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", out)
    answered_not_2xx = int(non_2xx[1]) if non_2xx else 0
    errors = re.search(
        r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", out
    )
    socket_errors = sum(map(int, errors.groups())) if errors else 0
    elapsed = _ms(done[2] + done[3]) / 1000
    ok = int(done[1]) - answered_not_2xx
    return {
        "requests": ok,
        "non_2xx": answered_not_2xx + socket_errors,
        "seconds": elapsed,
        "req_per_s": ok / elapsed,
        "p50_ms": _ms(_find(r"(?m)^\s*50%\s+(\S+)", out)),
        "p99_ms": _ms(_find(r"(?m)^\s*99%\s+(\S+)", out)),
        "generator": "wrk",
    }


if __name__ == "__main__":
    url, concurrency, seconds, body_file = sys.argv[1:5]
    with open(body_file, "rb") as handle:
        payload = handle.read()
    if len(sys.argv) > 5:
        result = _run(open_loop(url, int(concurrency), float(seconds), payload, float(sys.argv[5])))
    elif shutil.which("wrk"):
        result = wrk(url, int(concurrency), float(seconds), body_file)
    else:
        result = _run(main(url, int(concurrency), float(seconds), payload))
    print(json.dumps(result))

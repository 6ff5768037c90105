"""A load generator in its own process. Closed loop: N concurrent clients POST the same body
for D seconds. Open loop (with RATE): one request every 1/RATE s whatever the server does,
at most N outstanding (requests that would exceed it are counted as ``skipped``); latency is
measured from the scheduled send time, so a slow server cannot hide its queue (no
coordinated omission). Prints JSON: requests, non-2xx (counted apart), req/s, p50/p99.

python -m benchmarks.load URL CONCURRENCY SECONDS BODY_FILE [RATE]"""

from __future__ import annotations

import asyncio
import json
import sys
import time

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


async def open_loop(url: str, limit: int, seconds: float, body: bytes, rate: float) -> dict:
    latencies: list[float] = []
    errors = skipped = outstanding = 0
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(scheduled: float) -> None:
            nonlocal errors, outstanding
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code < 300
            except httpx.HTTPError:
                ok = False
            outstanding -= 1
            if ok:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors += 1

        began = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = began + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if outstanding >= limit:
                skipped += 1
                continue
            outstanding += 1
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return _summary(latencies, errors, elapsed, offered_per_s=rate, skipped=skipped)


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
    return _summary(latencies, errors, elapsed)


if __name__ == "__main__":
    url, concurrency, seconds, body_file = sys.argv[1:5]
    with open(body_file, "rb") as handle:
        payload = handle.read()
    if len(sys.argv) > 5:
        run = open_loop(url, int(concurrency), float(seconds), payload, float(sys.argv[5]))
    else:
        run = main(url, int(concurrency), float(seconds), payload)
    print(json.dumps(asyncio.run(run)))

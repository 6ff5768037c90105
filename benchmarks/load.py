"""A closed-loop load generator in its own process: N concurrent clients POST the same body
for D seconds. Prints JSON: requests, non-2xx (counted apart), req/s, p50/p99 latency.

python -m benchmarks.load URL CONCURRENCY SECONDS BODY_FILE"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


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
    }


if __name__ == "__main__":
    url, concurrency, seconds, body_file = sys.argv[1:5]
    result = asyncio.run(main(url, int(concurrency), float(seconds), open(body_file, "rb").read()))  # noqa: SIM115
    print(json.dumps(result))

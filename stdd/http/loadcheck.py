"""Measuring the endpoint under load: /status latency percentiles and the event-loop lag.

Used by the tests (with generous bounds) and by the benchmark (goals: /status p99 <= 50 ms,
worst event-loop lag <= 100 ms while two workers are busy). `measure()` talks to a running
daemon over HTTP like any client; the worst lag during the run is read from the daemon's own
lag monitor when the caller has it (same process), else from /metrics: the 1-minute worst-lag
gauge read just after the run, and the smallest histogram bound that covers every sample
taken during the run.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _lag_metrics(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"buckets": {}, "max_1m": None}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stdd_event_loop_lag_seconds_bucket":
                out["buckets"][float(s.labels["le"])] = s.value
            elif s.name == "stdd_event_loop_lag_max_seconds" and s.labels.get("window") == "1m":
                out["max_1m"] = s.value
    return out


async def measure_async(base_url: str, requests: int = 500, concurrency: int = 4, path: str = "/status",
                        lag_monitor=None, connector: aiohttp.BaseConnector | None = None,
                        headers: dict | None = None) -> dict[str, Any]:
    """Send `requests` GETs of `path` with `concurrency` in flight; return latency and lag figures."""
    base = base_url.rstrip("/")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(base + "/metrics") as r:
            before = _lag_metrics(await r.text())
        t_start_wall = time.time()
        t_start = time.perf_counter()
        remaining = iter(range(requests))

        async def worker() -> None:
            for _ in remaining:
                t0 = time.perf_counter()
                try:
                    async with session.get(base + path) as r:
                        await r.read()
                        ok = r.status == 200
                        key = str(r.status)
                except aiohttp.ClientError as e:
                    ok, key = False, type(e).__name__
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        elapsed = time.perf_counter() - t_start
        async with session.get(base + "/metrics") as r:
            after = _lag_metrics(await r.text())
    bound = None
    for le in sorted(after["buckets"]):
        if after["buckets"][le] - before["buckets"].get(le, 0) == (
                after["buckets"].get(math.inf, 0) - before["buckets"].get(math.inf, 0)):
            bound = le
            break
    lag_exact = lag_monitor.max_since(t_start_wall) if lag_monitor is not None else None
    ms = [x * 1000 for x in latencies]
    return {
        "path": path, "requests": len(latencies), "concurrency": concurrency, "errors": errors,
        "seconds": round(elapsed, 3), "rps": round(len(latencies) / elapsed, 1) if elapsed else None,
        "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2) if ms else None,
        "lag_max_ms": round((lag_exact if lag_exact is not None else (after["max_1m"] or 0.0)) * 1000, 2),
        "lag_source": "monitor" if lag_exact is not None else "metrics-1m-window",
        "lag_bucket_le_ms": None if bound is None or math.isinf(bound) else bound * 1000,
        "lag_samples": int(after["buckets"].get(math.inf, 0) - before["buckets"].get(math.inf, 0)),
    }


def measure(base_url: str, requests: int = 500, concurrency: int = 4, path: str = "/status") -> dict[str, Any]:
    """`measure_async` for a caller without an event loop (the benchmark, a shell)."""
    return asyncio.run(measure_async(base_url, requests=requests, concurrency=concurrency, path=path))


def main(argv: list[str] | None = None) -> int:
    """`python -m stdd.http.loadcheck URL [REQUESTS] [CONCURRENCY]`: print the figures as JSON."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m stdd.http.loadcheck URL [REQUESTS] [CONCURRENCY]", file=sys.stderr)
        return 2
    result = measure(args[0], requests=int(args[1]) if len(args) > 1 else 500,
                     concurrency=int(args[2]) if len(args) > 2 else 4)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

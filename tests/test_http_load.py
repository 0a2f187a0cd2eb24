"""/status latency and event-loop lag while two workers burn CPU (the benchmark's measurement,
with generous bounds here; the goals — p99 <= 50 ms, lag <= 100 ms — are the benchmark's)."""
from __future__ import annotations

import json

import aiohttp

from http_env import make_settings, running_daemon, wait_for, write_frame
from stdd.http.loadcheck import measure_async


async def test_status_latency_and_loop_lag_with_two_busy_workers(tmp_path):
    settings = make_settings(tmp_path, stages={"inspect": "http_stages:burn"}, steps=["inspect"], workers=2)
    async with running_daemon(settings) as (daemon, svc):
        auth = {"Authorization": f"Bearer {svc.token}"}
        async with aiohttp.ClientSession() as s:
            ids = []
            for i in range(2):
                path = write_frame(tmp_path / "incoming" / f"burn{i}.fits", float(i), T_ID=f"b{i}", T_BURN=60)
                async with s.post(svc.url + "/frames", json={"path": str(path)}, headers=auth) as r:
                    assert r.status == 201
                    ids.append((await r.json())["frame"]["id"])

            def both_busy():
                running = daemon.pool.status()["running"]
                return len(running) == 2 and all(j["stage"] == "inspect" for j in running)
            await wait_for(both_busy, 30, "two workers busy")

            result = await measure_async(svc.url, requests=500, concurrency=4, lag_monitor=svc.lag)
            print("\nloadcheck:", json.dumps(result))
            assert result["requests"] == 500 and result["errors"] == {}
            assert len(daemon.pool.status()["running"]) == 2  # still busy at the end
            assert result["p99_ms"] < 1000, result      # goal 50 ms (benchmark)
            assert result["lag_max_ms"] < 1000, result  # goal 100 ms (benchmark)
            assert result["lag_samples"] > 0 and result["lag_bucket_le_ms"] is not None
            for fid in ids:
                async with s.post(svc.url + f"/frames/{fid}/cancel", headers=auth) as r:
                    assert r.status == 202

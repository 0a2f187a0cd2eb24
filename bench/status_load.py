"""`rss_idle_mb`, `status_p99_ms`, `loop_lag_max_ms`, `ingest_p99_s`: one daemon with 2 workers.

1. The daemon (`stdd run`, 2 workers, HTTP on a free localhost port, the default settle window)
   starts and sits idle for a few seconds: the resident memory of its whole process tree (the
   daemon, the resource tracker, and the warm fork server if it were up — it starts only when a
   file arrives). Then one small frame goes through; once it is done and the warm fork server has
   stopped after its idle spell (`pool.warm_idle_minutes`, set to 0.1 here; 15 by default), the
   tree is measured again. `rss_idle_mb` is the larger of the two; the warm server's own size,
   taken while it ran, is context.
2. Two frames are written into its incoming folder; once both workers are running them, the
   endpoint's own load check (`stdd.http.loadcheck.measure_async`) sends 500 GET /status, 4 in
   flight, and reads the daemon's worst event-loop lag during them from /metrics. Both frames
   must still be running when the requests end, else the note says so.
3. While the workers are still busy, small frames are written one every 0.2 s; for each,
   `queued_at` (the frame's record) − the moment its file was closed − the settle window is one
   intake sample. `ingest_p99_s` is the p99 of these and of the samples the throughput runs left.
   The daemon is then stopped (the frames in flight are interrupted: their results do not matter).
Frame processes' memory is sampled throughout (context for `worker_peak_mb`).
"""
from __future__ import annotations

import asyncio
import time

from .common import Context, Value, percentile, rnd
from .harness import BenchDaemon, FrameMemorySampler
from .inputs import field_of, small_frames

KEYS = ("rss_idle_mb", "status_p99_ms", "loop_lag_max_ms", "ingest_p99_s", "ui_frame_p95_ms")
SETTLE = 2.0  # the default [watch] settle_seconds
IDLE_MINUTES = 0.1  # pool.warm_idle_minutes for this daemon (the default is 15)


def measure(ctx: Context) -> dict[str, Value]:
    from stdd.http.loadcheck import measure_async

    size = 1024
    field = field_of(ctx, size, 3)
    n_small = 10 if ctx.quick else 40
    smalls = small_frames(ctx, n_small)
    warm_frame = field.frames[2]  # processed fully: the frame page measured under load shows it
    out: dict[str, Value] = {}
    d = BenchDaemon(ctx.folder("status_load"), field, workers=2, settle=SETTLE, http=True,
                    pool=f"warm_idle_minutes = {IDLE_MINUTES}\n")
    with d:
        time.sleep(3.0 if ctx.quick else 10.0)
        fresh = d.tree_rss()
        d.drop(warm_frame, "warm_up.fits")
        d.wait_warm(True, 180)
        warm = d.tree_rss()
        d.wait_terminal(1, 300)
        d.wait_warm(False, 120 + 60 * IDLE_MINUTES)
        time.sleep(1.0)
        after = d.tree_rss()
        idle = max(fresh, after, key=lambda t: t["total_mb"])
        server = [p["rss_mb"] for p in warm["processes"] if _short(p["cmd"]) == "forkserver"]
        out["rss_idle_mb"] = Value(
            idle["total_mb"], runs=[fresh["total_mb"], after["total_mb"]],
            context={"fresh": fresh, "after_work": after, "warm": warm, "warm_idle_minutes": IDLE_MINUTES,
                     "warm_forkserver_mb": server[0] if server else None},
            note=(f"{fresh['total_mb']:.0f} MB after start, {after['total_mb']:.0f} MB after a frame and the idle "
                  f"spell ({60 * IDLE_MINUTES:g} s here, pool.warm_idle_minutes = 15 by default); while frames come "
                  f"the warm fork server adds {server[0] if server else float('nan'):.0f} MB; "
                  + ", ".join(f"{_short(p['cmd'])} {p['rss_mb']:.0f}" for p in idle["processes"])))
        with FrameMemorySampler(d) as sampler:
            for f in field.frames[:2]:
                d.drop(f, f"busy_{f.name}")
            d.wait(lambda: _running_busy(d) >= 2, 120, "both workers running a stage")
            busy_from = time.time()
            res = asyncio.run(measure_async(d.url, requests=500, concurrency=4,
                                            headers={"Authorization": f"Bearer {d.token}"}))
            busy_after = _running_busy(d)
            # the web interface's frame page of the done frame, 2 browsers' worth in flight
            done_id = min(r["id"] for r in d.frames() if r["state"] == "done")
            ui = asyncio.run(measure_async(d.url, requests=200, concurrency=2, path=f"/ui/frames/{done_id}"))
            ui_busy_after = _running_busy(d)
            # intake under load: small frames, one every 0.2 s
            drops = {}
            for i, f in enumerate(smalls):
                name = f"ingest_{i:03d}.fits"
                drops[str(d.incoming / name)] = d.drop(f, name)
                time.sleep(0.2)
            rows = d.wait_queued(list(drops), 60 + 2 * SETTLE)
            ingest = [r["queued_at"] - drops[r["path"]] - SETTLE for r in rows]
            worst_frame = sampler.worst()
            peaks = dict(sampler.peaks)
    ctx.shared["daemon_frame_peaks"] = peaks
    busy_note = ("both workers busy throughout" if busy_after >= 2
                 else f"only {busy_after} worker(s) still busy when the requests ended")
    errors = f"; errors {res['errors']}" if res["errors"] else ""
    out["status_p99_ms"] = Value(
        rnd(res["p99_ms"], 2), context={**res, "busy_from": busy_from},
        note=f"{res['requests']} requests, {res['concurrency']} in flight, {res['rps']} req/s, p50 "
             f"{res['p50_ms']} ms, max {res['max_ms']} ms; {busy_note} ({size}² frames){errors}")
    out["loop_lag_max_ms"] = Value(
        rnd(res["lag_max_ms"], 2),
        context={k: res[k] for k in ("lag_source", "lag_bucket_le_ms", "lag_samples")},
        note=(f"the daemon's worst lag over the last minute, read from /metrics right after the requests "
              f"(a bound: it covers the requests and the minute before); the {res['lag_samples']} samples taken "
              f"during the requests were all ≤ {res['lag_bucket_le_ms']} ms" if res["lag_source"] != "monitor"
              else f"the daemon's lag monitor during the requests ({res['lag_samples']} samples)"))
    if res["p99_ms"] > 50:
        out["status_p99_ms"].note += (f"; over the goal: p95 {res['p95_ms']} ms, and the event loop lagged up to "
                                      f"{res['lag_max_ms']} ms (a blocked loop delays every request)")
    ui_errors = f"; errors {ui['errors']}" if ui["errors"] else ""
    out["ui_frame_p95_ms"] = Value(
        rnd(ui["p95_ms"], 2), context=ui,
        note=f"GET /ui/frames/{{id}} of a done {size}² frame, {ui['requests']} requests, {ui['concurrency']} in "
             f"flight: p50 {ui['p50_ms']} ms, p99 {ui['p99_ms']} ms, max {ui['max_ms']} ms; "
             + ("both workers busy throughout" if ui_busy_after >= 2
                else f"only {ui_busy_after} worker(s) still busy at the end") + ui_errors)
    samples = ingest + list(ctx.shared.get("ingest_samples", []))
    p99 = percentile(samples, 99)
    out["ingest_p99_s"] = Value(
        rnd(p99, 3), runs=[rnd(x, 4) for x in ingest],
        context={"settle_seconds": SETTLE, "samples_under_load": len(ingest),
                 "samples_from_throughput": len(samples) - len(ingest),
                 "max_s": rnd(max(samples), 3) if samples else None},
        note=f"{len(samples)} files ({len(ingest)} written while both workers were busy, 1 every 0.2 s), "
             f"settle window {SETTLE} s subtracted; the tick that checks settling runs every "
             f"{min(0.5, max(0.05, SETTLE / 4)):g} s")
    if worst_frame is not None:
        out["rss_idle_mb"].context["frame_process_peak_mb_sampled"] = worst_frame
    idle_v = out["rss_idle_mb"]
    idle_v.note += f" MB (RSS; PSS {idle['total_pss_mb']:.0f} MB in all)"
    if idle_v.value is not None and idle_v.value > 200:
        idle_v.note += "; " + _idle_profile(ctx, idle_v)
    return out


#: third-party packages worth naming when an import brings them in
HEAVY = ("pandas", "numpy", "scipy", "astropy", "matplotlib", "sklearn", "stdpipe", "pyarrow", "statsmodels",
         "astroquery", "aiohttp", "pydantic")

#: what the daemon process imports by the time it is idle (stdd run, its services, the FITS check)
DAEMON_IMPORTS = ["click", "stdd.cli", "stdd.store", "stdd.daemon", "stdd.pool", "stdd.watch", "apscheduler.schedulers.asyncio",
                  "stdd.http", "stdd.alerts", "astropy.io.fits"]


def _idle_profile(ctx: Context, v: Value) -> str:
    """Where the idle memory goes: the imports of the daemon and of the forkserver's preload."""
    from stdd.pool.local import PRELOAD, PRELOAD_STAGE_LIBRARIES

    from .common import import_memory_profile

    daemon = import_memory_profile(ctx.python, DAEMON_IMPORTS)
    fork = import_memory_profile(ctx.python, [*PRELOAD, *PRELOAD_STAGE_LIBRARIES])
    v.context["import_profile_daemon"] = daemon
    v.context["import_profile_forkserver"] = fork

    def top(rows, n=3):
        rows = [r for r in rows[1:] if len(r) == 4]
        parts = []
        for name, _, added, pulled in sorted(rows, key=lambda r: -r[2])[:n]:
            heavy = [p for p in pulled if p in HEAVY]
            parts.append(f"{name} +{added:.0f}" + (f" (brings in {', '.join(heavy)})" if heavy else ""))
        return ", ".join(parts)

    return (f"what limits it: the forkserver preloads the stage code for warm frame starts ({top(fork)} MB), "
            f"the daemon's own imports ({top(daemon)} MB); see context.import_profile_*")


def _running_busy(d: BenchDaemon) -> int:
    """Frames running a stage now (the frame record names its current stage)."""
    return sum(1 for f in d.frames() if f["state"] == "running" and f.get("stage"))


def _short(cmd: str) -> str:
    if "forkserver" in cmd:
        return "forkserver"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "stdd" in cmd and " run" in cmd:
        return "daemon"
    return cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?"

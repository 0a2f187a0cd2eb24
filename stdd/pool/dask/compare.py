"""Running a set of jobs on an executor to the end, and the same frames on the local pool and
on Dask compared (tests, `python -m bench`)."""
from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..executor import Executor, FrameJob, PoolEvent
from .executor import DaskExecutor
from .on_worker import warm_and_wait


def run_jobs(executor: Executor, jobs: Iterable[FrameJob], timeout: float = 600.0) -> dict[int, list[PoolEvent]]:
    """Submit jobs as the executor takes them and wait for every terminal event. Returns each
    frame's events in order (the last one terminal)."""
    pending = list(jobs)
    events: dict[int, list[PoolEvent]] = {j.frame_id: [] for j in pending}
    open_ids = set(events)
    deadline = time.monotonic() + timeout
    while open_ids:
        if time.monotonic() > deadline:
            raise TimeoutError(f"frames {sorted(open_ids)} did not finish in {timeout:g} s")
        while pending and executor.free_slots() > 0:
            executor.submit(pending.pop(0))
        for ev in executor.poll(0.2):
            if ev.frame_id in events:
                events[ev.frame_id].append(ev)
                if ev.kind in ("finished", "lost"):
                    open_ids.discard(ev.frame_id)
    return events


def comparable_result(result: dict) -> dict:
    """A result.json without what differs between two runs of the same frame (timings, the
    frame's own folders)."""
    out = {k: v for k, v in result.items() if k not in ("attempts",)}
    out["stages"] = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                     for k, v in (result.get("stages") or {}).items()}
    return _round_floats(out)


def _round_floats(o, digits: int = 9):
    if isinstance(o, float):
        return o if not math.isfinite(o) else float(f"{o:.{digits}g}")
    if isinstance(o, dict):
        return {k: _round_floats(v, digits) for k, v in o.items()}
    if isinstance(o, list):
        return [_round_floats(v, digits) for v in o]
    return o


def compare_local_vs_dask(frames: Iterable[str | os.PathLike], *, work_root: str | os.PathLike,
                          steps: list[str] | None = None, stage_settings: dict[str, Any] | None = None,
                          stage_functions: dict[str, str] | None = None, workers: int = 2,
                          scheduler: str | None = None, timeout: float = 1800.0,
                          frames_per_process: int = 20) -> dict[str, Any]:
    """Process the same frames with the local pool (`workers` processes) and on Dask (a
    `LocalCluster` of `workers` single-threaded worker processes, or the given scheduler), and
    compare. Wall times are from the first submit to the last result, both pools started and
    warmed first. Returns {'frames', 'local_seconds', 'dask_seconds', 'ratio' (dask / local),
    'same_results', 'differences', 'states'}."""
    from ..local import LocalPool

    frames = [Path(f).absolute() for f in frames]
    root = Path(work_root).absolute()
    root.mkdir(parents=True, exist_ok=True)

    def jobs_for(kind: str) -> list[FrameJob]:
        out = []
        for i, f in enumerate(frames, 1):
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            out.append(FrameJob(frame_id=i, attempt=1, sha256=sha, source=str(f), origin=str(f),
                                work_dir=str(root / kind / "work" / str(i)),
                                result_dir=str(root / kind / "results" / f"{i}-{f.stem}"), steps=steps,
                                stage_settings=dict(stage_settings or {}),
                                stage_functions=dict(stage_functions or {}), extra={"frame_id": i}))
        return out

    def timed(executor: Executor, kind: str) -> tuple[float, dict[int, list[PoolEvent]]]:
        t0 = time.perf_counter()
        events = run_jobs(executor, jobs_for(kind), timeout)
        return time.perf_counter() - t0, events

    local = LocalPool(workers, frames_per_process=frames_per_process)
    local.start()
    try:
        _warm_local(local)
        local_s, local_events = timed(local, "local")
    finally:
        local.shutdown(5)

    cluster = None
    if scheduler is None:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster.scheduler_address
    dask_ex = DaskExecutor(scheduler, workers=workers, frames_per_process=frames_per_process)
    try:
        dask_ex.start()
        _warm_dask(dask_ex)
        dask_s, dask_events = timed(dask_ex, "dask")
    finally:
        dask_ex.shutdown(5)
        if cluster is not None:
            cluster.close()

    states, differences = {}, []
    for fid in sorted(local_events):
        a, b = local_events[fid][-1], dask_events[fid][-1]
        states[fid] = {"local": f"{a.kind}:{a.state}", "dask": f"{b.kind}:{b.state}"}
        ra = comparable_result((a.data or {}).get("result") or {}) if a.kind == "finished" else None
        rb = comparable_result((b.data or {}).get("result") or {}) if b.kind == "finished" else None
        if (a.kind, a.state) != (b.kind, b.state) or ra != rb:
            keys = sorted(k for k in set(ra or {}) | set(rb or {}) if (ra or {}).get(k) != (rb or {}).get(k))
            differences.append({"frame": str(frames[fid - 1]), "states": states[fid], "keys": keys})
    return {"frames": len(frames), "workers": workers, "local_seconds": round(local_s, 3),
            "dask_seconds": round(dask_s, 3), "ratio": round(dask_s / local_s, 3) if local_s > 0 else None,
            "same_results": not differences, "differences": differences, "states": states}


def _warm_local(pool) -> None:
    """Wait until the local pool's fork server has imported its preload list."""
    from multiprocessing import forkserver

    forkserver.ensure_running()
    ctx = mp.get_context("forkserver")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(120)


def _warm_dask(ex: DaskExecutor) -> None:
    """Wait until every worker's frame pool is started and its fork server has imported its
    preload list."""
    ex.client.run(warm_and_wait, ex.worker_settings())

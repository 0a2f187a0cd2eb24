"""The daemon as the endpoint sees it: calling its methods, and reading its in-memory state
on the loop (attributes and the pool's status: no database access, so nothing here blocks).

The endpoint never changes the queue itself: it asks the daemon to act (submit, cancel,
retry, pause, resume, reload, handle a notice) through the methods the daemon exposes.
"""
from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

from .. import __version__


async def call(fn, *args, **kwargs):
    """Call a daemon method, awaiting it when it is a coroutine function."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def database_path(daemon) -> Path:
    db = getattr(daemon, "db", None)
    if db is not None and getattr(db, "path", None):
        return Path(db.path)
    return Path(getattr(daemon, "db_path", None) or daemon.settings.paths.database)


def workers_of(pool_status: dict | None) -> list[dict]:
    """One entry per pool slot: what it runs (frame, stage, pid, seconds) or idle."""
    if not pool_status:
        return []
    alive = bool(pool_status.get("alive", True))
    running = list(pool_status.get("running") or [])
    size = pool_status.get("workers")
    size = max(int(size), len(running)) if isinstance(size, int) else len(running)
    out = []
    for i in range(size):
        job = running[i] if i < len(running) else None
        out.append({"name": f"slot-{i + 1}", "alive": alive, "busy": job is not None,
                    "frame_id": job.get("frame_id") if job else None, "stage": job.get("stage") if job else None,
                    "pid": job.get("pid") if job else None, "attempt": job.get("attempt") if job else None,
                    "seconds": job.get("seconds") if job else None,
                    "stage_seconds": job.get("stage_seconds") if job else None})
    return out


def snapshot(daemon) -> dict[str, Any]:
    """The daemon's in-memory state, taken on the loop (attribute reads and the pool's status:
    no database access, so it never blocks)."""
    started = getattr(daemon, "started_at", None)
    pool = daemon.pool.status() if getattr(daemon, "pool", None) is not None else None
    intake = getattr(daemon, "intake", None)
    watcher = getattr(intake, "watcher", None)
    state = getattr(daemon, "state", "running")
    return {
        "version": __version__,
        "state": state,
        "paused": state == "paused",
        "paused_reason": getattr(daemon, "paused_reason", None),
        "pid": os.getpid(),
        "started_at": started,
        "uptime_seconds": round(time.time() - started, 3) if started else None,
        "workers": workers_of(pool),
        "pool": pool,
        "watcher_alive": bool(watcher is not None and watcher.alive),
        "intake": {
            "folders": [str(p) for p in daemon.settings.paths.incoming],
            "watching": bool(watcher is not None and watcher.alive),
            "settling": len(intake.tracker) if getattr(intake, "tracker", None) else 0,
            "taken": getattr(intake, "taken", 0),
        } if intake is not None else None,
    }


def alert_handler(daemon):
    """The daemon's alert service (something with `handle(IntakeMessage)`), or None when
    alert handling is not running in this daemon."""
    holders = [*getattr(daemon, "services", []), getattr(daemon, "region_provider", None)]
    for svc in holders:
        if svc is None:
            continue
        for candidate in (getattr(svc, "service", None), getattr(svc, "alert_service", None), svc):
            if candidate is not None and callable(getattr(candidate, "handle", None)) \
                    and hasattr(candidate, "live_regions"):
                return candidate
    return None


def alert_stream_status(daemon) -> dict | None:
    """The GCN stream's status (connected, last_heartbeat, ...) from the alert service, if any."""
    for svc in getattr(daemon, "services", []):
        for name in ("stream_status", "kafka_status"):
            fn = getattr(svc, name, None)
            if callable(fn):
                return fn()
        kafka = getattr(svc, "kafka", None)
        if kafka is not None and callable(getattr(kafka, "status", None)):
            return kafka.status()
    return None


def alert_service(daemon):
    """The daemon's alerts service (the one named "alerts": `stdd.alerts.link.AlertLink`, which
    holds the intakes as `.kafka` and `.drop` and the handler as `.service`), or None."""
    for svc in getattr(daemon, "services", []):
        if getattr(svc, "name", None) == "alerts":
            return svc
    return None

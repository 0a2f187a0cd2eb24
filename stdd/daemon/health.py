"""What the daemon says about itself: the in-memory health checks (for `/health` and the
systemd watchdog), the status file `<database>.daemon.json` and the status line.

`checks()` and `stall_problems()` read plain attributes only (the supervisor's heartbeats, the
database gate's state, the services' own `health()`), so they are safe from any thread and never
block. `status()` and `write_status()` read the database: they run in a thread.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")


class HealthReport:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    def checks(self) -> dict[str, dict]:
        """The supervised loops, the database as the daemon's writes find it, and every service
        that reports its health."""
        d = self.d
        loops = d.supervisor.snapshot()
        stalled = [n for n, x in loops.items() if x["stalled"]]
        failing = [f"{n} ({x['last_error']})" for n, x in loops.items() if x["failing_since"] is not None]
        if stalled:
            detail = "stalled: " + ", ".join(f"{n} (no iteration for {loops[n]['last_beat_age_seconds']:.0f} s)"
                                             for n in stalled)
        elif failing:
            detail = "failing and retrying: " + "; ".join(failing)
        else:
            detail = f"{len(loops)} loops iterating"
        out = {"loops": {"ok": not stalled and not failing, "stalled": stalled, "detail": detail, "loops": loops},
               "database_writes": d.gate.health()}
        for svc in d.services:
            fn = getattr(svc, "health", None)
            if callable(fn):
                name = getattr(svc, "name", type(svc).__name__)
                try:
                    out[f"service:{name}"] = dict(fn())
                except Exception as e:  # noqa: BLE001 — a broken health() is itself unhealthy
                    out[f"service:{name}"] = {"ok": False, "detail": f"health() failed: {e}"}
        return out

    def stall_problems(self) -> list[str]:
        """What should make systemd restart us: a hung loop or service, a dead pool. (A
        database that is locked or full is not: a restart would not help, and the writes are
        being retried.)"""
        d = self.d
        out = [f"loop {n} stalled" for n in d.supervisor.stalled()]
        if d.pool is None or not d.pool.alive:
            out.append("the pool is not alive")
        for name, check in self.checks().items():
            if name.startswith("service:") and check.get("stalled"):
                out.append(f"{name[8:]} stalled: {check.get('detail')}")
        return out

    def status(self) -> dict[str, Any]:
        """What `stdd status --json` shows: state, frames per state, pool, intake, health."""
        d = self.d
        s = d.settings
        return {
            "state": d.state,
            "paused_reason": d.paused_reason,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": d.started_at,
            "uptime_seconds": round(time.time() - d.started_at, 1) if d.started_at else None,
            "config": str(d.config_path) if d.config_path else None,
            "database": str(d.db_path),
            "frames": d.frames.counts() if d.frames else {},
            "pool": d.pool.status() if d.pool else None,
            "intake": {
                "folders": [str(p) for p in s.paths.incoming],
                "mode": "polling" if s.watch.poll else "inotify",
                "watching": bool(d.intake.watcher and d.intake.watcher.alive),
                "settling": len(d.intake.tracker) if d.intake.tracker else 0,
                "taken": d.intake.taken,
            },
            "services": [getattr(x, "name", type(x).__name__) for x in d.services],
            "health": self.checks(),
            "updated_at": time.time(),
        }

    def write_status(self) -> str | None:
        """`<database>.daemon.json`, what `stdd status` shows about the daemon itself. Runs in a
        thread; returns the status line (None when the database could not be read)."""
        d = self.d
        line = None
        try:
            data = self.status() if d.frames is not None and d.db is not None else {
                "state": d.state, "pid": os.getpid(), "updated_at": time.time()}
            line = self.status_line(data)
        except Exception as e:  # noqa: BLE001 — the database may be locked: say what we know
            data = {"state": d.state, "pid": os.getpid(), "updated_at": time.time(),
                    "health": self.checks(), "error": f"{type(e).__name__}: {e}"}
        try:
            tmp = d.status_path.with_name(f".{d.status_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, default=str, indent=1))
            os.replace(tmp, d.status_path)
        except OSError as e:
            log.debug("cannot write %s: %s", d.status_path, e)
        return line

    def status_line(self, data: dict) -> str:
        d = self.d
        c = data.get("frames") or {}
        running = len(d.pool.running_ids()) if d.pool else 0
        text = (f"{d.state}; {c.get('queued', 0)} queued, {running} running, {c.get('done', 0)} done, "
                f"{c.get('failed', 0)} failed")
        if d.paused_reason:
            text += f"; paused: {d.paused_reason}"
        problem = d.gate.problem()
        if problem:
            text += f"; {problem}"
        return text

"""`stdd status` and `stdd frames`: what the daemon is doing, read from its state.

For now they read the SQLite file (read-only) and the daemon's status file beside it; the
HTTP endpoint will add a client with the same output.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_USAGE, echo_json, fail, get_settings

FRAME_FIELDS = ("id", "path", "name", "sha256", "version", "state", "stage", "priority", "attempts", "error",
                "size", "created_at", "started_at", "finished_at", "result_dir", "work_dir", "pid",
                "filter", "zp", "fwhm_arcsec", "mag_limit", "n_candidates")


def _open_store(settings):
    from ..store import Database, FrameStore, StoreError

    try:
        db = Database(settings.paths.database, readonly=True)
    except StoreError:
        return None, None
    return db, FrameStore(db)


def daemon_info(settings) -> dict | None:
    """The daemon's own status file, if a daemon is alive (pid exists, heartbeat recent)."""
    db = settings.paths.database
    path = db.with_name(db.stem + ".daemon.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    alive = False
    if pid and data.get("state") not in ("stopped",):
        try:
            os.kill(int(pid), 0)
            alive = True
        except (ProcessLookupError, PermissionError, ValueError):
            alive = False
    data["alive"] = alive and time.time() - float(data.get("updated_at") or 0) < 60
    return data


def register(cli: click.Group) -> None:
    @cli.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def status(ctx: click.Context, as_json: bool) -> None:
        """Frames per state and what the daemon is doing."""
        settings = get_settings(ctx)
        db, frames = _open_store(settings)
        counts = frames.counts() if frames else {s: 0 for s in ("queued", "running", "done", "failed", "cancelled")}
        running = [{k: f.get(k) for k in ("id", "name", "stage", "attempts", "pid", "started_at")}
                   for f in frames.running()] if frames else []
        info = daemon_info(settings)
        if db is not None:
            db.close()
        out = {
            "daemon": "running" if info and info["alive"] else "not running",
            "state": (info or {}).get("state") if info and info["alive"] else None,
            "paused_reason": (info or {}).get("paused_reason") if info and info["alive"] else None,
            "pid": (info or {}).get("pid") if info and info["alive"] else None,
            "database": str(settings.paths.database),
            "frames": counts,
            "running": running,
            "pool": (info or {}).get("pool") if info and info["alive"] else None,
            "intake": (info or {}).get("intake") if info and info["alive"] else None,
        }
        if as_json:
            echo_json(out)
            return
        state = out["state"] or "-"
        click.echo(f"daemon: {out['daemon']}" + (f" (pid {out['pid']}, {state})" if out["pid"] else ""))
        if out["paused_reason"]:
            click.echo(f"paused: {out['paused_reason']}")
        click.echo("frames: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for r in running:
            click.echo(f"  frame {r['id']} {r['name']}: {r['stage'] or 'starting'} (attempt {r['attempts']},"
                       f" pid {r['pid']})")

    @cli.command("frames")
    @click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "cancelled"]),
                  help="Only frames in this state.")
    @click.option("--limit", type=int, default=100, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def frames_cmd(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
        """Recorded frames, newest first."""
        if limit < 1:
            fail("--limit must be at least 1", EXIT_USAGE)
        settings = get_settings(ctx)
        db, frames = _open_store(settings)
        rows = frames.list(state=state, limit=limit) if frames else []
        if db is not None:
            db.close()
        out = [{k: r.get(k) for k in FRAME_FIELDS} for r in rows]
        if as_json:
            echo_json(out)
            return
        for r in out:
            err = f"  {r['error']}" if r["error"] else ""
            click.echo(f"{r['id']:>6}  {r['state']:<9} {(r['stage'] or '-'):<11} {r['name']}{err}")
        if not out:
            click.echo("no frames" + (f" in state {state}" if state else ""))

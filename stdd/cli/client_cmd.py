"""`stdd status|frames|submit|cancel|retry|pause|resume|alerts`: talking to the running daemon.

Every command asks the daemon over its HTTP endpoint (`stdd.http.client`, with the token from
`http.token_env` or `http.token_file`). When no daemon answers, `status`, `frames` and `alerts`
read the SQLite file (read-only) and the daemon's status file beside it instead, and say that
the daemon is not running; the commands that change something fail with that message. The
JSON shapes are the same either way: `status --json` has `frames: {state: count}`, `frames
--json` is a list of frames.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from ..pipeline import STAGE_NAMES
from .common import EXIT_USAGE, echo_json, fail, get_settings

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


def _client(settings):
    from ..http.client import Client

    return Client(settings.http)


def _not_running_note(client, as_json: bool) -> None:
    if not as_json:
        click.echo(f"note: daemon is not running at {client.address}; read from the database", err=True)


def _call(client, method: str, path: str, body=None, **params):
    """One request to the daemon; a clear message and exit 1 when it cannot be made or is refused."""
    from ..http.auth import TokenError
    from ..http.client import ApiError, DaemonNotRunning

    try:
        return client.request(method, path, params=params or None, body=body)
    except DaemonNotRunning as e:
        fail(str(e))
    except TokenError as e:
        fail(str(e))
    except ApiError as e:
        extra = ""
        if isinstance(e.body, dict) and e.body.get("errors"):
            extra = "".join(f"\n  {line}" for line in e.body["errors"])
        fail(f"{e.message} (HTTP {e.status}){extra}")


def _frame_options(settings, overrides, targets, profile) -> dict:
    """-c / --target / --profile as the daemon takes them; a bad key or value exits 2 naming it
    (checked here against the local config, and again by the daemon against its own)."""
    from .process_cmd import frame_options_or_exit, split_overrides

    raw, other = split_overrides(overrides, targets=targets)
    if other:
        key = next(iter(other))
        click.echo(f"config error: -c {key}: is not a per-frame setting (a frame may set pipeline, catalog and "
                   f"template keys)", err=True)
        sys.exit(EXIT_USAGE)
    options = frame_options_or_exit(raw, settings)
    if profile:
        options["profile"] = profile
    return options


def _status_from_http(client) -> dict | None:
    from ..http.client import DaemonNotRunning

    try:
        st = client.get("/status")
    except DaemonNotRunning:
        return None
    running_rows = client.get("/frames", state="running", limit=100)["frames"]
    by_id = {f["id"]: f for f in running_rows}
    running = []
    for w in st.get("workers") or []:
        if w.get("frame_id") is None:
            continue
        f = by_id.get(w["frame_id"], {})
        running.append({"id": w["frame_id"], "name": f.get("name"), "stage": w.get("stage") or f.get("stage"),
                        "attempts": w.get("attempt") or f.get("attempts"), "pid": w.get("pid"),
                        "started_at": f.get("started_at")})
    return {
        "daemon": "running", "state": st.get("state"), "paused_reason": st.get("paused_reason"),
        "pid": st.get("pid"), "database": st.get("database"), "frames": st["frames"], "running": running,
        "pool": st.get("pool"), "intake": st.get("intake"), "endpoint": client.address,
        "version": st.get("version"), "uptime_seconds": st.get("uptime_seconds"), "queue": st.get("queue"),
        "workers": st.get("workers"),
    }


def _status_from_db(settings, client) -> dict:
    db, frames = _open_store(settings)
    counts = frames.counts() if frames else {s: 0 for s in ("queued", "running", "done", "failed", "cancelled")}
    running = [{k: f.get(k) for k in ("id", "name", "stage", "attempts", "pid", "started_at")}
               for f in frames.running()] if frames else []
    info = daemon_info(settings)
    if db is not None:
        db.close()
    alive = bool(info and info["alive"])  # alive but not answering HTTP (endpoint disabled or hung)
    return {
        "daemon": "running" if alive else "not running",
        "state": info.get("state") if alive else None,
        "paused_reason": info.get("paused_reason") if alive else None,
        "pid": info.get("pid") if alive else None,
        "database": str(settings.paths.database),
        "frames": counts,
        "running": running,
        "pool": info.get("pool") if alive else None,
        "intake": info.get("intake") if alive else None,
        "endpoint": client.address,
    }


def register(cli: click.Group) -> None:
    @cli.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def status(ctx: click.Context, as_json: bool) -> None:
        """Frames per state and what the daemon is doing."""
        settings = get_settings(ctx)
        client = _client(settings)
        out = _status_from_http(client)
        if out is None:
            _not_running_note(client, as_json)
            out = _status_from_db(settings, client)
        if as_json:
            echo_json(out)
            return
        state = out["state"] or "-"
        click.echo(f"daemon: {out['daemon']}" + (f" (pid {out['pid']}, {state})" if out["pid"] else "")
                   + (f" at {out['endpoint']}" if out.get("version") else ""))
        if out["paused_reason"]:
            click.echo(f"paused: {out['paused_reason']}")
        click.echo("frames: " + ", ".join(f"{k} {v}" for k, v in out["frames"].items()))
        for r in out["running"]:
            click.echo(f"  frame {r['id']} {r['name']}: {r['stage'] or 'starting'} (attempt {r['attempts']},"
                       f" pid {r['pid']})")

    @cli.command("frames")
    @click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "cancelled"]),
                  help="Only frames in this state.")
    @click.option("--alert", "alert_id", help="Only frames linked to this alert id.")
    @click.option("--limit", type=int, default=100, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def frames_cmd(ctx: click.Context, state: str | None, alert_id: str | None, limit: int, as_json: bool) -> None:
        """Recorded frames, newest first."""
        from ..http.client import DaemonNotRunning

        if limit < 1:
            fail("--limit must be at least 1", EXIT_USAGE)
        settings = get_settings(ctx)
        client = _client(settings)
        try:
            rows = []
            offset = 0
            while len(rows) < limit:  # the endpoint pages by at most 1000
                page = client.get("/frames", state=state, alert=alert_id, limit=min(1000, limit - len(rows)),
                                  offset=offset)
                rows.extend(page["frames"])
                if page["next_offset"] is None:
                    break
                offset = page["next_offset"]
        except DaemonNotRunning:
            _not_running_note(client, as_json)
            db, frames = _open_store(settings)
            rows = frames.list(state=state, limit=limit, alert_id=alert_id) if frames else []
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

    @cli.command("submit")
    @click.argument("path", type=click.Path(dir_okay=False))
    @click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
    @click.option("--steps", help="Comma-separated stages to run (default: the configured steps).")
    @click.option("-c", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="The frame's own setting (a bare key is a [pipeline] key; catalog.* and template.* too), "
                       "e.g. -c sn=3 -c template.survey=ps1. Recorded in its result.json.")
    @click.option("--target", "targets", multiple=True,
                  help="A target: a name, 'RA Dec' or 'x= y=' pixels; repeatable (sets pipeline.targets).")
    @click.option("--profile", help="Instrument profile for this frame (a name in instruments_dir).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def submit(ctx: click.Context, path: str, priority: int, steps: str | None, overrides, targets, profile,
               as_json: bool) -> None:
        """Queue the FITS file PATH (it must lie under one of the incoming folders), maybe with its
        own settings. A file already recorded is queued again with the settings given."""
        settings = get_settings(ctx)
        body: dict = {"path": str(Path(path).absolute())}
        if priority:
            body["priority"] = priority
        if steps:
            body["steps"] = [x.strip() for x in steps.split(",") if x.strip()]
        options = _frame_options(settings, overrides, targets, profile)
        if options:
            body["options"] = options
        out = _call(_client(settings), "POST", "/frames", body)
        if as_json:
            echo_json(out)
            return
        f = out["frame"]
        if out["created"]:
            click.echo(f"queued frame {f['id']}: {f['path']}")
        elif options and f["state"] == "queued":
            click.echo(f"already known as frame {f['id']}: queued again with these settings: {f['path']}")
        else:
            click.echo(f"already known as frame {f['id']} ({f['state']}): {f['path']}")

    @cli.command("cancel")
    @click.argument("frame_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def cancel(ctx: click.Context, frame_id: int, as_json: bool) -> None:
        """Cancel frame FRAME_ID (queued: at once; running: its process is stopped)."""
        out = _call(_client(get_settings(ctx)), "POST", f"/frames/{frame_id}/cancel")
        if as_json:
            echo_json(out)
            return
        click.echo(f"frame {frame_id}: {out['state']}")

    @cli.command("retry")
    @click.argument("frame_id", type=int)
    @click.option("--from", "from_stage", type=click.Choice(list(STAGE_NAMES)),
                  help="Start from this stage (earlier stages' products are kept).")
    @click.option("-c", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Change one of the frame's settings for this run (merged over its earlier ones).")
    @click.option("--target", "targets", multiple=True, help="Targets for this run (sets pipeline.targets).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def retry(ctx: click.Context, frame_id: int, from_stage: str | None, overrides, targets, as_json: bool) -> None:
        """Queue the finished frame FRAME_ID again (its previous result is kept as a version)."""
        settings = get_settings(ctx)
        body: dict = {}
        if from_stage:
            body["from_stage"] = from_stage
        options = _frame_options(settings, overrides, targets, None)
        if options:
            body["options"] = options
        out = _call(_client(settings), "POST", f"/frames/{frame_id}/retry", body or None)
        if as_json:
            echo_json(out)
            return
        click.echo(f"frame {frame_id}: {out['frame']['state']}" + (f" (from {from_stage})" if from_stage else ""))

    @cli.command("pause")
    @click.option("--reason", help="Why (shown by stdd status and in the log).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def pause(ctx: click.Context, reason: str | None, as_json: bool) -> None:
        """Stop starting frames (running ones go on; new files are still recorded)."""
        out = _call(_client(get_settings(ctx)), "POST", "/pause", {"reason": reason} if reason else None)
        if as_json:
            echo_json(out)
            return
        click.echo(f"paused: {out['paused_reason']}" if out["paused"] else f"not paused ({out['state']})")

    @cli.command("resume")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def resume(ctx: click.Context, as_json: bool) -> None:
        """Start frames again after `stdd pause`."""
        out = _call(_client(get_settings(ctx)), "POST", "/resume")
        if as_json:
            echo_json(out)
            return
        click.echo("resumed" if not out["paused"] else f"still paused: {out['paused_reason']}")

    @cli.command("alerts")
    @click.option("--live", is_flag=True, help="Only alerts whose region is live now.")
    @click.option("--limit", type=int, default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def alerts(ctx: click.Context, live: bool, limit: int, as_json: bool) -> None:
        """Alerts received, newest first."""
        from ..http.client import DaemonNotRunning

        if not 1 <= limit <= 1000:
            fail("--limit must be between 1 and 1000", EXIT_USAGE)
        settings = get_settings(ctx)
        client = _client(settings)
        try:
            rows = client.get("/alerts", live="true" if live else None, limit=limit)["alerts"]
        except DaemonNotRunning:
            _not_running_note(client, as_json)
            rows = _alerts_from_db(settings, live, limit)
        if as_json:
            echo_json(rows)
            return
        for a in rows:
            where = (f"RA {a['ra']:.4f} Dec {a['dec']:+.4f} r {a['error_radius_deg']:.3g}°"
                     if a.get("ra") is not None and a.get("dec") is not None and a.get("error_radius_deg")
                     else "no position")
            click.echo(f"{a.get('state') or '-':<10} {a.get('mission') or '?'} {a.get('notice_type') or ''}"
                       f" {a.get('event_id') or ''}  {where}  {a['id']}")
        if not rows:
            click.echo("no alerts" + (" live now" if live else ""))



def _alerts_from_db(settings, live: bool, limit: int) -> list[dict]:
    from ..http.alerts_routes import _light
    from ..store import Database, StoreError
    from ..store.alerts import AlertStore

    try:
        db = Database(settings.paths.database, readonly=True)
    except StoreError:
        return []
    try:
        store = AlertStore(db)
        rows = store.live_alerts() if live else store.list_alerts(limit=limit)
        return [_light(r) for r in rows[:limit]]
    finally:
        db.close()

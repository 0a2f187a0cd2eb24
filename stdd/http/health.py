"""GET /health: every check, each `{"ok": bool, "detail": str, ...}`; 200 when all pass, else 503.

Design note: /health answers within a second whatever the daemon is stuck on. Nothing here
touches the daemon's database connection. The checks come from three places, gathered at once:

* off the loop, on threads of their own (`offloop.OffLoop`), each with a deadline: the
  database (`dbprobe`: its own connection, ~0.5 s at most) and what the daemon says of itself —
  `daemon.health()` when the daemon has one (its supervised loops, its database writes, its
  services' own `health()`), merged in under the names it gives (a name /health already uses
  gets a "daemon." prefix), plus the alert check, which may ask the alert service;
* on the loop, from the daemon's in-memory state (`daemon_view.snapshot`): the worker pool,
  the folder watcher; and the event loop's lag monitor.

The alert check depends on the configuration: none with `alerts.enabled = false`; with
`alerts.kafka.enabled = false` (notices from the drop folder only) it passes while alert
handling runs; with Kafka it needs the consumer connected, and a fresh heartbeat when the
heartbeat topic is among the topics. An alert service that offers `health()` is asked instead.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .. import __version__
from .appkeys import KEY_DAEMON, KEY_DAEMON_CHECKS, KEY_DB_CHECK, KEY_LAG
from .daemon_view import alert_handler, alert_service, alert_stream_status, snapshot
from .offloop import Overdue
from .responses import json_response

HEARTBEAT_STALE_SECONDS = 120.0
DAEMON_CHECKS_TIMEOUT = 0.3  # what /health waits for the daemon's own health() and the alert check


def as_check(name: str, value: Any) -> dict[str, Any]:
    """A check as /health shows it: a dict with a bool `ok` and a non-empty `detail`."""
    if not isinstance(value, dict):
        return {"ok": False, "detail": f"{name}: the check gave {type(value).__name__}, not an object"}
    out = dict(value)
    out["ok"] = bool(value.get("ok"))
    if not isinstance(out.get("detail"), str) or not out["detail"].strip():
        out["detail"] = "ok" if out["ok"] else f"{name} is not ok (no detail given)"
    return out


# -- the alert check (off the loop) -------------------------------------------------------
def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool)) or v is None}


def kafka_check(daemon) -> dict[str, Any]:
    s = alert_stream_status(daemon)
    if s is None:
        text = "alerts are enabled but no alert stream is running"
        return {"ok": False, "connected": False, "error": text, "detail": text}
    beat = s.get("last_heartbeat")
    age = (time.time() - beat) if beat else None
    kafka = daemon.settings.alerts.kafka
    expects_beat = bool(kafka.heartbeat_topic) and kafka.heartbeat_topic in kafka.topics
    fresh = age is not None and age < HEARTBEAT_STALE_SECONDS
    connected, alive = bool(s.get("connected")), bool(s.get("alive", True))
    where = s.get("bootstrap") or kafka.bootstrap_servers or "Kafka"
    if not alive:
        detail = f"the Kafka consumer has stopped ({s.get('last_error') or 'no error recorded'})"
    elif not connected:
        detail = f"not connected to {where}" + (f": {s['last_error']}" if s.get("last_error") else "")
    elif expects_beat and not fresh:
        detail = (f"connected to {where}, but no heartbeat on {kafka.heartbeat_topic} "
                  + ("yet" if age is None else f"for {age:.0f} s"))
    else:
        detail = f"connected to {where}" + (f", last heartbeat {age:.0f} s ago" if age is not None else "")
    return {**_scalars(s), "ok": connected and alive and (fresh or not expects_beat), "detail": detail,
            "connected": connected, "last_heartbeat": beat,
            "heartbeat_age_seconds": round(age, 3) if age is not None else None}


def drop_folder_check(daemon, svc) -> dict[str, Any]:
    """Alerts from the drop folder only: ok while alert handling runs (and its intake, if any)."""
    handler = alert_handler(daemon)
    started = handler is not None and getattr(svc, "service", handler) is not None
    drop = getattr(svc, "drop", None)
    ds = drop.status() if drop is not None and callable(getattr(drop, "status", None)) else None
    folder = (ds or {}).get("folder") or str(daemon.settings.paths.alert_drop)
    out: dict[str, Any] = {"kafka": False, "drop_folder": folder}
    if ds is not None:
        out.update({f"drop_{k}": v for k, v in _scalars(ds).items() if k != "folder"})
    if not started:
        return {**out, "ok": False, "detail": "alerts are enabled but alert handling is not running"}
    if ds is not None and not ds.get("alive", True):
        return {**out, "ok": False, "detail": f"the drop folder intake ({folder}) has stopped"
                + (f": {ds['last_error']}" if ds.get("last_error") else "")}
    counts = f": {ds.get('files', 0)} notice(s) taken, {ds.get('failed', 0)} unreadable" if ds else ""
    return {**out, "ok": True, "detail": f"alerts from the drop folder {folder} (Kafka off){counts}"}


def alert_check(daemon) -> dict[str, Any] | None:
    cfg = daemon.settings.alerts
    if not cfg.enabled:
        return None
    svc = alert_service(daemon)
    for holder in (svc, getattr(svc, "service", None)):
        own = getattr(holder, "health", None) if holder is not None else None
        if callable(own):
            return as_check("alert_stream", own())
    if not cfg.kafka.enabled:
        return drop_folder_check(daemon, svc)
    return kafka_check(daemon)


def daemon_side_checks(daemon) -> dict[str, dict]:
    """Run on a thread: the alert check and `daemon.health()` (when the daemon has one)."""
    out: dict[str, dict] = {}
    try:
        alerts = alert_check(daemon)
    except Exception as e:  # noqa: BLE001 — a failing check, not a failing endpoint
        alerts = {"ok": False, "detail": f"the alert check failed: {type(e).__name__}: {e}"}
    if alerts is not None:
        out["alert_stream"] = alerts
    fn = getattr(daemon, "health", None)
    if callable(fn):
        try:
            own = fn()
        except Exception as e:  # noqa: BLE001
            own = {"daemon": {"ok": False, "detail": f"the daemon's health() failed: {type(e).__name__}: {e}"}}
        if not isinstance(own, dict):
            own = {"daemon": {"ok": False, "detail": f"the daemon's health() gave {type(own).__name__}, "
                                                     "not an object"}}
        out.update({f"daemon.{k}" if k in out else str(k): as_check(str(k), v) for k, v in own.items()})
    return out


# -- on the loop --------------------------------------------------------------------------
def loop_checks(daemon, lag) -> dict[str, dict]:
    snap = snapshot(daemon)
    pool = snap["pool"] or {}
    pool_alive = bool(pool.get("alive", False))
    state = snap["state"]
    slots, busy = len(snap["workers"]), sum(1 for w in snap["workers"] if w["busy"])
    if not pool_alive:
        workers_detail = f"the worker pool is not running (the daemon is {state})"
    elif state not in ("running", "paused"):
        workers_detail = f"the daemon is {state}"
    else:
        workers_detail = f"{slots} slot(s), {busy} busy; the daemon is {state}"
    mode = "polling" if daemon.settings.watch.poll else "inotify"
    folders = len((snap.get("intake") or {}).get("folders") or [])
    return {
        "workers": {"ok": pool_alive and state in ("running", "paused"), "detail": workers_detail,
                    "pool_alive": pool_alive, "slots": slots, "busy": busy, "state": state},
        "watcher": {"ok": snap["watcher_alive"], "alive": snap["watcher_alive"], "mode": mode,
                    "detail": f"watching {folders} folder(s) ({mode})" if snap["watcher_alive"]
                    else "the folder watcher is not running"},
        "event_loop": {"ok": lag.running, "lag_last_seconds": lag.last, "lag_max_1m_seconds": lag.max_recent(60),
                       "detail": f"lag {lag.last * 1000:.0f} ms now, {lag.max_recent(60) * 1000:.0f} ms at worst "
                                 "in the last minute" if lag.running else "the lag monitor is not running"},
    }


async def health_checks(request: web.Request) -> dict[str, dict]:
    app = request.app
    daemon = app[KEY_DAEMON]
    database = asyncio.ensure_future(app[KEY_DB_CHECK].run())
    try:
        # a copy: a call still in flight is shared by the requests that come meanwhile
        own = dict(await app[KEY_DAEMON_CHECKS].call(lambda: daemon_side_checks(daemon), DAEMON_CHECKS_TIMEOUT))
    except Overdue as e:
        own = {"daemon": {"ok": False, "detail": f"the daemon's own checks did not answer within "
                                                 f"{e.timeout:g} s (running for {e.running_seconds:.1f} s)"}}
    except Exception as e:  # noqa: BLE001
        own = {"daemon": {"ok": False, "detail": f"the daemon's own checks failed: {type(e).__name__}: {e}"}}
    checks: dict[str, dict] = {"database": await database}
    loop = loop_checks(daemon, app[KEY_LAG])
    checks["workers"], checks["watcher"] = loop["workers"], loop["watcher"]
    if "alert_stream" in own:
        checks["alert_stream"] = own.pop("alert_stream")
    checks["event_loop"] = loop["event_loop"]
    for name, check in own.items():
        checks[f"daemon.{name}" if name in checks else name] = check
    return checks


async def get_health(request: web.Request) -> web.Response:
    checks = await health_checks(request)
    ok = all(c.get("ok") is True for c in checks.values())
    return json_response({"ok": ok, "checks": checks, "version": __version__}, status=200 if ok else 503)

"""GET /health: the checks."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .. import __version__
from ..store.stats import Stats
from .appkeys import KEY_DAEMON, KEY_LAG, KEY_READS
from .daemon_view import alert_stream_status, snapshot
from .responses import json_response

HEARTBEAT_STALE_SECONDS = 120.0


async def health_checks(request: web.Request) -> dict[str, dict]:
    daemon = request.app[KEY_DAEMON]
    reads = request.app[KEY_READS]
    checks: dict[str, dict] = {}
    t0 = time.monotonic()
    try:
        version = await asyncio.wait_for(reads.query(lambda db: Stats(db).ping()), timeout=5.0)
        checks["database"] = {"ok": True, "schema_version": version,
                              "ms": round((time.monotonic() - t0) * 1000, 2)}
    except Exception as e:  # noqa: BLE001 — any failure to read is "database down"
        checks["database"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    snap = snapshot(daemon)
    pool = snap["pool"] or {}
    pool_alive = bool(pool.get("alive", False))
    checks["workers"] = {"ok": pool_alive and snap["state"] in ("running", "paused"),
                         "pool_alive": pool_alive, "slots": len(snap["workers"]),
                         "busy": sum(1 for w in snap["workers"] if w["busy"]), "state": snap["state"]}
    checks["watcher"] = {"ok": snap["watcher_alive"], "alive": snap["watcher_alive"],
                         "mode": "polling" if daemon.settings.watch.poll else "inotify"}
    if daemon.settings.alerts.enabled:
        s = alert_stream_status(daemon)
        if s is None:
            checks["alert_stream"] = {"ok": False, "connected": False,
                                      "error": "alerts are enabled but no alert stream is running"}
        else:
            beat = s.get("last_heartbeat")
            age = (time.time() - beat) if beat else None
            kafka = daemon.settings.alerts.kafka
            expects_beat = bool(kafka.heartbeat_topic) and kafka.heartbeat_topic in kafka.topics
            fresh = age is not None and age < HEARTBEAT_STALE_SECONDS
            checks["alert_stream"] = {**{k: v for k, v in s.items() if isinstance(v, (str, int, float, bool))
                                         or v is None},
                                      "ok": bool(s.get("connected")) and bool(s.get("alive", True))
                                      and (fresh or not expects_beat),
                                      "connected": bool(s.get("connected")), "last_heartbeat": beat,
                                      "heartbeat_age_seconds": round(age, 3) if age is not None else None}
    lag = request.app[KEY_LAG]
    checks["event_loop"] = {"ok": lag.running, "lag_last_seconds": lag.last,
                            "lag_max_1m_seconds": lag.max_recent(60)}
    return checks



async def get_health(request: web.Request) -> web.Response:
    checks = await health_checks(request)
    ok = all(c.get("ok") for c in checks.values())
    return json_response({"ok": ok, "checks": checks, "version": __version__}, status=200 if ok else 503)

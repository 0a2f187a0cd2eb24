"""Status routes: GET /status, /metrics, /openapi.json and / (the HTML page)."""
from __future__ import annotations

import time

from aiohttp import web

from .. import __version__
from ..store import FrameStore
from ..store.alerts import AlertStore
from ..store.stats import Stats
from . import openapi, page
from .alerts_routes import list_row
from .appkeys import KEY_DAEMON, KEY_LAG, KEY_METRICS, KEY_READS
from .daemon_view import database_path, snapshot
from .health import health_checks
from .metrics import CONTENT_TYPE
from .reads import ReadPool
from .responses import json_response


def _counts(reads: ReadPool) -> dict:
    db = reads.db()
    counts = FrameStore(db).counts()
    return {"frames": counts, "queue_due": Stats(db).queue_due(time.time())}



async def get_status(request: web.Request) -> web.Response:
    daemon = request.app[KEY_DAEMON]
    counts = await request.app[KEY_READS].run(_counts, request.app[KEY_READS])
    snap = snapshot(daemon)
    lag = request.app[KEY_LAG]
    snap.pop("watcher_alive")
    return json_response({
        **snap,
        "database": str(database_path(daemon)),
        "frames": counts["frames"],
        "queue": {"depth": counts["frames"].get("queued", 0), "due": counts["queue_due"]},
        "event_loop": {"lag_last_seconds": lag.last, "lag_max_1m_seconds": lag.max_recent(60)},
        "updated_at": time.time(),
    })



async def get_metrics(request: web.Request) -> web.Response:
    metrics, lag = request.app[KEY_METRICS], request.app[KEY_LAG]
    snap = snapshot(request.app[KEY_DAEMON])
    snap["checks"] = await health_checks(request)
    metrics.update_from(snap, lag)
    body = await request.app[KEY_READS].run(metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(openapi.document(__version__))


def _live_alerts(db) -> list[dict]:
    return [list_row(r) for r in AlertStore(db).live_alerts(time.time())[:50]]


async def get_page(request: web.Request) -> web.Response:
    reads = request.app[KEY_READS]
    daemon = request.app[KEY_DAEMON]
    data = await reads.run(page.gather, reads.db, limit=20, alerts=_live_alerts)
    data["snapshot"] = snapshot(daemon)
    return web.Response(text=page.render(data), content_type="text/html", charset="utf-8")


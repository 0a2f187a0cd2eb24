"""Alert routes: GET /alerts, GET /alerts/{id}, POST /alerts.

Design note: reads go to the alert tables through `AlertStore` on the endpoint's reader
connections. "Frames covering" an alert are those the daemon linked to it (frames.alert_ids)
plus those whose recorded footprint overlaps the alert's stored region (rebuilt as a
`LiveRegion`, no skymap decoding), among frames taken from a visibility window before the
alert until its live time ends; "candidates inside" are the transient candidates in those
frames' result.json that fall in the region. A posted notice is parsed first (an unreadable
one is a 400 and is not stored), then handed to the daemon's alert service in a thread, the
same call the Kafka and drop-folder intakes make, so it is stored, de-duplicated, decided and
acted on exactly like one from the stream.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from ..reports.coverage import candidates_inside, covering_frames
from ..store.alerts import AlertStore
from ..store.stats import Stats
from .appkeys import KEY_DAEMON, KEY_READS
from .daemon_view import alert_handler
from .params import MAX_LIMIT, int_param, since_param
from .responses import HttpError, json_response, serialised

#: the columns of an alert in lists (the region, the parsed notice and any skymap are left out)
LIST_KEYS = ("id", "ivorn", "event_id", "mission", "instrument", "notice_type", "role", "time", "ra", "dec",
             "error_radius_deg", "retraction", "retracts", "actionable", "ignore_reason", "priority", "state",
             "decision", "live_until", "received_at", "message_id")
ALERT_STATES = ("live", "ignored", "retracted", "superseded", "expired", "cancel")
MAX_OFFSET = 100_000
TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
MOC_SHOWN = 2000


def list_row(row: dict) -> dict:
    """An alert as lists show it (LIST_KEYS only)."""
    return {k: row.get(k) for k in LIST_KEYS}


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise HttpError(400, f"{name} must be true or false, got {raw!r}")


# -- reads (in a reader thread) -----------------------------------------------------------
def _alert_list(reads, live: bool | None, state: str | None, since: float | None, limit: int, offset: int) -> dict:
    db = reads.db()
    store, stats = AlertStore(db), Stats(db)
    now = time.time()
    if live:
        rows = [r for r in store.live_alerts(now) if since is None or (r.get("received_at") or 0) >= since]
        if state:
            rows = [r for r in rows if r.get("state") == state]
        total = len(rows)
        rows = rows[offset:offset + limit]
    else:
        rows = store.list_alerts(limit=offset + limit, since=since, state=state)[offset:]
        total = stats.alerts_total(state=state, since=since)
    nxt = offset + len(rows) if offset + len(rows) < total else None
    return {"alerts": [list_row(r) for r in rows], "total": total, "limit": limit, "offset": offset,
            "next_offset": nxt}


def _alert_detail(reads, alert_id: str, settings, full: bool) -> dict | None:
    db = reads.db()
    store = AlertStore(db)
    row = store.get_alert(alert_id)
    if row is None:
        return None
    region = row.get("region") if isinstance(row.get("region"), dict) else None
    shown_region = dict(region) if region else None
    if shown_region and not full and isinstance(shown_region.get("moc"), str) \
            and len(shown_region["moc"]) > MOC_SHOWN:
        shown_region["moc"] = shown_region["moc"][:MOC_SHOWN]
        shown_region["moc_truncated"] = True
    alert = {k: v for k, v in row.items() if k not in ("region", "skymap", "parsed")}
    if full:
        alert["parsed"] = row.get("parsed")
    live, frames = covering_frames(db, row, settings)
    candidates = candidates_inside(live, frames)
    return {"alert": alert, "region": shown_region, "actions": store.actions_for_alert(alert_id),
            "frames": frames, "candidates": candidates}


# -- handlers -----------------------------------------------------------------------------
async def get_alerts(request: web.Request) -> web.Response:
    live = _bool_param(request, "live")
    state = request.query.get("state")
    if state is not None and state not in ALERT_STATES:
        raise HttpError(400, f"state must be one of {', '.join(ALERT_STATES)}, got {state!r}")
    since = since_param(request)
    limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
    offset = int_param(request, "offset", 0, 0, MAX_OFFSET)
    reads = request.app[KEY_READS]
    return json_response(await reads.run(serialised, _alert_list, reads, live, state, since, limit, offset))


async def get_alert(request: web.Request) -> web.Response:
    alert_id = request.match_info["id"]
    full = bool(_bool_param(request, "full"))
    reads = request.app[KEY_READS]
    detail = await reads.run(serialised, _alert_detail, reads, alert_id, request.app[KEY_DAEMON].settings, full)
    if detail is None:
        raise HttpError(404, f"no alert {alert_id!r}")
    return json_response(detail)


def _check_notice(raw: bytes, topic: str | None) -> None:
    from ..alerts import NoticeError, parse_notice

    try:
        parse_notice(raw, topic)
    except NoticeError as e:
        raise HttpError(400, f"not a notice stdd can read: {e}") from None


async def post_alert(request: web.Request) -> web.Response:
    from ..alerts import IntakeMessage

    topic = request.query.get("topic")
    if topic is not None and not TOPIC_RE.fullmatch(topic):
        raise HttpError(400, "topic must be a Kafka topic name: 1 to 249 of A-Z a-z 0-9 . _ -")
    raw = await request.read()
    if not raw.strip():
        raise HttpError(400, "the body must be a notice (GCN JSON or VOEvent XML)")
    ctype = request.content_type or ""
    if "json" in ctype:
        try:
            json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"the body is not valid JSON: {e}") from None
    daemon = request.app[KEY_DAEMON]
    handler = alert_handler(daemon)
    if handler is None:
        raise HttpError(409, "alert handling is not running in this daemon (alerts.enabled = false)")
    await asyncio.to_thread(_check_notice, raw, topic)
    outcome = await asyncio.to_thread(handler.handle, IntakeMessage(value=raw, topic=topic, timestamp=time.time()))
    if outcome.state == "error":
        raise HttpError(400, f"not a notice stdd can read: {outcome.error}")
    reprioritize = getattr(daemon, "reprioritize", None)
    if outcome.state == "parsed" and outcome.decision is not None and outcome.decision.act and reprioritize:
        await reprioritize()
    reads = request.app[KEY_READS]
    row = await reads.query(lambda db: AlertStore(db).get_alert(outcome.alert_id)) if outcome.alert_id else None
    body: dict[str, Any] = {**outcome.to_dict(), "alert": list_row(row) if row else None,
                            "created": outcome.state == "parsed"}
    return json_response(body, status=201 if outcome.state == "parsed" else 200)


def _report(reads, alert_id: str, settings, fmt: str):
    from ..reports.alert_report import ReportError, build_report
    from ..reports.circular import circular_text

    try:
        report = build_report(reads.db(), alert_id, settings)
    except ReportError:
        return None
    report["circular"] = circular_text(report)
    return report["circular"] if fmt == "text" else serialised(lambda: report)


async def get_alert_report(request: web.Request) -> web.Response:
    """The follow-up report (JSON), or its draft GCN Circular (`?format=text`)."""
    alert_id = request.match_info["id"]
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "text"):
        raise HttpError(400, f"format must be json or text, got {fmt!r}")
    reads = request.app[KEY_READS]
    out = await reads.run(_report, reads, alert_id, request.app[KEY_DAEMON].settings, fmt)
    if out is None:
        raise HttpError(404, f"no alert {alert_id!r}")
    if fmt == "text":
        return web.Response(text=out, content_type="text/plain", charset="utf-8")
    return json_response(out)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/alerts", get_alerts)
    app.router.add_post("/alerts", post_alert)
    # ids are IVORNs, with slashes: the report's route is tried first
    app.router.add_get("/alerts/{id:.+}/report", get_alert_report)
    app.router.add_get("/alerts/{id:.+}", get_alert)

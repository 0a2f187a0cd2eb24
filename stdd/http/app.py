"""The local control endpoint: routes, errors, auth, and the service the daemon starts.

Design note: the endpoint is a thin face on the daemon. It runs in the daemon's event loop,
reads state through its own reader connections in a thread pool (`reads.ReadPool`), and asks
the daemon to act (submit, cancel, retry, pause, resume, reload, handle a notice) through the
methods the daemon exposes; it never changes the queue itself. Every answer is JSON except
/metrics (Prometheus text), / (HTML) and served files. Errors are one shape,
`{"error": "<message>", "status": <code>}`: 400 bad body or parameter, 401 missing or wrong
token, 403 outside the allowed roots or the frame's folder, 404 unknown id, 409 a state that
forbids the request. Anything unexpected is logged with its trace and answered 500 with its
type, never with a Python traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import json
import logging
import math
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import __version__
from ..daemon import DaemonError, SubmitError
from ..pipeline import RESULT_FILE, STAGE_NAMES
from ..store import STATES, TERMINAL, EventLog, FrameStore
from ..store.alerts import AlertStore
from ..store.stats import Stats
from . import auth, files, openapi, page, thumbs
from .lag import LagMonitor
from .metrics import CONTENT_TYPE, Metrics
from .reads import ReadPool

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # LVK notices with skymaps reach ~4 MiB
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_SQLITE_INT = 2**63 - 1
HEARTBEAT_STALE_SECONDS = 120.0
CANCEL_CLAIM_WAIT = 3.0  # seconds a just-claimed frame may take to reach the pool

KEY_DAEMON = web.AppKey("daemon", object)
KEY_READS = web.AppKey("reads", ReadPool)
KEY_TOKEN = web.AppKey("token", str)
KEY_METRICS = web.AppKey("metrics", Metrics)
KEY_LAG = web.AppKey("lag", LagMonitor)
KEY_OPEN_READS = web.AppKey("open_reads", bool)


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# -- JSON ---------------------------------------------------------------------------------
def _clean(o: Any) -> Any:
    """JSON has no NaN or infinity, and no Paths or bytes: make them null / text."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", errors="replace")
    if hasattr(o, "model_dump"):
        return _clean(o.model_dump(mode="json"))
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        try:
            return _clean(o.item())
        except (TypeError, ValueError):
            pass
    return o


def json_text(data: Any) -> str:
    return json.dumps(_clean(data), default=str, allow_nan=False)


def json_response(data: Any, status: int = 200) -> web.Response:
    """Small answers: serialised on the loop. Large ones (lists, result.json) go through
    `reads.run(serialised, ...)` so even the JSON encoding happens in a reader thread."""
    body = data if isinstance(data, Serialised) else json_text(data)
    return web.Response(text=body, status=status, content_type="application/json")


class Serialised(str):
    """JSON text made in a reader thread."""


def serialised(fn, *args, **kwargs) -> Serialised | None:
    """Call `fn` (in a reader thread) and encode its answer there; None stays None."""
    data = fn(*args, **kwargs)
    return None if data is None else Serialised(json_text(data))


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, "status": status, **extra}, status=status)


# -- the daemon, as the endpoint sees it --------------------------------------------------
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


# -- checks -------------------------------------------------------------------------------
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


# -- parameters ---------------------------------------------------------------------------
def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise HttpError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _since_param(request: web.Request) -> float | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        pass
    text = re.sub(r"(T\d\d:\d\d):60", r"\1:59", raw.strip().upper()).replace("Z", "+00:00")  # a leap second
    try:
        when = dt.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise HttpError(400, f"since must be Unix seconds or an ISO 8601 time, got {raw!r}") from None


def _frame_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(404, f"no frame {raw!r}") from None
    if not 0 < value <= MAX_SQLITE_INT:
        raise HttpError(404, f"no frame {raw}")
    return value


async def _json_body(request: web.Request, *, optional: bool = False) -> dict:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise HttpError(400, "the request needs a JSON object body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise HttpError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _only_keys(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HttpError(400, f"unknown key(s) in the body: {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed)) or 'none'}")


# -- reads --------------------------------------------------------------------------------
def _folders(frame: dict) -> list[str]:
    return [d for d in (frame.get("result_dir"), frame.get("work_dir")) if d]


def _read_result(frame: dict) -> dict | None:
    for folder in _folders(frame):
        try:
            return json.loads((Path(folder) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None


def _frame_detail(reads: ReadPool, frame_id: int, log_lines: int, event_limit: int) -> dict | None:
    db = reads.db()
    frames = FrameStore(db)
    frame = frames.get(frame_id)
    if frame is None:
        return None
    out: dict[str, Any] = {"frame": frame, "stage_runs": frames.stage_runs(frame_id)}
    out["result"] = _read_result(frame)
    logs: dict[str, list[str]] = {}
    listing: list[dict] = []
    seen: set[str] = set()
    for folder in _folders(frame):
        base = Path(folder)
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base).as_posix()
            if rel in seen or not path.is_file() or path.is_symlink() or rel.startswith("."):
                continue
            seen.add(rel)
            listing.append({"name": rel, "size": path.stat().st_size,
                            "url": f"/frames/{frame_id}/files/{urllib.parse.quote(rel)}"})
            if path.suffix == ".log" and "/" not in rel:
                with contextlib.suppress(OSError):
                    logs[rel] = files.tail(path, log_lines)
    out["files"] = listing
    out["logs"] = logs
    out["events"] = EventLog(db).recent(limit=event_limit, frame_id=frame_id)
    return out


def _frame_list(reads: ReadPool, state, since, alert, limit, offset) -> dict:
    db = reads.db()
    rows = FrameStore(db).list(state=state, since=since, limit=limit, offset=offset, alert_id=alert)
    total = Stats(db).frames_total(state=state, since=since, alert_id=alert)
    nxt = offset + len(rows) if offset + len(rows) < total else None
    return {"frames": rows, "total": total, "limit": limit, "offset": offset, "next_offset": nxt}


def _get_frame(reads: ReadPool, frame_id: int) -> dict | None:
    return FrameStore(reads.db()).get(frame_id)


def _counts(reads: ReadPool) -> dict:
    db = reads.db()
    counts = FrameStore(db).counts()
    return {"frames": counts, "queue_due": Stats(db).queue_due(time.time())}


# -- handlers -----------------------------------------------------------------------------
async def get_health(request: web.Request) -> web.Response:
    checks = await health_checks(request)
    ok = all(c.get("ok") for c in checks.values())
    return json_response({"ok": ok, "checks": checks, "version": __version__}, status=200 if ok else 503)


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


async def get_frames(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise HttpError(400, f"state must be one of {', '.join(STATES)}, got {state!r}")
    since = _since_param(request)
    alert = request.query.get("alert") or None
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    reads = request.app[KEY_READS]
    return json_response(await reads.run(serialised, _frame_list, reads, state, since, alert, limit, offset))


async def get_frame(request: web.Request) -> web.Response:
    frame_id = _frame_id(request)
    log_lines = _int_param(request, "log_lines", 50, 0, 5000)
    reads = request.app[KEY_READS]
    detail = await reads.run(serialised, _frame_detail, reads, frame_id, log_lines, 100)
    if detail is None:
        raise HttpError(404, f"no frame {frame_id}")
    return json_response(detail)


async def get_frame_file(request: web.Request) -> web.StreamResponse:
    frame_id = _frame_id(request)
    name = request.match_info["name"]
    reads = request.app[KEY_READS]
    frame = await reads.run(_get_frame, reads, frame_id)
    if frame is None:
        raise HttpError(404, f"no frame {frame_id}")
    try:
        path = await reads.run(files.find_frame_file, _folders(frame), name)
    except files.FileRefused as e:
        raise HttpError(e.status, f"{e} (frame {frame_id}, {name!r})") from None
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff",
                                           "Content-Security-Policy": "sandbox"})


async def get_thumbnail(request: web.Request) -> web.StreamResponse:
    frame_id = _frame_id(request)
    reads = request.app[KEY_READS]
    frame = await reads.run(_get_frame, reads, frame_id)
    if frame is None:
        raise HttpError(404, f"no frame {frame_id}")
    try:
        path = await reads.run(thumbs.thumbnail_path, frame, request.app[KEY_DAEMON].settings.paths.cache)
    except thumbs.NoThumbnail as e:
        raise HttpError(404, str(e)) from None
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=60"})


async def post_frames(request: web.Request) -> web.Response:
    data = await _json_body(request)
    _only_keys(data, {"path", "priority", "steps"})
    path = data.get("path")
    if not isinstance(path, str) or not path.strip():
        raise HttpError(400, "'path' must be a non-empty string")
    if "\x00" in path:
        raise HttpError(400, "'path' has a NUL character")
    priority = data.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 1_000_000:
        raise HttpError(400, "'priority' must be an integer between -1000000 and 1000000")
    steps = data.get("steps")
    if steps is not None:
        if not isinstance(steps, list) or not steps or not all(isinstance(x, str) and x in STAGE_NAMES
                                                                for x in steps):
            raise HttpError(400, f"'steps' must be a non-empty list of stage names ({', '.join(STAGE_NAMES)})")
    daemon = request.app[KEY_DAEMON]
    roots = [Path(r) for r in daemon.settings.paths.incoming]
    target = await asyncio.to_thread(_allowed_path, path, roots)
    try:
        frame = await call(daemon.submit, target, steps=steps, priority=priority)
    except SubmitError as e:
        raise HttpError(400, str(e)) from None
    duplicate = bool(frame.pop("duplicate", False))
    return json_response({"frame": frame, "created": not duplicate}, status=200 if duplicate else 201)


def _allowed_path(path: str, roots: list[Path]) -> Path:
    """The real path of a submitted file, if it is a file under one of the roots."""
    p = Path(path)
    if not p.is_absolute():
        raise HttpError(400, f"'path' must be absolute, got {path!r}")
    real = Path(os.path.realpath(p))
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not any(real.is_relative_to(r) and real != r for r in real_roots):
        raise HttpError(403, f"{path} is not under an allowed root ({', '.join(str(r) for r in roots)})")
    if not real.is_file():
        raise HttpError(404, f"no such file: {path}")
    return real


async def post_cancel(request: web.Request) -> web.Response:
    frame_id = _frame_id(request)
    await _json_body(request, optional=True)
    reads = request.app[KEY_READS]
    frame = await reads.run(_get_frame, reads, frame_id)
    if frame is None:
        raise HttpError(404, f"no frame {frame_id}")
    if frame["state"] in TERMINAL:
        raise HttpError(409, f"frame {frame_id} is already {frame['state']}", state=frame["state"])
    deadline = time.monotonic() + CANCEL_CLAIM_WAIT
    while True:
        try:
            result = await call(request.app[KEY_DAEMON].cancel, frame_id)
        except SubmitError as e:
            raise HttpError(409, str(e)) from None
        state = result.get("state") if isinstance(result, dict) else None
        # claimed a moment ago: the pool may not hold its process yet; ask again shortly
        if state != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if state not in ("cancelled", "cancelling"):
        raise HttpError(409, f"frame {frame_id} could not be cancelled: it is {state}", state=state)
    frame = await reads.run(_get_frame, reads, frame_id)
    return json_response({"frame": frame, "state": state}, status=200 if state == "cancelled" else 202)


async def post_retry(request: web.Request) -> web.Response:
    frame_id = _frame_id(request)
    data = await _json_body(request, optional=True)
    _only_keys(data, {"from_stage"})
    from_stage = data.get("from_stage")
    if "from_stage" in data and (not isinstance(from_stage, str) or from_stage not in STAGE_NAMES):
        raise HttpError(400, f"from_stage must be one of {', '.join(STAGE_NAMES)}, got {from_stage!r}")
    reads = request.app[KEY_READS]
    frame = await reads.run(_get_frame, reads, frame_id)
    if frame is None:
        raise HttpError(404, f"no frame {frame_id}")
    if frame["state"] not in TERMINAL:
        raise HttpError(409, f"frame {frame_id} is {frame['state']}; only a finished frame can be retried",
                        state=frame["state"])
    try:
        await call(request.app[KEY_DAEMON].retry, frame_id, from_stage)
    except SubmitError as e:
        raise HttpError(409, str(e)) from None
    frame = await reads.run(_get_frame, reads, frame_id)
    return json_response({"frame": frame})


async def post_pause(request: web.Request) -> web.Response:
    data = await _json_body(request, optional=True)
    _only_keys(data, {"reason"})
    reason = data.get("reason", "paused by request (HTTP)")
    if not isinstance(reason, str) or len(reason) > 500:
        raise HttpError(400, "'reason' must be a string of at most 500 characters")
    reason = reason.strip() or "paused by request (HTTP)"
    daemon = request.app[KEY_DAEMON]
    if daemon.state not in ("running", "paused"):
        raise HttpError(409, f"the daemon is {daemon.state}")
    await call(daemon.pause, reason)
    return json_response({"paused": daemon.state == "paused", "state": daemon.state,
                          "paused_reason": daemon.paused_reason})


async def post_resume(request: web.Request) -> web.Response:
    await _json_body(request, optional=True)
    daemon = request.app[KEY_DAEMON]
    if daemon.state not in ("running", "paused"):
        raise HttpError(409, f"the daemon is {daemon.state}")
    await call(daemon.resume)
    return json_response({"paused": daemon.state == "paused", "state": daemon.state,
                          "paused_reason": daemon.paused_reason})


async def post_reload(request: web.Request) -> web.Response:
    await _json_body(request, optional=True)
    # reading and validating a small TOML file: quick, and reload() must run on the loop
    ok, errors = await call(request.app[KEY_DAEMON].reload)
    if not ok:
        raise HttpError(409, "the config was not reloaded; the running settings stay", errors=errors)
    return json_response({"reloaded": True, "errors": []})


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
    from .alerts_routes import _light

    return [_light(r) for r in AlertStore(db).live_alerts(time.time())[:50]]


async def get_page(request: web.Request) -> web.Response:
    reads = request.app[KEY_READS]
    daemon = request.app[KEY_DAEMON]
    data = await reads.run(page.gather, reads.db, limit=20, alerts=_live_alerts)
    data["snapshot"] = snapshot(daemon)
    return web.Response(text=page.render(data), content_type="text/html", charset="utf-8")


# -- middleware ---------------------------------------------------------------------------
def _local_peer(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, (tuple, list)) and peer:
        return auth.is_loopback(str(peer[0]))
    return True  # a unix socket: only local users can connect (its mode is 600)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    metrics: Metrics = request.app[KEY_METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    t0 = time.monotonic()
    status = 500
    try:
        if request.method not in ("GET", "HEAD", "OPTIONS") or not (
                request.app[KEY_OPEN_READS] and _local_peer(request)):
            token = request.app[KEY_TOKEN]
            if not auth.token_matches(auth.bearer(request.headers.get("Authorization")), token):
                status = 401
                resp = error_response(401, "this request needs 'Authorization: Bearer <token>' "
                                           "(the token is in the daemon's http.token_file)")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="stdd"'
                return resp
        resp = await handler(request)
        status = resp.status
        return resp
    except HttpError as e:
        status = e.status
        return error_response(e.status, e.message, **e.extra)
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        if isinstance(e, web.HTTPMethodNotAllowed):
            resp = error_response(e.status, f"{request.method} is not allowed here",
                                  allowed=sorted(e.allowed_methods))
            resp.headers["Allow"] = ", ".join(sorted(e.allowed_methods))
            return resp
        return error_response(e.status, e.reason)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        status = 500
        return error_response(500, f"internal error: {type(e).__name__}: {e}")
    finally:
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.monotonic() - t0)


class _BadRequestLog(logging.Filter):
    """aiohttp logs a malformed request (bad header bytes, a broken request line) with a full
    traceback; it has already answered 400, so one warning line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            first = str(exc.message).strip().splitlines()[0] if exc.message else ""
            record.args = (record.getMessage(), exc.code, first)
            record.msg = "%s: malformed HTTP request answered %s: %s"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_BAD_REQUEST_LOG = _BadRequestLog()


# -- the app ------------------------------------------------------------------------------
def create_app(daemon, *, token: str | None = None) -> web.Application:
    """The endpoint for `daemon`. `token` defaults to the env var / token file (made if missing)."""
    http = daemon.settings.http
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_LOG not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_LOG)
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    reads = ReadPool(database_path(daemon))
    lag = LagMonitor()
    metrics = Metrics(reads.db)
    lag.observe(metrics.lag.observe)
    app[KEY_DAEMON] = daemon
    app[KEY_READS] = reads
    app[KEY_TOKEN] = token or auth.ensure_token(http)
    app[KEY_METRICS] = metrics
    app[KEY_LAG] = lag
    app[KEY_OPEN_READS] = http.open_reads

    async def on_startup(app: web.Application) -> None:
        lag.start()

    async def on_cleanup(app: web.Application) -> None:
        await lag.stop()
        await asyncio.to_thread(reads.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/", get_page)
    r.add_get("/health", get_health)
    r.add_get("/status", get_status)
    r.add_get("/metrics", get_metrics)
    r.add_get("/openapi.json", get_openapi)
    r.add_get("/frames", get_frames)
    r.add_post("/frames", post_frames)
    r.add_get(r"/frames/{id}", get_frame)
    r.add_get(r"/frames/{id}/files/{name:.+}", get_frame_file)
    r.add_get(r"/frames/{id}/thumbnail.png", get_thumbnail)
    r.add_post(r"/frames/{id}/cancel", post_cancel)
    r.add_post(r"/frames/{id}/retry", post_retry)
    r.add_post("/pause", post_pause)
    r.add_post("/resume", post_resume)
    r.add_post("/reload", post_reload)
    from . import alerts_routes
    alerts_routes.add_routes(app)
    return app


class HttpService:
    """The endpoint as one of the daemon's services (`stdd.daemon.hooks.Service`): the daemon
    calls `await start(daemon)` once it is ready and `await stop()` before it closes the
    database. `url` is where it listens (`http://host:port`, or `unix:/path`)."""

    name = "http"

    def __init__(self, *, token: str | None = None):
        self._token = token
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.url: str | None = None

    @property
    def token(self) -> str:
        return self.app[KEY_TOKEN]

    @property
    def lag(self) -> LagMonitor:
        return self.app[KEY_LAG]

    async def start(self, daemon) -> None:
        http = daemon.settings.http
        self.app = create_app(daemon, token=self._token)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        if http.unix_socket:
            sock = Path(http.unix_socket)
            sock.parent.mkdir(parents=True, exist_ok=True)
            if sock.is_socket():
                sock.unlink()  # left by a previous run (the daemon's lock proves none is running)
            site: web.BaseSite = web.UnixSite(self.runner, str(sock))
            await site.start()
            os.chmod(sock, 0o600)
            self.url = f"unix:{sock}"
        else:
            site = web.TCPSite(self.runner, http.host, http.port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                await self.runner.cleanup()
                self.runner = None
                raise DaemonError(f"the HTTP endpoint cannot listen on {http.host}:{http.port}: "
                                  f"{e.strerror or e}") from None
            port = site._server.sockets[0].getsockname()[1] if site._server else http.port  # port 0: the real one
            host = http.host
            self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        log.info("HTTP endpoint at %s", self.url)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

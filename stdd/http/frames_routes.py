"""Frame routes: GET /frames, GET /frames/{id} (+ its files and thumbnail), POST /frames,
POST /frames/{id}/cancel and /retry.

Reads (the queue, stage runs, events, result.json, the frame's folder) run in the endpoint's
reader threads (`reads.ReadPool`), large answers encoded there too; writes are the daemon's
(`submit`, `cancel`, `retry`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from ..daemon import SubmitError
from ..pipeline import RESULT_FILE, STAGE_NAMES
from ..result_versions import list_versions
from ..store import STATES, TERMINAL, EventLog, FrameStore
from ..store.stats import Stats
from . import files, thumbs
from .appkeys import KEY_DAEMON, KEY_READS
from .daemon_view import call
from .params import MAX_LIMIT, MAX_OFFSET, int_param, json_body, only_keys, path_frame_id, since_param
from .reads import ReadPool
from .responses import HttpError, json_response, serialised

CANCEL_CLAIM_WAIT = 3.0  # seconds a just-claimed frame may take to reach the pool


# -- reads (in a reader thread) -----------------------------------------------------------
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
    out["versions"] = list_versions(Path(frame["result_dir"])) if frame.get("result_dir") else []
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


# -- handlers -----------------------------------------------------------------------------
async def get_frames(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise HttpError(400, f"state must be one of {', '.join(STATES)}, got {state!r}")
    since = since_param(request)
    alert = request.query.get("alert") or None
    limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
    offset = int_param(request, "offset", 0, 0, MAX_OFFSET)
    reads = request.app[KEY_READS]
    return json_response(await reads.run(serialised, _frame_list, reads, state, since, alert, limit, offset))


async def get_frame(request: web.Request) -> web.Response:
    frame_id = path_frame_id(request)
    log_lines = int_param(request, "log_lines", 50, 0, 5000)
    reads = request.app[KEY_READS]
    detail = await reads.run(serialised, _frame_detail, reads, frame_id, log_lines, 100)
    if detail is None:
        raise HttpError(404, f"no frame {frame_id}")
    return json_response(detail)


async def get_frame_file(request: web.Request) -> web.StreamResponse:
    frame_id = path_frame_id(request)
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
    frame_id = path_frame_id(request)
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
    data = await json_body(request)
    only_keys(data, {"path", "priority", "steps", "options"})
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
    options = _options_param(data)
    daemon = request.app[KEY_DAEMON]
    roots = [Path(r) for r in daemon.settings.paths.incoming]
    target = await asyncio.to_thread(_allowed_path, path, roots)
    try:
        frame = await call(daemon.submit, target, steps=steps, priority=priority, options=options)
    except SubmitError as e:
        raise HttpError(400, str(e)) from None
    duplicate = bool(frame.pop("duplicate", False))
    return json_response({"frame": frame, "created": not duplicate}, status=200 if duplicate else 201)


def _options_param(data: dict) -> dict | None:
    """The frame's own settings as sent: an object of `-c` keys (checked by the daemon)."""
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise HttpError(400, "'options' must be an object of settings (e.g. {\"sn\": 3, \"template.survey\": \"ps1\"})")
    return options or None


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
    frame_id = path_frame_id(request)
    await json_body(request, optional=True)
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
    frame_id = path_frame_id(request)
    data = await json_body(request, optional=True)
    only_keys(data, {"from_stage", "options"})
    options = _options_param(data)
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
        await call(request.app[KEY_DAEMON].retry, frame_id, from_stage, options)
    except SubmitError as e:
        # a bad option is the request's fault (400); a frame that cannot be retried now is a conflict
        raise HttpError(400 if str(e).startswith("option ") else 409, str(e)) from None
    frame = await reads.run(_get_frame, reads, frame_id)
    return json_response({"frame": frame})

"""The web interface's routes: pages under /ui/, their pictures, and the forms that act.

Pages are Jinja2 templates rendered on the server (aiohttp-jinja2; every value escaped); their
data is gathered in the endpoint's reader threads, pictures are drawn in the interface's own
two threads (so a burst of image requests never delays the JSON API's reads), and actions go
through the daemon's own methods (retry, cancel), exactly as the JSON API's do. Every asset is
served from the package (`static/`): nothing is loaded from another site.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..config.frame_options import FrameOptionError, normalize
from ..config.load import parse_override
from ..daemon import SubmitError
from ..http import files as http_files
from ..http import thumbs
from ..http.appkeys import KEY_DAEMON, KEY_OPEN_READS, KEY_READS, KEY_TOKEN
from ..http.daemon_view import call
from ..pipeline import STAGE_NAMES
from ..store import TERMINAL, EventLog, FrameStore
from ..store.alerts import AlertStore
from ..reports.alert_report import ReportError, build_report, fmt_dt, lightcurve_png
from ..reports.circular import circular_text
from ..reports.coverage import covering_frames
from . import frame_view, night, preview, security, store_pages
from .coverage import coverage_png

HERE = Path(__file__).resolve().parent
KEY_RENDER = web.AppKey("ui_render", ThreadPoolExecutor)
PICTURE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def add_routes(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                         autoescape=jinja2.select_autoescape(default=True),
                         context_processors=[_context])
    app[security.KEY_SESSIONS] = security.Sessions()
    app[KEY_RENDER] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stdd-ui-render")

    async def on_cleanup(app: web.Application) -> None:
        app[KEY_RENDER].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/ui", lambda request: _redirect("/ui/"))
    r.add_get("/ui/", page_night)
    r.add_get("/ui/night.png", night_plot)
    r.add_get("/ui/login", page_login)
    r.add_post("/ui/login", post_login)
    r.add_post("/ui/logout", post_logout)
    r.add_get(r"/ui/frames/{id:\d+}", page_frame)
    r.add_get(r"/ui/frames/{id:\d+}/preview", frame_preview)
    r.add_get(r"/ui/frames/{id:\d+}/thumb.png", frame_thumb)
    r.add_get(r"/ui/frames/{id:\d+}/overlays.json", frame_overlays)
    r.add_get(r"/ui/frames/{id:\d+}/files/{name:.+}", frame_file)
    r.add_post(r"/ui/frames/{id:\d+}/retry", post_retry)
    r.add_post(r"/ui/frames/{id:\d+}/cancel", post_cancel)
    # alert ids are IVORNs, with slashes: the pictures' routes are tried first
    r.add_get(r"/ui/alerts/{id:.+}/coverage.png", alert_coverage)
    r.add_get(r"/ui/alerts/{id:.+}/lightcurve.png", alert_lightcurve)
    r.add_get(r"/ui/alerts/{id:.+}", page_alert)
    store_pages.add_routes(app, _render, _require_read, lenient)
    r.add_static("/ui/static/", str(HERE / "static"), append_version=False)


async def _context(request: web.Request) -> dict:
    s = security.session_of(request)
    return {"session": s, "csrf": s.csrf if s else "", "path": request.path_qs, "stages": STAGE_NAMES}


def _redirect(to: str) -> web.Response:
    raise web.HTTPSeeOther(to)


def _require_read(request: web.Request) -> None:
    if not security.may_read(request, request.app[KEY_OPEN_READS]):
        raise web.HTTPSeeOther("/ui/login?next=" + urllib.parse.quote(request.path_qs, safe=""))


def _frame_id(request: web.Request) -> int:
    return int(request.match_info["id"])


async def _frame(request: web.Request) -> dict:
    reads = request.app[KEY_READS]
    frame = await reads.run(lambda: FrameStore(reads.db()).get(_frame_id(request)))
    if frame is None:
        raise web.HTTPNotFound(text=f"no frame {_frame_id(request)}")
    return frame


async def _render(request: web.Request, fn, *args):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[KEY_RENDER], lambda: fn(*args))


# -- login ---------------------------------------------------------------------------------
async def page_login(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("login.html", request, {
        "next": security.safe_next(request.query.get("next")), "error": None})


async def post_login(request: web.Request) -> web.Response:
    form = await request.post()
    target = security.safe_next(form.get("next"))
    if not security.token_ok(str(form.get("token") or ""), request.app[KEY_TOKEN]):
        return aiohttp_jinja2.render_template("login.html", request, {
            "next": target, "error": "that is not the endpoint's token (it is in http.token_file)"}, status=401)
    s = request.app[security.KEY_SESSIONS].new(str(form.get("who") or ""))
    resp = web.HTTPSeeOther(target)
    security.set_cookie(resp, s)
    raise resp


async def post_logout(request: web.Request) -> web.Response:
    form = await request.post()
    security.check_action(request, form)
    request.app[security.KEY_SESSIONS].drop(request.cookies.get(security.COOKIE))
    resp = web.HTTPSeeOther("/ui/")
    security.clear_cookie(resp)
    raise resp


# -- the night -----------------------------------------------------------------------------
def _night_param(request: web.Request, lon: float):
    try:
        return night.parse_night(request.query.get("night"), lon, time.time())
    except ValueError as e:
        raise web.HTTPBadRequest(text=str(e))


async def page_night(request: web.Request) -> web.Response:
    _require_read(request)
    daemon = request.app[KEY_DAEMON]
    lon = daemon.settings.site.lon
    the_night = _night_param(request, lon)
    reads = request.app[KEY_READS]
    asked = "night" in request.query

    def gather():
        db = reads.db()
        chosen, note = the_night, None
        rows = night.frames_of_night(db, chosen, lon)
        if not rows and not asked:  # the morning after, or a quiet spell: the last night with frames
            latest = night.latest_night(db, lon)
            if latest is not None and latest != chosen:
                chosen, note = latest, f"no frames tonight ({the_night.isoformat()}): the latest night with frames"
                rows = night.frames_of_night(db, chosen, lon)
        return chosen, note, rows, AlertStore(db).live_alerts()

    chosen, note, rows, live = await reads.run(gather)
    return aiohttp_jinja2.render_template("night.html", request, {
        "night": chosen, "note": note, "rows": lenient(rows), "summary": lenient(night.summary(rows)),
        "alerts": lenient(live), "site": daemon.settings.site.name,
        "prev_night": _iso(chosen, -1), "next_night": _iso(chosen, 1)})


def _iso(d, days: int) -> str:
    from datetime import timedelta

    return (d + timedelta(days=days)).isoformat()


async def night_plot(request: web.Request) -> web.Response:
    _require_read(request)
    daemon = request.app[KEY_DAEMON]
    lon = daemon.settings.site.lon
    the_night = _night_param(request, lon)
    reads = request.app[KEY_READS]
    rows = await reads.run(lambda: night.frames_of_night(reads.db(), the_night, lon))
    png = await _render(request, night.plot_png, rows, the_night)
    return web.Response(body=png, content_type="image/png", headers=PICTURE_HEADERS)


# -- a frame -------------------------------------------------------------------------------
async def page_frame(request: web.Request) -> web.Response:
    _require_read(request)
    frame = await _frame(request)
    reads = request.app[KEY_READS]

    def gather():
        db = reads.db()
        result = frame_view.read_result(frame)
        runs = FrameStore(db).stage_runs(frame["id"])
        logs = {}
        for base in frame_view.folders(frame):
            for p in sorted(base.glob("*.log")):
                logs.setdefault(p.name, http_files.tail(p, 200))
        listing = []
        seen = set()
        for base in frame_view.folders(frame):
            for p in sorted(base.rglob("*")):
                rel = p.relative_to(base).as_posix()
                if p.is_file() and not p.is_symlink() and not rel.startswith(".") and rel not in seen:
                    seen.add(rel)
                    listing.append({"name": rel, "size": p.stat().st_size})
        return {
            "result": result, "result_json": json.dumps(result, indent=1) if result else None,
            "timeline": frame_view.timeline(runs), "logs": logs, "files": listing,
            "events": EventLog(db).recent(limit=50, frame_id=frame["id"]),
            "images": frame_view.images(frame), "plots": frame_view.plots(frame, result),
            "candidates": frame_view.candidates(frame, result), "versions": frame_view.history(frame),
            "targets": (result or {}).get("targets") or [],
        }

    data = await reads.run(gather)
    data["result"] = data["result"] or {}
    for key in ("result", "candidates", "targets", "timeline", "versions"):
        data[key] = lenient(data[key])
    return aiohttp_jinja2.render_template("frame.html", request, {
        "frame": lenient(frame), **data, "terminal": frame["state"] in TERMINAL,
        "cmaps": preview.CMAPS, "stretches": preview.STRETCHES,
        "message": request.query.get("message")})


def lenient(o):
    """Dicts whose missing keys read as None in a template (a failed frame's result lacks most)."""
    from collections import defaultdict

    if isinstance(o, dict):
        return defaultdict(lambda: None, {k: lenient(v) for k, v in o.items()})
    if isinstance(o, list):
        return [lenient(v) for v in o]
    return o


def _view(request: web.Request) -> preview.View:
    q = request.query
    try:
        region = None
        if all(k in q for k in ("x0", "x1", "y0", "y1")):
            region = tuple(int(float(q[k])) for k in ("x0", "x1", "y0", "y1"))
        return preview.View(width=int(q.get("width", 800)), stretch=q.get("stretch", "asinh"),
                            cmap=q.get("cmap", "gray"), qmin=float(q.get("qmin", 0.5)),
                            qmax=float(q.get("qmax", 99.5)), smooth=float(q.get("smooth", 0)),
                            fmt=q.get("format", "png"), region=region).checked()
    except (ValueError, preview.PreviewError) as e:
        raise web.HTTPBadRequest(text=str(e))


async def frame_preview(request: web.Request) -> web.Response:
    """A picture of one of the frame's FITS files (`file`, default image.fits; `hdu` for a
    cutout's plane), drawn as the query asks (stdd.ui.preview.View)."""
    _require_read(request)
    frame = await _frame(request)
    view = _view(request)
    rel = request.query.get("file", "image.fits")
    hdu = request.query.get("hdu") or None
    try:
        path = await request.app[KEY_READS].run(http_files.find_frame_file, frame_view.folders(frame), rel)
    except http_files.FileRefused as e:
        raise web.HTTPNotFound(text=str(e))
    try:
        data, info = await _render(request, preview.render, path, view, hdu)
    except preview.PreviewError as e:
        raise web.HTTPNotFound(text=str(e))
    headers = {**PICTURE_HEADERS, "X-Preview": json.dumps(info)}
    return web.Response(body=data, content_type=f"image/{view.fmt}", headers=headers)


async def frame_thumb(request: web.Request) -> web.StreamResponse:
    """The frame's image, small (never a stage's plot)."""
    _require_read(request)
    frame = await _frame(request)
    cache = request.app[KEY_DAEMON].settings.paths.cache
    try:
        path = await _render(request, thumbs.thumbnail_path, frame, cache, False)
    except thumbs.NoThumbnail as e:  # a rejected file, or its folders removed: a picture that says so
        return web.FileResponse(HERE / "static" / "no-image.svg",
                                headers={"X-Content-Type-Options": "nosniff", "X-No-Thumbnail": str(e)[:200]})
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=60"})


async def frame_overlays(request: web.Request) -> web.Response:
    _require_read(request)
    frame = await _frame(request)
    reads = request.app[KEY_READS]
    data = await reads.run(lambda: frame_view.overlays(frame, frame_view.read_result(frame)))
    shape = None
    for name in frame_view.images(frame)[:1]:
        path = frame_view.find(frame, name)
        try:
            shape = await _render(request, preview.image_shape, path)
        except preview.PreviewError:
            pass
    return web.json_response({**data, "shape": list(shape[::-1]) if shape else None})


async def frame_file(request: web.Request) -> web.StreamResponse:
    _require_read(request)
    frame = await _frame(request)
    try:
        path = await request.app[KEY_READS].run(http_files.find_frame_file, frame_view.folders(frame),
                                                request.match_info["name"])
    except http_files.FileRefused as e:
        raise web.HTTPNotFound(text=str(e))
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff",
                                           "Content-Security-Policy": "sandbox"})


# -- acting --------------------------------------------------------------------------------
def parse_settings_text(text: str) -> dict:
    """`key=value` lines (as with -c; blank lines and # comments skipped) → raw options."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            k, v = parse_override(line)
        except ValueError as e:
            raise FrameOptionError(f"line {n}", str(e)) from None
        out[k] = v
    return out


async def post_retry(request: web.Request) -> web.Response:
    form = await request.post()
    security.check_action(request, form)
    frame = await _frame(request)
    daemon = request.app[KEY_DAEMON]
    from_stage = str(form.get("from_stage") or "") or None
    if from_stage is not None and from_stage not in STAGE_NAMES:
        raise web.HTTPBadRequest(text=f"from_stage must be one of {', '.join(STAGE_NAMES)}")
    try:
        options = normalize(parse_settings_text(str(form.get("settings") or "")), daemon.settings)
        await call(daemon.retry, frame["id"], from_stage, options or None)
    except FrameOptionError as e:
        raise web.HTTPBadRequest(text=f"setting {e}")
    except SubmitError as e:
        raise web.HTTPConflict(text=str(e))
    msg = f"queued again{' from ' + from_stage if from_stage else ''}"
    raise web.HTTPSeeOther(f"/ui/frames/{frame['id']}?message=" + urllib.parse.quote(msg))


async def post_cancel(request: web.Request) -> web.Response:
    form = await request.post()
    security.check_action(request, form)
    frame = await _frame(request)
    try:
        out = await call(request.app[KEY_DAEMON].cancel, frame["id"])
    except SubmitError as e:
        raise web.HTTPConflict(text=str(e))
    state = out.get("state") if isinstance(out, dict) else "?"
    raise web.HTTPSeeOther(f"/ui/frames/{frame['id']}?message=" + urllib.parse.quote(f"cancel: {state}"))


# -- an alert ------------------------------------------------------------------------------
async def _alert_report(request: web.Request) -> dict:
    reads = request.app[KEY_READS]
    settings = request.app[KEY_DAEMON].settings
    try:
        return await reads.run(lambda: build_report(reads.db(), request.match_info["id"], settings))
    except ReportError as e:
        raise web.HTTPNotFound(text=str(e))


async def page_alert(request: web.Request) -> web.Response:
    _require_read(request)
    report = await _alert_report(request)
    report["circular"] = circular_text(report)
    quoted = urllib.parse.quote(report["alert"]["id"], safe="")
    return aiohttp_jinja2.render_template("alert.html", request, {
        "r": lenient(report), "quoted": quoted, "fmt_dt": fmt_dt})


async def alert_coverage(request: web.Request) -> web.Response:
    _require_read(request)
    reads = request.app[KEY_READS]
    settings = request.app[KEY_DAEMON].settings
    alert_id = request.match_info["id"]

    def gather():
        row = AlertStore(reads.db()).get_alert(alert_id)
        if row is None:
            return None, []
        live, frames = covering_frames(reads.db(), row, settings)
        return row, frames

    row, frames = await reads.run(gather)
    if row is None or not isinstance(row.get("region"), dict):
        raise web.HTTPNotFound(text=f"no alert {alert_id!r} with a region")
    moc = None
    if row["region"].get("moc"):
        try:
            from mocpy import MOC

            moc = MOC.from_string(row["region"]["moc"])
        except Exception:
            moc = None
    png = await _render(request, coverage_png, row["region"], frames,
                        f"{alert_id}: {len(frames)} frame(s) over the region", moc)
    return web.Response(body=png, content_type="image/png", headers=PICTURE_HEADERS)


async def alert_lightcurve(request: web.Request) -> web.Response:
    _require_read(request)
    report = await _alert_report(request)
    png = await _render(request, lightcurve_png, report)
    return web.Response(body=png, content_type="image/png", headers=PICTURE_HEADERS)

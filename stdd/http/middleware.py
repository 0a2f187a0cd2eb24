"""The endpoint's middleware: the token check and the one error shape for every answer.

Every POST needs `Authorization: Bearer <token>`; GETs are open to loopback peers (and the
unix socket) while `http.open_reads` is true. Errors: 400 bad body or parameter, 401 missing or
wrong token, 403 outside the allowed roots or the frame's folder, 404 unknown id, 409 a state
that forbids the request. Anything unexpected is logged with its trace and answered 500 with
its type, never with a Python traceback. Each request is counted and timed in the metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import auth
from .appkeys import KEY_METRICS, KEY_OPEN_READS, KEY_TOKEN
from .metrics import Metrics
from .responses import HttpError, error_response

log = logging.getLogger(__name__)


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
        # the web interface (/ui/) checks its own session cookie and CSRF token (stdd.ui.security)
        ui_path = request.path == "/ui" or request.path.startswith("/ui/")
        if not ui_path and (request.method not in ("GET", "HEAD", "OPTIONS") or not (
                request.app[KEY_OPEN_READS] and _local_peer(request))):
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
        text = e.text or ""  # a handler's own message (the web interface's), else the reason phrase
        return error_response(e.status, text if text and not text.startswith(f"{e.status}: ") else e.reason)
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


def quiet_bad_requests() -> None:
    """Log malformed requests as one warning line (see `_BadRequestLog`); once per process."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_LOG not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_LOG)

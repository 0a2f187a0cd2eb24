"""Control routes: POST /pause, /resume and /reload, each handed to the daemon's own method."""
from __future__ import annotations

from aiohttp import web

from .appkeys import KEY_DAEMON
from .daemon_view import call
from .params import json_body, only_keys
from .responses import HttpError, json_response


async def post_pause(request: web.Request) -> web.Response:
    data = await json_body(request, optional=True)
    only_keys(data, {"reason"})
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
    await json_body(request, optional=True)
    daemon = request.app[KEY_DAEMON]
    if daemon.state not in ("running", "paused"):
        raise HttpError(409, f"the daemon is {daemon.state}")
    await call(daemon.resume)
    return json_response({"paused": daemon.state == "paused", "state": daemon.state,
                          "paused_reason": daemon.paused_reason})


async def post_reload(request: web.Request) -> web.Response:
    await json_body(request, optional=True)
    # reading and validating a small TOML file: quick, and reload() must run on the loop
    ok, errors = await call(request.app[KEY_DAEMON].reload)
    if not ok:
        raise HttpError(409, "the config was not reloaded; the running settings stay", errors=errors)
    return json_response({"reloaded": True, "errors": []})

"""The local control endpoint: the app (its routes and middleware) and the service the daemon
starts.

Design note: the endpoint is a thin face on the daemon. It runs in the daemon's event loop,
reads state through its own reader connections in a thread pool (`reads.ReadPool`), and asks
the daemon to act (submit, cancel, retry, pause, resume, reload, handle a notice) through the
methods the daemon exposes; it never changes the queue itself. The modules: `health` (GET
/health), `status_routes` (/status, /metrics, /openapi.json, the page), `frames_routes`,
`control_routes` (pause, resume, reload), `alerts_routes`; `middleware` (token, errors),
`responses` (JSON and the error shape), `params` (checked parameters), `daemon_view` (the
daemon's in-memory state), `appkeys` (what handlers find in `request.app`).
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from .. import ui
from ..daemon import DaemonError
from . import alerts_routes, auth, control_routes, frames_routes, status_routes, store_routes
from .appkeys import (KEY_DAEMON, KEY_DAEMON_CHECKS, KEY_DB_CHECK, KEY_LAG, KEY_METRICS, KEY_OPEN_READS, KEY_READS,
                      KEY_TOKEN)
from .daemon_view import database_path
from .dbprobe import DatabaseCheck
from .health import get_health
from .hostcheck import KEY_ALLOWED_HOSTS, allowed_names, host_middleware
from .lag import LagMonitor
from .metrics import Metrics
from .middleware import errors_middleware, quiet_bad_requests
from .offloop import OffLoop
from .reads import ReadPool

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # LVK notices with skymaps reach ~4 MiB


def create_app(daemon, *, token: str | None = None) -> web.Application:
    """The endpoint for `daemon`. `token` defaults to the env var / token file (made if missing)."""
    http = daemon.settings.http
    quiet_bad_requests()
    app = web.Application(middlewares=[host_middleware, errors_middleware], client_max_size=MAX_BODY)
    app[KEY_ALLOWED_HOSTS] = allowed_names(http.host, http.allowed_hosts)
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
    app[KEY_DB_CHECK] = DatabaseCheck(reads.database)
    app[KEY_DAEMON_CHECKS] = OffLoop("daemon-checks")

    async def on_startup(app: web.Application) -> None:
        lag.start()

    async def on_cleanup(app: web.Application) -> None:
        await lag.stop()
        await asyncio.to_thread(reads.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    r.add_get("/", status_routes.get_page)
    r.add_get("/health", get_health)
    r.add_get("/status", status_routes.get_status)
    r.add_get("/metrics", status_routes.get_metrics)
    r.add_get("/openapi.json", status_routes.get_openapi)
    r.add_get("/frames", frames_routes.get_frames)
    r.add_post("/frames", frames_routes.post_frames)
    r.add_get(r"/frames/{id}", frames_routes.get_frame)
    r.add_get(r"/frames/{id}/files/{name:.+}", frames_routes.get_frame_file)
    r.add_get(r"/frames/{id}/thumbnail.png", frames_routes.get_thumbnail)
    r.add_post(r"/frames/{id}/cancel", frames_routes.post_cancel)
    r.add_post(r"/frames/{id}/retry", frames_routes.post_retry)
    r.add_post("/pause", control_routes.post_pause)
    r.add_post("/resume", control_routes.post_resume)
    r.add_post("/reload", control_routes.post_reload)
    alerts_routes.add_routes(app)
    store_routes.add_routes(app)
    ui.add_routes(app)
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

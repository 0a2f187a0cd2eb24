"""The local control endpoint: JSON API, Prometheus metrics, HTML status page, and its client.

The daemon starts it with `HttpService()` as one of its services (`await start(daemon)`,
`await stop()`); tests and tools build the bare app with `create_app(daemon)`. See app.py for
the routes. The server side is imported lazily, so the CLI's client (`stdd.http.client`) starts
without loading the daemon.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import HttpService, create_app

__all__ = ["HttpService", "create_app"]


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The local control endpoint: JSON API, Prometheus metrics, HTML status page, and its client.

The daemon starts it with `HttpService(daemon)` (`await start()`, `await stop()`); tests and
tools build the bare app with `create_app(daemon)`. See app.py for the routes.
"""
from .app import HttpService, create_app

__all__ = ["HttpService", "create_app"]

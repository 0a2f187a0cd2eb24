"""Alert routes: GET /alerts, GET /alerts/{id}, POST /alerts (filled in against the alert store)."""
from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    pass

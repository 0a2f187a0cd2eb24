"""The web interface: pages under /ui/ served by the daemon's endpoint (stdd.http).

See `routes.py` for the pages and `security.py` for who may look and act. Templates live in
`templates/`, the one stylesheet and script in `static/`; there is no build step and nothing is
loaded from another site, so it works on an observatory network without internet.
"""
from __future__ import annotations

from .routes import add_routes

__all__ = ["add_routes"]

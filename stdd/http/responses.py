"""The endpoint's answers: JSON bodies, and the one error shape.

Every answer is JSON except /metrics (Prometheus text), / (HTML) and served files. Errors are
one shape, `{"error": "<message>", "status": <code>}` (plus any extra keys the error carries);
a handler raises `HttpError` and the middleware (middleware.py) answers it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aiohttp import web


class HttpError(Exception):
    """An error answer: raised by a handler, answered by the middleware in the one shape."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# -- JSON ---------------------------------------------------------------------------------
def clean(o: Any) -> Any:
    """JSON has no NaN or infinity, and no Paths or bytes: make them null / text."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", errors="replace")
    if hasattr(o, "model_dump"):
        return clean(o.model_dump(mode="json"))
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        try:
            return clean(o.item())
        except (TypeError, ValueError):
            pass
    return o


def json_text(data: Any) -> str:
    return json.dumps(clean(data), default=str, allow_nan=False)


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

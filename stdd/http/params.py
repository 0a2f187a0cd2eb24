"""Request parameters and bodies, checked: a bad one is a 400 naming what was expected (a
frame id that cannot exist is a 404)."""
from __future__ import annotations

import datetime as dt
import json
import math
import re

from aiohttp import web

from .responses import HttpError

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_SQLITE_INT = 2**63 - 1


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise HttpError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def since_param(request: web.Request) -> float | None:
    raw = request.query.get("since")
    if raw is None:
        return None
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        pass
    text = re.sub(r"(T\d\d:\d\d):60", r"\1:59", raw.strip().upper()).replace("Z", "+00:00")  # a leap second
    try:
        when = dt.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise HttpError(400, f"since must be Unix seconds or an ISO 8601 time, got {raw!r}") from None


def path_frame_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(404, f"no frame {raw!r}") from None
    if not 0 < value <= MAX_SQLITE_INT:
        raise HttpError(404, f"no frame {raw}")
    return value


async def json_body(request: web.Request, *, optional: bool = False) -> dict:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise HttpError(400, "the request needs a JSON object body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise HttpError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def only_keys(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HttpError(400, f"unknown key(s) in the body: {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed)) or 'none'}")

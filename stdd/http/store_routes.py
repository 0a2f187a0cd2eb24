"""Routes over the measurement store: GET /lightcurve and GET /candidates (read in the endpoint's
reader threads; forced photometry reads images, so it runs there too)."""
from __future__ import annotations

from aiohttp import web

from .appkeys import KEY_DAEMON, KEY_READS
from .params import int_param
from .responses import HttpError, json_response, serialised

STATES = ("confirmed", "moving", "known variable", "high proper motion", "single")


def _float(request: web.Request, name: str, default=None, lo=None, hi=None) -> float:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise HttpError(400, f"'{name}' is required")
        return default
    try:
        v = float(raw)
    except ValueError:
        raise HttpError(400, f"'{name}' must be a number, got {raw!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise HttpError(400, f"'{name}' must be within [{lo}, {hi}], got {v}")
    return v


async def get_lightcurve(request: web.Request) -> web.Response:
    from ..lightcurves.query import as_ecsv, as_votable, lightcurve

    ra = _float(request, "ra", lo=0, hi=360)
    dec = _float(request, "dec", lo=-90, hi=90)
    radius = _float(request, "radius", 2.0, 0.01, 300)
    forced = request.query.get("forced", "false").lower() in ("1", "true", "yes")
    band = request.query.get("filter") or None
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "ecsv", "votable"):
        raise HttpError(400, f"format must be json, ecsv or votable, got {fmt!r}")
    reads = request.app[KEY_READS]
    sn = request.app[KEY_DAEMON].settings.pipeline.sn

    def run():
        return lightcurve(reads.db(), ra, dec, radius, forced=forced, band=band, sn=sn)

    if fmt == "json":
        return json_response(await reads.run(serialised, run))
    lc = await reads.run(run)
    if fmt == "ecsv":
        return web.Response(text=as_ecsv(lc), content_type="text/plain", charset="utf-8")
    return web.Response(body=as_votable(lc), content_type="application/x-votable+xml")


async def get_candidates(request: web.Request) -> web.Response:
    from ..candidates.history import CandidateHistory

    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise HttpError(400, f"state must be one of {', '.join(STATES)}, got {state!r}")
    limit = int_param(request, "limit", 200, 1, 5000)
    with_nd = request.query.get("non_detections", "false").lower() in ("1", "true", "yes")
    offset = int_param(request, "offset", 0, 0, 10_000_000)
    reads = request.app[KEY_READS]
    settings = request.app[KEY_DAEMON].settings

    def run():
        hist = CandidateHistory(reads.db(), settings)
        rows = hist.list(state, limit, offset)
        for c in rows:
            c["detections"] = hist.detections(c["id"])
            if with_nd:
                c["non_detections"] = hist.non_detections(c)
        return {"candidates": rows, "limit": limit, "offset": offset}

    return json_response(await reads.run(serialised, run))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/lightcurve", get_lightcurve)
    app.router.add_get("/candidates", get_candidates)

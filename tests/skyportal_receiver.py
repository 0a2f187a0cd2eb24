"""A local stand-in for SkyPortal's API: a real aiohttp server (in a thread) that checks every
request against rules written from SkyPortal's published API, and answers as SkyPortal does.

Where each rule comes from (skyportal/skyportal on GitHub, the API docs at skyportal.io/docs/api):

- auth: `Authorization: token <token>` (baselayer's `auth_or_token`; API docs, "Authentication");
- answers: `{"status": "success", "data": {...}}` / `{"status": "error", "message": ...}` with
  HTTP 400 (baselayer BaseHandler.success / .error);
- PUT /api/photometry: `PhotometryMag` in skyportal/schema.py: `obj_id` (str), `instrument_id`
  (int), `mjd` (number), `magsys` (one of ab, vega, ...), `filter` (one of ALLOWED_BANDPASSES,
  sncosmo's names), `limiting_mag` required; `mag` and `magerr` both null or both numbers;
  optional `ra`, `dec`, `group_ids` (list of int), `origin` (str); the object must exist
  (`Invalid object ID`); answer `data: {ids, upload_id}`;
- GET /api/instrument[?name=]: the instruments, `data: [{id, name, filters, telescope_id}]`
  (InstrumentHandler.get, `name` an exact match);
- GET /api/sources?ra=&dec=&radius=: cone search, radius in degrees (SourceHandler.get);
  answer `data: {sources: [...], totalMatches}`;
- POST /api/sources: `id`, `ra`, `dec` (SourceHandler.post), optional `group_ids`, `origin`;
  answer `data: {id}`;
- POST /api/candidates: `id`, `ra`, `dec`, `filter_ids` (list of int, required), `passed_at`
  (ISO time, required) (CandidateHandler.post); answer `data: {ids}`;
- POST /api/thumbnail: `obj_id`, `data` (base64 PNG), `ttype` one of new, ref, sub, ...
  (ThumbnailHandler.post, models/thumbnail.py); answer `data: {id}`.

A request breaking a rule is answered 400 and kept in `rejected`, so a test sees both.
"""
from __future__ import annotations

import asyncio
import base64
import math
import threading

from aiohttp import web

BANDPASSES = {"bessellux", "bessellb", "bessellv", "bessellr", "besselli", "sdssu", "sdssg", "sdssr", "sdssi",
              "sdssz", "ps1::y", "gaia::g", "gaia::gbp", "gaia::grp", "2massj", "2massh", "2massks", "ztfg",
              "ztfr", "ztfi"}
MAGSYS = {"ab", "vega", "bd17", "csp", "ab-b12", "jla1", "megacampsf"}
TTYPES = {"new", "ref", "sub", "sdss", "dr8", "ls", "ps1", "new_gz", "ref_gz", "sub_gz"}
PNG = b"\x89PNG\r\n\x1a\n"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


class SkyPortalReceiver:
    def __init__(self, token: str = "sp-token", instruments: dict[int, set[str]] | None = None):
        self.token = token
        self.instruments = instruments or {7: {"sdssr", "sdssg", "bessellv"}}
        self.instrument_names = {7: "stdd-cam"}
        self.sources: dict[str, dict] = {}
        self.candidates: dict[str, dict] = {}
        self.thumbnails: list[dict] = []
        self.photometry: list[dict] = []
        self.rejected: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- answers ----------------------------------------------------------------------------
    def _bad(self, request, message: str):
        self.rejected.append((f"{request.method} {request.path}", message))
        return web.json_response({"status": "error", "message": message}, status=400)

    @staticmethod
    def _ok(data):
        return web.json_response({"status": "success", "data": data})

    @web.middleware
    async def _auth(self, request, handler):
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"token {self.token}":
            return web.json_response({"status": "error", "message": "Unauthorized"}, status=401)
        return await handler(request)

    async def _json(self, request):
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    # -- handlers ---------------------------------------------------------------------------
    async def get_instruments(self, request):
        rows = [{"id": i, "name": self.instrument_names.get(i, f"cam{i}"), "filters": sorted(f), "telescope_id": 1}
                for i, f in self.instruments.items()]
        name = request.query.get("name")
        return self._ok([r for r in rows if name is None or r["name"] == name])

    async def get_sources(self, request):
        try:
            ra, dec, radius = (float(request.query[k]) for k in ("ra", "dec", "radius"))
        except (KeyError, ValueError):
            return self._bad(request, "ra, dec and radius must be numbers")
        near = []
        for s in self.sources.values():
            c = (math.sin(math.radians(dec)) * math.sin(math.radians(s["dec"])) + math.cos(math.radians(dec))
                 * math.cos(math.radians(s["dec"])) * math.cos(math.radians(ra - s["ra"])))
            if math.degrees(math.acos(max(-1.0, min(1.0, c)))) <= radius:
                near.append(s)
        return self._ok({"sources": near, "totalMatches": len(near)})

    async def post_source(self, request):
        b = await self._json(request)
        if b is None or not isinstance(b.get("id"), str) or not _num(b.get("ra")) or not _num(b.get("dec")):
            return self._bad(request, "id (str), ra and dec (numbers) are required")
        if "group_ids" in b and not _ints(b["group_ids"]):
            return self._bad(request, "group_ids must be a list of integers")
        self.sources[b["id"]] = {"id": b["id"], "ra": b["ra"], "dec": b["dec"]}
        return self._ok({"id": b["id"]})

    async def post_candidate(self, request):
        b = await self._json(request)
        if b is None or not isinstance(b.get("id"), str) or not _num(b.get("ra")) or not _num(b.get("dec")):
            return self._bad(request, "id (str), ra and dec (numbers) are required")
        if not _ints(b.get("filter_ids")) or not b["filter_ids"]:
            return self._bad(request, "filter_ids (list of integers) is required")
        if not isinstance(b.get("passed_at"), str):
            return self._bad(request, "passed_at is required")
        if b["id"] in self.candidates:
            return self._bad(request, f"Candidate {b['id']} already exists")
        self.candidates[b["id"]] = b
        self.sources.setdefault(b["id"], {"id": b["id"], "ra": b["ra"], "dec": b["dec"]})
        return self._ok({"ids": [len(self.candidates)]})

    async def post_thumbnail(self, request):
        b = await self._json(request)
        if b is None or b.get("obj_id") not in self.sources:
            return self._bad(request, "Invalid obj_id")
        if b.get("ttype") not in TTYPES:
            return self._bad(request, f"Invalid ttype {b.get('ttype')!r}")
        try:
            raw = base64.b64decode(b.get("data") or "", validate=True)
        except ValueError:
            return self._bad(request, "data must be base64")
        if not raw.startswith(PNG):
            return self._bad(request, "data must be a PNG image")
        self.thumbnails.append({"obj_id": b["obj_id"], "ttype": b["ttype"], "bytes": len(raw)})
        return self._ok({"id": len(self.thumbnails)})

    async def put_photometry(self, request):
        b = await self._json(request)
        if b is None:
            return self._bad(request, "a JSON object is required")
        for k, check in (("obj_id", lambda v: isinstance(v, str)), ("mjd", _num), ("limiting_mag", _num),
                         ("instrument_id", lambda v: isinstance(v, int) and not isinstance(v, bool))):
            if not check(b.get(k)):
                return self._bad(request, f"Missing or invalid {k}")
        if b.get("magsys") not in MAGSYS:
            return self._bad(request, f"Invalid magsys {b.get('magsys')!r}")
        if b.get("filter") not in BANDPASSES:
            return self._bad(request, f"Invalid filter {b.get('filter')!r}")
        mag, err = b.get("mag"), b.get("magerr")
        if not ((mag is None and err is None) or (_num(mag) and _num(err))):
            return self._bad(request, "mag and magerr must both be null, or both be not null")
        if "group_ids" in b and not _ints(b["group_ids"]):
            return self._bad(request, "group_ids must be a list of integers")
        if b["obj_id"] not in self.sources:
            return self._bad(request, f"Invalid object ID: {b['obj_id']}")
        if b["instrument_id"] not in self.instruments:
            return self._bad(request, f"Invalid instrument ID: {b['instrument_id']}")
        if b["filter"] not in self.instruments[b["instrument_id"]]:
            return self._bad(request, f"Instrument has no filter {b['filter']}")
        # PUT: a point already there (same object, time, band, instrument) is not added again
        same = [i for i, p in enumerate(self.photometry) if all(p[k] == b[k] for k in ("obj_id", "mjd", "filter",
                                                                                       "instrument_id"))]
        if not same:
            self.photometry.append(b)
        return self._ok({"ids": same or [len(self.photometry)], "upload_id": "u1"})

    # -- life ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/instrument", self.get_instruments)
        app.router.add_get("/api/sources", self.get_sources)
        app.router.add_post("/api/sources", self.post_source)
        app.router.add_post("/api/candidates", self.post_candidate)
        app.router.add_post("/api/thumbnail", self.post_thumbnail)
        app.router.add_put("/api/photometry", self.put_photometry)
        return app

    def start(self, port: int = 0) -> "SkyPortalReceiver":
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(self.app())
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the SkyPortal receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

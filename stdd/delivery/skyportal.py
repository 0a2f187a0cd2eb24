"""SkyPortal: photometry (PUT /api/photometry), candidates with cutouts, sources by position.

What is called (SkyPortal's API, https://skyportal.io/docs/api.html; schema in
skyportal/schema.py `PhotometryMag`, handlers in skyportal/handlers/api/):

- `GET /api/instrument[?name=]`: the instruments (this camera's id from its name);
- `GET /api/sources?ra=&dec=&radius=` (radius in degrees): an existing source near the position;
- `POST /api/sources` `{id, ra, dec, group_ids, origin}`: a target not yet known;
- `POST /api/candidates` `{id, ra, dec, filter_ids, passed_at, origin}`: a new transient candidate;
- `POST /api/thumbnail` `{obj_id, data (base64 PNG), ttype}`: its cutout;
- `PUT /api/photometry` `{obj_id, instrument_id, mjd, mag, magerr, limiting_mag, magsys, filter,
  group_ids, ra, dec, origin}`: the measurement. PUT is SkyPortal's idempotent upload (a point
  already there is not added twice), which makes a retried item harmless.

Authentication: `Authorization: token <token>`. Every response is `{"status": ..., "data": ...}`.
"""
from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path

from .bands import skyportal_band
from .common import DeliveryError, check, secret


def object_name(ra: float, dec: float) -> str:
    """A position-based name for a new candidate: STDDJhhmmss.ss+ddmmss.s."""
    h = (ra % 360.0) / 15.0
    hh, mm = int(h), int((h * 60) % 60)
    ss = (h * 3600) % 60
    sign = "+" if dec >= 0 else "-"
    d = abs(dec)
    dd, dm = int(d), int((d * 60) % 60)
    ds = (d * 3600) % 60
    return f"STDDJ{hh:02d}{mm:02d}{ss:05.2f}{sign}{dd:02d}{dm:02d}{ds:04.1f}"


#: instrument name → id, looked up once per process
_INSTRUMENT_IDS: dict[str, int] = {}


class SkyPortalClient:
    def __init__(self, cfg, session=None):
        import requests

        if not cfg.url:
            raise DeliveryError("delivery.skyportal.url is not set", retryable=False)
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.http = session or requests.Session()

    def _headers(self) -> dict:
        token = secret(self.cfg.token_file, self.cfg.token_env)
        if not token:
            raise DeliveryError("no SkyPortal token (delivery.skyportal.token_file / token_env)", retryable=False)
        return {"Authorization": f"token {token}"}

    def _call(self, method: str, path: str, what: str, **kw):
        resp = self.http.request(method, self.base + path, headers=self._headers(),
                                 timeout=self.cfg.timeout_seconds, **kw)
        return check(resp, what)

    # -- instruments --------------------------------------------------------------------------
    def instruments(self, name: str | None = None) -> list[dict]:
        out = self._call("GET", "/api/instrument", "instrument list", params={"name": name} if name else None)
        data = out.get("data") or []
        return data if isinstance(data, list) else [data]

    def instrument_id(self) -> int:
        if self.cfg.instrument_id is not None:
            return self.cfg.instrument_id
        if self.cfg.instrument_name in _INSTRUMENT_IDS:
            return _INSTRUMENT_IDS[self.cfg.instrument_name]
        found = [i for i in self.instruments(self.cfg.instrument_name) if i.get("name") == self.cfg.instrument_name]
        if not found:
            raise DeliveryError(f"SkyPortal has no instrument named {self.cfg.instrument_name!r} "
                                "(stdd delivery instruments lists them)", retryable=False)
        _INSTRUMENT_IDS[self.cfg.instrument_name] = int(found[0]["id"])
        return _INSTRUMENT_IDS[self.cfg.instrument_name]

    # -- sources ------------------------------------------------------------------------------
    def find_source(self, ra: float, dec: float) -> str | None:
        radius = self.cfg.match_radius_arcsec / 3600.0
        out = self._call("GET", "/api/sources", "source search",
                         params={"ra": ra, "dec": dec, "radius": radius})
        sources = (out.get("data") or {}).get("sources") or []
        return str(sources[0]["id"]) if sources else None

    def resolve(self, name: str, ra: float, dec: float) -> str:
        """The obj_id of the source at (ra, dec): an existing one, else a new one named `name`."""
        found = self.find_source(ra, dec)
        if found:
            return found
        body = {"id": name, "ra": ra, "dec": dec, "origin": "stdd"}
        if self.cfg.group_ids:
            body["group_ids"] = list(self.cfg.group_ids)
        out = self._call("POST", "/api/sources", "source creation", json=body)
        return str((out.get("data") or {}).get("id") or name)

    # -- items --------------------------------------------------------------------------------
    def photometry_body(self, obj_id: str, p: dict) -> dict:
        band = skyportal_band(p["filter"], self.cfg.filter_map)
        if band is None:
            raise DeliveryError(f"band {p['filter']!r} has no SkyPortal bandpass (delivery.skyportal.filter_map)",
                                retryable=False)
        detected = p.get("mag") is not None and p.get("magerr") is not None
        body = {"obj_id": obj_id, "instrument_id": self.instrument_id(), "mjd": p["mjd"],
                "mag": p["mag"] if detected else None, "magerr": p["magerr"] if detected else None,
                "limiting_mag": p["limiting_mag"], "magsys": self.cfg.magsys, "filter": band,
                "ra": p.get("ra"), "dec": p.get("dec"), "origin": "stdd"}
        if self.cfg.group_ids:
            body["group_ids"] = list(self.cfg.group_ids)
        return body

    def send_photometry(self, p: dict) -> dict:
        obj_id = self.resolve(p["name"], p["ra"], p["dec"])
        out = self._call("PUT", "/api/photometry", "photometry upload", json=self.photometry_body(obj_id, p))
        return {"obj_id": obj_id, "photometry": out.get("data")}

    def send_candidate(self, p: dict) -> dict:
        obj_id = self.find_source(p["ra"], p["dec"])
        if obj_id is None:
            obj_id = object_name(p["ra"], p["dec"])
            body = {"id": obj_id, "ra": p["ra"], "dec": p["dec"], "origin": "stdd",
                    "filter_ids": list(self.cfg.filter_ids),
                    "passed_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")}
            try:
                self._call("POST", "/api/candidates", "candidate creation", json=body)
            except DeliveryError as e:
                # sent before, its answer lost: the candidate is there already
                if e.http_status != 400 or "already" not in str(e).lower():
                    raise
        thumbnail = None
        cutout = p.get("cutout")
        if cutout and Path(cutout).is_file():
            data = base64.b64encode(Path(cutout).read_bytes()).decode()
            out = self._call("POST", "/api/thumbnail", "thumbnail upload",
                             json={"obj_id": obj_id, "data": data, "ttype": "new"})
            thumbnail = (out.get("data") or {}).get("id")
        phot = self._call("PUT", "/api/photometry", "photometry upload", json=self.photometry_body(obj_id, p))
        return {"obj_id": obj_id, "thumbnail": thumbnail, "photometry": phot.get("data")}

    def send(self, kind: str, payload: dict) -> dict:
        if kind == "photometry":
            return self.send_photometry(payload)
        if kind == "candidate":
            return self.send_candidate(payload)
        raise DeliveryError(f"unknown SkyPortal item kind {kind!r}", retryable=False)

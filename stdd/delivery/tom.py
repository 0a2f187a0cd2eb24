"""TOM Toolkit: targets and reduced photometry through its REST API.

What is called (tom_base: tom_targets/api_views.py, tom_dataproducts/api_views.py):

- `GET /api/targets/?name=NAME`, then `GET /api/targets/?cone_search=RA,DEC,RADIUS` (degrees):
  an existing target; else `POST /api/targets/` `{name, type: SIDEREAL, ra, dec, epoch}`;
- `POST /api/dataproducts/` (multipart): `target`, `data_product_type=photometry`, `product_id`
  (our idempotency key: TOM skips an upload whose product_id it already has) and `file`, a CSV
  in the format of TOM's PhotometryProcessor (`time` as MJD, `filter`, `magnitude`, `error`,
  `limit`), which TOM turns into reduced datums at upload.

Authentication: HTTP basic (username + password) or a REST token (`Authorization: Token ...`).
"""
from __future__ import annotations

import hashlib

from .common import DeliveryError, check, secret


class TomClient:
    def __init__(self, cfg, session=None):
        import requests

        if not cfg.url:
            raise DeliveryError("delivery.tom.url is not set", retryable=False)
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.http = session or requests.Session()

    def _auth(self) -> dict:
        token = secret(self.cfg.token_file, None) if self.cfg.token_file else None
        if token:
            return {"headers": {"Authorization": f"Token {token}"}}
        password = secret(self.cfg.password_file, self.cfg.password_env)
        if not self.cfg.username or not password:
            raise DeliveryError("no TOM credentials (delivery.tom.username + password_file/password_env, "
                                "or token_file)", retryable=False)
        return {"auth": (self.cfg.username, password)}

    def _call(self, method: str, path: str, what: str, **kw):
        resp = self.http.request(method, self.base + path, timeout=self.cfg.timeout_seconds, **self._auth(), **kw)
        return check(resp, what)

    def target_id(self, name: str, ra: float, dec: float) -> int:
        """The TOM target of this name, or at this position, or a new one."""
        found = self._call("GET", "/api/targets/", "target search", params={"name": name}).get("results") or []
        exact = [t for t in found if t.get("name") == name]
        if exact:
            return int(exact[0]["id"])
        radius = self.cfg.match_radius_arcsec / 3600.0
        near = self._call("GET", "/api/targets/", "target cone search",
                          params={"cone_search": f"{ra},{dec},{radius}"}).get("results") or []
        if near:
            return int(near[0]["id"])
        made = self._call("POST", "/api/targets/", "target creation",
                          json={"name": name, "type": "SIDEREAL", "ra": ra, "dec": dec, "epoch": 2000})
        return int(made["id"])

    @staticmethod
    def photometry_csv(p: dict) -> str:
        mag = "" if p.get("mag") is None else f"{p['mag']:.4f}"
        err = "" if p.get("magerr") is None else f"{p['magerr']:.4f}"
        lim = "" if p.get("limiting_mag") is None else f"{p['limiting_mag']:.4f}"
        return f"time,filter,magnitude,error,limit\n{p['mjd']:.6f},{p['filter']},{mag},{err},{lim}\n"

    def send_photometry(self, p: dict, key: str) -> dict:
        target = self.target_id(p["name"], p["ra"], p["dec"])
        product_id = "stdd-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        filename = f"stdd_{p.get('frame_id') or 'frame'}_{product_id[5:17]}.csv"
        out = self._call("POST", "/api/dataproducts/", "photometry upload",
                         data={"target": str(target), "data_product_type": "photometry", "product_id": product_id},
                         files={"file": (filename, self.photometry_csv(p).encode(), "text/csv")})
        return {"target": target, "data_product": out.get("id"), "product_id": product_id,
                "message": out.get("message")}

    def send(self, kind: str, payload: dict, key: str) -> dict:
        if kind == "photometry":
            return self.send_photometry(payload, key)
        raise DeliveryError(f"unknown TOM item kind {kind!r}", retryable=False)

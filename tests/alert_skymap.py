"""Realistic LVK alerts for tests: a multi-order HEALPix skymap FITS and an igwn.gwalert around it.

The map is built the way BAYESTAR builds its maps: start from all 3072 cells of order 4 and
seven times split the quarter of cells with the highest probability density into their four
children — 19,200 cells, order 4 to 11, ~0.78 MB of FITS (UNIQ, PROBDENSITY, DISTMU,
DISTSIGMA, DISTNORM), ~1.04 MB once base64-encoded in the alert: over librdkafka's default
1,000,000-byte message limit, as real LVK alerts are. The probability is an elliptical
Gaussian on the tangent plane, so its 90 % area is known: 2 ln(10) π σ_a σ_b.
"""
from __future__ import annotations

import base64
import io
import json
import math

import numpy as np

ORDER0, STEPS = 4, 7


def _density(ra, dec, ra0, dec0, sigma_a, sigma_b, pa):
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    rar, decr = np.radians(ra), np.radians(dec)
    cosc = np.sin(dec0r) * np.sin(decr) + np.cos(dec0r) * np.cos(decr) * np.cos(rar - ra0r)
    x = np.degrees(np.cos(decr) * np.sin(rar - ra0r) / cosc)
    y = np.degrees((np.cos(dec0r) * np.sin(decr) - np.sin(dec0r) * np.cos(decr) * np.cos(rar - ra0r)) / cosc)
    p = math.radians(pa)
    u = x * math.sin(p) + y * math.cos(p)
    v = x * math.cos(p) - y * math.sin(p)
    d = np.exp(-0.5 * ((u / sigma_a) ** 2 + (v / sigma_b) ** 2))
    return np.where(cosc > 0, d, 0.0)


def make_skymap_fits(ra0: float = 150.0, dec0: float = -20.0, sigma_a: float = 6.0, sigma_b: float = 2.0,
                     pa: float = 30.0, object_name: str = "S260101ab") -> bytes:
    from astropy.table import Table
    from astropy_healpix import HEALPix

    def centers(order, ipix):
        lon, lat = HEALPix(nside=2 ** order, order="nested").healpix_to_lonlat(ipix)
        return lon.deg, lat.deg

    orders = np.full(12 * 4 ** ORDER0, ORDER0)
    ipix = np.arange(12 * 4 ** ORDER0)
    dens = _density(*centers(ORDER0, ipix), ra0, dec0, sigma_a, sigma_b, pa)
    for _ in range(STEPS):
        top = np.argsort(-dens, kind="stable")[: 12 * 4 ** ORDER0 // 4]
        keep = np.ones(dens.size, bool)
        keep[top] = False
        child_o = np.repeat(orders[top] + 1, 4)
        child_i = (4 * ipix[top][:, None] + np.arange(4)[None, :]).ravel()
        child_d = np.empty(child_i.size)
        for o in np.unique(child_o):
            sel = child_o == o
            child_d[sel] = _density(*centers(int(o), child_i[sel]), ra0, dec0, sigma_a, sigma_b, pa)
        orders = np.concatenate([orders[keep], child_o])
        ipix = np.concatenate([ipix[keep], child_i])
        dens = np.concatenate([dens[keep], child_d])
    area = 4 * np.pi / (12 * 4.0 ** orders)
    dens = dens / (dens * area).sum()
    uniq = 4 * 4 ** orders.astype(np.int64) + ipix.astype(np.int64)
    order = np.argsort(uniq)
    n = uniq.size
    table = Table({"UNIQ": uniq[order], "PROBDENSITY": dens[order], "DISTMU": np.full(n, 140.0),
                   "DISTSIGMA": np.full(n, 30.0), "DISTNORM": np.full(n, 4.5e-5)})
    table.meta.update({"PIXTYPE": "HEALPIX", "ORDERING": "NUNIQ", "COORDSYS": "C", "MOCORDER": int(orders.max()),
                       "INDXSCHM": "EXPLICIT", "OBJECT": object_name, "CREATOR": "stdd-tests",
                       "ORIGIN": "LIGO/Virgo/KAGRA", "DATE-OBS": "2026-01-01T03:04:05.678"})
    buf = io.BytesIO()
    table.write(buf, format="fits")
    return buf.getvalue()


def expected_area90(sigma_a: float = 6.0, sigma_b: float = 2.0) -> float:
    return 2 * math.log(10) * math.pi * sigma_a * sigma_b


def make_gwalert(superevent: str = "S260101ab", alert_type: str = "PRELIMINARY", skymap_fits: bytes | None = None,
                 time_created: str = "2026-01-01T03:05:00Z", significant: bool = True,
                 classification: dict | None = None, **skymap_kw) -> bytes:
    if alert_type == "RETRACTION":
        body = {"alert_type": "RETRACTION", "time_created": time_created, "superevent_id": superevent,
                "urls": {"gracedb": f"https://gracedb.ligo.org/superevents/{superevent}/view/"},
                "event": None, "external_coinc": None}
        return json.dumps(body, indent=4).encode()
    fits_bytes = skymap_fits if skymap_fits is not None else make_skymap_fits(object_name=superevent, **skymap_kw)
    body = {
        "alert_type": alert_type, "time_created": time_created, "superevent_id": superevent,
        "urls": {"gracedb": f"https://gracedb.ligo.org/superevents/{superevent}/view/"},
        "event": {
            "time": "2026-01-01T03:04:05.678Z", "far": 9.1e-14, "significant": significant,
            "instruments": ["H1", "L1", "V1"], "group": "CBC", "pipeline": "gstlal", "search": "AllSky",
            "properties": {"HasNS": 0.95, "HasRemnant": 0.91, "HasMassGap": 0.01},
            "classification": classification or {"BNS": 0.95, "NSBH": 0.01, "BBH": 0.03, "Terrestrial": 0.01},
            "duration": None, "central_frequency": None,
            "skymap": base64.b64encode(fits_bytes).decode(),
        },
        "external_coinc": None,
    }
    return json.dumps(body, indent=4).encode()

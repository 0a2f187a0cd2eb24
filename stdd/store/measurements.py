"""The measurement store: every frame's calibrated objects, target measurements and candidates by
sky position, so light curves and candidate histories span frames and nights.

Design note: one table `measurements` (migration v5) with a `kind` — `object` (the photometry
stage's calibrated detections at or above `store.objects_min_snr`), `target` (forced photometry of
a configured or per-frame target, or of an alert position: a magnitude, or an upper limit `lim`),
`candidate` (a simple or difference candidate) — each with the frame's time (MJD), filter, zero
point and its error. Positions are indexed by HEALPix cell (nested, order 14: cells of ~13″), so a
cone query is "the cells the cone touches, then the exact separation": over 10,000 frames of a
field it stays well under 200 ms (bench `lightcurve_query_ms_10k`). A frame's rows are written in
the transaction that records its end (a finish hook of the daemon), and replaced when it is
processed again, so a crash can neither lose nor duplicate them.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

HPX_ORDER = 14
MJD0 = datetime(1858, 11, 17, tzinfo=timezone.utc)


@lru_cache(maxsize=1)
def _hp():
    from astropy_healpix import HEALPix

    return HEALPix(nside=2 ** HPX_ORDER, order="nested")


def hpx_of(ra, dec) -> np.ndarray:
    from astropy import units as u

    return np.atleast_1d(_hp().lonlat_to_healpix(np.atleast_1d(ra) * u.deg, np.atleast_1d(dec) * u.deg))


def cone_cells(ra: float, dec: float, radius_deg: float) -> list[int]:
    from astropy import units as u

    cells = _hp().cone_search_lonlat(ra * u.deg, dec * u.deg, radius=max(radius_deg, 1e-6) * u.deg)
    return [int(c) for c in np.unique(np.concatenate([cells, hpx_of(ra, dec)]))]


def separation_deg(ra1, dec1, ra2, dec2):
    """Great-circle separation (haversine), degrees; numpy-friendly."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def mjd_of(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        t = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return (t - MJD0).total_seconds() / 86400.0


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_objects(result_dir: str | Path | None, result: dict, min_snr: float) -> list[dict]:
    """The frame's calibrated objects at or above `min_snr` (from its objects table)."""
    if not result_dir or not result.get("objects_table"):
        return []
    path = Path(result_dir) / result["objects_table"]
    if not path.is_file():
        return []
    from astropy.table import Table

    t = Table.read(path)
    need = {"ra", "dec", "mag_calib"}
    if not need <= set(t.colnames):
        return []
    mag = np.asarray(t["mag_calib"], float)
    err = np.asarray(t["mag_calib_err"], float) if "mag_calib_err" in t.colnames else np.full(len(t), np.nan)
    snr = np.asarray(t["snr"], float) if "snr" in t.colnames else 1.0857 / np.where(err > 0, err, np.nan)
    flags = np.asarray(t["flags"], int) if "flags" in t.colnames else np.zeros(len(t), int)
    keep = np.isfinite(mag) & (np.nan_to_num(snr, nan=0.0) >= min_snr)
    ra, dec = np.asarray(t["ra"], float), np.asarray(t["dec"], float)
    return [{"ra": float(ra[i]), "dec": float(dec[i]), "mag": float(mag[i]), "mag_err": _num(err[i]),
             "snr": _num(snr[i]), "flags": int(flags[i])} for i in np.nonzero(keep)[0]]


class MeasurementStore:
    def __init__(self, db):
        self.db = db

    def ingest(self, frame: dict, result: dict, objects: list[dict]) -> int:
        """Replace the frame's measurements with these (inside the caller's transaction).
        Returns how many rows were written."""
        fid = frame["id"]
        conn = self.db.conn
        conn.execute("DELETE FROM measurements WHERE frame_id = ?", (fid,))
        mjd = mjd_of(result.get("time_mid"))
        base = {"frame_id": fid, "mjd": mjd, "filter": result.get("filter"), "zp": _num(result.get("zp")),
                "zp_err": _num(result.get("zp_err"))}
        rows = []
        for o in objects:
            rows.append({**base, "kind": "object", "name": None, "ra": o["ra"], "dec": o["dec"], "mag": o["mag"],
                         "mag_err": o.get("mag_err"), "lim": None, "snr": o.get("snr"), "flags": o.get("flags")})
        for t in result.get("targets") or []:
            if _num(t.get("ra")) is None or _num(t.get("dec")) is None:
                continue
            rows.append({**base, "kind": "target", "name": t.get("name"), "ra": t["ra"], "dec": t["dec"],
                         "mag": _num(t.get("mag")), "mag_err": _num(t.get("mag_err")),
                         "lim": _num(t.get("mag_limit")), "snr": _num(t.get("snr")), "flags": t.get("flags")})
        for key in ("candidates_sub", "candidates_simple"):
            for c in result.get(key) or []:
                if _num(c.get("ra")) is None or _num(c.get("dec")) is None:
                    continue
                rows.append({**base, "kind": "candidate", "name": c.get("id"), "ra": c["ra"], "dec": c["dec"],
                             "mag": _num(c.get("mag")), "mag_err": _num(c.get("mag_err")), "lim": None,
                             "snr": _num(c.get("snr")), "flags": c.get("flags")})
        if not rows:
            return 0
        cells = hpx_of([r["ra"] for r in rows], [r["dec"] for r in rows])
        cols = ("frame_id", "kind", "name", "ra", "dec", "hpx", "mjd", "filter", "mag", "mag_err", "lim", "snr",
                "flags", "zp", "zp_err")
        conn.executemany(
            f"INSERT INTO measurements ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [tuple(int(cells[i]) if c == "hpx" else r.get(c) for c in cols) for i, r in enumerate(rows)])
        return len(rows)

    def cone(self, ra: float, dec: float, radius_arcsec: float, kinds=("object", "target", "candidate"),
             band: str | None = None) -> list[dict]:
        """Measurements within `radius_arcsec` of (ra, dec), oldest first, with `sep_arcsec`."""
        radius = radius_arcsec / 3600.0
        cells = cone_cells(ra, dec, radius)
        out = []
        for i in range(0, len(cells), 500):
            chunk = cells[i:i + 500]
            sql = (f"SELECT * FROM measurements WHERE hpx IN ({', '.join('?' * len(chunk))})"
                   f" AND kind IN ({', '.join('?' * len(kinds))})")
            params = [*chunk, *kinds]
            if band:
                sql += " AND filter = ?"
                params.append(band)
            out.extend(self.db.query(sql, params))
        if not out:
            return []
        sep = separation_deg(ra, dec, np.array([r["ra"] for r in out]), np.array([r["dec"] for r in out])) * 3600
        rows = []
        for r, s in zip(out, sep):
            if s <= radius_arcsec:
                r["sep_arcsec"] = round(float(s), 3)
                rows.append(r)
        rows.sort(key=lambda r: (r["mjd"] is None, r["mjd"] or 0, r["frame_id"]))
        return rows

    def by_name(self, name: str) -> list[dict]:
        return self.db.query("SELECT * FROM measurements WHERE kind = 'target' AND name = ? ORDER BY mjd", (name,))

    def frames_covering(self, ra: float, dec: float, band: str | None = None) -> list[dict]:
        """Done frames whose footprint contains (ra, dec), oldest first (their time as `mjd`)."""
        import json

        from matplotlib.path import Path as MPath

        cosd = max(0.05, math.cos(math.radians(dec)))
        rows = self.db.query(
            "SELECT id, name, state, result_dir, work_dir, ra, dec, radius, footprint, filter, time_mid, exptime,"
            " zp, zp_err, mag_limit FROM frames WHERE state = 'done' AND ra IS NOT NULL"
            " AND dec BETWEEN ? AND ?" + (" AND filter = ?" if band else ""),
            (dec - 3.0, dec + 3.0, *([band] if band else [])))
        out = []
        for f in rows:
            if separation_deg(ra, dec, f["ra"], f["dec"]) > (f["radius"] or 1.0) * 1.01:
                continue
            try:
                fp = json.loads(f["footprint"]) if isinstance(f["footprint"], str) else f["footprint"]
            except ValueError:
                fp = None
            if fp and len(fp) >= 3:
                # local tangent-plane-ish coordinates around the point, RA unwrapped
                xs = [((c[0] - ra + 540) % 360 - 180) * cosd for c in fp]
                ys = [c[1] - dec for c in fp]
                if not MPath(np.c_[xs, ys]).contains_point((0.0, 0.0)):
                    continue
            f["mjd"] = mjd_of(f["time_mid"])
            out.append(f)
        out.sort(key=lambda f: (f["mjd"] is None, f["mjd"] or 0))
        return out

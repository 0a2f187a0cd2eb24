"""Candidate histories: one record per source on the sky, its detections across frames and nights,
and what it is.

Design note: a frame's candidates (difference and simple; both of one source in a frame count once,
the difference one kept) are associated with existing candidates within ≈ 1 FWHM
(`store.candidate_radius_arcsec`, 0 = the frame's FWHM, at least 1.5″), found through the HEALPix
index, else they start a new one. States, from the detections:

- `moving` — single detections of different frames within `store.moving_max_hours` whose offset
  is beyond the association radius and consistent with a motion slower than
  `store.moving_max_rate_arcsec_per_hour` (with three or more, on one straight line at one rate):
  an asteroid. They are linked into one candidate, never left as unrelated singles.
- `known variable` / `high proper motion` — the position matches a local catalogue of variable
  stars, or of stars whose proper motion (carried to the frame's epoch) is at least
  `store.high_proper_motion_mas`.
- `confirmed` — detected in two or more frames taken at different times.
- `single` — otherwise.

Everything is written in the transaction that records the frame's end (a daemon finish hook):
a frame processed again has its detections replaced and the candidates it touched recomputed.
"""
from __future__ import annotations

import json
import time
from typing import Iterable

import numpy as np

from ..store.measurements import cone_cells, hpx_of, mjd_of, separation_deg
from .catalogs import catalogue_state

STATES = ("confirmed", "moving", "known variable", "high proper motion", "single")


def frame_candidates(result: dict, radius_arcsec: float) -> list[dict]:
    """The frame's candidates, one per source (a simple candidate on a difference one dropped)."""
    subs = [dict(c, kind="sub") for c in result.get("candidates_sub") or [] if _pos(c)]
    simple = [dict(c, kind="simple") for c in result.get("candidates_simple") or [] if _pos(c)]
    out = list(subs)
    for c in simple:
        if not subs or np.min(separation_deg(c["ra"], c["dec"], np.array([s["ra"] for s in subs]),
                                             np.array([s["dec"] for s in subs]))) * 3600 > radius_arcsec:
            out.append(c)
    return out


def _pos(c: dict) -> bool:
    try:
        return np.isfinite(float(c["ra"])) and np.isfinite(float(c["dec"]))
    except (KeyError, TypeError, ValueError):
        return False


class CandidateHistory:
    def __init__(self, db, settings):
        self.db = db
        self.s = settings.store

    def radius_for(self, result: dict) -> float:
        if self.s.candidate_radius_arcsec > 0:
            return self.s.candidate_radius_arcsec
        return max(1.5, float(result.get("fwhm_arcsec") or 0.0))

    # -- ingest (inside the caller's transaction) ------------------------------------------
    def ingest(self, frame: dict, result: dict) -> list[dict]:
        """Associate the frame's candidates; returns the candidates that became `confirmed` now."""
        conn = self.db.conn
        fid = frame["id"]
        touched = {r["candidate_id"] for r in self.db.query(
            "SELECT candidate_id FROM candidate_detections WHERE frame_id = ?", (fid,))}
        conn.execute("DELETE FROM candidate_detections WHERE frame_id = ?", (fid,))
        before = {r["id"]: r["state"] for r in self._rows(touched)}
        radius = self.radius_for(result)
        mjd = mjd_of(result.get("time_mid"))
        band = result.get("filter")
        created = []
        for c in frame_candidates(result, radius):
            near = self._near(c["ra"], c["dec"], radius)
            if near:
                cid = near[0]["id"]
            else:
                cid = self._create(c, mjd)
                created.append(cid)
            before.setdefault(cid, None)
            conn.execute(
                "INSERT INTO candidate_detections (candidate_id, frame_id, cand_key, kind, ra, dec, hpx, mjd, filter,"
                " mag, mag_err, snr, cutout) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, fid, str(c.get("id")), c["kind"], float(c["ra"]), float(c["dec"]),
                 int(hpx_of(c["ra"], c["dec"])[0]), mjd, band, _f(c.get("mag")), _f(c.get("mag_err")),
                 _f(c.get("snr")), c.get("cutout")))
            touched.add(cid)
        for cid in created:
            into = self._link_moving(cid, fid, mjd, radius)
            if into is not None:
                touched.discard(cid)
                before.pop(cid, None)
                touched.add(into)
        newly = []
        for cid in list(touched | set(before)):
            state = self._recompute(cid, radius)
            if state == "confirmed" and before.get(cid) != "confirmed":
                newly.append(self.get(cid))
        return [c for c in newly if c]

    def _near(self, ra: float, dec: float, radius_arcsec: float) -> list[dict]:
        cells = cone_cells(ra, dec, radius_arcsec / 3600.0)
        rows = self.db.query(f"SELECT * FROM candidates WHERE hpx IN ({', '.join('?' * len(cells))})"
                             " AND state != 'moving'", cells)
        out = []
        for r in rows:
            s = float(separation_deg(ra, dec, r["ra"], r["dec"])) * 3600
            if s <= radius_arcsec:
                out.append((s, r))
        return [r for _, r in sorted(out, key=lambda x: x[0])]

    def _create(self, c: dict, mjd: float | None) -> int:
        now = time.time()
        cur = self.db.conn.execute(
            "INSERT INTO candidates (ra, dec, hpx, state, first_mjd, last_mjd, n_det, created_at, updated_at)"
            " VALUES (?, ?, ?, 'single', ?, ?, 0, ?, ?)",
            (float(c["ra"]), float(c["dec"]), int(hpx_of(c["ra"], c["dec"])[0]), mjd, mjd, now, now))
        return int(cur.lastrowid)

    def _link_moving(self, cid: int, fid: int, mjd: float | None, radius: float) -> int | None:
        """A new single: is it the next position of a recent single (or moving) candidate? Returns
        the candidate it joined (then it is gone), or None."""
        if mjd is None:
            return None
        me = self.db.query_one("SELECT * FROM candidates WHERE id = ?", (cid,))
        window = self.s.moving_max_hours / 24.0
        others = self.db.query(
            "SELECT * FROM candidates WHERE id != ? AND (state IN ('single', 'moving')) AND last_mjd BETWEEN ? AND ?"
            " AND ABS(dec - ?) < ?", (cid, mjd - window, mjd + window, me["dec"],
                                      self.s.moving_max_rate_arcsec_per_hour * self.s.moving_max_hours / 3600 + 0.01))
        best = None
        for o in others:
            dets = self.detections(o["id"])
            if not dets or any(d["frame_id"] == fid for d in dets) or (o["state"] == "single" and o["n_det"] != 1):
                continue
            last = max(dets, key=lambda d: d["mjd"] or 0)
            dt_h = abs(mjd - (last["mjd"] or mjd)) * 24
            if dt_h <= 0:
                continue
            sep = float(separation_deg(me["ra"], me["dec"], last["ra"], last["dec"])) * 3600
            if not (sep > radius and sep / dt_h <= self.s.moving_max_rate_arcsec_per_hour):
                continue
            if len(dets) >= 2 and not _on_track(dets, me, mjd, radius):
                continue
            if best is None or dt_h < best[0]:
                best = (dt_h, o)
        if best is None:
            return None
        o = best[1]
        conn = self.db.conn
        conn.execute("UPDATE candidate_detections SET candidate_id = ? WHERE candidate_id = ?", (o["id"], cid))
        conn.execute("DELETE FROM candidates WHERE id = ?", (cid,))
        conn.execute("UPDATE candidates SET state = 'moving' WHERE id = ?", (o["id"],))
        return int(o["id"])

    def _recompute(self, cid: int, radius: float) -> str | None:
        row = self.db.query_one("SELECT * FROM candidates WHERE id = ?", (cid,))
        if row is None:
            return None
        dets = self.detections(cid)
        conn = self.db.conn
        if not dets:
            conn.execute("DELETE FROM candidates WHERE id = ?", (cid,))
            return None
        mjds = [d["mjd"] for d in dets if d["mjd"] is not None]
        latest = max(dets, key=lambda d: d["mjd"] or 0)
        filters: dict[str, dict] = {}
        for d in dets:
            if d["filter"] and d["mag"] is not None:
                f = filters.setdefault(d["filter"], {"n": 0, "min": d["mag"], "max": d["mag"], "last": d["mag"]})
                f["n"] += 1
                f["min"], f["max"] = min(f["min"], d["mag"]), max(f["max"], d["mag"])
                f["last"] = d["mag"]
        motion = None
        ras = np.array([d["ra"] for d in dets])
        decs = np.array([d["dec"] for d in dets])
        spread = float(np.max(separation_deg(ras, decs, latest["ra"], latest["dec"]))) * 3600
        if row["state"] == "moving" or (len(dets) >= 2 and spread > radius):
            state = "moving"
            first = min(dets, key=lambda d: d["mjd"] or 0)
            dt_h = max(1e-9, ((latest["mjd"] or 0) - (first["mjd"] or 0)) * 24)
            motion = {"rate_arcsec_per_hour": round(spread / dt_h, 3), "spread_arcsec": round(spread, 2)}
            ra, dec = latest["ra"], latest["dec"]
        else:
            ra, dec = float(np.mean(ras)), float(np.mean(decs))
            match = catalogue_state(self.s, ra, dec, min(mjds) if mjds else None)
            distinct = len({round(m * 86400) for m in mjds})
            state = match["state"] if match else ("confirmed" if distinct >= 2 else "single")
        conn.execute(
            "UPDATE candidates SET ra = ?, dec = ?, hpx = ?, state = ?, first_mjd = ?, last_mjd = ?, n_det = ?,"
            " filters = ?, matches = ?, motion = ?, updated_at = ? WHERE id = ?",
            (ra, dec, int(hpx_of(ra, dec)[0]), state, min(mjds) if mjds else None, max(mjds) if mjds else None,
             len(dets), json.dumps(filters),
             json.dumps(catalogue_state(self.s, ra, dec, min(mjds) if mjds else None)) if state in
             ("known variable", "high proper motion") else None,
             json.dumps(motion) if motion else None, time.time(), cid))
        return state

    # -- reads -------------------------------------------------------------------------------
    def _rows(self, ids: Iterable[int]) -> list[dict]:
        ids = list(ids)
        if not ids:
            return []
        return self.db.query(f"SELECT * FROM candidates WHERE id IN ({', '.join('?' * len(ids))})", ids)

    def detections(self, cid: int) -> list[dict]:
        return self.db.query("SELECT * FROM candidate_detections WHERE candidate_id = ? ORDER BY mjd, id", (cid,))

    def get(self, cid: int) -> dict | None:
        row = self.db.query_one("SELECT * FROM candidates WHERE id = ?", (cid,))
        if row is None:
            return None
        for key in ("filters", "matches", "motion"):
            row[key] = json.loads(row[key]) if row.get(key) else None
        return row

    def non_detections(self, c: dict) -> list[dict]:
        """Frames covering the candidate (from 30 days before its first detection) without a detection
        of it, with their limits."""
        from ..store.measurements import MeasurementStore

        seen = {d["frame_id"] for d in self.detections(c["id"])}
        return [{"frame_id": f["id"], "mjd": f["mjd"], "filter": f["filter"], "limit": f["mag_limit"]}
                for f in MeasurementStore(self.db).frames_covering(c["ra"], c["dec"])
                if f["id"] not in seen and f["mjd"] is not None and c["first_mjd"] is not None
                and f["mjd"] >= c["first_mjd"] - 30]

    def list(self, state: str | None = None, limit: int = 200, offset: int = 0) -> list[dict]:
        sql = "SELECT id FROM candidates" + (" WHERE state = ?" if state else "") + \
              " ORDER BY last_mjd DESC, id DESC LIMIT ? OFFSET ?"
        ids = [r["id"] for r in self.db.query(sql, ([state] if state else []) + [limit, offset])]
        return [self.get(i) for i in ids]


def _on_track(dets: list[dict], me: dict, mjd: float, radius: float) -> bool:
    """Three or more positions on one straight line at one rate: predict from the first and last."""
    pts = sorted(dets, key=lambda d: d["mjd"] or 0)
    a, b = pts[0], pts[-1]
    span = (b["mjd"] or 0) - (a["mjd"] or 0)
    if span <= 0:
        return False
    f = (mjd - a["mjd"]) / span
    ra = a["ra"] + f * (((b["ra"] - a["ra"] + 540) % 360 - 180))
    dec = a["dec"] + f * (b["dec"] - a["dec"])
    miss = float(separation_deg(ra, dec, me["ra"], me["dec"])) * 3600
    return miss <= 2 * radius


def _f(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None

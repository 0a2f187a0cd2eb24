"""Which frames covered an alert, and what they found inside its region.

"Frames covering" an alert are those the daemon linked to it (frames.alert_ids) plus those whose
recorded footprint overlaps the alert's stored region (rebuilt as a `LiveRegion`, no skymap
decoding), among frames taken from a visibility window before the alert until its live time ends;
"candidates inside" are the transient candidates in those frames' result.json that fall in the
region. Used by GET /alerts/{id} and by the follow-up report (stdd.reports.alert_report).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..pipeline import RESULT_FILE
from ..store import FrameStore
from ..store.stats import Stats

MAX_COVERING = 200
MAX_CANDIDATES = 1000


def region_of(row: dict, forced_max: float):
    from ..alerts.live_region import LiveRegion

    region = row.get("region")
    if not isinstance(region, dict):
        return None
    try:
        return LiveRegion(row["id"], region, event_id=row.get("event_id"), mission=row.get("mission"),
                          priority=row.get("priority") or 0, live_until=row.get("live_until"),
                          forced_max_radius_deg=forced_max)
    except Exception:  # noqa: BLE001 — an unusable stored region: show the alert without coverage
        return None


def covers(region, frame: dict) -> bool:
    try:
        fp = frame.get("footprint")
        if isinstance(fp, (dict, list)) and fp:
            return bool(region.overlaps_footprint(fp))
        if frame.get("ra") is not None and frame.get("dec") is not None:
            return bool(region.overlaps(frame["ra"], frame["dec"], frame.get("radius") or 0.0))
    except Exception:  # noqa: BLE001 — a malformed footprint covers nothing
        return False
    return False


def candidates_in(region, frame: dict) -> list[dict]:
    out: list[dict] = []
    for folder in (frame.get("result_dir"), frame.get("work_dir")):
        if not folder:
            continue
        try:
            result = json.loads((Path(folder) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
        for kind in ("candidates_simple", "candidates_sub"):
            for cand in result.get(kind) or []:
                if not isinstance(cand, dict):
                    continue
                ra = cand.get("ra", cand.get("RA"))
                dec = cand.get("dec", cand.get("Dec", cand.get("DEC")))
                try:
                    inside = region.contains(float(ra), float(dec))
                except (TypeError, ValueError):
                    continue
                if inside:
                    out.append({"frame_id": frame["id"], "kind": kind.split("_", 1)[1], **cand})
        break
    return out


def covering_frames(db, row: dict, settings, limit: int = MAX_COVERING) -> tuple[object, list[dict]]:
    """(the alert's region as a LiveRegion or None, the frames covering it, newest first)."""
    live = region_of(row, settings.alerts.forced_photometry_max_radius_deg)
    frames: dict[int, dict] = {f["id"]: f for f in FrameStore(db).list(alert_id=row["id"], limit=limit)}
    if live is not None:
        received = row.get("received_at") or time.time()
        t0 = received - settings.alerts.visibility_window_hours * 3600
        t1 = max(row.get("live_until") or 0, received + settings.alerts.live_hours * 3600)
        for f in Stats(db).frames_with_position(t0, t1):
            if f["id"] not in frames and len(frames) < limit and covers(live, f):
                frames[f["id"]] = f
    return live, sorted(frames.values(), key=lambda f: -f["id"])


def candidates_inside(live, frames: list[dict], limit: int = MAX_CANDIDATES) -> list[dict]:
    out: list[dict] = []
    if live is None:
        return out
    for f in frames:
        out.extend(candidates_in(live, f))
        if len(out) >= limit:
            return out[:limit]
    return out

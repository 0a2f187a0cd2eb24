"""Which done frames form a sequence to stack: same filter, same field (centres within
`field_radius_arcmin`, or covering one alert's region), consecutive frames no further apart than
`max_gap_minutes`; a sequence is closed once that long has passed since its last frame. Long ones
are cut into parts of at most `max_frames`. Pure functions over frame rows."""
from __future__ import annotations

import math
from datetime import datetime, timezone


def frame_time(row: dict) -> float | None:
    t = row.get("time_mid")
    if not t:
        return None
    try:
        d = datetime.fromisoformat(str(t).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()


def _sep_arcmin(a: dict, b: dict) -> float:
    ra1, d1, ra2, d2 = map(math.radians, (a["ra"], a["dec"], b["ra"], b["dec"]))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(ra1 - ra2)
    return math.degrees(math.acos(max(-1.0, min(1.0, c)))) * 60


def _same_field(a: dict, b: dict, s) -> bool:
    if s.alert_regions and set(a.get("alert_ids") or []) & set(b.get("alert_ids") or []):
        return True
    return _sep_arcmin(a, b) <= s.field_radius_arcmin


def closed_sequences(rows: list[dict], s, now: float) -> list[list[dict]]:
    """Closed sequences (each a list of frame rows in time order) ready to stack."""
    frames = [r for r in rows if r.get("ra") is not None and r.get("dec") is not None and frame_time(r)]
    frames.sort(key=frame_time)
    groups: list[list[dict]] = []
    for f in frames:
        for g in groups:
            last = g[-1]
            if (f.get("filter") == last.get("filter") and _same_field(f, last, s)
                    and frame_time(f) - frame_time(last) <= s.max_gap_minutes * 60):
                g.append(f)
                break
        else:
            groups.append([f])
    out = []
    for g in groups:
        quiet = (s.close_after_minutes or s.max_gap_minutes) * 60
        if now - frame_time(g[-1]) < s.max_gap_minutes * 60 or now - max(x.get("finished_at") or 0 for x in g) < quiet:
            continue  # still open: another frame may come
        for i in range(0, len(g), s.max_frames):
            part = g[i:i + s.max_frames]
            if len(part) >= s.min_frames:
                out.append(part)
    return out


def key_of(frames: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(",".join(str(f["id"]) for f in sorted(frames, key=lambda f: f["id"])).encode()).hexdigest()[:24]

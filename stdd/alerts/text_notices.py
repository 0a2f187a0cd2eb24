"""Classic GCN text notices (gcn.classic.text.*): `KEY:  value` lines.

Positions come as `74.7412d {+04h 58m 57.9s} (J2000)`, errors with their unit and meaning
in brackets: `3.00 [arcmin radius, statistical only]`, `1.2755 [deg radius, stat-only, 90%
containment]`. The unit (deg, arcmin, arcsec) and a stated containment are honoured; without
one the mission's convention applies. Times are TJD (MJD - 40000) and seconds of day.
"""
from __future__ import annotations

import math
import re

from . import gcn
from .localisation import set_position
from .notice import Alert, NoticeError
from .region import SIGMA_2D, Circle, RegionError

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*):\s*(.*)$")
_UNITS = {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "arcmin": 1 / 60, "arcsec": 1 / 3600}


def looks_like_text_notice(text: str) -> bool:
    lines = [ln for ln in text.splitlines()[:5] if ln.strip()]
    return bool(lines) and all(_LINE.match(ln) or ln.startswith(" ") for ln in lines) and \
        any(ln.startswith(("TITLE:", "NOTICE_DATE:", "NOTICE_TYPE:")) for ln in lines)


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.rstrip())
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def _degrees(value: str | None) -> float | None:
    if not value:
        return None
    m = re.match(r"\s*([+-]?\d+(?:\.\d*)?)\s*d?\b", value)
    if not m:
        return None
    v = float(m.group(1))
    return v if math.isfinite(v) else None


def _error(value: str | None) -> tuple[float | None, float | None, str]:
    """(error in degrees, containment or None, the bracket text)."""
    if not value:
        return None, None, ""
    m = re.match(r"\s*([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*(?:\[([^\]]*)\])?", value)
    if not m:
        return None, None, ""
    v = float(m.group(1))
    note = (m.group(2) or "").lower()
    unit = next((u for u in ("arcmin", "arcsec", "deg") if u in note), "deg")
    containment = None
    pm = re.search(r"(\d+(?:\.\d+)?)\s*%", note)
    if pm:
        containment = float(pm.group(1)) / 100
    elif re.search(r"\b1[- ]?sigma\b|\bsigma\b", note):
        containment = SIGMA_2D
    return v * _UNITS[unit], containment, note


def parse_text_notice(raw: bytes, topic: str | None = None) -> Alert:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    f = _fields(text)
    if not f:
        raise NoticeError("text notice has no KEY: value lines")
    title = f.get("TITLE", "")
    human_type = f.get("NOTICE_TYPE", "")
    notice_type = topic.split(".", 3)[3] if topic and topic.startswith("gcn.classic.text.") else None
    notice_type = notice_type or re.sub(r"[^A-Z0-9]+", "_", human_type.upper()).strip("_") or None
    mission, instrument = gcn.mission_for_type(notice_type)
    if mission is None:
        m = re.search(r"GCN/(\w+)", title)
        if m:
            mission = gcn.canonical_mission({"LVC": "lvk", "LVK": "lvk"}.get(m.group(1).upper(), m.group(1)))

    trig = f.get("TRIGGER_NUM") or f.get("TRIG_NUM") or f.get("EVENT_NUM")
    event_id = trig.split(",")[0].strip() if trig else None
    if f.get("RUN_NUM") and f.get("EVENT_NUM"):
        event_id = f"{f['RUN_NUM'].split(',')[0].strip()}_{f['EVENT_NUM'].split(',')[0].strip()}"
    created = f.get("NOTICE_DATE")
    seq = f.get("SEQ_NUM") or (re.search(r"Seg_Num:\s*(\d+)", trig or "") or [None, ""])[1] or ""
    alert = Alert(id=f"{notice_type or 'text'}#{event_id or '-'}-{seq}-{created or ''}", mission=mission,
                  instrument=instrument, notice_type=notice_type, format="text", topic=topic, event_id=event_id)
    alert.extra["notice_date"] = created

    # time: <X>_DATE "16177 TJD; ..." with <X>_TIME "1463.08 SOD ..."
    for key, value in f.items():
        if key.endswith("_DATE") and "TJD" in value:
            tkey = key[:-5] + "_TIME"
            tjd = re.match(r"\s*(\d+(?:\.\d+)?)\s*TJD", value)
            sod = re.match(r"\s*(\d+(?:\.\d+)?)\s*SOD", f.get(tkey, ""))
            if tjd and sod:
                alert.time = gcn.tjd_sod_to_iso(tjd.group(1), sod.group(1))
                break

    ra = next((_degrees(f[k]) for k in ("GRB_RA", "SRC_RA", "EVENT_RA", "TRANS_RA", "RA") if k in f), None)
    dec = next((_degrees(f[k]) for k in ("GRB_DEC", "SRC_DEC", "EVENT_DEC", "TRANS_DEC", "DEC") if k in f), None)
    if ra is not None and dec is not None and set_position(alert, ra, dec):
        keys = [k for k in f if ("ERROR" in k or k.endswith("_ERR")) and "SYS" not in k and "TIME" not in k]
        keys.sort(key=lambda k: ("90" not in k, k))  # a 90 % radius wins when several are given
        err, containment, note = _error(f[keys[0]]) if keys else (None, None, "")
        alert.stated_error_deg = err
        sys_key = next((k for k in f if "SYS" in k and "ERR" in k), None)
        sys_err = _error(f[sys_key])[0] if sys_key else None
        if err and err > 0:
            if containment is None:
                containment = gcn.voevent_containment(notice_type, mission)
            included = None
            if sys_err:
                err, included = math.hypot(err, sys_err), True
            elif "stat" in note and ("sys" in note or "plus" in note):
                included = True
            elif "statistical only" in note or "stat-only" in note or "stat only" in note:
                included = False
            try:
                alert.region = Circle(alert.ra, alert.dec, min(err, 180.0), containment, included)
            except RegionError as e:
                alert.flags.append(f"bad_error_region: {e}")
    if "test" in (title + " " + human_type).lower() or (notice_type and "_TEST" in notice_type):
        alert.role, alert.role_reason = "test", "test notice"
    if event_id and mission == "LVK" and event_id[:1] in ("M", "T"):
        alert.role, alert.role_reason = ("mock" if event_id[0] == "M" else "test"), f"superevent {event_id}"
    if "retraction" in human_type.lower() or gcn.truthy(f.get("RETRACTION", "0").split()[0] if f.get("RETRACTION") else "0"):
        alert.retraction = True
        alert.retracts = event_id
    if notice_type in gcn.CONTROL_TYPES:
        alert.role, alert.role_reason = "control", f"{notice_type} control packet"
    return alert

"""The follow-up report of one alert: what the telescope saw of its region since the trigger.

Built from the state: the alert row (trigger time T0, position, error region), the frames covering
its region (stdd.reports.coverage: linked by the daemon, or footprint overlapping, in the alert's
time window) and each frame's result.json — its time, filter, exposure, zero point, the frame's
5σ limit, and the forced measurement at the alert position (the `targets` entry for the alert's
region, which the photometry stage measures on every frame searched for it: a detection with its
error, or an upper limit), and the candidates found inside the region with their magnitudes and
S/N. Frames taken before T0 are listed too, marked, as the reference the community asks for.

The light curve against t − T0 is the position's measurements (detections and limits), per filter.
A draft GCN Circular in the community's usual form is written by stdd.reports.circular.
"""
from __future__ import annotations

import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from ..pipeline import RESULT_FILE
from ..store.alerts import AlertStore
from .coverage import candidates_inside, covering_frames


class ReportError(LookupError):
    """No report: the message says why (no such alert)."""


def parse_time(text) -> float | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if t is not None else None


def read_result(frame: dict) -> dict:
    for folder in (frame.get("result_dir"), frame.get("work_dir")):
        if not folder:
            continue
        try:
            return json.loads((Path(folder) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
    return {}


def at_position(result: dict, alert_id: str) -> dict | None:
    """The frame's forced measurement at the alert position (its `targets` entry for the region)."""
    for t in result.get("targets") or []:
        if isinstance(t, dict) and (t.get("region") == alert_id or t.get("name") == alert_id):
            return t
    return None


def build_report(db, alert_id: str, settings) -> dict:
    """The report as a dict (JSON-ready). Raises ReportError when there is no such alert."""
    row = AlertStore(db).get_alert(alert_id)
    if row is None:
        raise ReportError(f"no alert {alert_id!r}")
    t0 = parse_time(row.get("time")) or row.get("received_at")
    live, frames = covering_frames(db, row, settings)
    candidates = candidates_inside(live, frames)
    rows = []
    for f in frames:
        res = read_result(f) if f.get("state") == "done" else {}
        t = parse_time(res.get("time_mid") or f.get("time_mid"))
        m = at_position(res, alert_id) or {}
        detected = m.get("mag") is not None
        rows.append({
            "frame_id": f["id"], "name": f.get("name"), "state": f.get("state"), "error": f.get("error"),
            "time_mid": iso(t), "t_minus_t0_s": round(t - t0, 1) if (t is not None and t0) else None,
            "before_trigger": bool(t is not None and t0 and t < t0),
            "filter": res.get("filter") or f.get("filter"), "exptime": res.get("exptime") or f.get("exptime"),
            "zp": res.get("zp"), "zp_err": res.get("zp_err"), "frame_limit": res.get("mag_limit"),
            "measured": bool(m), "detected": detected,
            "mag": m.get("mag"), "mag_err": m.get("mag_err"), "snr": m.get("snr"),
            "limit": m.get("mag_limit") if m else res.get("mag_limit"),
            "catalog": res.get("catalog_band") or res.get("catalog"),
        })
    rows.sort(key=lambda r: (r["t_minus_t0_s"] is None, r["t_minus_t0_s"] or 0))
    done = [r for r in rows if r["state"] == "done"]
    after = [r for r in done if not r["before_trigger"] and r["t_minus_t0_s"] is not None]
    cands = [{k: c.get(k) for k in ("frame_id", "kind", "id", "ra", "dec", "mag", "mag_err", "snr", "flags")}
             for c in candidates]
    cands.sort(key=lambda c: -(c.get("snr") or 0))
    return {
        "alert": {k: row.get(k) for k in ("id", "mission", "instrument", "notice_type", "event_id", "time", "ra",
                                          "dec", "error_radius_deg", "state", "priority")},
        "t0": iso(t0), "site": settings.site.name,
        "frames": rows, "candidates": cands,
        "summary": {
            "frames": len(rows), "done": len(done), "after_trigger": len(after),
            "first_after_s": min((r["t_minus_t0_s"] for r in after), default=None),
            "detections_at_position": sum(1 for r in done if r["detected"]),
            "deepest_limit": max((r["limit"] for r in done if not r["detected"] and r["limit"] is not None),
                                 default=None),
            "candidates_in_region": len(cands),
            "filters": sorted({r["filter"] for r in done if r["filter"]}),
        },
        "lightcurve": [{"t_minus_t0_s": r["t_minus_t0_s"], "filter": r["filter"], "mag": r["mag"],
                        "mag_err": r["mag_err"], "limit": None if r["detected"] else r["limit"],
                        "frame_id": r["frame_id"]}
                       for r in done if r["t_minus_t0_s"] is not None and (r["detected"] or r["limit"] is not None)],
    }


def lightcurve_png(report: dict) -> bytes:
    """Magnitude at the alert position against t − T0 (log time when every point is after T0):
    detections with error bars, limits as downward triangles, per filter."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    pts = report["lightcurve"]
    after = all(p["t_minus_t0_s"] > 0 for p in pts) and pts
    for flt in sorted({p["filter"] or "?" for p in pts}):
        sel = [p for p in pts if (p["filter"] or "?") == flt]
        det = [p for p in sel if p["mag"] is not None]
        lim = [p for p in sel if p["mag"] is None]
        x = (lambda p: p["t_minus_t0_s"] / 3600.0)
        line = None
        if det:
            line = ax.errorbar([x(p) for p in det], [p["mag"] for p in det], yerr=[p["mag_err"] or 0 for p in det],
                               fmt="o", label=f"{flt}")
        if lim:
            ax.plot([x(p) for p in lim], [p["limit"] for p in lim], "v", alpha=0.7,
                    color=line[0].get_color() if line else None, label=f"{flt} limit")
    if after:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("t − T0 (hours)")
    ax.set_ylabel("magnitude")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measurement at the alert position yet", transform=ax.transAxes, ha="center")
    ax.set_title(f"{report['alert']['id']}: at the alert position", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def fmt_dt(seconds: float | None) -> str:
    """t − T0 as people write it: 42 s, 12.5 min, 3.2 h, 1.5 d."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 120:
        return f"{sign}{s:.0f} s"
    if s < 7200:
        return f"{sign}{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{sign}{s / 3600:.2f} h"
    return f"{sign}{s / 86400:.2f} d"

"""A night at a glance: its frames (states, numbers, failures with their reasons) and the plots of
zero point, FWHM, limit and sky background against time.

A night runs from local noon to local noon (local solar time from `site.lon`, as the nightly
summary counts it, stdd.daemon.jobs.night_of); a frame belongs to the night of its mid-exposure
time, else of when it was recorded. The numbers come from the frames table (filled when a frame
ends); the background from each frame's result.json (inspect's SEP level), read only for the
plot. The plot is drawn with matplotlib in a reader thread and cached by the night and the last
change of its frames.
"""
from __future__ import annotations

import io
import json
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from ..daemon.jobs import frame_time, night_of
from ..pipeline import RESULT_FILE

DAY = 86400.0
_plot_cache: dict = {}
_plot_lock = threading.Lock()


def parse_night(text: str | None, lon_deg: float, now: float) -> date:
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"night must be a date like 2026-12-04, got {text!r}") from None
    return night_of(now, lon_deg)


def latest_night(db, lon_deg: float) -> date | None:
    """The night of the most recently recorded frame (None: no frame yet)."""
    rows = db.query("SELECT * FROM frames ORDER BY id DESC LIMIT 1")
    return night_of(frame_time(rows[0]), lon_deg) if rows else None


def frames_of_night(db, night: date, lon_deg: float) -> list[dict]:
    """The night's frames (every state), in time order."""
    noon = datetime(night.year, night.month, night.day, 12, tzinfo=timezone.utc) - timedelta(hours=lon_deg / 15.0)
    t0 = noon.timestamp()
    lo = (noon - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    hi = (noon + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    # by the time the frame was taken (an archive reprocessed today belongs to its own nights),
    # else by when it was recorded
    rows = db.query("SELECT * FROM frames WHERE (time_mid >= ? AND time_mid < ?)"
                    " OR (time_mid IS NULL AND created_at >= ? AND created_at < ?) ORDER BY id",
                    (lo, hi, t0 - DAY, t0 + 3 * DAY))
    out = []
    for r in rows:
        row = _decoded(r)
        t = frame_time(row)
        if t0 <= t < t0 + DAY:
            row["t"] = t
            out.append(row)
    out.sort(key=lambda r: r["t"])
    return out


def _decoded(row: dict) -> dict:
    out = dict(row)
    for key in ("steps", "options", "footprint", "alert_ids"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


def summary(rows: list[dict]) -> dict:
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    failures = [r for r in rows if r["state"] == "failed"]
    return {"frames": len(rows), "states": states, "failures": failures}


def background(row: dict) -> float | None:
    for folder in (row.get("result_dir"), row.get("work_dir")):
        if not folder:
            continue
        try:
            res = json.loads((Path(folder) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
        v = res.get("background")
        return float(v) if isinstance(v, (int, float)) else None
    return None


def plot_png(rows: list[dict], night: date) -> bytes:
    """Zero point, FWHM, limit and background against UT, one panel each, by filter."""
    key = (night.isoformat(), len(rows), max((r.get("updated_at") or 0) for r in rows) if rows else 0)
    with _plot_lock:
        if key in _plot_cache:
            return _plot_cache[key]
    from matplotlib.figure import Figure

    done = [r for r in rows if r["state"] == "done"]
    fig = Figure(figsize=(9, 7), dpi=80)
    panels = (("zp", "zero point (mag)"), ("fwhm_arcsec", "FWHM (arcsec)"), ("mag_limit", "5σ limit (mag)"),
              ("background", "sky background (ADU)"))
    axes = fig.subplots(len(panels), 1, sharex=True)
    filters = sorted({r.get("filter") or "?" for r in done})
    for ax, (key_, label) in zip(axes, panels):
        for flt in filters:
            pts = [(datetime.fromtimestamp(r["t"], timezone.utc),
                    background(r) if key_ == "background" else r.get(key_))
                   for r in done if (r.get("filter") or "?") == flt]
            pts = [(t, v) for t, v in pts if v is not None]
            if pts:
                errs = [r.get("zp_err") or 0 for r in done if (r.get("filter") or "?") == flt
                        and r.get("zp") is not None] if key_ == "zp" else None
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=errs, fmt="o", ms=4, label=flt)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if key_ in ("mag_limit",):
            ax.invert_yaxis()
    if filters and done:
        axes[0].legend(fontsize=7, loc="best", title="filter", title_fontsize=7)
    axes[-1].set_xlabel("UT")
    if done:
        from matplotlib.dates import DateFormatter

        ts = [r["t"] for r in done]
        pad = max(600.0, 0.05 * (max(ts) - min(ts)))
        axes[-1].set_xlim(datetime.fromtimestamp(min(ts) - pad, timezone.utc),
                          datetime.fromtimestamp(max(ts) + pad, timezone.utc))
        axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M", tz=timezone.utc))
    if not done:
        axes[0].text(0.5, 0.5, "no frame done this night", transform=axes[0].transAxes, ha="center")
    fig.suptitle(f"night {night.isoformat()}: {len(done)} frame(s) done", fontsize=10)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    with _plot_lock:
        if len(_plot_cache) > 32:
            _plot_cache.clear()
        _plot_cache[key] = data
    return data

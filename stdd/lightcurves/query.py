"""Light curves from the measurement store: matched detections at a position, and with `forced`
forced photometry on every frame whose footprint covers it (upper limits where it is not
detected), per filter, times as ISO and MJD; as JSON, ECSV, VOTable or a plot.

A matched point is, per frame, the nearest measurement within the radius, a target's forced
measurement (exact position) preferred to a detected object, an object to a candidate. Forced
points come from the frame's image (stdd.lightcurves.forced) while it is kept, else from the
store (a target measured at that position), else the frame's own limit.
"""
from __future__ import annotations

import io
import json
from datetime import timedelta

from ..store.measurements import MJD0, MeasurementStore

KIND_ORDER = {"target": 0, "object": 1, "candidate": 2}


def iso_of(mjd: float | None) -> str | None:
    if mjd is None:
        return None
    return (MJD0 + timedelta(days=mjd)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def lightcurve(db, ra: float, dec: float, radius_arcsec: float = 2.0, *, forced: bool = False,
               band: str | None = None, sn: float = 5.0) -> dict:
    ms = MeasurementStore(db)
    best: dict[int, dict] = {}
    for r in ms.cone(ra, dec, radius_arcsec, band=band):
        cur = best.get(r["frame_id"])
        key = (KIND_ORDER.get(r["kind"], 9), r["sep_arcsec"])
        if cur is None or key < (KIND_ORDER.get(cur["kind"], 9), cur["sep_arcsec"]):
            best[r["frame_id"]] = r
    points = []
    for r in best.values():
        detected = r["mag"] is not None
        points.append({"frame_id": r["frame_id"], "mjd": r["mjd"], "time": iso_of(r["mjd"]), "filter": r["filter"],
                       "mag": r["mag"], "mag_err": r["mag_err"], "limit": r["lim"], "snr": r["snr"],
                       "detected": detected, "source": r["kind"], "sep_arcsec": r["sep_arcsec"],
                       "zp_err": r["zp_err"]})
    if forced:
        from .forced import measure_at

        points = []
        for f in ms.frames_covering(ra, dec, band):
            result = _result(f)
            m = measure_at(f, result, ra, dec, sn=sn)
            if not m["image"] and f["id"] in best and best[f["id"]]["kind"] == "target":
                b = best[f["id"]]  # measured at this position when the frame was processed
                m.update(mag=b["mag"], mag_err=b["mag_err"], limit=b["lim"], snr=b["snr"], note="stored target")
            points.append({"frame_id": f["id"], "mjd": f["mjd"], "time": iso_of(f["mjd"]), "filter": f["filter"],
                           "mag": m["mag"], "mag_err": m["mag_err"], "limit": m["limit"], "snr": m["snr"],
                           "detected": m["mag"] is not None, "source": "forced" if m["image"] else (
                               m["note"] or "frame limit"), "zp_err": f.get("zp_err")})
    points.sort(key=lambda p: (p["mjd"] is None, p["mjd"] or 0))
    return {"ra": ra, "dec": dec, "radius_arcsec": radius_arcsec, "forced": forced, "filter": band,
            "filters": sorted({p["filter"] for p in points if p["filter"]}), "points": points}


def _result(frame: dict) -> dict:
    from pathlib import Path

    for folder in (frame.get("result_dir"), frame.get("work_dir")):
        if folder:
            try:
                return json.loads((Path(folder) / "result.json").read_text())
            except (OSError, ValueError):
                continue
    return {"mag_limit": frame.get("mag_limit"), "zp": frame.get("zp")}


def as_table(lc: dict):
    from astropy.table import Table

    cols = ("time", "mjd", "filter", "mag", "mag_err", "limit", "snr", "detected", "source", "frame_id")
    t = Table(rows=[[p.get(c) if p.get(c) is not None else (float("nan") if c in ("mag", "mag_err", "limit",
                                                                                   "snr", "mjd") else "")
                     for c in cols] for p in lc["points"]], names=cols) if lc["points"] else Table(names=cols)
    t.meta.update({"ra": lc["ra"], "dec": lc["dec"], "radius_arcsec": lc["radius_arcsec"], "forced": lc["forced"]})
    return t


def as_ecsv(lc: dict) -> str:
    buf = io.StringIO()
    as_table(lc).write(buf, format="ascii.ecsv")
    return buf.getvalue()


def as_votable(lc: dict) -> bytes:
    buf = io.BytesIO()
    t = as_table(lc)
    for c in ("time", "filter", "source"):
        t[c] = [str(v) for v in t[c]]
    t.write(buf, format="votable")
    return buf.getvalue()


def plot_png(lc: dict, title: str = "") -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    for band in lc["filters"] or [None]:
        sel = [p for p in lc["points"] if p["filter"] == band and p["mjd"] is not None]
        det = [p for p in sel if p["detected"]]
        lim = [p for p in sel if not p["detected"] and p["limit"] is not None]
        line = None
        if det:
            line = ax.errorbar([p["mjd"] for p in det], [p["mag"] for p in det],
                               yerr=[p["mag_err"] or 0 for p in det], fmt="o", label=str(band))
        if lim:
            ax.plot([p["mjd"] for p in lim], [p["limit"] for p in lim], "v", alpha=0.7,
                    color=line[0].get_color() if line else None, label=f"{band} limit")
    ax.invert_yaxis()
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude")
    ax.grid(alpha=0.3)
    if lc["points"]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no measurement here", transform=ax.transAxes, ha="center")
    ax.set_title(title or f"{lc['ra']:.5f} {lc['dec']:+.5f}" + (" (forced)" if lc["forced"] else ""), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()

"""What the frame page shows, gathered in a reader thread: the frame's record and result, its
images, plots, candidates with their cutouts, targets, stage timeline, logs, files, history,
and the overlays of the image viewer in pixel coordinates.

Overlays: detected objects (`objects.fits`, brightest first, at most MAX_OBJECTS), calibration
stars (objects matched to the catalogue: finite `cat_mag`), targets and candidates (their
pixel positions from result.json, else through the WCS), and the alert regions the frame was
searched for (circles, from result.json's `settings.regions`, through the frame's WCS
`image.wcs`). Pixel coordinates are 0-based, as the stages write them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..pipeline import RESULT_FILE
from ..result_versions import list_versions

MAX_OBJECTS = 3000
IMAGE_NAMES = ("image.fits", "diff.fits", "template.fits", "original.fits")
CUTOUT_PLANES = ("IMAGE", "TEMPLATE", "DIFF")


def folders(frame: dict) -> list[Path]:
    return [Path(d) for d in (frame.get("result_dir"), frame.get("work_dir")) if d and Path(d).is_dir()]


def find(frame: dict, rel: str) -> Path | None:
    for base in folders(frame):
        p = base / rel
        if p.is_file():
            return p
    return None


def read_result(frame: dict) -> dict | None:
    for base in folders(frame):
        try:
            return json.loads((base / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None


def images(frame: dict) -> list[str]:
    """The FITS images the viewer can show, first the frame's own."""
    return [name for name in IMAGE_NAMES if find(frame, name) is not None]


def plots(frame: dict, result: dict | None) -> list[str]:
    names = [p for p in (result or {}).get("products", []) if isinstance(p, str) and p.startswith("plots/")
             and p.lower().endswith((".png", ".jpg", ".svg"))]
    seen = set(names)
    for base in folders(frame):
        d = base / "plots"
        if d.is_dir():
            for p in sorted(d.iterdir()):
                rel = f"plots/{p.name}"
                if rel not in seen and p.suffix.lower() in (".png", ".jpg", ".svg"):
                    names.append(rel)
                    seen.add(rel)
    return names


def candidates(frame: dict, result: dict | None) -> list[dict]:
    """Simple and difference candidates, each with the planes of its cutout that can be drawn."""
    out = []
    for kind, key in (("difference", "candidates_sub"), ("simple", "candidates_simple")):
        for c in (result or {}).get(key) or []:
            cut = c.get("cutout") or ""
            fits_rel = cut.rsplit(".", 1)[0] + ".fits" if cut else ""
            planes = cutout_planes(find(frame, fits_rel)) if fits_rel else []
            out.append({**c, "kind": kind, "cutout_fits": fits_rel if planes else None, "planes": planes})
    return out


def cutout_planes(path: Path | None) -> list[str]:
    if path is None:
        return []
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            names = {h.name.upper() for h in hdul}
    except (OSError, ValueError):
        return []
    return [p for p in CUTOUT_PLANES if p in names]


def wcs_of(frame: dict):
    from astropy.io import fits
    from astropy.wcs import WCS

    for rel in ("image.wcs", "image.fits"):
        p = find(frame, rel)
        if p is None:
            continue
        try:
            header = fits.getheader(p)
            w = WCS(header)
            if w.has_celestial:
                return w
        except Exception:
            continue
    return None


def overlays(frame: dict, result: dict | None) -> dict:
    """Everything the viewer draws over the image, in 0-based pixels."""
    result = result or {}
    out: dict = {"objects": [], "calibration": [], "targets": [], "candidates": [], "regions": []}
    objects = find(frame, result.get("objects_table") or "objects.fits")
    if objects is not None:
        try:
            from astropy.table import Table

            t = Table.read(objects)
            order = np.argsort(-np.nan_to_num(np.asarray(t["flux"], float), nan=-np.inf)) if "flux" in t.colnames \
                else np.arange(len(t))
            for i in order[:MAX_OBJECTS]:
                row = t[i]
                item = [round(float(row["x"]), 2), round(float(row["y"]), 2)]
                out["objects"].append(item)
                if "cat_mag" in t.colnames and np.isfinite(float(row["cat_mag"] or np.nan)):
                    out["calibration"].append(item)
        except Exception as e:  # a damaged table: the page still shows the rest
            out["error"] = f"objects: {type(e).__name__}: {e}"
    w = wcs_of(frame)

    def pix(item: dict):
        if item.get("x") is not None and item.get("y") is not None:
            return float(item["x"]), float(item["y"])
        if w is not None and item.get("ra") is not None and item.get("dec") is not None:
            x, y = w.all_world2pix(float(item["ra"]), float(item["dec"]), 0)
            if math.isfinite(x) and math.isfinite(y):
                return float(x), float(y)
        return None

    for t in result.get("targets") or []:
        xy = pix(t)
        if xy:
            out["targets"].append({"name": t.get("name"), "x": round(xy[0], 2), "y": round(xy[1], 2)})
    for c in candidates(frame, result):
        xy = pix(c)
        if xy:
            out["candidates"].append({"id": c.get("id"), "kind": c["kind"], "x": round(xy[0], 2),
                                      "y": round(xy[1], 2)})
    scale = result.get("pixscale_arcsec")
    for r in ((result.get("settings") or {}).get("regions") or []):
        xy = pix(r)
        if xy and scale:
            out["regions"].append({"id": r.get("id"), "x": round(xy[0], 2), "y": round(xy[1], 2),
                                   "r": round(float(r["radius_deg"]) * 3600 / float(scale), 2)})
    return out


def timeline(stage_runs: list[dict]) -> list[dict]:
    """Stage runs as bars: offset from the first start and length, in seconds."""
    starts = [r["started_at"] for r in stage_runs if r.get("started_at")]
    t0 = min(starts) if starts else 0.0
    out = []
    for r in stage_runs:
        start = r.get("started_at")
        end = r.get("finished_at") or start
        out.append({**r, "offset": round((start or t0) - t0, 2),
                    "length": round(max(0.0, (end or 0) - (start or 0)), 2)})
    return out


def history(frame: dict) -> list[dict]:
    return list_versions(Path(frame["result_dir"])) if frame.get("result_dir") else []

"""The frame's targets: from settings, from the header, from alert regions; names resolved.

A target is {name, ra, dec, x, y, source, outcome[, region, inside]}: `source` is "setting",
"header" or "region"; `outcome` says how its position was found ("coordinates", "pixels", the name
service or cache that resolved it) — or, with ra and x both None, why not ("offline", "not found",
"failed: ..."), so an unresolved name is a recorded outcome, never a crash. Targets without a
position are recorded but not measured.

STDWeb's target syntax is accepted: a name; "RA Dec" (degrees or sexagesimal); "x=100 y=200"
(0-based pixels); each optionally labelled "label= ...". With no target configured, the header's
TARGET (or OBJECT when it resolves) is the target, as in STDWeb.
"""
from __future__ import annotations

import re
from pathlib import Path

NUM = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
LABELLED = re.compile(r"(?:(?P<name>[^=]+?)\s*=\s*)?(?P<a>" + NUM + r")[\s,]+(?P<b>" + NUM + r")\s*(?P<px>px|pix)?")
PIXELS = re.compile(r"(?:(?P<name>.+?)\s*[=:]?\s+)?x\s*=\s*(?P<x>" + NUM + r")[\s,]+y\s*=\s*(?P<y>" + NUM + r")")
HEADER_KEYS = ("TARGET", "OBJECT")


def parse_target(text: str, *, resolve_name, source: str) -> dict:
    """One target from its text; `resolve_name(name)` -> stdd.sources.names.Resolution."""
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    text = str(text).strip()
    m = PIXELS.fullmatch(text)
    if m:
        return {"name": (m.group("name") or text).strip(), "x": float(m.group("x")), "y": float(m.group("y")),
                "ra": None, "dec": None, "source": source, "outcome": "pixels"}
    m = LABELLED.fullmatch(text)
    if m:
        name = (m.group("name") or text).strip()
        a, b = float(m.group("a")), float(m.group("b"))
        if m.group("px"):
            return {"name": name, "x": a, "y": b, "ra": None, "dec": None, "source": source, "outcome": "pixels"}
        if -90 <= b <= 90:
            return {"name": name, "ra": a % 360, "dec": b, "source": source, "outcome": "coordinates"}
        return {"name": name, "ra": None, "dec": None, "source": source,
                "outcome": f"failed: Dec {b:g} is outside -90..90 (pixels are written x=.. y=..)"}
    label, _, rest = text.partition("=")
    body, name = (rest.strip(), label.strip()) if rest.strip() and "=" not in rest else (text, text)
    try:
        c = SkyCoord(body, unit=(u.hourangle, u.deg))
        return {"name": name, "ra": float(c.ra.deg), "dec": float(c.dec.deg), "source": source,
                "outcome": "coordinates"}
    except (ValueError, TypeError):
        pass
    r = resolve_name(body)
    return {"name": name, "ra": r.ra, "dec": r.dec, "source": source, "outcome": r.outcome,
            **({"resolved_as": r.label} if r.label else {})}


def header_target(header, *, resolve_name) -> tuple[dict | None, str | None]:
    """(target, why not) from the header: TARGET as a target (any outcome is recorded), else OBJECT
    only when it resolves to coordinates."""
    for key in HEADER_KEYS:
        value = str(header.get(key, "") or "").strip()
        if not value:
            continue
        t = parse_target(value, resolve_name=resolve_name, source="header")
        t["header_keyword"] = key
        if key == "TARGET" or t.get("ra") is not None:
            return t, None
        return None, f"header OBJECT {value!r} is not used as a target ({t['outcome']})"
    return None, None


def collect(run, settings, regions, wcs, shape, header) -> list[dict]:
    """Targets as [{name, ra, dec, x, y, source, outcome, ...}]: settings (or the header's), then
    regions. Unresolved ones are noted by name and kept with no position."""
    from ..sources import names

    p = settings.pipeline

    def resolve_name(name):
        return names.resolve(name, settings.catalog, offline=settings.offline, cache_dir=Path(settings.cache_dir))

    out = [parse_target(text, resolve_name=resolve_name, source="setting") for text in p.targets]
    if not p.targets and p.header_target:
        t, why = header_target(header, resolve_name=resolve_name)
        if t is not None:
            run.log(f"target from header {t['header_keyword']}: {t['name']} ({t['outcome']})")
            out.append(t)
        elif why:
            run.log(why)
    for r in regions:
        if r.forced_photometry:
            out.append({"name": r.id, "ra": r.ra, "dec": r.dec, "region": r.id, "source": "region",
                        "outcome": "coordinates"})
    for t in out:
        if t.get("ra") is None and t.get("x") is None:
            why = {"offline": "offline, and the name is not in the cache"}.get(t["outcome"], t["outcome"])
            run.note(f"target {t['name']!r} not resolved: {why}; not measured")
            continue
        if wcs is not None and t.get("ra") is not None and t.get("x") is None:
            x, y = wcs.all_world2pix([t["ra"]], [t["dec"]], 0)
            t["x"], t["y"] = float(x[0]), float(y[0])
        elif wcs is not None and t.get("ra") is None:
            r, d = wcs.all_pix2world([t["x"]], [t["y"]], 0)
            t["ra"], t["dec"] = float(r[0]), float(d[0])
        if t.get("x") is not None:
            t["inside"] = bool(0 <= t["x"] < shape[1] and 0 <= t["y"] < shape[0])
    return out


def outcomes(targets: list[dict]) -> list[dict]:
    """What result.json records of each target: its name, where it came from, how it was placed."""
    return [{"name": t["name"], "source": t["source"], "outcome": t["outcome"]} for t in targets]


def measurable(targets: list[dict]) -> list[dict]:
    return [t for t in targets if t.get("ra") is not None or t.get("x") is not None]


def centroid(run, rows, image, mask, fwhm: float, wcs) -> list[tuple]:
    """STDWeb's centroid_targets: `rows` of (target, x, y, ra, dec) moved to their centroids (STDPipe's
    measure_objects, centroid_iter=5), at most 2 FWHM; the given position and the offset are kept on the
    target (x_orig, y_orig, centroid_offset_arcsec)."""
    import math
    import warnings

    import numpy as np
    from astropy.table import Table
    from stdpipe import astrometry as sa
    from stdpipe import photometry_measure as spm

    tab = Table({"x": [r[1] for r in rows], "y": [r[2] for r in rows]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = spm.measure_objects(tab, image, aper=2.0, fwhm=fwhm, mask=mask, centroid_iter=5, sn=None,
                                  keep_negative=True, verbose=False)
    out = []
    for (t, x, y, ra, dec), cx, cy in zip(rows, res["x"], res["y"]):
        cx, cy = float(cx), float(cy)
        if not (np.isfinite(cx) and np.isfinite(cy)) or math.hypot(cx - x, cy - y) > 2 * fwhm:
            run.note(f"target {t['name']}: no centroid within 2 FWHM; measured at its given position")
            out.append((t, x, y, ra, dec))
            continue
        r, d = wcs.all_pix2world([cx], [cy], 0)
        r, d = float(r[0]) % 360, float(d[0])
        t["x_orig"], t["y_orig"] = x, y
        t["centroid_offset_arcsec"] = float(sa.spherical_distance(ra, dec, r, d)) * 3600
        run.log(f"target {t['name']} centroided: ({x:.2f}, {y:.2f}) -> ({cx:.2f}, {cy:.2f}), "
                f"{t['centroid_offset_arcsec']:.2f}\"")
        out.append((t, cx, cy, r, d))
    return out

"""Stage 3, simple transients: measured objects that no reference catalogue explains.

Reads photometry's `objects.fits`, `catalog.fits`, `photometry.json` and inspect's `mask.fits`;
writes `candidates_simple.ecsv`, `candidates_simple.reg`, cutouts (`cutouts/simple_NNN.fits` with
image and mask planes, and a PNG of each) and `transients.json`.

An object is a candidate when (STDWeb's rules, its defaults):
* it has no flag but 0x02 (blended) and 0x100 (masked pixel in its footprint);
* it is no catalogue star within ½ FWHM — unless brighter than that star by `simple_mag_diff`;
* (Vizier catalogues: Gaia, PS1 above Dec −30, SkyMapper and DES below 0 — online only.)
Fixes of the false positives STDWeb users report:
* a second cross-match at 1 FWHM (split elongated stars, slightly offset detections);
* the shape pre-filter (0x800) only rejects bright objects (S/N > `simple_bright_shape_cut_sn`),
  where the shape is measured well — faint real transients are not lost to it;
* pixels masked as cosmic rays are dilated by `cosmic_dilate` px, and an object whose aperture
  touches them, or touches saturated pixels, is rejected;
* blends (0x02) near a catalogue star within 2·FWHM are rejected.
At most `simple_max_candidates`, brightest first. Candidates inside an alert region carry its id.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from .base import StageError, StageSettings
from .candidate_cone import inside, parse_center
from .products import guarded, StageRun, ds9_regions, finite_or_none, read_json, write_json, write_table, write_text

STAGE = "transients"
ALLOWED_FLAGS = 0x02 | 0x100
FLAG_OUTLIER = 0x800


def run(folder: Path, settings: StageSettings):
    return guarded(STAGE, Path(folder), settings, _transients)


def _load(run):
    folder = run.folder
    phot = read_json(folder / "photometry.json")
    if phot is None or not (folder / "objects.fits").is_file():
        raise StageError(f"{STAGE}: photometry has not run in this folder (no photometry.json / objects.fits)")
    obj = Table.read(folder / "objects.fits")
    cat = Table.read(folder / "catalog.fits") if (folder / "catalog.fits").is_file() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bits = fits.getdata(folder / "mask.fits").astype(np.uint8)
        wcs = WCS(fits.getheader(folder / "image.wcs"))
    return phot, obj, cat, bits, wcs


def _transients(run: StageRun, settings: StageSettings):
    p = settings.pipeline
    phot, obj, cat, bits, wcs = _load(run)
    state = read_json(run.folder / "inspect.json") or {}
    fwhm, pixscale = float(phot["fwhm"]), float(phot["pixscale_arcsec"])
    aper = float(phot.get("aperture") or fwhm)
    band = phot.get("band")
    n0 = len(obj)
    keep = np.ones(n0, bool)
    reasons: dict[str, int] = {}

    def drop(mask, why):
        mask = mask & keep
        reasons[why] = int(mask.sum())
        keep[mask] = False

    flags = np.asarray(obj["flags"])
    snr = np.asarray(obj["snr"], float)
    drop((flags & ~(ALLOWED_FLAGS | FLAG_OUTLIER | 0x2000)) != 0, "flagged")
    drop(((flags & FLAG_OUTLIER) != 0) & (snr > p.simple_bright_shape_cut_sn), "shape outlier (bright)")
    drop(touches(bits, obj, 8, p.cosmic_dilate, aper), "on a cosmic ray")
    drop(touches(bits, obj, 2, max(1, int(round(fwhm))), aper), "near saturated pixels")

    mag = np.asarray(obj["mag_calib"], float)
    if not np.any(np.isfinite(mag)):
        mag = np.asarray(obj["mag"], float)
        run.note("no zero point: candidate magnitudes are instrumental")
    # local catalogue: ½ FWHM, then 1 FWHM, then blends at 2 FWHM
    if cat is not None and len(cat):
        col = f"{band}mag" if band and f"{band}mag" in cat.colnames else _any_mag(cat)
        for radius, why in ((0.5, "catalogue star within ½ FWHM"), (1.0, "catalogue star within 1 FWHM")):
            drop(known_mask(obj, mag, cat, col, max(radius * fwhm, 1.0) * pixscale, p.simple_mag_diff),
                 why)
        near = near_catalog(obj, cat, 2 * fwhm * pixscale)
        drop(((flags & 0x02) != 0) & near, "blend near a catalogue star (2 FWHM)")
        # a fainter detection beside a brighter known star is a piece of it (split by the deblender
        # or by noise), not a new object
        drop(near_brighter(obj, mag, cat, col, 2 * fwhm * pixscale), "fainter than a catalogue star within 2 FWHM")
    else:
        run.note("no reference catalogue: every clean object is a candidate")
    drop(_on_a_wing(obj, keep, fwhm, aper), "on the wing of a much brighter star")
    # Vizier catalogues (online)
    vizier_check(run, settings, obj, mag, keep, drop, fwhm, pixscale, phot)
    if p.simple_skybot if p.simple_skybot is not None else p.skybot:
        skybot_check(run, settings, obj, keep, drop, state)
    if p.simple_others:  # STDWeb: detections present in other frames are not new
        for other in p.simple_others:
            seen = objects_of(run, other)
            if seen is not None and len(seen):
                drop(near_catalog(obj, seen, max(fwhm, 1.0) * pixscale), f"in {Path(other).name}")
    if p.simple_center:  # STDWeb's cone restriction of the search
        center = parse_center(p.simple_center)
        drop(~inside(obj["ra"], obj["dec"], center, p.simple_sr0),
             f"outside the simple_center cone ({p.simple_sr0:g}°)")

    cand = obj[keep]
    cmag = mag[keep]
    order = np.argsort(np.where(np.isfinite(cmag), cmag, 99.0))
    cand, cmag = cand[order], cmag[order]
    if len(cand) > p.simple_max_candidates:
        run.note(f"{len(cand)} candidates; the {p.simple_max_candidates} brightest are kept")
        cand, cmag = cand[:p.simple_max_candidates], cmag[:p.simple_max_candidates]
    run.log(f"{n0} objects → {len(cand)} candidates; rejected: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))

    rows = candidate_rows(cand, cmag, settings.regions, "simple")
    _write_candidates(run, rows, "candidates_simple", "red", fwhm * pixscale)
    _cutouts(run, rows, p)
    write_json(run.product("transients.json"), {"rejected": reasons, "n_objects": n0, "n_candidates": len(rows)})
    return run.result({"candidates_simple": rows, "n_candidates_simple": len(rows),
                       "candidates_simple_table": "candidates_simple.ecsv"})


# ---------------------------------------------------------------- pieces

def _on_a_wing(obj, keep, fwhm, aper, k=4.0, beta=2.5) -> np.ndarray:
    """Candidates whose flux is within `k` times the light a brighter star's wing (a Moffat profile of
    the frame's FWHM) puts into their aperture: a local background that does not follow the wing
    turns it into a spurious faint object (seen beside bright stars on the synthetic frames)."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    flux = np.asarray(obj["flux"], float)
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    norm = (beta - 1) / (math.pi * alpha ** 2) * math.pi * aper ** 2
    order = np.argsort(-flux)
    bright = order[: min(300, len(order))]
    tree = cKDTree(np.c_[x[bright], y[bright]])
    out = np.zeros(len(obj), bool)
    for i in np.nonzero(keep)[0]:
        for j in tree.query_ball_point([x[i], y[i]], 15 * fwhm):
            s = bright[j]
            if s == i or flux[s] <= flux[i]:
                continue
            d2 = (x[s] - x[i]) ** 2 + (y[s] - y[i]) ** 2
            wing = flux[s] / 0.7 * norm * (1 + d2 / alpha ** 2) ** (-beta)
            if flux[i] < k * wing:
                out[i] = True
                break
    return out


def _any_mag(cat):
    for c in cat.colnames:
        if c.endswith("mag") and not c.startswith("e_"):
            return c
    return None


def touches(bits, obj, bit: int, dilate: int, radius: float) -> np.ndarray:
    """Objects whose aperture touches pixels with `bit`, the mask dilated by `dilate` px."""
    from scipy.ndimage import binary_dilation

    m = (bits & bit) > 0
    if not m.any():
        return np.zeros(len(obj), bool)
    if dilate > 0:
        m = binary_dilation(m, iterations=int(dilate))
    h, w = m.shape
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2) <= radius ** 2
    out = np.zeros(len(obj), bool)
    for k, (x, y) in enumerate(zip(np.asarray(obj["x"], float), np.asarray(obj["y"], float))):
        ix, iy = int(round(x)), int(round(y))
        x1, x2, y1, y2 = max(0, ix - r), min(w, ix + r + 1), max(0, iy - r), min(h, iy + r + 1)
        if x1 >= x2 or y1 >= y2:
            continue
        sub = m[y1:y2, x1:x2]
        d = disk[y1 - (iy - r):y2 - (iy - r), x1 - (ix - r):x2 - (ix - r)]
        out[k] = bool(np.any(sub & d))
    return out


def known_mask(obj, mag, cat, col, radius_arcsec, mag_diff) -> np.ndarray:
    """Objects with a catalogue star within the radius, unless brighter than it by `mag_diff`."""
    from stdpipe import astrometry as sa

    oi, ci, _ = sa.spherical_match(obj["ra"], obj["dec"], cat["RAJ2000"], cat["DEJ2000"], radius_arcsec / 3600)
    out = np.zeros(len(obj), bool)
    if not len(oi):
        return out
    if col is not None:
        cm = np.asarray(cat[col], float)[ci]
        brighter = np.isfinite(cm) & np.isfinite(mag[oi]) & (mag[oi] < cm - mag_diff)
    else:
        brighter = np.zeros(len(oi), bool)
    explained = np.zeros(len(obj), bool)
    np.logical_or.at(explained, oi, ~brighter)
    return explained


def near_brighter(obj, mag, cat, col, radius_arcsec) -> np.ndarray:
    from stdpipe import astrometry as sa

    out = np.zeros(len(obj), bool)
    if col is None:
        return out
    oi, ci, _ = sa.spherical_match(obj["ra"], obj["dec"], cat["RAJ2000"], cat["DEJ2000"], radius_arcsec / 3600)
    cm = np.asarray(cat[col], float)[ci]
    hit = np.isfinite(cm) & np.isfinite(mag[oi]) & (cm < mag[oi])
    out[oi[hit]] = True
    return out


def near_catalog(obj, cat, radius_arcsec) -> np.ndarray:
    from stdpipe import astrometry as sa

    oi, _, _ = sa.spherical_match(obj["ra"], obj["dec"], cat["RAJ2000"], cat["DEJ2000"], radius_arcsec / 3600)
    out = np.zeros(len(obj), bool)
    out[oi] = True
    return out


def vizier_check(run, settings, obj, mag, keep, drop, fwhm, pixscale, phot):
    from ..sources import OfflineError, SourceError
    from ..sources import catalogs as scat

    names = scat.transient_catalogs(settings.catalog, float(phot["dec"]))
    if settings.catalog.source != "vizier" and settings.catalog.transient_catalogs == ["auto"]:
        return  # a local catalogue is the reference; Vizier cross-checks only when asked or when Vizier is the source
    if not names or not keep.any():
        return
    for name in names:
        try:
            c = scat.vizier_catalog(name, float(phot["ra"]), float(phot["dec"]), float(phot["radius_deg"]) * 1.05,
                                    offline=settings.offline, cache_dir=settings.cache_dir,
                                    timeout=settings.catalog.timeout_seconds, retries=settings.catalog.retries,
                                    url=settings.catalog.vizier_url, log=run.log)
        except OfflineError as e:
            run.note(f"known-object check against {e.source} not done: offline")
            continue
        except SourceError as e:
            run.note(f"known-object check against {e.source} not done: {e.message}")
            continue
        if not len(c.table):
            continue
        col = f"{phot.get('band')}mag" if f"{phot.get('band')}mag" in c.table.colnames else _any_mag(c.table)
        drop(known_mask(obj, mag, c.table, col, max(fwhm, 1.0) * pixscale, settings.pipeline.simple_mag_diff),
             f"in {name}")


def objects_of(run, other) -> Table | None:
    """The objects of another frame: its result or work folder (objects.fits), or an objects table."""
    path = Path(other)
    if path.is_dir():
        path = path / "objects.fits"
    try:
        t = Table.read(path)
    except (OSError, ValueError) as e:
        run.note(f"simple_others: {other} cannot be read ({e}); not used")
        return None
    if not {"ra", "dec"} <= set(t.colnames):
        run.note(f"simple_others: {other} has no ra/dec columns; not used")
        return None
    return Table({"RAJ2000": t["ra"], "DEJ2000": t["dec"]})


def cutout_radius(p) -> int:
    """Half the cutout's side: STDWeb's cutout_size when set, else cutout_radius."""
    return int(p.cutout_size) // 2 if p.cutout_size else p.cutout_radius


def skybot_check(run, settings, obj, keep, drop, state):
    if not keep.any():
        return
    if settings.offline:
        run.note("SkyBoT (known asteroids) check not done: offline")
        return
    if not state.get("time_mid"):
        run.note("SkyBoT check not done: the frame has no observation time")
        return
    from stdpipe import astrometry as sa

    sub = obj[keep]
    sub["stdd_id"] = np.nonzero(keep)[0]
    try:
        from astropy.coordinates import SkyCoord
        from astropy.time import Time
        from astroquery.imcce import Skybot
        import astropy.units as u

        ra0, dec0, sr0 = sa.get_objects_center(sub)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = Skybot.cone_search(SkyCoord(ra0, dec0, unit="deg"), (sr0 + 20 / 3600) * u.deg, Time(state["time_mid"]))
    except Exception as e:  # SkyBoT answers "no object" with an error too; record what it said
        if "No solar system object" in str(e):
            run.log("SkyBoT: no known solar-system object in the field")
            return
        run.note(f"SkyBoT check failed: {type(e).__name__}: {e}")
        return
    oi, _, _ = sa.spherical_match(sub["ra"], sub["dec"], x["RA"], x["DEC"], 10 / 3600)
    hit = np.zeros(len(obj), bool)
    hit[np.asarray(sub["stdd_id"])[oi]] = True
    drop(hit, "known asteroid (SkyBoT)")


def candidate_rows(cand: Table, mag, regions, kind: str) -> list[dict]:
    """The candidate dicts of result.json, with the ids of the alert regions containing them."""
    from stdpipe import astrometry as sa

    rows = []
    for k, r in enumerate(cand):
        err = r["mag_calib_err"] if "mag_calib_err" in cand.colnames and np.isfinite(r["mag_calib_err"]) else r["magerr"]
        entry = {"id": f"{kind}_{k + 1:03d}", "ra": round(float(r["ra"]), 7), "dec": round(float(r["dec"]), 7),
                 "x": round(float(r["x"]), 3), "y": round(float(r["y"]), 3),
                 "mag": finite_or_none(mag[k]), "mag_err": finite_or_none(err),
                 "snr": finite_or_none(r["snr"] if "snr" in cand.colnames else r["flux"] / r["fluxerr"]),
                 "flags": int(r["flags"]), "regions": []}
        for reg in regions:
            d = float(sa.spherical_distance(reg.ra, reg.dec, entry["ra"], entry["dec"]))
            if d <= reg.radius_deg:
                entry["regions"].append(reg.id)
        rows.append(entry)
    return rows


def _write_candidates(run, rows, name, color, fwhm_arcsec):
    cols = ("id", "ra", "dec", "x", "y", "mag", "mag_err", "snr", "flags")
    t = Table({c: [r[c] if r[c] is not None else np.nan for r in rows] for c in cols},
              dtype=[str, float, float, float, float, float, float, float, int] if rows else None)
    if not rows:
        t = Table(names=cols, dtype=[str, float, float, float, float, float, float, float, int])
    t["regions"] = [",".join(r["regions"]) for r in rows] if rows else np.array([], dtype=str)
    write_table(run.product(f"{name}.ecsv"), t)
    write_text(run.product(f"{name}.reg"), ds9_regions(
        [{"ra": r["ra"], "dec": r["dec"], "name": r["id"]} for r in rows], color=color,
        radius_arcsec=max(2.0, 1.5 * fwhm_arcsec)))


def _cutouts(run, rows, p):
    from astropy.io import fits as afits

    if not rows or p.max_cutouts == 0:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = afits.getdata(run.folder / "image.fits").astype(np.float32)
        header = afits.getheader(run.folder / "image.fits")
        bits = afits.getdata(run.folder / "mask.fits")
        wcs = WCS(afits.getheader(run.folder / "image.wcs"))
    for r in rows[:p.max_cutouts]:
        planes = {"image": image, "mask": bits}
        write_cutout(run, f"cutouts/{r['id']}", r, planes, header, wcs, cutout_radius(p))
        r["cutout"] = f"cutouts/{r['id']}.png"


def write_cutout(run, stem: str, row: dict, planes: dict, header, wcs, radius: int) -> None:
    """`stem`.fits (one extension per plane, via STDPipe) and `stem`.png (the planes side by side)."""
    from stdpipe import cutouts

    from .products import atomic_path

    cand = {"x": row["x"], "y": row["y"], "ra": row["ra"], "dec": row["dec"], "mag": row.get("mag") or np.nan,
            "flags": row.get("flags", 0), "id": row["id"]}
    first = next(iter(planes))
    extra = {k: v for k, v in planes.items() if k != first}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = cutouts.get_cutout(planes[first], cand, radius, header=header, wcs=wcs, **extra)
        with atomic_path(run.folder / f"{stem}.fits") as tmp:
            cutouts.write_cutout(cut, str(tmp))
    run.product(f"{stem}.fits")
    _png(run, f"{stem}.png", [cut[k] for k in planes if k in cut], list(k for k in planes if k in cut))


def _png(run, rel: str, arrays, names) -> None:
    """Planes side by side, each stretched to its own 1–99.5 percentile range (fast: no axes)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import image as mimage

    from .products import atomic_path

    tiles = []
    for a, name in zip(arrays, names):
        a = np.asarray(a, float)
        if name == "mask":
            v = (a > 0).astype(float)
        else:
            fin = a[np.isfinite(a)]
            lo, hi = (np.percentile(fin, [1, 99.5]) if fin.size else (0, 1))
            v = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
            v[~np.isfinite(v)] = 0
        v = np.kron(v, np.ones((4, 4)))  # 4x nearest-neighbour upscale
        tiles.append(v)
        tiles.append(np.ones((v.shape[0], 4)))
    strip = np.hstack(tiles[:-1])
    with atomic_path(run.folder / rel) as tmp:
        mimage.imsave(tmp, strip[::-1], cmap="gray", format="png")
    run.product(rel)

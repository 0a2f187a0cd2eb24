"""Stage 2, photometry: detection, astrometry, zero point with colour term, detection limit, targets.

Reads inspect's `image.fits`, `mask.fits`, `inspect.json`; writes `objects.fits` (every measured
object: ra, dec, mag_calib, mag_calib_err, flags, ...), `catalog.fits` (the reference stars used),
`image.wcs` (the final WCS), `zeropoint.json` (the model as plain parameters, see zeropoint.py),
`targets.ecsv`, `objects.reg`, `photometry.json` (what later stages read) and plots.

Steps (STDWeb's, with its defaults): SExtractor detection at `detection_thresh` σ on the masked
image; IsolationForest pre-filter flagging shape outliers (0x800); FWHM as the median 2·FLUX_RADIUS
of clean bright stars; aperture photometry in `rel_aper`·FWHM (at least `min_aper_pixels`) with a
local annulus `rel_bg1`..`rel_bg2`·FWHM; astrometry (astrometry.py: checked, refined, repaired or
blind-solved); robust zero-point fit with spatial polynomial and colour term; limit; forced
photometry of every target.

Why this module is long: the stage is STDWeb's photometry sequence with the state it threads through
(objects, FWHM, apertures, WCS, catalogue, zero-point model, limit, targets); the self-contained
parts are already their own modules (astrometry.py, zeropoint.py, products.py, background.py), and
what remains is the sequence itself.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from . import astrometry as astro
from . import background
from . import filters
from . import targets as target_list
from .base import StageError, StageSettings
from .inspect import frame_geometry
from .blends import flag_neighbours
from .color_diagnostics import color_diagnostics
from .measure import measure
from .products import (guarded, StageRun, ds9_regions, finite_or_none, new_figure, read_json, save_figure, write_fits,
                       write_json, write_table, write_text)
from .zeropoint import ZeroPointModel

STAGE = "photometry"
FLAG_OUTLIER = 0x800


def run(folder: Path, settings: StageSettings):
    return guarded(STAGE, Path(folder), settings, _photometry)


def load_frame(folder: Path, stage: str):
    """(image, header, mask bool, mask bits, inspect state) from inspect's products."""
    state = read_json(folder / "inspect.json")
    if state is None or not (folder / "image.fits").is_file():
        raise StageError(f"{stage}: inspect has not run in this folder (no inspect.json / image.fits)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = fits.getdata(folder / "image.fits").astype(np.float64)
        header = fits.getheader(folder / "image.fits")
        bits = fits.getdata(folder / "mask.fits").astype(np.uint8)
    return image, header, bits > 0, bits, state


def _photometry(run: StageRun, settings: StageSettings):
    p = settings.pipeline
    image, header, mask, bits, state = load_frame(run.folder, STAGE)
    shape = image.shape
    gain = state.get("gain")
    band = state["band"]
    tmp = str(run.tmpdir)

    # ---- detection
    from stdpipe import photometry as sp
    from stdpipe import photometry_measure as spm

    # pixels without data (and the user's custom mask, 32) are hidden from detection; saturated cores and
    # cosmic-ray hits stay visible (flagged through the mask, not fragmented or lost when a star is mistaken
    # for a cosmic ray)
    detect_mask = (bits & np.uint8(1 | 4 | 16 | 32)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sp.get_objects_sextractor(image, mask=mask, mask_detect=detect_mask, thresh=p.detection_thresh,
                                        aper=p.initial_aper, gain=gain or 0.0, edge=max(4, int(p.initial_aper)),
                                        minarea=p.minarea, sn=3.0, bg_size=_bg_size(p.bg_size, shape),
                                        r0=p.initial_r0,
                                        extra_params=["MAG_AUTO", "ISOAREA_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE",
                                                      "ERRX2WIN_IMAGE", "ERRY2WIN_IMAGE", "NUMBER"],
                                        checkimages=["SEGMENTATION"], _tmpdir=tmp, verbose=run.log)
    obj, segm = res if isinstance(res, list) else (res, None)
    if p.write_segmentation and segm is not None:
        write_fits(run.product("segmentation.fits"), np.asarray(segm, dtype=np.int32))
    if obj is None:
        raise StageError(f"{STAGE}: SExtractor (source-extractor) failed; see photometry.log")
    # windowed centroids are the accurate ones (SExtractor manual); keep the isophotal ones where
    # the windowed iteration did not converge
    xw, yw = np.asarray(obj["XWIN_IMAGE"], float) - 1, np.asarray(obj["YWIN_IMAGE"], float) - 1
    okw = np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - obj["x"], yw - obj["y"]) < 2.0)
    obj["x"] = np.where(okw, xw, obj["x"])
    obj["y"] = np.where(okw, yw, obj["y"])
    for c, cw in (("xerr", "ERRX2WIN_IMAGE"), ("yerr", "ERRY2WIN_IMAGE")):
        obj[c] = np.where(okw, np.sqrt(np.abs(np.asarray(obj[cw], float))), obj[c])
    obj.remove_columns(["XWIN_IMAGE", "YWIN_IMAGE", "ERRX2WIN_IMAGE", "ERRY2WIN_IMAGE"])
    n0 = len(obj)
    good = np.isfinite(obj["x"]) & (obj["fwhm"] > 0) & (obj["MAG_AUTO"] < 90) & (obj["ISOAREA_IMAGE"] >= p.minarea)
    obj = obj[good]
    run.log(f"{n0} detections, {len(obj)} after dropping bad MAG_AUTO / FWHM / area")
    if len(obj) < 3:
        raise StageError(f"{STAGE}: only {len(obj)} objects detected at {p.detection_thresh}σ; "
                         "nothing to calibrate (empty or out-of-focus frame?)")
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)

    if p.prefilter_outliers and len(obj) >= 30:
        _prefilter(run, obj)

    fwhm0 = measured_fwhm(run, obj)
    if p.fwhm_override:
        fwhm = float(p.fwhm_override)
        run.log(f"FWHM set by fwhm_override: {fwhm:.2f} px (measured {fwhm0:.2f} px)")
    else:
        fwhm = fit_fwhm(run, image, mask, obj, fwhm0)
    aper = max(p.rel_aper * fwhm, p.min_aper_pixels)
    run.log(f"FWHM {fwhm:.2f} px; aperture radius {aper:.2f} px, annulus {p.rel_bg1 * fwhm:.1f}..{p.rel_bg2 * fwhm:.1f} px")

    if p.optimal_extraction:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = spm.measure_objects(obj, image, aper=aper / fwhm, fwhm=fwhm, bkgann=(p.rel_bg1, p.rel_bg2),
                                      mask=mask, gain=gain, bg_size=_bg_size(p.bg_size, shape), optimal=True,
                                      sn=None, keep_negative=True, verbose=False)
    else:
        obj = measure(obj, image, mask, fwhm=fwhm, aper=aper, bkgann=(p.rel_bg1 * fwhm, p.rel_bg2 * fwhm),
                      gain=gain, bg_size=_bg_size(p.bg_size, shape), segm=segm,
                      ids=np.asarray(obj["NUMBER"]) if segm is not None else None)
    ok = np.isfinite(obj["flux"]) & np.isfinite(obj["fluxerr"]) & (obj["fluxerr"] > 0) & (obj["flux"] > 0)
    obj = obj[ok]
    obj = obj[obj["flux"] / obj["fluxerr"] >= p.sn]
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)
    obj["snr"] = obj["flux"] / obj["fluxerr"]
    run.log(f"{len(obj)} objects with S/N >= {p.sn}")
    if len(obj) < 3:
        raise StageError(f"{STAGE}: only {len(obj)} objects with S/N >= {p.sn}")
    if p.blend_filter:  # crowded fields: contaminated detections flagged, out of the WCS and zero-point fits
        n_nb = flag_neighbours(obj, fwhm)
        run.log(f"{n_nb} object(s) with a comparable neighbour within 2 FWHM (flag 0x4000)")

    # ---- astrometry and the reference catalogue
    sol, cat, catinfo = _astrometry(run, settings, obj, header, state, fwhm, shape)
    wcs = sol.wcs
    obj["ra"], obj["dec"] = astro.radec(wcs, obj)
    ra0, dec0, radius, pixscale, footprint = frame_geometry(wcs, shape)
    fwhm_arcsec = fwhm * pixscale
    whdr = wcs.to_header(relax=True)
    write_fits(run.product("image.wcs"), None, whdr)
    run.log(f"WCS: {sol.method}; {sol.check}")

    # ---- zero point
    zp_model, m, calib_notes, calcat = _calibrate(run, p, obj, cat, band, fwhm, pixscale, aper)
    if p.diagnose_color and zp_model is not None:
        color_diagnostics(run, obj, cat, zp_model.catalog_band,
                          (p.sr_override or match_radius_arcsec(fwhm, pixscale)) / 3600, 0)
    summary_zp = {"zp": None, "zp_err": None, "zp_scatter": None, "color_term": None, "color_term_err": None,
                  "color": None, "catalog_band": None, "n_stars_calib": 0, "zeropoint_model": None}
    obj["mag_calib"] = np.full(len(obj), np.nan)
    obj["mag_calib_err"] = np.full(len(obj), np.nan)
    obj["cat_mag"] = np.full(len(obj), np.nan)
    obj["cat_color"] = np.full(len(obj), np.nan)
    mag_limit = mag_limit_sn = None
    if zp_model is not None:
        cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
        zp_c = float(zp_model.zp([cx], [cy], [-10.0])[0])
        zp_ce = float(math.hypot(zp_model.zp_err([cx], [cy], [-10.0])[0], 0.0))
        used = m["idx"]
        resid = (m["zero"] - m["zero_model"])[used]
        scatter = float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if used.sum() else None
        # catalogue magnitude and colour of matched objects
        oidx, cidx = m["oidx"], m["cidx"]
        obj["cat_mag"][oidx] = m["cmag"]
        if zp_model.color:
            c1, c2 = zp_model.color.split("-")
            obj["cat_color"][oidx] = np.asarray(calcat[f"{c1}mag"], float)[cidx] - np.asarray(calcat[f"{c2}mag"], float)[cidx]
        flag_catalog_blends(obj, cat, zp_model.catalog_band, catinfo["match_radius"] / 3600,
                             2 * fwhm * pixscale / 3600)
        obj["mag_calib"] = zp_model.calibrate(obj["x"], obj["y"], obj["mag"], obj["cat_color"])
        obj["mag_calib_err"] = np.hypot(obj["magerr"], zp_model.zp_err(obj["x"], obj["y"], obj["mag"]))
        summary_zp = {"zp": round(zp_c, 5), "zp_err": round(zp_ce, 5),
                      "zp_scatter": round(scatter, 5) if scatter is not None else None,
                      "color_term": finite_or_none(zp_model.color_term),
                      "color_term_err": finite_or_none(zp_model.color_term_err), "color": zp_model.color,
                      "catalog_band": zp_model.catalog_band, "n_stars_calib": int(used.sum()),
                      "zeropoint_model": "zeropoint.json"}
        write_json(run.product("zeropoint.json"), zp_model.to_json())
        mag_limit, mag_limit_sn = _limits(run, obj, zp_model, p.sn, shape)
        run.log(f"zero point {zp_c:.4f} ± {zp_ce:.4f} (scatter {scatter}), {int(used.sum())} stars; "
                f"limit {mag_limit} (S/N model {mag_limit_sn})")
    for n in calib_notes:
        run.note(n)

    # ---- targets
    targets = _targets(run, p, state, image, mask, gain, wcs, fwhm, aper, zp_model, shape, segm)

    # ---- products
    keep = [c for c in ("ra", "dec", "x", "y", "xerr", "yerr", "flux", "fluxerr", "mag", "magerr", "mag_calib",
                        "mag_calib_err", "snr", "flags", "fwhm", "a", "b", "theta", "bg", "bg_local",
                        "bg_fluxerr", "cat_mag", "cat_color", "FLUX_RADIUS", "MAG_AUTO") if c in obj.colnames]
    out = obj[keep]
    out.meta = {"FWHM": fwhm, "APER": aper, "ZP": summary_zp["zp"], "BAND": band}
    write_table(run.product("objects.fits"), out)
    write_table(run.product("objects.parquet"), out)  # STDWeb's objects product
    write_table(run.product("catalog.fits"), cat)
    rows = [{"ra": r["ra"], "dec": r["dec"]} for r in out[:5000]]
    write_text(run.product("objects.reg"), ds9_regions(rows, color="green", radius_arcsec=max(1.0, fwhm_arcsec), label=None))
    state_out = {"fwhm": fwhm, "aperture": aper, "pixscale_arcsec": pixscale, "band": band,
                 "catalog_source": catinfo["source"], "ra": ra0, "dec": dec0, "radius_deg": radius,
                 "match_radius_arcsec": catinfo["match_radius"], "zp": summary_zp["zp"],
                 "mag_limit": mag_limit, "footprint": footprint}
    state_out["targets"] = targets  # as measured (centroided with centroid_targets), for later stages
    write_json(run.product("photometry.json"), state_out)
    background.submit(run, "photometry plots", _plots, run.folder, m, obj, cat, shape, fwhm_arcsec, p.sn,
                      zp_model is not None)

    summary = {"fwhm_pixels": round(fwhm, 4), "fwhm_arcsec": round(fwhm_arcsec, 4), "aperture_pixels": round(aper, 4),
               **summary_zp, "catalog": catinfo["source"], "mag_limit": finite_or_none(mag_limit),
               "mag_limit_sn": finite_or_none(mag_limit_sn), "n_objects": len(obj),
               "wcs_rms_arcsec": finite_or_none(sol.check.rms_arcsec), "wcs_method": sol.method,
               "wcs_n_matches": sol.check.n_matches, "objects_table": "objects.fits", "targets": targets,
               # the refined WCS moves the frame a little: keep the footprint the daemon matches on current
               "ra": ra0, "dec": dec0, "radius_deg": radius, "footprint": footprint,
               "pixscale_arcsec": round(pixscale, 6)}
    return run.result(summary)


# ---------------------------------------------------------------- pieces

def _bg_size(bg_size: int, shape) -> int:
    """The background mesh: the configured size, but at least 4 cells across small frames."""
    return int(max(32, min(bg_size, min(shape) // 4)))


def match_radius_arcsec(fwhm: float, pixscale: float) -> float:
    """Object-catalogue matching radius: half the FWHM, but at least one pixel (undersampled frames)."""
    return max(0.5 * fwhm, 1.0) * pixscale


def _prefilter(run, obj):
    from stdpipe import artefacts

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            good = artefacts.filter_detections(obj, method="catalog", classifier="isolation", verbose=False)
    except Exception as e:  # the classifier needs enough varied objects; without it, nothing is flagged
        run.note(f"outlier pre-filter not applied: {type(e).__name__}: {e}")
        return
    good = np.asarray(good, dtype=bool)
    obj["flags"][~good] |= FLAG_OUTLIER
    run.log(f"pre-filter: {int((~good).sum())} of {len(obj)} objects flagged as shape outliers (0x800)")


def measured_fwhm(run, obj) -> float:
    """The mode (narrowest quartile window) of 2·FLUX_RADIUS of clean bright objects.

    The median of STDWeb is pulled up by blends in crowded fields (7 px instead of 1.7 px on the
    2MASS Galactic-centre frame); the mode is not."""
    from stdpipe import photometry as sp

    sn = 1.0 / np.maximum(np.asarray(obj["magerr"], float), 1e-6)
    fr = 2.0 * np.asarray(obj["FLUX_RADIUS"], float)
    flags = np.asarray(obj["flags"])
    for good in ((flags == 0) & (sn > 20), (flags == 0) & (sn > 10), ((flags & ~0x03) == 0) & (sn > 10),
                 (flags & ~0x03) == 0, np.ones(len(obj), bool)):
        v = sp.estimate_fwhm(fr, good=good, fwhm_range=(0.5, 50.0), min_candidates=5)
        if np.isfinite(v):
            return float(v)
    sel = np.isfinite(fr) & (fr > 0)
    if sel.sum() >= 1:
        run.note(f"FWHM from only {int(sel.sum())} objects (too few clean bright stars)")
        return float(np.median(fr[sel]))
    raise StageError(f"{STAGE}: cannot estimate the FWHM (no usable object)")


def fit_fwhm(run, image, mask, obj, fwhm0: float) -> float:
    """FWHM from Moffat fits to bright isolated unflagged stars (median), or `fwhm0` when that fails.

    2·FLUX_RADIUS (STDWeb's estimate, `fwhm0`) is the half-light diameter, which for real (Moffat)
    profiles is 20–35 % larger than the FWHM; the aperture and the limit are defined on the FWHM."""
    from scipy.optimize import least_squares

    if fwhm0 < 2.0:
        return fwhm0  # undersampled: too few pixels for a profile fit
    flags = np.asarray(obj["flags"])
    sn = 1.0 / np.maximum(np.asarray(obj["magerr"], float), 1e-6)
    x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    sel = np.where((flags == 0) & (sn > 30))[0]
    if len(sel) < 5:
        return fwhm0
    # isolated: no other detection within 3·fwhm0
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[x, y])
    counts = np.array([len(tree.query_ball_point([x[i], y[i]], 3 * fwhm0)) for i in sel])
    sel = sel[counts == 1]
    sel = sel[np.argsort(-sn[sel])][:60]
    r = int(math.ceil(2.5 * fwhm0))
    h, w = image.shape
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    fits_ = []
    for i in sel:
        ix, iy = int(round(x[i])), int(round(y[i]))
        if ix - r < 0 or iy - r < 0 or ix + r >= w or iy + r >= h:
            continue
        stamp = image[iy - r:iy + r + 1, ix - r:ix + r + 1]
        if mask[iy - r:iy + r + 1, ix - r:ix + r + 1].any() or not np.all(np.isfinite(stamp)):
            continue
        bg = np.median(np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]]))
        data = stamp - bg
        amp0 = data.max()
        if amp0 <= 0:
            continue
        dx0, dy0 = x[i] - ix, y[i] - iy

        def resid(q):
            a, cx, cy, alpha, beta = q
            return (a * (1 + ((xx - cx) ** 2 + (yy - cy) ** 2) / alpha ** 2) ** (-beta) - data).ravel()

        alpha0 = fwhm0 / 2.0
        try:
            res = least_squares(resid, [amp0, dx0, dy0, alpha0, 2.5],
                                bounds=([0, -2, -2, 0.2, 1.1], [10 * amp0, 2, 2, 5 * fwhm0, 20]), max_nfev=200)
        except ValueError:
            continue
        if not res.success:
            continue
        _, _, _, alpha, beta = res.x
        fits_.append(2 * alpha * math.sqrt(2 ** (1 / beta) - 1))
    if len(fits_) < 5:
        return fwhm0
    f = float(np.median(fits_))
    run.log(f"FWHM from Moffat fits to {len(fits_)} stars: {f:.2f} px (2·FLUX_RADIUS {fwhm0:.2f} px)")
    if not (0.4 * fwhm0 < f < 1.5 * fwhm0):
        return fwhm0
    return f


def _catalog(run, settings, ra, dec, radius, band):
    from ..sources import SourceError
    from ..sources import catalogs as scat

    try:
        cat = scat.get_catalog(settings.catalog, ra, dec, radius, band=band, offline=settings.offline,
                               cache_dir=settings.cache_dir, log=run.log)
    except SourceError as e:
        raise StageError(f"{STAGE}: reference catalogue {e}") from None
    for n in cat.notes:
        run.note(n)
    return cat


def _astrometry(run, settings, obj, header, state, fwhm, shape):
    p = settings.pipeline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w0 = WCS(header).celestial if state.get("wcs_state") == "present" else None
        except Exception:
            w0 = None
    if settings.catalog.source == "local" and not settings.catalog.files:
        # nothing to check the WCS or calibrate against: instrumental photometry on the header WCS
        if w0 is None:
            raise StageError(f"{STAGE}: the frame has no WCS and no reference catalogue is configured to solve "
                             "it against (catalog.files, or stdd process --catalog)")
        run.note("no reference catalogue configured (catalog.files): the header WCS is used unchecked and "
                 "magnitudes are instrumental (no zero point)")
        empty = Table({"RAJ2000": np.zeros(0), "DEJ2000": np.zeros(0)})
        ra, dec, radius, pixscale, _ = frame_geometry(w0, shape)
        sol = astro.Solution(w0, "header WCS (unchecked)", astro.WcsCheck(0, 0.0, None, len(obj)))
        return sol, empty, {"source": None,
                            "match_radius": settings.pipeline.sr_override or match_radius_arcsec(fwhm, pixscale)}
    candidates = astro.header_candidates(w0, shape, header) if w0 is not None else []
    reasons = []
    tried_cones = {}

    def catalog_for(ra, dec, radius):
        key = (round(ra, 3), round(dec, 3), round(radius, 3)) if ra is not None else None
        if key not in tried_cones:
            tried_cones[key] = _catalog(run, settings, ra, dec, radius, state["band"])
        return tried_cones[key]

    for label, w in candidates:
        ra, dec, radius, pixscale, _ = frame_geometry(w, shape)
        if not (np.isfinite(ra) and np.isfinite(dec)):
            continue
        cat = catalog_for(ra, dec, radius * 1.1 + 2.0 / 60)
        if len(cat.table) < 3:
            reasons.append(f"{label}: only {len(cat.table)} catalogue stars in its cone")
            continue
        match_r = max(1.0 * fwhm * pixscale, 1.0)
        max_rms = max(p.wcs_max_rms_arcsec, 0.5 * pixscale)
        mag_col = astro.pick_mag_column(cat.table, state["band"])
        before = astro.check_wcs(w, obj, cat.table, max(3 * fwhm * pixscale, 5.0), shape)
        as_is = astro.check_wcs(w, obj, cat.table, match_r, shape)
        run.log(f"{label} as is: {as_is}")
        if p.refine_wcs:
            refined = astro.scamp_refine(obj, cat.table, w, sr_arcsec=max(2 * fwhm * pixscale, 2.0), order=p.wcs_order,
                                         mag_col=mag_col, tmpdir=run.tmpdir, log=run.log,
                                         isolation_radius_deg=2 * fwhm * pixscale / 3600 if p.blend_filter else None)
            if refined is not None:
                chk = astro.check_wcs(refined, obj, cat.table, match_r, shape)
                run.log(f"{label} refined by SCAMP: {chk}")
                if (as_is.good and as_is.rms_arcsec <= max_rms and chk.good
                        and chk.rms_arcsec > 0.9 * as_is.rms_arcsec):
                    run.log(f"SCAMP does not improve the {label}; keeping it")
                elif chk.good and chk.rms_arcsec <= max_rms:
                    if label != "header WCS":
                        run.note(f"the header WCS does not match the catalogue ({'; '.join(reasons)}); "
                                 f"repaired: {label} refined by SCAMP")
                    sol = astro.Solution(refined, f"{label} refined by SCAMP", chk)
                    return sol, *_final_catalog(run, settings, sol, shape, fwhm, cat, catalog_for)
                reasons.append(f"{label} + SCAMP: {chk.n_matches} matches "
                               f"({chk.n_expected_random:.1f} by chance), rms {chk.rms_arcsec}")
            else:
                reasons.append(f"{label}: SCAMP found no solution")
        chk = as_is
        if chk.good and chk.rms_arcsec <= max_rms:
            if label != "header WCS":
                run.note(f"the header WCS does not match the catalogue ({'; '.join(reasons)}); repaired: {label}")
            sol = astro.Solution(w, label, chk)
            return sol, *_final_catalog(run, settings, sol, shape, fwhm, cat, catalog_for)
        reasons.append(f"{label} as is: {chk.n_matches} matches ({chk.n_expected_random:.1f} by chance)"
                       f" within {match_r:.1f}\" (before refinement {before.n_matches})")

    # ---- blind matching
    why = "; ".join(reasons) if reasons else "the frame has no celestial WCS"
    if not p.blind_match:
        raise StageError(f"{STAGE}: no usable WCS ({why}) and pipeline.blind_match is off")
    hint = None
    if w0 is not None:
        hint = (state.get("ra"), state.get("dec"))
    if state.get("hint_ra") is not None:
        hint = (state["hint_ra"], state["hint_dec"])
    if hint is None or hint[0] is None:
        if settings.catalog.source == "local":
            hint = None  # a local catalogue: the whole file is the search area
        else:
            raise StageError(f"{STAGE}: no usable WCS ({why}), and no pointing in the header to blind-match around")
    scale = _scale_range(settings, state, w0)
    if hint is not None:
        cat = catalog_for(hint[0], hint[1], p.blind_match_sr0)
    else:
        cat = catalog_for(None, None, None)
    if len(cat.table) < 10:
        raise StageError(f"{STAGE}: no usable WCS ({why}); blind matching impossible: only {len(cat.table)} "
                         f"catalogue stars around {_fmt_hint(hint)}")
    mag_col = astro.pick_mag_column(cat.table, state["band"])
    run.log(f"blind match: {len(cat.table)} catalogue stars around {_fmt_hint(hint)} "
            f"({state.get('hint_source') or 'no pointing'}), radius {p.blind_match_sr0:g} deg, "
            f"pixel scale {scale[0]:g}-{scale[1]:g} arcsec/px")
    index_dir = run.folder / "astrometry_index"
    w = astro.blind_solve(obj, cat.table, shape, mag_col=mag_col, hint=hint, radius_deg=p.blind_match_sr0,
                          scale_range=scale, folder=index_dir, tmpdir=run.tmpdir, log=run.log)
    import shutil

    shutil.rmtree(index_dir, ignore_errors=True)
    if w is None:
        raise StageError(f"{STAGE}: no usable WCS ({why}); blind matching with {len(cat.table)} catalogue stars "
                         f"around {_fmt_hint(hint)} found no solution")
    ra, dec, radius, pixscale, _ = frame_geometry(w, shape)
    cat = catalog_for(ra, dec, radius * 1.1 + 2.0 / 60)
    match_r = max(fwhm * pixscale, 1.0)
    refined = astro.scamp_refine(obj, cat.table, w, sr_arcsec=max(2 * fwhm * pixscale, 2.0), order=p.wcs_order,
                                 mag_col=mag_col, tmpdir=run.tmpdir, log=run.log,
                                 isolation_radius_deg=2 * fwhm * pixscale / 3600 if p.blend_filter else None) \
        if p.refine_wcs else None
    best, label = w, "blind match (astrometry.net)"
    chk = astro.check_wcs(w, obj, cat.table, match_r, shape)
    if refined is not None:
        chk2 = astro.check_wcs(refined, obj, cat.table, match_r, shape)
        if chk2.good and (chk2.rms_arcsec or 1e9) <= (chk.rms_arcsec or 1e9):
            best, label, chk = refined, "blind match (astrometry.net) refined by SCAMP", chk2
    if not chk.good:
        raise StageError(f"{STAGE}: no usable WCS ({why}); the blind solution does not match the catalogue "
                         f"({chk.n_matches} matches, {chk.n_expected_random:.1f} by chance)")
    run.note(f"WCS repaired: {why}; solved by {label}")
    sol = astro.Solution(best, label, chk)
    return sol, *_final_catalog(run, settings, sol, shape, fwhm, cat, catalog_for)


def _fmt_hint(hint):
    return "the catalogue's whole area" if hint is None else f"RA {hint[0]:.4f} Dec {hint[1]:+.4f}"


def _scale_range(settings, state, w0):
    p = settings.pipeline
    prof = settings.instrument
    s = prof.pixel_scale_arcsec if prof is not None and prof.pixel_scale_arcsec else None
    lo = p.blind_match_ps_lo or (0.8 * s if s else 0.2)  # STDWeb's 0.2-4 ″/px unless the profile knows
    hi = p.blind_match_ps_up or (1.25 * s if s else 4.0)
    return (lo, hi) if hi > lo else (hi, lo)


def _final_catalog(run, settings, sol, shape, fwhm, cat, catalog_for):
    """The catalogue for the solved frame (its own cone) and how objects are matched to it."""
    ra, dec, radius, pixscale, _ = frame_geometry(sol.wcs, shape)
    final = catalog_for(ra, dec, radius * 1.05 + 1.0 / 60)
    from ..sources.catalogs import cone

    table = cone(final.table, ra, dec, radius * 1.05)
    return table, {"source": final.source,
                   "match_radius": settings.pipeline.sr_override or match_radius_arcsec(fwhm, pixscale)}


def _calibrate(run, p, obj, cat: Table, band: str, fwhm: float, pixscale: float, aper: float):
    """(ZeroPointModel or None, match dict or None, notes)."""
    from stdpipe import pipeline as spipe

    notes = []
    bands = [c[:-3] for c in cat.colnames if c.endswith("mag") and not c.startswith("e_")]
    cat_band = band if band in bands else filters.nearest_band(band, bands)
    if not len(cat):
        return None, None, notes, None
    if cat_band is None:
        notes.append("the reference catalogue has no magnitudes; no photometric calibration (zp is null)")
        return None, None, notes, None
    if cat_band != band:
        notes.append(f"the reference catalogue has no {band} magnitudes; calibrated against {cat_band}mag "
                     "(the nearest band it has)")
    col = f"{cat_band}mag"
    c = cat[np.isfinite(np.asarray(cat[col], float))]
    faint = p.cat_mag_upper if p.cat_mag_upper is not None else p.cat_limit
    c = c[np.asarray(c[col], float) <= faint]
    if p.cat_mag_lower is not None:
        c = c[np.asarray(c[col], float) >= p.cat_mag_lower]
    if p.blend_filter and len(c) > 1:
        c = filter_blends(c, col, 2 * fwhm * pixscale / 3600)
    color = None
    c1, c2 = filters.BANDS[band].color if cat_band == band else filters.BANDS[cat_band].color
    if p.use_color and f"{c1}mag" in c.colnames and f"{c2}mag" in c.colnames:
        cc = np.asarray(c[f"{c1}mag"], float) - np.asarray(c[f"{c2}mag"], float)
        if np.sum(np.isfinite(cc)) >= 10:
            color = f"{c1}-{c2}"
    if len(c) < 3:
        notes.append(f"only {len(c)} catalogue stars with {col} <= {p.cat_limit}; no photometric calibration")
        return None, None, notes, None
    sr = (p.sr_override or match_radius_arcsec(fwhm, pixscale)) / 3600
    order = p.spatial_order
    force = {}
    if p.force_color_term is not None:
        if color:
            force = {"force_color_term": float(p.force_color_term)}
        else:
            notes.append(f"force_color_term {p.force_color_term} not used: the catalogue has no {c1}-{c2} colour")
    ecol = f"e_{col}" if f"e_{col}" in c.colnames and np.any(np.isfinite(np.asarray(c[f'e_{col}'], float))) else None
    if ecol is not None:
        c = c.copy()
        e = np.asarray(c[ecol], float)
        c[ecol] = np.where(np.isfinite(e), e, np.nanmedian(e))
    m = None
    for attempt_order in range(order, -1, -1):
        n_par = (attempt_order + 1) * (attempt_order + 2) // 2 + (1 if color else 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = spipe.calibrate_photometry(
                obj, c, sr=sr, order=attempt_order, bg_order=0 if p.bg_term else None, nonlin=p.nonlin_term,
                cat_col_mag=col, cat_col_mag_err=ecol, cat_col_mag1=f"{c1}mag" if color else None,
                cat_col_mag2=f"{c2}mag" if color else None, cat_col_ra="RAJ2000", cat_col_dec="DEJ2000",
                accept_flags=0x02, robust=True, scale_noise=True, max_intrinsic_rms=0.02,
                use_color=bool(color), update=False, verbose=run.log, **force)
        if m is not None and m["idx"].sum() >= max(3 * n_par, 5):
            if attempt_order < order:
                notes.append(f"zero-point spatial order lowered from {order} to {attempt_order}: "
                             f"{int(m['idx'].sum())} calibration stars")
            break
        m = None
    if m is None:
        notes.append(f"photometric calibration failed: too few matched stars between {len(obj)} objects and "
                     f"{len(c)} catalogue stars (bad astrometry?)")
        return None, None, notes, None
    med_sep = float(np.median(m["dist"][m["idx"]])) * 3600
    if med_sep > 0.6 * sr * 3600:
        notes.append(f"the photometric match looks random (median separation {med_sep:.2f}\"); bad astrometry?")
    model = ZeroPointModel.from_match(m, spatial_order=attempt_order, bg_order=0 if p.bg_term else None,
                                      nonlin=p.nonlin_term, color=color, aperture_pixels=aper, catalog_band=cat_band)
    return model, m, notes, c


FLAG_CATALOG_BLEND = 0x2000


def flag_catalog_blends(obj, cat, band, match_deg, radius_deg):
    """Flag (0x2000) objects whose catalogue star has a neighbour within 2·FWHM at most 2.5 mag
    fainter: their centroid and flux are those of an unresolved blend."""
    from stdpipe import astrometry as sa

    col = f"{band}mag"
    i, j, _ = sa.spherical_match(cat["RAJ2000"], cat["DEJ2000"], cat["RAJ2000"], cat["DEJ2000"], radius_deg)
    mag = np.asarray(cat[col], float)
    pair = (i != j) & (mag[j] < mag[i] + 2.5)
    blended = np.zeros(len(cat), bool)
    blended[i[pair]] = True
    oi, ci, _ = sa.spherical_match(obj["ra"], obj["dec"], cat["RAJ2000"], cat["DEJ2000"], match_deg)
    obj["flags"][np.unique(oi[blended[ci]])] |= FLAG_CATALOG_BLEND


def filter_blends(cat: Table, col: str, radius_deg: float) -> Table:
    """Drop catalogue stars with a neighbour within `radius` not more than 3 mag fainter."""
    from stdpipe import astrometry as sa

    i, j, d = sa.spherical_match(cat["RAJ2000"], cat["DEJ2000"], cat["RAJ2000"], cat["DEJ2000"], radius_deg)
    mag = np.asarray(cat[col], float)
    pair = (i != j) & (mag[j] < mag[i] + 3)
    bad = np.zeros(len(cat), bool)
    bad[i[pair]] = True
    return cat[~bad]


def _limits(run, obj, model: ZeroPointModel, sn: float, shape):
    """(mag_limit from the local background noise in the aperture, mag_limit from the S/N model)."""
    from stdpipe import pipeline as spipe

    lim = None
    if "bg_fluxerr" in obj.colnames:
        e = np.asarray(obj["bg_fluxerr"], float)
        ok = np.isfinite(e) & (e > 0) & ((np.asarray(obj["flags"]) & ~0x02) == 0)
        if ok.sum() >= 3:
            local = model.zp(obj["x"][ok], obj["y"][ok], None) - 2.5 * np.log10(sn * e[ok])
            lim = float(np.median(local))
    lim_sn = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = Table({"mag_calib": np.asarray(obj["mag_calib"], float), "magerr": np.asarray(obj["magerr"], float)})
            lim_sn = spipe.get_detection_limit(t[np.isfinite(t["mag_calib"])], sn=sn, verbose=False)
            lim_sn = float(lim_sn) if lim_sn is not None else None
    except Exception as e:  # the S/N model fit may not converge on sparse frames
        run.log(f"S/N-model limit not available: {e}")
    return lim, lim_sn


def _segment_at(segm, tab):
    if segm is None:
        return None
    h, w = segm.shape
    ix = np.clip(np.round(np.asarray(tab["x"], float)).astype(int), 0, w - 1)
    iy = np.clip(np.round(np.asarray(tab["y"], float)).astype(int), 0, h - 1)
    return segm[iy, ix]


def _targets(run, p, state, image, mask, gain, wcs, fwhm, aper, model, shape, segm) -> list[dict]:
    out = []
    targets = state.get("targets") or []
    if not targets:
        return out
    rows = []
    for t in targets:
        if t.get("ra") is not None:
            x, y = wcs.all_world2pix([t["ra"]], [t["dec"]], 0)
            x, y = float(x[0]), float(y[0])
            ra, dec = t["ra"], t["dec"]
        else:
            x, y = t["x"], t["y"]
            r, d = wcs.all_pix2world([x], [y], 0)
            ra, dec = float(r[0]), float(d[0])
        rows.append((t, x, y, ra, dec))
    inside = [(t, x, y, ra, dec) for t, x, y, ra, dec in rows
              if np.isfinite(x) and 0 <= x < shape[1] and 0 <= y < shape[0]]
    measured = {}
    if inside and p.centroid_targets:
        inside = target_list.centroid(run, inside, image, mask, fwhm, wcs)
        moved = {id(r[0]): r for r in inside}
        rows = [moved.get(id(r[0]), r) for r in rows]
    if inside:
        tab = Table({"x": [r[1] for r in inside], "y": [r[2] for r in inside]})
        tab["flags"] = np.zeros(len(tab), np.int32)
        res = measure(tab, image, mask, fwhm=fwhm, aper=aper, bkgann=(p.rel_bg1 * fwhm, p.rel_bg2 * fwhm),
                      gain=gain, bg_size=_bg_size(p.bg_size, shape), segm=segm, ids=_segment_at(segm, tab))
        for (t, x, y, ra, dec), r in zip(inside, res):
            measured[id(t)] = r
    table_rows = []
    for t, x, y, ra, dec in rows:
        entry = {"name": t["name"], "ra": ra, "dec": dec, "x": x, "y": y, "mag": None, "mag_err": None,
                 "mag_limit": None, "snr": None, "flux": None, "flux_err": None, "flags": None,
                 "region": t.get("region"), "inside": id(t) in measured, "source": t.get("source"),
                 **{k: t[k] for k in ("x_orig", "y_orig", "centroid_offset_arcsec") if k in t}}
        r = measured.get(id(t))
        if r is not None:
            flux, err = float(r["flux"]), float(r["fluxerr"])
            entry.update(flux=finite_or_none(flux), flux_err=finite_or_none(err), flags=int(r["flags"]),
                         snr=finite_or_none(flux / err if err > 0 else None))
            if model is not None and err > 0:
                zp = float(model.zp([x], [y], None)[0])
                entry["mag_limit"] = finite_or_none(zp - 2.5 * math.log10(p.sn * err))
                if flux > 0 and flux / err >= p.sn:
                    entry["mag"] = finite_or_none(zp - 2.5 * math.log10(flux))
                    entry["mag_err"] = finite_or_none(2.5 / math.log(10) * err / flux)
        else:
            run.note(f"target {t['name']} is outside the frame")
        out.append(entry)
        table_rows.append(entry)
    t = Table(rows=[[e[k] if e[k] is not None else np.nan for k in ("ra", "dec", "x", "y", "mag", "mag_err",
                                                                  "mag_limit", "snr", "flux", "flux_err")]
                    for e in table_rows],
              names=("ra", "dec", "x", "y", "mag", "mag_err", "mag_limit", "snr", "flux", "flux_err"),
              dtype=[float] * 10)
    t.add_column([e["name"] for e in table_rows], name="name", index=0)
    t["source"] = [e["source"] or "" for e in table_rows]
    if p.centroid_targets:
        for k in ("x_orig", "y_orig", "centroid_offset_arcsec"):
            t[k] = [e.get(k, np.nan) for e in table_rows]
    write_table(run.product("targets.ecsv"), t)
    write_table(run.product("target.vot"), t)  # STDWeb's product
    return out



def _plots(folder: Path, m, obj, cat, shape, fwhm_arcsec, sn, calibrated: bool) -> tuple[list[str], list[str]]:
    """Draw the photometry plots into `folder`; (products written, problems). Runs on the output
    helper thread inside a chain (see stages.background): it touches no StageRun and no
    global state (no pyplot, no warning filters)."""
    from stdpipe import astrometry as sa
    from stdpipe import plots as splots

    written: list[str] = []

    def save(fig, rel: str) -> None:
        save_figure(fig, folder / rel)
        written.append(rel)

    try:
        if m is not None:
            fig = new_figure((8, 5))
            splots.plot_photometric_match(m, ax=fig.add_subplot(1, 1, 1), mode="mag")
            save(fig, "plots/photometry_match.png")
            fig = new_figure((8, 4))
            ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
            splots.plot_photometric_match(m, ax=ax1, mode="model", show_dots=True, aspect="equal",
                                          range=[[0, shape[1]], [0, shape[0]]])
            ax1.set_title("zero-point model")
            splots.plot_photometric_match(m, ax=ax2, mode="residuals", show_dots=True, aspect="equal",
                                          range=[[0, shape[1]], [0, shape[0]]])
            ax2.set_title("residuals")
            save(fig, "plots/photometry_zeropoint.png")
        # astrometric residuals of matched objects
        sel = (np.asarray(obj["flags"]) & ~0x02) == 0
        o = obj[sel]
        oi, ci, d = sa.spherical_match(o["ra"], o["dec"], cat["RAJ2000"], cat["DEJ2000"], max(fwhm_arcsec, 1.0) / 3600)
        if len(d):
            dra = (np.asarray(o["ra"])[oi] - np.asarray(cat["RAJ2000"])[ci]) * np.cos(np.radians(np.asarray(o["dec"])[oi])) * 3600
            ddec = (np.asarray(o["dec"])[oi] - np.asarray(cat["DEJ2000"])[ci]) * 3600
            # one map of residual vectors with a scale key; the scatter's numbers go in the title
            # (each extra axes or colour bar costs about as much as the map itself)
            fig = new_figure((6.5, 6))
            ax = fig.add_subplot(1, 1, 1)
            q = ax.quiver(np.asarray(o["x"])[oi], np.asarray(o["y"])[oi], dra, ddec, color="C0")
            key = float(np.nanpercentile(np.hypot(dra, ddec), 90)) or 0.1
            ax.quiverkey(q, 0.95, -0.09, key, f'{key:.2g}"', labelpos="W")
            ax.set_xlim(0, shape[1])
            ax.set_ylim(0, shape[0])
            ax.set_aspect("equal")
            ax.set_title(f"astrometric residuals: {len(d)} matches, rms {math.sqrt(np.mean(d ** 2)) * 3600:.3f}\", "
                         f"median offset ({np.median(dra):+.3f}\", {np.median(ddec):+.3f}\")", loc="left", fontsize=9)
            save(fig, "plots/photometry_astrometry.png")
        if calibrated and np.isfinite(np.asarray(obj["mag_calib"], float)).sum() > 10:
            fig = new_figure((7, 4.5))
            splots.plot_detection_limit(obj, sn=sn, ax=fig.add_subplot(1, 1, 1))
            save(fig, "plots/photometry_limit.png")
        # STDWeb's other diagnostics: the FWHM over the frame, the objects (flagged ones marked), and
        # the magnitudes detected against the limit
        x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
        fl = np.asarray(obj["flags"])
        if "fwhm" in obj.colnames and len(obj) > 10:
            fig = new_figure((6.5, 5.5))
            ax = fig.add_subplot(1, 1, 1)
            good = (fl & ~0x02) == 0
            sc = ax.scatter(x[good], y[good], c=np.asarray(obj["fwhm"], float)[good], s=8, cmap="viridis",
                            vmin=np.nanpercentile(obj["fwhm"], 5), vmax=np.nanpercentile(obj["fwhm"], 95))
            fig.colorbar(sc, ax=ax, label="FWHM, px")
            ax.set_xlim(0, shape[1])
            ax.set_ylim(0, shape[0])
            ax.set_aspect("equal")
            ax.set_title("FWHM over the frame (unflagged objects)", fontsize=9)
            save(fig, "plots/photometry_fwhm_map.png")
        fig = new_figure((6.5, 6))
        ax = fig.add_subplot(1, 1, 1)
        matched = np.isfinite(np.asarray(obj["cat_mag"], float)) if "cat_mag" in obj.colnames else np.zeros(len(obj), bool)
        flagged = fl != 0
        ax.plot(x[~flagged & ~matched], y[~flagged & ~matched], ".", ms=3, color="0.5", label="objects")
        ax.plot(x[matched], y[matched], "o", ms=4, mfc="none", color="C0", label="calibration stars")
        ax.plot(x[flagged], y[flagged], "x", ms=3, color="C3", label="flagged (blends, masks, shape)")
        ax.set_xlim(0, shape[1])
        ax.set_ylim(0, shape[0])
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{len(obj)} objects, {int(matched.sum())} matched to the catalogue", fontsize=9)
        save(fig, "plots/photometry_objects.png")
        mags = np.asarray(obj["mag_calib"], float)
        if calibrated and np.isfinite(mags).sum() > 10:
            fig = new_figure((6.5, 4))
            ax = fig.add_subplot(1, 1, 1)
            ax.hist(mags[np.isfinite(mags)], bins=40, color="C0", alpha=0.8)
            ax.set_xlabel("calibrated magnitude")
            ax.set_ylabel("objects")
            ax.set_title("magnitudes detected", fontsize=9)
            save(fig, "plots/photometry_mag_histogram.png")
    except Exception as e:  # a plot must never fail the stage
        return written, [f"a plot could not be made: {type(e).__name__}: {e}"]
    return written, []

"""Astrometric solution of a frame against a reference catalogue: check, refine, repair, blind-solve.

Design note: a header WCS is never trusted blindly. Each candidate solution is refined with SCAMP
and then *checked* by cross-matching bright detections with the catalogue: it is accepted only when
the number of matches is well above what chance would give and their rms is small. Candidates, in
order: the header WCS; the header WCS rescaled by a binning factor when its reference pixel lies far
outside the image (the classic "WCS of the unbinned camera" header); finally a blind solution by
astrometry.net's solve-field on an index built on the fly from the reference catalogue
(build-astrometry-index, a fraction of a second), so blind solving works offline with any local
catalogue covering the field.
"""
from __future__ import annotations

import math
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from .blends import FLAG_NEIGHBOUR, MIN_LEFT, isolated_catalogue

Log = Callable[..., None]

CENTROID_OK_FLAGS = 0x01 | 0x02 | 0x100 | 0x200 | 0x800


@dataclass
class WcsCheck:
    n_matches: int
    n_expected_random: float
    rms_arcsec: float | None
    n_objects: int

    @property
    def good(self) -> bool:
        return (self.n_matches >= 5 and self.n_matches >= 3 * self.n_expected_random + 3
                and self.rms_arcsec is not None)


@dataclass
class Solution:
    wcs: WCS
    method: str
    check: WcsCheck
    notes: list[str] = field(default_factory=list)


def radec(wcs: WCS, obj: Table) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra, dec = wcs.all_pix2world(np.asarray(obj["x"], float), np.asarray(obj["y"], float), 0)
    return np.asarray(ra) % 360.0, np.asarray(dec)


def check_wcs(wcs: WCS, obj: Table, cat: Table, radius_arcsec: float, shape) -> WcsCheck:
    """Cross-match bright unflagged detections with the catalogue through `wcs`."""
    from stdpipe import astrometry as sa

    # crowding (0x01, 0x02), masked pixels (0x100, 0x200) and the shape pre-filter (0x800) do not
    # spoil a centroid enough to matter here
    sel = (np.asarray(obj["flags"]) & ~CENTROID_OK_FLAGS) == 0
    sel &= np.asarray(obj["magerr"]) < 0.1
    o = brightest(obj[sel], 1000)
    if len(o) < 3 or not len(cat):
        return WcsCheck(0, 0.0, None, len(o))
    ra, dec = radec(wcs, o)
    ok = np.isfinite(ra) & np.isfinite(dec)
    o, ra, dec = o[ok], ra[ok], dec[ok]
    # catalogue stars that fall on the frame: their density sets the chance-match rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cx, cy = wcs.all_world2pix(np.asarray(cat["RAJ2000"]), np.asarray(cat["DEJ2000"]), 0, quiet=True)
    inside = np.isfinite(cx) & (cx > 0) & (cx < shape[1]) & (cy > 0) & (cy < shape[0])
    n_cat = int(inside.sum())
    if n_cat == 0 or len(o) == 0:
        return WcsCheck(0, 0.0, None, len(o))
    area_arcsec2 = shape[0] * shape[1] * (sa.get_pixscale(wcs=wcs) * 3600) ** 2
    expected = len(o) * n_cat * math.pi * radius_arcsec ** 2 / max(area_arcsec2, 1e-9)
    oi, ci, d = sa.spherical_match(ra, dec, cat["RAJ2000"], cat["DEJ2000"], radius_arcsec / 3600)
    if not len(d):
        return WcsCheck(0, expected, None, len(o))
    # one match per object: the closest
    order = np.argsort(d)
    _, first = np.unique(oi[order], return_index=True)
    d = d[order][first] * 3600
    rms = _clipped_rms(d)
    return WcsCheck(int(len(d)), float(expected), rms, len(o))


def _clipped_rms(d: np.ndarray) -> float:
    """Robust rms of match distances: 1.201·median(d), the rms of a 2-D Gaussian scatter whose
    distances have this median (Rayleigh); chance matches and blends in the tail do not pull it."""
    d = np.asarray(d, float)
    return float(1.2011 * np.median(d))


def scamp_refine(obj: Table, cat: Table, wcs: WCS, *, sr_arcsec: float, order: int, mag_col: str | None,
                 tmpdir: Path, log: Log, position_maxerr_arcmin: float | None = None,
                 isolation_radius_deg: float | None = None) -> WCS | None:
    from stdpipe import astrometry as sa

    flags = np.asarray(obj["flags"])
    sel = (flags & ~CENTROID_OK_FLAGS) == 0
    # crowded fields: blends and contaminated detections out of the fit when enough remain (stages/blends.py)
    clean = sel & ((flags & (0x02 | FLAG_NEIGHBOUR)) == 0)
    if clean.sum() >= MIN_LEFT:
        sel = clean
    o = brightest(obj[sel] if sel.sum() >= 10 else obj, 400)
    cat = _bright_reference(cat, wcs, o, mag_col)
    if isolation_radius_deg:
        iso = isolated_catalogue(cat, mag_col, isolation_radius_deg)
        if len(iso) >= MIN_LEFT:
            cat = iso
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # the distortion degree is chosen on held-out stars (up to `order`), so a plain TAN
            # frame is not over-fitted by a cubic
            w = sa.refine_wcs_scamp(o.copy(), cat, wcs=wcs, sr=sr_arcsec / 3600,
                                    order="auto" if order > 1 else order, auto_max_order=max(order, 1),
                                    cat_col_ra="RAJ2000", cat_col_dec="DEJ2000",
                                    cat_col_mag=mag_col or "nomag", cat_col_mag_err=f"e_{mag_col}" if mag_col else "nomag",
                                    position_maxerr=position_maxerr_arcmin, sn=[3.0, 10.0],
                                    _tmpdir=str(tmpdir), verbose=log)
        except Exception as e:  # SCAMP wrapper raises on odd inputs; the caller tries the next candidate
            log(f"SCAMP failed: {type(e).__name__}: {e}")
            return None
    return w


def brightest(obj: Table, n: int) -> Table:
    if len(obj) <= n:
        return obj
    return obj[np.argsort(-np.asarray(obj["flux"], float))[:n]]


def _bright_reference(cat: Table, wcs: WCS, obj: Table, mag_col: str | None) -> Table:
    """The catalogue stars SCAMP needs: near the frame, and (by magnitude) about as many as twice the
    detections it gets — a deep reference catalogue makes its pattern matching many times slower."""
    if mag_col is None or mag_col not in cat.colnames or len(cat) <= 2.5 * len(obj) + 100:
        return cat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cx, cy = wcs.all_world2pix(np.asarray(cat["RAJ2000"]), np.asarray(cat["DEJ2000"]), 0, quiet=True)
    xs, ys = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    mx = 0.1 * (np.nanmax(xs) - np.nanmin(xs)) + 50
    my = 0.1 * (np.nanmax(ys) - np.nanmin(ys)) + 50
    near = (np.isfinite(cx) & (cx > np.nanmin(xs) - mx) & (cx < np.nanmax(xs) + mx)
            & (cy > np.nanmin(ys) - my) & (cy < np.nanmax(ys) + my))
    c = cat[near]
    mag = np.asarray(c[mag_col], float)
    order = np.argsort(np.where(np.isfinite(mag), mag, 99.0))
    return c[order[: int(2.5 * len(obj)) + 100]]


def header_candidates(wcs: WCS | None, shape, header) -> list[tuple[str, WCS]]:
    """The header WCS and, when its reference pixel is far off the image, binning-rescaled versions."""
    if wcs is None:
        return []
    out = [("header WCS", wcs)]
    h, w = shape
    crpix = np.asarray(wcs.wcs.crpix, float)
    centre = np.array([(w + 1) / 2, (h + 1) / 2])
    if np.all(np.isfinite(crpix)) and (crpix[0] > 2 * w or crpix[1] > 2 * h):
        ratios = crpix / centre
        ks = set()
        for r in ratios:
            if r >= 1.5:
                ks.add(int(round(r)))
        for kw in ("XBINNING", "CCDXBIN", "BINX"):
            try:
                if int(header.get(kw, 1)) > 1:
                    ks.add(int(header[kw]))
            except (TypeError, ValueError):
                pass
        for k in sorted(ks):
            if 2 <= k <= 64:
                out.append((f"header WCS rescaled for {k}x{k} binning", rescale_wcs(wcs, k)))
    return out


def rescale_wcs(wcs: WCS, k: int) -> WCS:
    """The WCS of the same sky on pixels k times larger (binned k x k), without distortions."""
    w = WCS(naxis=2)
    w.wcs.ctype = [c.replace("-SIP", "").replace("-TPV", "-TAN") for c in wcs.wcs.ctype]
    w.wcs.crval = wcs.wcs.crval
    w.wcs.crpix = (np.asarray(wcs.wcs.crpix) - 0.5) / k + 0.5
    w.wcs.cd = np.asarray(wcs.pixel_scale_matrix) * k
    w.wcs.radesys = wcs.wcs.radesys or "ICRS"
    w.wcs.set()
    return w


def pick_mag_column(cat: Table, band: str | None) -> str | None:
    if band and f"{band}mag" in cat.colnames:
        return f"{band}mag"
    for c in cat.colnames:
        if c.endswith("mag") and not c.startswith("e_"):
            return c
    return None


# ---------------------------------------------------------------- blind solving

def _preset_for(width_arcmin: float) -> int:
    """build-astrometry-index preset for a field this wide (P0 ≈ 6′, steps of √2)."""
    return int(round(2 * math.log2(max(width_arcmin, 0.5) / 6.0)))


def build_index(cat: Table, mag_col: str | None, folder: Path, field_arcmin: tuple[float, float], log: Log) -> int:
    """Index files for solve-field in `folder`; returns how many were built."""
    folder.mkdir(parents=True, exist_ok=True)
    t = Table()
    t["RA"] = np.asarray(cat["RAJ2000"], float)
    t["DEC"] = np.asarray(cat["DEJ2000"], float)
    mag = np.asarray(cat[mag_col], float) if mag_col else np.zeros(len(cat))
    mag = np.where(np.isfinite(mag), mag, 99.0)
    t["MAG"] = mag
    t.sort("MAG")
    src = folder / "catalog.fits"
    t.write(src, overwrite=True)
    lo, hi = field_arcmin
    presets = sorted(set(range(_preset_for(lo) - 3, _preset_for(hi) + 1)))
    if len(presets) > 8:  # unknown scale: a spread of presets, not all of them
        presets = presets[::2]
    built = 0
    for p in presets:
        if not -5 <= p <= 19:
            continue
        out = folder / f"index-{p + 10:02d}.fits"
        r = subprocess.run(["build-astrometry-index", "-i", str(src), "-o", str(out), "-P", str(p), "-S", "MAG",
                            "-E", "-I", str(990000 + p + 10), "-A", "RA", "-D", "DEC", "-j", "2",
                            "-t", str(folder)], capture_output=True, text=True)
        if r.returncode == 0 and out.is_file():
            built += 1
        else:
            log(f"build-astrometry-index -P {p} failed: {r.stderr.strip()[-300:]}")
    src.rename(folder / "catalog.src")
    (folder / "solve.cfg").write_text(f"add_path {folder}\nautoindex\n")
    return built


def blind_solve(obj: Table, cat: Table, shape, *, mag_col: str | None, hint: tuple[float, float] | None,
                radius_deg: float, scale_range: tuple[float, float] | None, folder: Path, tmpdir: Path,
                log: Log) -> WCS | None:
    """solve-field on the detections with an index made from `cat`; S/N threshold stepped down."""
    import shutil

    from stdpipe import astrometry as sa

    if shutil.which("solve-field") is None or shutil.which("build-astrometry-index") is None:
        log("astrometry.net (solve-field, build-astrometry-index) is not installed")
        return None
    h, w = shape
    if scale_range:
        lo, hi = scale_range
        field = (min(w, h) * lo / 60, max(w, h) * hi / 60)
    else:
        field = (5.0, 600.0)
    if build_index(cat, mag_col, folder, field, log) == 0:
        return None
    cfg = folder / "solve.cfg"
    obj = brightest(obj, 300)
    attempts = 0
    for sn in (20, 10, 5, 3):
        n = int(np.sum(np.asarray(obj["flux"]) / np.asarray(obj["fluxerr"]) > sn))
        if n < 20 and sn > 3:
            continue
        if attempts >= 2:
            break
        attempts += 1
        extra = {"depth": "10,20,30,40,60,80,100,150,200", "code-tolerance": 0.015, "cpulimit": 10}
        kw = dict(order=2, width=w, height=h, sn=sn, config=str(cfg), extra=extra, _tmpdir=str(tmpdir), verbose=False)
        if hint is not None:
            kw.update(center_ra=hint[0], center_dec=hint[1], radius=radius_deg)
        if scale_range:
            kw.update(scale_lower=scale_range[0], scale_upper=scale_range[1], scale_units="arcsecperpix")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = sa.blind_match_objects(obj, **kw)
            except Exception as e:  # the wrapper raises on unexpected solve-field output
                log(f"solve-field failed: {type(e).__name__}: {e}")
                res = None
        log(f"blind match with {n} objects above S/N {sn}: {'solved' if res is not None else 'not solved'}")
        if res is not None:
            return res
    return None

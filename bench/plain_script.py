"""The plain script: the honest denominator of `overhead_ratio` and of the seconds per stage.

`python -m bench.plain_script [--cold] SETTINGS_JSON WORKDIR FRAME [FRAME ...]` prints one JSON line.

What stdd's four stages compute, frame after frame in one process, with the same STDPipe calls
and the same parameters (read from the same `StageSettings`, so they cannot drift) on the same
inputs (the local catalogue file and the field's template) — and none of stdd's own machinery:
no frame folder whose products the next stage reads back (everything stays in memory), no result
bookkeeping, no atomic writes, no logs, no astrometric double-check, no zero-point model export,
no catalogue or template library indexing and caching, no PNG cutouts. It writes what a user
keeps: the objects table, the candidate tables, the STDPipe plots the stages make, the
difference image and the candidates' cutouts (STDPipe's cutout files).

Where a stage does its own numerics on top of STDPipe (its aperture measurement with a
source-free local annulus, the Moffat FWHM fit, SCAMP on the bright reference stars, the stamp
SFFT fit, the mask-touch and catalogue cuts, the detection on the difference), the plain script
calls the stage's same pure function, so both sides do the same arithmetic and the ratio
measures stdd's overhead, not a difference of algorithm. Those functions take arrays and tables;
where they log, a quiet stand-in receives it.

The numerical libraries run on one thread, as in a pool worker. Symmetry with the daemon's side:
before its clock starts, the script gets the warm-up the daemon's fork server has had before a
frame arrives (`bench.warm.preload`: the same imports, the stages' first-use work, `gc.freeze()`),
so its first frame pays no lazy import or first-use cost that stdd's first frame does not (until
then its first frame's stages included importing sklearn, matplotlib and the subtraction modules).
`--cold` skips it (a script run from scratch). The warm-up's seconds are reported apart (`warm_s`).
"""
from __future__ import annotations

import os

from stdd.pool.local import SINGLE_THREAD_ENV

for _var in SINGLE_THREAD_ENV:
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

T_IMPORT = time.perf_counter()
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402
from stdpipe import astrometry as sa  # noqa: E402
from stdpipe import photometry as sp  # noqa: E402
from stdpipe import pipeline as spipe  # noqa: E402

from stdd.stages.base import StageSettings  # noqa: E402  (parameter values only)

from .plain_outputs import photometry_plots, write_cutouts  # noqa: E402

IMPORT_S = time.perf_counter() - T_IMPORT

FLAG_OUTLIER = 0x800
MASK_BITS = {"nonfinite": 1, "saturated": 2, "bad_pixel": 4, "cosmic": 8, "outside_datasec": 16}


class Quiet:
    """What the stages' helpers expect of a stage run (log, note, scratch folder), doing nothing."""

    def __init__(self, tmpdir: Path):
        self.tmpdir = tmpdir
        self.folder = tmpdir
        self.notes: list[str] = []

    def log(self, *args) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)


class ZeroFn:
    """STDPipe's zero_fn seen through the `.zp` / `.zp_err` calls the stages' helpers make."""

    def __init__(self, zero_fn):
        self.fn = zero_fn

    def zp(self, x, y, mag=None):
        return np.asarray(self.fn(np.asarray(x, float), np.asarray(y, float), mag), float)

    def zp_err(self, x, y, mag=None):
        return np.asarray(self.fn(np.asarray(x, float), np.asarray(y, float), mag, get_err=True), float)


def _bg_size(bg_size: int, shape) -> int:
    return int(max(32, min(bg_size, min(shape) // 4)))


def _cone(cat: Table, ra: float, dec: float, radius: float) -> Table:
    d = sa.spherical_distance(ra, dec, np.asarray(cat["RAJ2000"], float), np.asarray(cat["DEJ2000"], float))
    return cat[d < radius]


# ====================================================================================== inspect
def inspect(frame: Path, s: StageSettings, st: dict, q: Quiet) -> None:
    from stdd.stages.inspect import find_cosmics

    p = s.pipeline
    with fits.open(frame) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        image = hdu.data.astype(np.float64)
        header = hdu.header.copy()
    gain = float(header.get("GAIN", 1.0))
    med = float(np.nanmedian(image))
    sat = float(header["SATURATE"]) if float(header.get("SATURATE", 0)) > med else 0.05 * med + 0.95 * np.nanmax(image)
    finite = np.isfinite(image)
    bits = np.zeros(image.shape, np.uint8)
    bits[~finite] |= MASK_BITS["nonfinite"]
    bits[finite & (image >= sat)] |= MASK_BITS["saturated"]
    if p.mask_cosmics:
        bits[find_cosmics(q, image, bits > 0, gain, sat)] |= MASK_BITS["cosmic"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header).celestial
    ra, dec, radius = sa.get_frame_center(wcs=wcs, width=image.shape[1], height=image.shape[0])
    st.update(image=image, header=header, bits=bits, mask=bits > 0, gain=gain, saturation=sat, wcs=wcs,
              band=header["FILTER"], ra=float(ra), dec=float(dec), radius=float(radius),
              pixscale=float(sa.get_pixscale(wcs=wcs)) * 3600)


# ====================================================================================== photometry
def photometry(s: StageSettings, st: dict, out: Path, q: Quiet) -> None:
    from stdpipe import artefacts

    from stdd.stages import astrometry as astro
    from stdd.stages.filters import BANDS
    from stdd.stages.measure import measure
    from stdd.stages.photometry import filter_blends, fit_fwhm, flag_catalog_blends, measured_fwhm

    p = s.pipeline
    image, mask, bits, gain, shape = st["image"], st["mask"], st["bits"], st["gain"], st["image"].shape
    detect_mask = (bits & np.uint8(1 | 4 | 16)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj, segm = sp.get_objects_sextractor(
            image, mask=mask, mask_detect=detect_mask, thresh=p.detection_thresh, aper=p.initial_aper, gain=gain,
            edge=max(4, int(p.initial_aper)), minarea=p.minarea, sn=3.0, bg_size=_bg_size(p.bg_size, shape),
            extra_params=["MAG_AUTO", "ISOAREA_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "ERRX2WIN_IMAGE", "ERRY2WIN_IMAGE",
                          "NUMBER"], checkimages=["SEGMENTATION"], _tmpdir=str(q.tmpdir), verbose=False)
    xw, yw = np.asarray(obj["XWIN_IMAGE"], float) - 1, np.asarray(obj["YWIN_IMAGE"], float) - 1
    okw = np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - obj["x"], yw - obj["y"]) < 2.0)
    obj["x"], obj["y"] = np.where(okw, xw, obj["x"]), np.where(okw, yw, obj["y"])
    for c, cw in (("xerr", "ERRX2WIN_IMAGE"), ("yerr", "ERRY2WIN_IMAGE")):
        obj[c] = np.where(okw, np.sqrt(np.abs(np.asarray(obj[cw], float))), obj[c])
    obj = obj[np.isfinite(obj["x"]) & (obj["fwhm"] > 0) & (obj["MAG_AUTO"] < 90) & (obj["ISOAREA_IMAGE"] >= p.minarea)]
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)
    if p.prefilter_outliers and len(obj) >= 30:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            good = np.asarray(artefacts.filter_detections(obj, method="catalog", classifier="isolation",
                                                          verbose=False), bool)
        obj["flags"][~good] |= FLAG_OUTLIER
    fwhm = fit_fwhm(q, image, mask, obj, measured_fwhm(q, obj))
    aper = max(p.rel_aper * fwhm, p.min_aper_pixels)
    obj = measure(obj, image, mask, fwhm=fwhm, aper=aper, bkgann=(p.rel_bg1 * fwhm, p.rel_bg2 * fwhm), gain=gain,
                  bg_size=_bg_size(p.bg_size, shape), segm=segm, ids=np.asarray(obj["NUMBER"]))
    obj = obj[np.isfinite(obj["flux"]) & np.isfinite(obj["fluxerr"]) & (obj["fluxerr"] > 0) & (obj["flux"] > 0)]
    obj = obj[obj["flux"] / obj["fluxerr"] >= p.sn]
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)
    obj["snr"] = obj["flux"] / obj["fluxerr"]

    # the local catalogue around the frame, SCAMP, the catalogue of the solved frame
    cat_all = Table.read(s.catalog.files[0])
    pixscale, band = st["pixscale"], st["band"]
    col = f"{band}mag"
    cat = _cone(cat_all, st["ra"], st["dec"], st["radius"] * 1.1 + 2.0 / 60)
    wcs = astro.scamp_refine(obj, cat, st["wcs"], sr_arcsec=max(2 * fwhm * pixscale, 2.0), order=p.wcs_order,
                             mag_col=col, tmpdir=q.tmpdir, log=q.log) or st["wcs"]
    obj["ra"], obj["dec"] = astro.radec(wcs, obj)
    ra, dec, radius = sa.get_frame_center(wcs=wcs, width=shape[1], height=shape[0])
    cat = _cone(cat_all, float(ra), float(dec), float(radius) * 1.05)
    match_r = max(0.5 * fwhm, 1.0) * pixscale

    # zero point with colour term (STDWeb's blend filter first), limit
    c = cat[np.isfinite(np.asarray(cat[col], float))]
    c = c[np.asarray(c[col], float) <= p.cat_limit]
    if p.blend_filter and len(c) > 1:
        c = filter_blends(c, col, 2 * fwhm * pixscale / 3600)
    c1, c2 = BANDS[band].color
    use_color = p.use_color and f"{c1}mag" in c.colnames and f"{c2}mag" in c.colnames
    ecol = f"e_{col}"
    c = c.copy()
    e = np.asarray(c[ecol], float)
    c[ecol] = np.where(np.isfinite(e), e, np.nanmedian(e))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = spipe.calibrate_photometry(obj, c, sr=match_r / 3600, order=p.spatial_order,
                                       bg_order=0 if p.bg_term else None, nonlin=p.nonlin_term, cat_col_mag=col,
                                       cat_col_mag_err=ecol, cat_col_mag1=f"{c1}mag" if use_color else None,
                                       cat_col_mag2=f"{c2}mag" if use_color else None, cat_col_ra="RAJ2000",
                                       cat_col_dec="DEJ2000", accept_flags=0x02, robust=True, scale_noise=True,
                                       max_intrinsic_rms=0.02, use_color=use_color, update=False, verbose=False)
    zp = ZeroFn(m["zero_fn"])
    obj["cat_mag"] = np.full(len(obj), np.nan)
    obj["cat_color"] = np.full(len(obj), np.nan)
    obj["cat_mag"][m["oidx"]] = m["cmag"]
    if use_color:
        obj["cat_color"][m["oidx"]] = (np.asarray(c[f"{c1}mag"], float)[m["cidx"]]
                                       - np.asarray(c[f"{c2}mag"], float)[m["cidx"]])
    flag_catalog_blends(obj, cat, band, match_r / 3600, 2 * fwhm * pixscale / 3600)
    color = np.asarray(obj["cat_color"], float)
    ct = m.get("color_term") if use_color else None
    obj["mag_calib"] = (np.asarray(obj["mag"], float) + zp.zp(obj["x"], obj["y"], obj["mag"])
                        + (np.where(np.isfinite(color), ct * color, 0.0) if ct is not None else 0.0))
    obj["mag_calib_err"] = np.hypot(obj["magerr"], zp.zp_err(obj["x"], obj["y"], obj["mag"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Table({"mag_calib": np.asarray(obj["mag_calib"], float), "magerr": np.asarray(obj["magerr"], float)})
        limit = spipe.get_detection_limit(t[np.isfinite(t["mag_calib"])], sn=p.sn, verbose=False)
    obj.write(out / "objects.fits", overwrite=True)
    photometry_plots(m, obj, shape, p.sn, out)
    st.update(obj=obj, cat=cat, wcs=wcs, fwhm=fwhm, aper=aper, zp=zp, limit=limit, pixscale=pixscale)


# ====================================================================================== transients
def transients(s: StageSettings, st: dict, out: Path, q: Quiet) -> None:
    from stdd.stages.transients import ALLOWED_FLAGS, known_mask, near_brighter, near_catalog, touches

    p = s.pipeline
    obj, cat, bits, fwhm, pixscale = st["obj"], st["cat"], st["bits"], st["fwhm"], st["pixscale"]
    aper = st["aper"]
    flags, snr = np.asarray(obj["flags"]), np.asarray(obj["snr"], float)
    keep = (flags & ~(ALLOWED_FLAGS | FLAG_OUTLIER | 0x2000)) == 0
    keep &= ~(((flags & FLAG_OUTLIER) != 0) & (snr > p.simple_bright_shape_cut_sn))
    keep &= ~touches(bits, obj, 8, p.cosmic_dilate, aper)
    keep &= ~touches(bits, obj, 2, max(1, int(round(fwhm))), aper)
    mag = np.asarray(obj["mag_calib"], float)
    col = f"{st['band']}mag"
    for radius in (0.5, 1.0):
        keep &= ~known_mask(obj, mag, cat, col, max(radius * fwhm, 1.0) * pixscale, p.simple_mag_diff)
    keep &= ~(((flags & 0x02) != 0) & near_catalog(obj, cat, 2 * fwhm * pixscale))
    keep &= ~near_brighter(obj, mag, cat, col, 2 * fwhm * pixscale)
    cand = obj[keep]
    cand = cand[np.argsort(np.where(np.isfinite(mag[keep]), mag[keep], 99.0))][:p.simple_max_candidates]
    cand.write(out / "candidates_simple.ecsv", format="ascii.ecsv", overwrite=True)
    write_cutouts(out, "simple", cand, {"image": st["image"], "mask": bits}, st["header"], st["wcs"], p)
    st["candidates_simple"] = cand


# ====================================================================================== subtraction
def subtraction(s: StageSettings, st: dict, out: Path, q: Quiet) -> None:
    from astropy.table import vstack
    from scipy.ndimage import binary_dilation
    from stdpipe import reproject as srep
    from stdpipe import subtraction as ssub
    from stdpipe import templates as stt

    from stdd.stages.subtraction import bg_subtracted, detect_candidates, sub_method_for, sfft_stamps, star_fluxes

    p = s.pipeline
    image, mask, bits, wcs, gain = st["image"], st["mask"], st["bits"], st["wcs"], st["gain"]
    shape, fwhm, aper, obj, zp = image.shape, st["fwhm"], st["aper"], st["obj"], st["zp"]
    method = sub_method_for(q, s)
    # the field's template, on the frame's grid (SWarp, as the stage's default)
    tfile = next(Path(s.template.folder).glob(f"*_{st['band']}.fits"))
    with fits.open(tfile) as hdul:
        tdata, thdr = hdul[0].data.astype(np.float64), hdul[0].header
    swarp = shutil.which("swarp") or shutil.which("SWarp")
    template = srep.reproject_swarp([(tdata, thdr)], wcs=wcs, shape=shape, _exe=swarp, _tmpdir=str(q.tmpdir)) \
        if p.sub_reproject == "swarp" and swarp else srep.reproject_lanczos([(tdata, thdr)], wcs=wcs, shape=shape)
    template = np.asarray(template, np.float64)
    tgain, tsat = float(thdr.get("GAIN", 0)) or None, float(thdr.get("SATURATE", 0)) or None
    tmask = ~np.isfinite(template)
    if tsat:
        tmask |= np.nan_to_num(template, nan=0.0) >= 0.9 * tsat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmask |= stt.mask_template(template, st["cat"], cat_saturation_mag=p.template_saturation_mag,
                                   cat_col_mag=f"{st['band']}mag", cat_col_mag_err=None, cat_col_ra="RAJ2000",
                                   cat_col_dec="DEJ2000", wcs=wcs, dilate=0, mask_masked=False, mask_nans=False)
    tmask = binary_dilation(tmask, iterations=3) | ~np.isfinite(template)
    stars = star_fluxes(obj, zp)
    h, w = shape
    nx, ny = max(1, round(w / p.sub_size)), max(1, round(h / p.sub_size))
    diff_full = np.full(shape, np.nan, np.float32)
    err_full = np.full(shape, np.nan, np.float32)
    conv_full = np.full(shape, np.nan, np.float32)
    cands = []
    for ix in range(nx):
        for iy in range(ny):
            x0, x1, y0, y1 = ix * w // nx, (ix + 1) * w // nx, iy * h // ny, (iy + 1) * h // ny
            ov = p.sub_overlap
            ox0, ox1, oy0, oy1 = max(0, x0 - ov), min(w, x1 + ov), max(0, y0 - ov), min(h, y1 + ov)
            sl = (slice(oy0, oy1), slice(ox0, ox1))
            img, tpl = image[sl], template[sl]
            m = mask[sl] | ~np.isfinite(img)
            tm = tmask[sl] | ~np.isfinite(tpl)
            img_bs, img_rms = bg_subtracted(img, m)
            tpl_bs, tpl_rms = bg_subtracted(tpl, tm)
            err = np.sqrt(img_rms ** 2 + np.clip(img_bs, 0, None) / gain)
            terr = np.sqrt(tpl_rms ** 2 + (np.clip(tpl_bs, 0, None) / tgain if tgain else 0.0))
            tobj = obj[(obj["x"] >= ox0) & (obj["x"] < ox1) & (obj["y"] >= oy0) & (obj["y"] < oy1)]
            tobj = Table({"x": np.asarray(tobj["x"], float) - ox0, "y": np.asarray(tobj["y"], float) - oy0,
                          "flux": np.asarray(tobj["flux"], float), "fluxerr": np.asarray(tobj["fluxerr"], float),
                          "flags": np.asarray(tobj["flags"], int) & ~0x02 & ~0x2000})
            tobj["fwhm"] = fwhm
            ks = 2 * int(math.ceil(max(3.0, 0.9 * fwhm))) + 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if method == "sfft":
                    diff, conv, noise = sfft_stamps(q, img_bs, tpl_bs, m, tm, err, terr, tobj, ks, fwhm)
                else:
                    diff, conv, noise = ssub.run_hotpants(
                        img_bs, tpl_bs, mask=m, template_mask=tm, err=err, template_err=terr, image_fwhm=fwhm,
                        template_fwhm=None, image_gain=gain, template_gain=tgain or 1e6, obj=tobj, get_convolved=True,
                        get_noise=True, _tmpdir=str(q.tmpdir), _exe=shutil.which("hotpants"), verbose=False)
            diff, noise = np.asarray(diff, float), np.asarray(noise, float)
            diff[m | tm | ~np.isfinite(diff) | ~np.isfinite(noise) | (noise <= 0)] = np.nan
            core, sub = (slice(y0, y1), slice(x0, x1)), (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0))
            diff_full[core], err_full[core], conv_full[core] = diff[sub], noise[sub], np.asarray(conv, float)[sub]
            if p.sub_mode == "detection":
                c = detect_candidates(q, s, diff, noise, img_bs, conv, m | tm, bits[sl], wcs, zp, fwhm, aper, (ox0, oy0),
                            (x0, x1, y0, y1), f"tile_{ix}_{iy}", stars=stars, tobj=tobj)
                if len(c):
                    cands.append(c)
    hdr = wcs.to_header(relax=True)
    fits.PrimaryHDU(diff_full, hdr).writeto(out / "diff.fits", overwrite=True)
    cand = vstack(cands) if cands else Table()
    if len(cand):
        cand = cand[np.argsort(np.where(np.isfinite(cand["mag_calib"]), cand["mag_calib"], 99.0))]
        cand.write(out / "candidates_sub.ecsv", format="ascii.ecsv", overwrite=True)
        write_cutouts(out, "sub", cand, {"image": image, "template": template, "convolved": conv_full, "diff": diff_full,
                                    "err": err_full, "mask": ((bits > 0) | tmask).astype(np.uint8)},
                 st["header"], wcs, p)
    st["candidates_sub"] = cand


# ====================================================================================== driver
STAGES = ("inspect", "photometry", "transients", "subtraction")


def process(frame: Path, s: StageSettings, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    st: dict = {}
    q = Quiet(out / "tmp")
    q.tmpdir.mkdir(parents=True, exist_ok=True)
    steps = [x for x in STAGES if x in s.pipeline.steps]
    stages: dict[str, float] = {}
    t_all = time.perf_counter()
    status, error = "done", None
    for name in steps:
        t0 = time.perf_counter()
        try:
            if name == "inspect":
                inspect(frame, s, st, q)
            else:
                globals()[name](s, st, out, q)
        except Exception as e:  # the comparison needs to know, not a traceback
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1]
            status, error = "failed", f"{name}: {type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"
            stages[name] = round(time.perf_counter() - t0, 3)
            break
        stages[name] = round(time.perf_counter() - t0, 3)
    shutil.rmtree(q.tmpdir, ignore_errors=True)
    return {"frame": str(frame), "status": status, "error": error, "stages": stages,
            "total_s": round(time.perf_counter() - t_all, 3),
            "n_candidates_simple": len(st["candidates_simple"]) if "candidates_simple" in st else None,
            "n_candidates_sub": len(st["candidates_sub"]) if "candidates_sub" in st else None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cold = argv[:1] == ["--cold"]
    argv = argv[1:] if cold else argv
    if len(argv) < 3:
        print("usage: python -m bench.plain_script [--cold] SETTINGS_JSON WORKDIR FRAME [FRAME ...]", file=sys.stderr)
        return 2
    from .warm import preload

    warm_s = None if cold else preload()
    settings = StageSettings.model_validate(json.loads(Path(argv[0]).read_text()))
    work = Path(argv[1])
    frames = [Path(f) for f in argv[2:]]
    results = []
    t0 = time.perf_counter()
    for f in frames:
        results.append(process(f, settings, work / f.stem))
    total = sum(r["total_s"] for r in results)
    hwm = None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = round(int(line.split()[1]) / 1024, 1)
    print(json.dumps({"frames": results, "total_s": round(total, 3), "wall_s": round(time.perf_counter() - t0, 3),
                      "import_s": round(IMPORT_S, 3), "warm_s": warm_s and round(warm_s, 3),
                      "peak_rss_mb": hwm}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

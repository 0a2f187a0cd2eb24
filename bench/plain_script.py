"""The plain script: the honest denominator of `overhead_ratio` and of the seconds per stage.

`python -m bench.plain_script SETTINGS_JSON WORKDIR FRAME [FRAME ...]` prints one JSON line.

What a competent user would write with STDPipe to do what stdd's four stages do, frame after
frame in one process: the same STDPipe calls with the same parameters, in the same order, on the
same inputs (the local catalogue file and template library named in the settings), mirrored from
stdd/stages/*.py — and nothing of stdd's own: no frame folder of products re-read by the next
stage (everything stays in memory), no result bookkeeping, no atomic writes, no logs, no
astrometric double-check, no zero-point model export. It writes what a user keeps: the objects
table, the candidates, the difference image, and the STDPipe plots the stages make.

Parameter values come from the same `StageSettings` the stages get (so they cannot drift); every
computation is STDPipe's (or astroscrappy's / astropy's, where the stage calls them directly).
The numerical libraries run on one thread, as in a pool worker, so that the comparison measures
stdd's overhead and not a threading choice. Seconds per stage exclude the imports at the top;
what a stage imports lazily on first use counts for the first frame, as it does in the daemon.
"""
from __future__ import annotations

import os

from stdd.pool.local import SINGLE_THREAD_ENV

for _var in SINGLE_THREAD_ENV:
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
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
from stdpipe import photometry_measure as spm  # noqa: E402
from stdpipe import pipeline as spipe  # noqa: E402

from stdd.stages.base import StageSettings  # noqa: E402  (parameter values only)

IMPORT_S = time.perf_counter() - T_IMPORT

#: the colour used with each band's zero point (the stages' filter table, for the bands used here)
COLOR = {"g": ("g", "r"), "r": ("g", "r"), "i": ("r", "i"), "B": ("B", "V"), "V": ("B", "V")}
FLAG_OUTLIER = 0x800


def _bg_size(bg_size: int, shape) -> int:
    return int(max(32, min(bg_size, min(shape) // 4)))


# ====================================================================================== inspect
def inspect(frame: Path, s: StageSettings, st: dict) -> None:
    import astroscrappy
    import sep_x as sep

    p = s.pipeline
    with fits.open(frame) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        image = hdu.data.astype(np.float64)
        header = hdu.header.copy()
    gain = float(header.get("GAIN", 1.0))
    med = float(np.nanmedian(image))
    sat = float(header["SATURATE"]) if float(header.get("SATURATE", 0)) > med else 0.05 * med + 0.95 * np.nanmax(image)
    finite = np.isfinite(image)
    mask = ~finite | (finite & (image >= sat))
    if p.mask_cosmics:
        img = np.ascontiguousarray(np.where(finite, image, med), dtype=np.float32)
        bg = sep.Background(img, mask=mask)
        var = bg.rms() ** 2 + np.abs(img - bg.back()) / gain
        cmask, _ = astroscrappy.detect_cosmics(img, inmask=mask, invar=var.astype(np.float32), gain=gain,
                                               satlevel=sat, niter=2, sigclip=4.5, cleantype="medmask",
                                               verbose=False)
        mask |= cmask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header).celestial
    ra, dec, radius = sa.get_frame_center(wcs=wcs, width=image.shape[1], height=image.shape[0])
    st.update(image=image, header=header, mask=mask, gain=gain, saturation=sat, wcs=wcs, band=header["FILTER"],
              ra=float(ra), dec=float(dec), radius=float(radius), pixscale=float(sa.get_pixscale(wcs=wcs)) * 3600,
              time=header.get("DATE-OBS"))


# ====================================================================================== photometry
def photometry(s: StageSettings, st: dict, out: Path) -> None:
    from stdpipe import artefacts

    p = s.pipeline
    image, mask, gain, shape = st["image"], st["mask"], st["gain"], st["image"].shape
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = sp.get_objects_sextractor(image, mask=mask, mask_detect=~np.isfinite(image), thresh=p.detection_thresh,
                                        aper=p.initial_aper, gain=gain, edge=max(4, int(p.initial_aper)),
                                        minarea=p.minarea, sn=3.0, bg_size=_bg_size(p.bg_size, shape),
                                        extra_params=["MAG_AUTO", "ISOAREA_IMAGE"], _tmpdir=str(tmp), verbose=False)
    obj = obj[np.isfinite(obj["x"]) & (obj["fwhm"] > 0) & (obj["MAG_AUTO"] < 90) & (obj["ISOAREA_IMAGE"] >= p.minarea)]
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)
    if p.prefilter_outliers and len(obj) >= 30:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            good = np.asarray(artefacts.filter_detections(obj, method="catalog", classifier="isolation",
                                                          verbose=False), bool)
        obj["flags"][~good] |= FLAG_OUTLIER
    sn = 1.0 / np.maximum(np.asarray(obj["magerr"], float), 1e-6)
    fr = 2.0 * np.asarray(obj["FLUX_RADIUS"], float)
    fwhm = float(np.median(fr[(obj["flags"] == 0) & (fr > 0) & (sn > 20)]))
    aper = max(p.rel_aper * fwhm, p.min_aper_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = spm.measure_objects(obj, image, aper=aper / fwhm, fwhm=fwhm, bkgann=(p.rel_bg1, p.rel_bg2), mask=mask,
                                  gain=gain, bg_size=_bg_size(p.bg_size, shape), optimal=p.optimal_extraction,
                                  sn=None, keep_negative=True, verbose=False)
    obj = obj[np.isfinite(obj["flux"]) & np.isfinite(obj["fluxerr"]) & (obj["fluxerr"] > 0) & (obj["flux"] > 0)]
    obj = obj[obj["flux"] / obj["fluxerr"] >= p.sn]
    obj["flags"] = np.asarray(obj["flags"], dtype=np.int32)

    # the local catalogue around the frame, SCAMP, the catalogue of the solved frame
    cat_all = Table.read(s.catalog.files[0])
    pixscale = st["pixscale"]
    cat = _cone(cat_all, st["ra"], st["dec"], st["radius"] * 1.1 + 2.0 / 60)
    band = st["band"]
    col = f"{band}mag"
    o = obj[(np.asarray(obj["flags"]) & ~0x02) == 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = sa.refine_wcs_scamp(o.copy(), cat, wcs=st["wcs"], sr=max(2 * fwhm * pixscale, 2.0) / 3600,
                                  order=p.wcs_order, cat_col_ra="RAJ2000", cat_col_dec="DEJ2000", cat_col_mag=col,
                                  cat_col_mag_err=f"e_{col}", _tmpdir=str(tmp), verbose=False) or st["wcs"]
    obj["ra"], obj["dec"] = wcs.all_pix2world(obj["x"], obj["y"], 0)
    ra, dec, radius = sa.get_frame_center(wcs=wcs, width=shape[1], height=shape[0])
    cat = _cone(cat_all, ra, dec, radius * 1.05)

    # zero point with colour term, STDWeb's blend filter, limit
    c = cat[np.isfinite(np.asarray(cat[col], float)) & (np.asarray(cat[col], float) <= p.cat_limit)]
    if p.blend_filter:
        i, j, _ = sa.spherical_match(c["RAJ2000"], c["DEJ2000"], c["RAJ2000"], c["DEJ2000"], 2 * fwhm * pixscale / 3600)
        m = np.asarray(c[col], float)
        pair = (i != j) & (m[j] < m[i] + 3)
        bad = np.zeros(len(c), bool)
        bad[i[pair]] = True
        c = c[~bad]
    c1, c2 = COLOR[band]
    sr = max(0.5 * fwhm, 1.0) * pixscale / 3600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = spipe.calibrate_photometry(obj, c, sr=sr, order=p.spatial_order, bg_order=0 if p.bg_term else None,
                                       nonlin=p.nonlin_term, cat_col_mag=col, cat_col_mag_err=f"e_{col}",
                                       cat_col_mag1=f"{c1}mag" if p.use_color else None,
                                       cat_col_mag2=f"{c2}mag" if p.use_color else None, cat_col_ra="RAJ2000",
                                       cat_col_dec="DEJ2000", accept_flags=0x02, robust=True, scale_noise=True,
                                       max_intrinsic_rms=0.02, use_color=p.use_color, update=False, verbose=False)
    obj["mag_calib"] = obj["mag"] + m["zero_fn"](obj["x"], obj["y"], obj["mag"])
    obj["mag_calib_err"] = np.hypot(obj["magerr"], m["zero_fn"](obj["x"], obj["y"], obj["mag"], get_err=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Table({"mag_calib": np.asarray(obj["mag_calib"], float), "magerr": np.asarray(obj["magerr"], float)})
        limit = spipe.get_detection_limit(t[np.isfinite(t["mag_calib"])], sn=p.sn, verbose=False)
    obj.write(out / "objects.fits", overwrite=True)
    _photometry_plots(m, obj, shape, p.sn, out)
    st.update(obj=obj, cat=cat, wcs=wcs, fwhm=fwhm, aper=aper, match=m, zp=m["zero_fn"], limit=limit,
              ra=float(ra), dec=float(dec), radius=float(radius))
    shutil.rmtree(tmp, ignore_errors=True)


def _cone(cat: Table, ra: float, dec: float, radius: float) -> Table:
    d = sa.spherical_distance(ra, dec, np.asarray(cat["RAJ2000"], float), np.asarray(cat["DEJ2000"], float))
    return cat[d < radius]


def _photometry_plots(m, obj, shape, sn, out: Path) -> None:
    import matplotlib.pyplot as plt
    from stdpipe import plots as splots

    fig = plt.figure(figsize=(8, 5))
    splots.plot_photometric_match(m, ax=fig.gca(), mode="mag")
    fig.savefig(out / "photometry_match.png", dpi=80)
    plt.close(fig)
    fig = plt.figure(figsize=(8, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    splots.plot_photometric_match(m, ax=ax1, mode="model", show_dots=True, aspect="equal",
                                  range=[[0, shape[1]], [0, shape[0]]])
    splots.plot_photometric_match(m, ax=ax2, mode="residuals", show_dots=True, aspect="equal",
                                  range=[[0, shape[1]], [0, shape[0]]])
    fig.savefig(out / "photometry_zeropoint.png", dpi=80)
    plt.close(fig)
    fig = plt.figure(figsize=(7, 4.5))
    splots.plot_detection_limit(obj, sn=sn, ax=fig.gca())
    fig.savefig(out / "photometry_limit.png", dpi=80)
    plt.close(fig)


# ====================================================================================== transients
def transients(s: StageSettings, st: dict, out: Path) -> None:
    raise NotImplementedError("stdd's transients stage has not landed; nothing to mirror yet")


# ====================================================================================== subtraction
def subtraction(s: StageSettings, st: dict, out: Path) -> None:
    raise NotImplementedError("stdd's subtraction stage has not landed; nothing to mirror yet")


# ====================================================================================== driver
STAGES = ("inspect", "photometry", "transients", "subtraction")


def process(frame: Path, s: StageSettings, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    st: dict = {}
    steps = [x for x in STAGES if x in s.pipeline.steps]
    stages: dict[str, float] = {}
    t_all = time.perf_counter()
    status, error = "done", None
    for name in steps:
        t0 = time.perf_counter()
        try:
            if name == "inspect":
                inspect(frame, s, st)
            else:
                globals()[name](s, st, out)
        except Exception as e:  # the comparison needs to know, not a traceback
            status, error = "failed", f"{name}: {type(e).__name__}: {e}"
            stages[name] = round(time.perf_counter() - t0, 3)
            break
        stages[name] = round(time.perf_counter() - t0, 3)
    return {"frame": str(frame), "status": status, "error": error, "stages": stages,
            "total_s": round(time.perf_counter() - t_all, 3)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print("usage: python -m bench.plain_script SETTINGS_JSON WORKDIR FRAME [FRAME ...]", file=sys.stderr)
        return 2
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
                      "import_s": round(IMPORT_S, 3), "peak_rss_mb": hwm,
                      "children_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stacking: frames of one field combined into one deeper frame, with a header true to its noise.

Design note (STDWeb's stacking, made explicit): each input is read with the inspect stage's
header rules (gain, saturation, exposure, start time), its background removed (SEP, when
`subtract_bg`, STDWeb's default), cosmic rays masked on request, scaled to the first input's
photometric system — by zero point when the inputs are calibrated (their result's `zp`), else by
exposure time — and put on the first input's pixel grid: with SWarp through its celestial WCS, or,
when a frame has none, by the translation that best aligns its stars (FFT cross-correlation),
recorded as such. Masked pixels (non-finite, saturated, cosmic rays, outside an input's footprint)
are left out of the combination and propagate as NaN where no input is left.

Methods: `sum` (STDWeb's default; a pixel seen by fewer inputs is scaled up to all of them),
`clipped_mean` (3σ), `median`. The noise model in the header: an input scaled by s with gain g
(e⁻/ADU) has gain g/s; the sum of N such has GAIN = Σ sᵢ / Σ(sᵢ²/gᵢ) (equal flux per input), the
mean N times that, the median 2N/π times that (the median's efficiency). SATURATE: the level, after
scaling and background removal, the weakest input reaches — times N for the sum. Time: DATE-OBS is
set so that DATE-OBS + EXPTIME/2 is the midpoint of the set (first start to last end), EXPTIME the
total exposure (TOTEXP too), NCOMBINE, STK_MTHD, and every input's name (STKIN001…) recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

METHODS = ("sum", "clipped_mean", "median")


class StackError(ValueError):
    """The inputs cannot be stacked; the message names the input and the reason."""


@dataclass
class Input:
    path: Path
    data: np.ndarray
    header: fits.Header
    gain: float
    saturation: float | None
    exptime: float
    start: Time | None
    wcs: WCS | None
    zp: float | None = None
    background: float = 0.0
    notes: list[str] = field(default_factory=list)


def read_input(path: Path, zp: float | None = None) -> Input:
    from ..stages.header import (GAIN_KEYWORDS, SATURATION_KEYWORDS, FrameError, exposure_time, fix_header,
                                 load_first_image, number, observation_start)

    try:
        data, header, notes = load_first_image(Path(path))
    except FrameError as e:
        raise StackError(f"{Path(path).name}: {e}") from None
    notes = list(notes) + fix_header(header, data.shape)
    gain, _ = number(header, GAIN_KEYWORDS)
    sat, _ = number(header, SATURATION_KEYWORDS)
    exptime, _ = exposure_time(header)
    start, _ = observation_start(header)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(header)
        # a processed frame's image (its work folder): its refined WCS and what inspect decided
        side = Path(path).parent
        if Path(path).name == "image.fits" and (side / "image.wcs").is_file():
            w = WCS(fits.getheader(side / "image.wcs"))
            notes.append("the refined WCS of its photometry stage")
        if Path(path).name == "image.fits" and (side / "inspect.json").is_file():
            import json

            state = json.loads((side / "inspect.json").read_text())
            gain = state.get("gain") or gain
            sat = state.get("saturation") or sat
            exptime = state.get("exptime") or exptime
            if state.get("time_start"):
                start = Time(state["time_start"])
    return Input(Path(path), np.asarray(data, dtype=np.float64), header, float(gain or 1.0),
                 float(sat) if sat else None, float(exptime or 1.0), start, w if w.has_celestial else None, zp,
                 notes=notes)


def _mask(inp: Input, mask_cosmics: bool) -> np.ndarray:
    m = ~np.isfinite(inp.data)
    if inp.saturation:
        m |= np.nan_to_num(inp.data, nan=0.0) >= 0.98 * inp.saturation
    if mask_cosmics:
        import astroscrappy

        crmask, _ = astroscrappy.detect_cosmics(np.nan_to_num(inp.data).astype(np.float32), inmask=m,
                                                gain=inp.gain, sigclip=4.5, verbose=False)
        m |= crmask
        inp.notes.append(f"{int(crmask.sum())} cosmic-ray pixel(s) masked")
    return m


def _background(inp: Input, mask: np.ndarray) -> None:
    try:
        import sep_x as sep
    except ImportError:  # pragma: no cover
        import sep
    d = np.ascontiguousarray(np.where(np.isfinite(inp.data), inp.data, np.nanmedian(inp.data)), dtype=np.float64)
    bg = sep.Background(d, mask=mask)
    inp.data = inp.data - bg.back()
    inp.background = float(bg.globalback)


def _shift_to(ref: np.ndarray, img: np.ndarray) -> tuple[float, float]:
    """(dy, dx) that moves `img` onto `ref`: the peak of their cross-correlation (whole pixels,
    refined to a tenth by a parabola), on clipped, background-free images."""
    from scipy.ndimage import median_filter

    def prep(a):
        # hot pixels and the fixed pattern sit still between frames: a 3x3 median takes single pixels
        # away, and only what stands 3 sigma above the sky (stars) is correlated
        a = median_filter(np.nan_to_num(a, nan=0.0), size=3)
        med = np.median(a)
        sigma = 1.4826 * np.median(np.abs(a - med))
        hi = np.percentile(a, 99.9)
        return np.clip(a - med - 3 * sigma, 0, max(hi - med, 1e-9))

    a, b = prep(ref), prep(img)
    f = np.fft.rfft2(a) * np.conj(np.fft.rfft2(b, s=a.shape))
    cc = np.fft.irfft2(f, s=a.shape)
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)

    def refine(c_m, c_0, c_p):
        den = c_m - 2 * c_0 + c_p
        return 0.5 * (c_m - c_p) / den if den != 0 else 0.0

    ny, nx = cc.shape
    dy = iy + refine(cc[(iy - 1) % ny, ix], cc[iy, ix], cc[(iy + 1) % ny, ix])
    dx = ix + refine(cc[iy, (ix - 1) % nx], cc[iy, ix], cc[iy, (ix + 1) % nx])
    dy = dy - ny if dy > ny / 2 else dy
    dx = dx - nx if dx > nx / 2 else dx
    return float(dy), float(dx)


def _onto(ref: Input, inp: Input, data: np.ndarray, tmpdir, log) -> tuple[np.ndarray, str]:
    if inp is ref:
        return data, "reference"
    shape = ref.data.shape
    if ref.wcs is not None and inp.wcs is not None:
        from ..sources.templates import reproject

        hdr = inp.wcs.to_header(relax=True)
        return reproject(data, hdr, ref.wcs, shape, method="swarp", tmpdir=tmpdir, log=log), "wcs (SWarp)"
    from scipy.ndimage import shift

    if data.shape != shape:
        raise StackError(f"{inp.path.name}: {data.shape[1]}x{data.shape[0]} px, the first input is "
                         f"{shape[1]}x{shape[0]}, and without a WCS on both only frames of one size can be aligned")
    dy, dx = _shift_to(np.nan_to_num(ref.data), np.nan_to_num(data))
    out = shift(np.nan_to_num(data, nan=0.0), (dy, dx), order=1, mode="constant", cval=np.nan)
    nanmask = shift(np.isnan(data).astype(float), (dy, dx), order=0, mode="constant", cval=1.0) > 0
    out[nanmask] = np.nan
    return out, f"pixel shift ({dx:+.1f}, {dy:+.1f}) px: no WCS"


def stack(paths: Sequence[Path], out: Path, *, method: str = "sum", subtract_bg: bool = True,
          mask_cosmics: bool = False, zps: Sequence[float | None] | None = None, tmpdir: Path | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Stack `paths` into the FITS file `out`; returns what was done (the stack's record)."""
    if method not in METHODS:
        raise StackError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(paths) < 2:
        raise StackError("stacking needs at least two frames")
    zps = list(zps) if zps is not None else [None] * len(paths)
    inputs = [read_input(Path(p), zp) for p, zp in zip(paths, zps)]
    ref = inputs[0]
    calibrated = all(i.zp is not None for i in inputs)
    layers, records = [], []
    for inp in inputs:
        mask = _mask(inp, mask_cosmics)
        if subtract_bg:
            _background(inp, mask)
        scale = 10 ** (0.4 * (ref.zp - inp.zp)) if calibrated else ref.exptime / inp.exptime
        data = np.where(mask, np.nan, inp.data * scale)
        aligned, how = _onto(ref, inp, data, tmpdir, log)
        layers.append(aligned)
        sat = None
        if inp.saturation:
            sat = (inp.saturation - (inp.background if subtract_bg else 0.0)) * scale
        records.append({"file": str(inp.path), "name": inp.path.name, "scale": scale, "gain": inp.gain,
                        "exptime": inp.exptime, "zp": inp.zp, "background": inp.background,
                        "start": inp.start.isot if inp.start is not None else None, "alignment": how,
                        "saturation": sat, "masked_fraction": round(float(np.mean(np.isnan(aligned))), 4),
                        "notes": inp.notes})
        log(f"{inp.path.name}: scale {scale:.4f} ({'zero point' if calibrated else 'exposure time'}), {how}")
    cube = np.array(layers)
    n = len(layers)
    valid = np.sum(np.isfinite(cube), axis=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "sum":
            combined = np.nansum(cube, axis=0) * (n / np.maximum(valid, 1))
        elif method == "median":
            combined = np.nanmedian(cube, axis=0)
        else:
            from astropy.stats import sigma_clipped_stats

            combined = sigma_clipped_stats(cube, axis=0, sigma=3.0, maxiters=3)[0]
    combined = np.where(valid > 0, combined, np.nan).astype(np.float32)
    scales = np.array([r["scale"] for r in records])
    gains = np.array([r["gain"] for r in records])
    gain_sum = float(scales.sum() / np.sum(scales ** 2 / gains))
    gain = {"sum": gain_sum, "clipped_mean": n * gain_sum, "median": 2 * n * gain_sum / math.pi}[method]
    sats = [r["saturation"] for r in records if r["saturation"]]
    saturation = (min(sats) * (n if method == "sum" else 1)) if sats else None
    starts = [(Time(r["start"]), r["exptime"]) for r in records if r["start"]]
    total = float(sum(r["exptime"] for r in records))
    header = ref.wcs.to_header(relax=True) if ref.wcs is not None else fits.Header()
    for key in ("FILTER", "INSTRUME", "TELESCOP", "OBJECT", "BAND"):
        if key in ref.header:
            header[key] = ref.header[key]
    mid = None
    if starts:
        from astropy.time import TimeDelta

        first = min(t for t, _ in starts)
        last = max(t + TimeDelta(e, format="sec") for t, e in starts)
        mid = first + (last - first) / 2
        header["DATE-OBS"] = ((mid - TimeDelta(total / 2, format="sec")).isot, "so that DATE-OBS + EXPTIME/2 = the set's midpoint")
        header["DATE-MID"] = (mid.isot, "midpoint of the stacked set")
        header["MJD-MID"] = (mid.mjd, "midpoint of the stacked set")
    header["EXPTIME"] = (total, "total exposure of the inputs, s")
    header["TOTEXP"] = (total, "total exposure of the inputs, s")
    header["GAIN"] = (round(gain, 5), "e-/ADU of the combination (noise model)")
    if saturation:
        header["SATURATE"] = (round(saturation, 2), "ADU the weakest input saturates at, in the stack")
    header["NCOMBINE"] = (n, "frames stacked")
    header["STK_MTHD"] = (method, "sum / clipped_mean / median")
    header["STK_SCAL"] = ("zero point" if calibrated else "exposure time", "how inputs were scaled")
    header["STK_BG"] = (bool(subtract_bg), "inputs background-subtracted")
    for k, r in enumerate(records, 1):
        header[f"STKIN{k:03d}"] = r["name"][:68]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fits.writeto(tmp, combined, header, overwrite=True)
    tmp.replace(out)
    return {"path": str(out), "method": method, "n": n, "inputs": records, "gain": gain,
            "saturation": saturation, "exptime_total": total, "time_mid": mid.isot if mid is not None else None,
            "scaled_by": "zero point" if calibrated else "exposure time", "background_subtracted": subtract_bg,
            "masked_fraction": round(float(np.mean(valid == 0)), 4),
            "alignment": sorted({r["alignment"] for r in records if r["alignment"] != "reference"})}

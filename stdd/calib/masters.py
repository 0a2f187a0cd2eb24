"""One master from one set of calibration frames, combined with ccdproc, with its quality figures.

Every frame is read as stored (BZERO applied), its saturated pixels counted, its overscan
subtracted and trimmed per the instrument profile (`geometry`); darks lose the master bias, flats
the master bias and the (scaled) master dark. The set is combined by ccdproc's `Combiner`: sigma
clipping about the median (`calibration.sigma_clip`, MAD deviation), then the median (or mean)
of what is left; flats are scaled to a common level first and the master normalised to a median
of 1. The combination's median and spread use bottleneck's NaN-aware functions on the clipped
stack (ccdproc's masked-array defaults take four times as long on 20 frames of 2048²).

Quality figures, recorded in the master's header (Q_* keys) and the library index: the level
(median ADU; for flats the range of the frames' levels), the noise (per frame, from the
difference of two frames, and of the master), the saturated fraction, the illumination (a
flat's smoothed minimum and maximum relative to its median), the dark current and its hot
pixels, the number of frames combined and those left out, each with its reason. A warning is
kept for anything outside what a sound master shows (too few frames, a flat too faint or too
bright, frames rejected); the master is still built and the warning travels with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import geometry
from .frametypes import FrameInfo
from .grouping import Group


@dataclass
class Loaded:
    info: FrameInfo
    data: np.ndarray          # float32, overscan subtracted and trimmed
    overscan: float | None
    saturated: float          # fraction of raw pixels at or above saturation
    header: object
    geometry_notes: list[str] = field(default_factory=list)


@dataclass
class Master:
    kind: str
    group: Group
    data: np.ndarray          # float32
    error: float              # typical 1-sigma per pixel of the master (ADU; for flats relative)
    quality: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)
    bias_subtracted: bool = True
    geometry_notes: list[str] = field(default_factory=list)


class MasterError(Exception):
    """No master can be made from this set; the message says why."""


def raw_saturation(header, profile) -> float | None:
    """The raw saturation level (ADU): the profile's, the header's SATURATE, else the 16-bit limit
    of an integer camera frame."""
    if profile is not None and profile.saturation:
        return float(profile.saturation)
    for key in ("SATURATE", "SATLEVEL", "MAXLIN"):
        try:
            return float(header[key])
        except (KeyError, TypeError, ValueError):
            continue
    if int(header.get("BITPIX", 0)) in (16, 32) and float(header.get("BZERO", 0) or 0) in (32768.0, 2**31):
        return 65535.0 if int(header["BITPIX"]) == 16 else None
    if int(header.get("BITPIX", 0)) == 16:
        return 32767.0
    return None


def load(info: FrameInfo, profile) -> Loaded:
    """A calibration frame as the master needs it (overscan off, trimmed)."""
    from ..stages.header import load_first_image

    image, header, _ = load_first_image(info.path)
    sat = raw_saturation(header, profile)
    saturated = float(np.mean(image >= sat)) if sat is not None else 0.0
    overscan, trim, notes = geometry.sections(profile, header, image.shape)
    data, level = geometry.apply(image, overscan, trim)
    return Loaded(info, np.ascontiguousarray(data, dtype=np.float32), level, saturated, header, notes)


def robust_std(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float32).ravel()
    if a.size > 400_000:
        a = a[:: a.size // 400_000]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan")
    med = np.median(a)
    return float(1.4826 * np.median(np.abs(a - med)))


def pair_noise(frames: list[Loaded]) -> float | None:
    """Per-frame pixel noise (ADU) from the difference of the first two frames (no structure left)."""
    if len(frames) < 2:
        return None
    a, b = frames[0].data, frames[1].data
    return robust_std(a - b * (np.median(a) / np.median(b) if frames[0].info.kind == "flat" else 1.0)) / np.sqrt(2)


def combine(arrays: list[np.ndarray], sigma: float, method: str, scale: list[float] | None = None
            ) -> tuple[np.ndarray, float]:
    """ccdproc's Combiner: sigma clipping about the median, then median or mean. Returns the
    combined array and the fraction of values clipped."""
    import bottleneck as bn
    from astropy.nddata import CCDData
    from ccdproc import Combiner

    def nanmedian(d, axis=0):
        return bn.nanmedian(np.ma.filled(d.astype(np.float32), np.nan), axis=axis)

    def nanstd(d, axis=0):
        return bn.nanstd(np.ma.filled(d.astype(np.float32), np.nan), axis=axis)

    comb = Combiner([CCDData(a, unit="adu") for a in arrays], dtype=np.float32)
    if scale is not None:
        comb.scaling = list(scale)
    if len(arrays) >= 3:
        comb.sigma_clipping(low_thresh=sigma, high_thresh=sigma, func="median", dev_func="mad_std")
    clipped = float(np.mean(comb.data_arr.mask)) if np.ndim(comb.data_arr.mask) else 0.0
    if method == "median":
        out = comb.median_combine(median_func=nanmedian, uncertainty_func=nanstd)
    else:
        out = comb.average_combine(uncertainty_func=nanstd)
    data = np.asarray(out.data, dtype=np.float32)
    if out.mask is not None and np.any(out.mask):  # every frame clipped there: take the plain median
        plain = np.median(np.stack(arrays), axis=0)
        data[out.mask] = plain[out.mask]
    return data, clipped


def _finish(master: Master, frames: list[Loaded], settings) -> Master:
    n = len(master.used)
    master.quality["n_frames"] = n
    master.quality["n_left_out"] = len(master.left_out)
    if n < settings.min_frames:
        master.warnings.append(f"only {n} frame(s), fewer than calibration.min_frames = {settings.min_frames}")
    for lo in master.left_out:
        master.warnings.append(f"left out {lo['file']}: {lo['reason']}")
    sat = max((f.saturated for f in frames), default=0.0)
    master.quality["saturated_fraction_max"] = round(sat, 6)
    master.geometry_notes = list(frames[0].geometry_notes) if frames else []
    return master


def build_bias(group: Group, frames: list[Loaded], settings) -> Master:
    levels = np.array([float(np.median(f.data)) for f in frames])
    noise = pair_noise(frames)
    keep = list(frames)
    left: list[dict] = []
    if len(frames) >= 3 and noise:
        med = float(np.median(levels))
        keep, left = [], []
        for f, lv in zip(frames, levels):
            if abs(lv - med) > max(20 * noise, 5.0):
                left.append({"file": f.info.path, "reason": f"level {lv:.1f} ADU, the set's is {med:.1f}"})
            else:
                keep.append(f)
    if not keep:
        raise MasterError(f"{group.label()}: every frame left out")
    data, clipped = combine([f.data for f in keep], settings.sigma_clip, settings.combine)
    err = (noise or robust_std(data)) * (1.2533 if settings.combine == "median" else 1.0) / np.sqrt(len(keep))
    m = Master("bias", group, data, float(err), used=[f.info.path for f in keep], left_out=left)
    m.quality.update(level_adu=round(float(np.median(data)), 3), noise_adu=_r(noise),
                     master_noise_adu=_r(err), level_spread_adu=_r(float(np.std(levels))),
                     overscan_adu=_r(_median([f.overscan for f in keep])), clipped_fraction=round(clipped, 5))
    return _finish(m, frames, settings)


def build_dark(group: Group, frames: list[Loaded], bias: np.ndarray | None, bias_err: float, settings) -> Master:
    arrays = [f.data - bias if bias is not None else f.data for f in frames]
    data, clipped = combine(arrays, settings.sigma_clip, settings.combine)
    noise = pair_noise(frames)
    err = (noise or robust_std(data)) * (1.2533 if settings.combine == "median" else 1.0) / np.sqrt(len(frames))
    err = float(np.hypot(err, bias_err)) if bias is not None else float(err)
    m = Master("dark", group, data, err, used=[f.info.path for f in frames], bias_subtracted=bias is not None)
    level = float(np.median(data))
    spread = robust_std(data)
    hot = int(np.sum(data > level + settings.hot_pixel_sigma * max(spread, err)))
    exptime = group.exptime or 0.0
    m.quality.update(level_adu=round(level, 3), dark_rate_adu_s=_r(level / exptime if exptime else None),
                     noise_adu=_r(noise), master_noise_adu=_r(err), hot_pixels=hot,
                     hot_fraction=round(hot / data.size, 6), clipped_fraction=round(clipped, 5))
    if bias is None:
        m.warnings.append("no master bias for these darks: the master dark keeps the bias and is used only "
                          "for frames of its own exposure time, without a separate bias")
    return _finish(m, frames, settings)


def build_flat(group: Group, frames: list[Loaded], bias: np.ndarray | None, dark: tuple | None,
               saturation: float | None, settings) -> Master:
    """`dark`: (master dark array, its exposure time, bias-subtracted?) or None."""
    arrays, levels, keep, left = [], [], [], []
    for f in frames:
        a = f.data - bias if bias is not None else f.data.copy()
        if dark is not None:
            d, d_exp, _ = dark
            if f.info.exptime and d_exp:
                a -= d * np.float32(f.info.exptime / d_exp)
        lv = float(np.median(a))
        if lv < settings.flat_min_level:
            left.append({"file": f.info.path, "reason": f"level {lv:.0f} ADU, below calibration.flat_min_level "
                                                        f"{settings.flat_min_level:g}"})
            continue
        if saturation and lv > settings.flat_max_fraction * saturation:
            left.append({"file": f.info.path, "reason": f"level {lv:.0f} ADU, above {settings.flat_max_fraction:g} "
                                                        f"of saturation {saturation:g}"})
            continue
        arrays.append(a)
        levels.append(lv)
        keep.append(f)
    if not keep:
        raise MasterError(f"{group.label()}: no usable flat ({'; '.join(lo['reason'] for lo in left)})")
    data, clipped = combine(arrays, settings.sigma_clip, settings.combine, scale=[1.0 / lv for lv in levels])
    norm = float(np.median(data))
    data = data / np.float32(norm)
    noise = pair_noise(keep)
    # relative noise of one flat, from two of them; the master's is that over sqrt(N)
    rel = noise / float(np.mean(levels[:2])) if noise else robust_std(np.diff(data, axis=1)) / np.sqrt(2)
    err = float(rel * (1.2533 if settings.combine == "median" else 1.0) / np.sqrt(len(keep)))
    m = Master("flat", group, data.astype(np.float32), err, used=[f.info.path for f in keep], left_out=left)
    small = _block_median(data, 32)
    m.quality.update(level_min_adu=round(min(levels), 1), level_max_adu=round(max(levels), 1),
                     illumination_min=round(float(np.min(small)), 4),
                     illumination_max=round(float(np.max(small)), 4),
                     pixel_noise=_r(robust_std(np.diff(data, axis=1)) / np.sqrt(2)),
                     noise_adu=_r(noise), master_noise=_r(err, 6), clipped_fraction=round(clipped, 5))
    if m.quality["illumination_min"] < 0.3:
        m.warnings.append(f"illumination falls to {m.quality['illumination_min']:.2f} of the median somewhere: "
                          "vignetting that strong leaves the corners noisy")
    return _finish(m, frames, settings)


def _block_median(a: np.ndarray, n: int) -> np.ndarray:
    h, w = (a.shape[0] // n) * n, (a.shape[1] // n) * n
    if h == 0 or w == 0:
        return np.array([np.median(a)])
    return np.median(a[:h, :w].reshape(h // n, n, w // n, n).transpose(0, 2, 1, 3).reshape(h // n, w // n, -1),
                     axis=2)


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _r(v, nd: int = 4):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)

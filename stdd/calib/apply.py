"""A light frame corrected with its masters, and its error propagated.

In order, each where the instrument profile's `[calibration]` table allows it (all by default):
overscan subtracted and trimmed (`geometry`), the master bias subtracted, the master dark scaled
to the frame's exposure time (when the profile allows scaling, else one of the same exposure)
subtracted, the master flat of the frame's band divided, the bad-pixel mask taken into the
frame's mask; pixels saturated in the raw frame are flagged before anything changes them.
For each kind the master taken is the one matching the frame (`library.mismatch`) nearest in
time within the frame's max age; a kind without one is *missing*, said in words ("no r flat
within 30 days (the nearest is 41.2 days away, ...)").

Error (1σ, ADU of the calibrated frame), per pixel:
    var = (read noise / gain)² + max(frame − bias − dark, 0) / gain + σ_bias² + (scale·σ_dark)²
    σ² = var / flat² + (frame / flat)² · σ_flat²
with gain and read noise from the profile, else the header (GAIN, EGAIN, ...; RDNOISE, ...),
and σ_master the master's own typical per-pixel noise recorded in the library.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import geometry
from .library import Library, describe_need
from .masters import raw_saturation

#: bits of the frame's mask (as stdd.stages.inspect.MASK_BITS): saturated, bad pixel
SATURATED, BAD_PIXEL = 2, 4
ALREADY = ("ZEROCOR", "BIASCORR", "DARKCOR", "FLATCOR", "CCDPROC", "STDDCALB")
GAIN_KEYS = ("GAIN", "EGAIN", "CCD_GAIN", "CCDGAIN")
RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE", "RDNOISE1")


class CalibrationMissing(Exception):
    """Masters are required and some are missing; the message lists them."""


@dataclass
class Outcome:
    image: np.ndarray                 # float32
    error: np.ndarray                 # float32
    mask: np.ndarray                  # uint8, SATURATED | BAD_PIXEL
    record: dict                      # result.json's `calibration`
    notes: list[str] = field(default_factory=list)
    saturation: float | None = None   # the calibrated frame's saturation level (ADU)


def _number(header, keys) -> float | None:
    for k in keys:
        try:
            v = float(header[k])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return v
    return None


def _read(lib: Library, entry: dict, dtype=np.float32) -> np.ndarray:
    from astropy.io import fits

    return np.asarray(fits.getdata(lib.path_of(entry)), dtype=dtype)


def _used(entry: dict, info, **extra) -> dict:
    age = abs((entry.get("mjd") or 0.0) - info.mjd) if info.mjd is not None and entry.get("mjd") is not None else None
    out = {"file": entry["file"], "date_obs": entry.get("date_obs"), "n_frames": entry.get("n_frames"),
           "age_days": round(age, 3) if age is not None else None}
    if entry.get("warnings"):
        out["warnings"] = list(entry["warnings"])
    out.update(extra)
    return out


def calibrate(image: np.ndarray, header, info, profile, lib: Library, settings, *,
              max_age: dict[str, float], required: bool) -> Outcome:
    """Calibrate the light frame `image` (as stored, BZERO applied) described by `info` (FrameInfo).
    `settings` is the CalibrationSettings; `max_age` days per kind. Raises CalibrationMissing
    when `required` and a needed master is missing, geometry.GeometryError for bad sections."""
    cal = profile.calibration if profile is not None else None
    want = {k: (getattr(cal, k) if cal is not None else True) for k in ("bias", "dark", "flat")}
    want["bpm"] = cal.bad_pixels if cal is not None else True
    scaling = cal.dark_scaling if cal is not None else True
    notes: list[str] = []
    record: dict = {"library": str(lib.folder), "image_type": info.imagetyp, "masters": {}, "missing": [],
                    "required": required}
    done_before = [k for k in ALREADY if k in header]
    if done_before:
        for k in ("bias", "dark", "flat"):
            want[k] = False
        notes.append(f"the header says the frame is calibrated already ({', '.join(done_before)}): no bias, dark "
                     "or flat applied")

    sat_raw = raw_saturation(header, profile)
    saturated = image >= sat_raw if sat_raw is not None else np.zeros(image.shape, dtype=bool)
    overscan, trim, geo_notes = geometry.sections(profile, header, image.shape)
    data, level = geometry.apply(image.astype(np.float32), overscan, trim)
    data = np.array(data, dtype=np.float32)
    if trim is not None:
        x1, x2, y1, y2 = trim
        saturated = saturated[y1:y2 + 1, x1:x2 + 1]
    record["overscan_adu"] = round(level, 3) if level is not None else None
    record["sections"] = geo_notes
    if level is not None:
        notes.append(f"overscan subtracted: {geo_notes[0]}, median {level:.1f} ADU")
    if trim is not None:
        notes.append(f"trimmed to {geo_notes[-1]}")

    gain = (profile.gain if profile is not None and profile.gain else None) or _number(header, GAIN_KEYS)
    rn = (profile.read_noise if profile is not None and profile.read_noise is not None else None) \
        or _number(header, RDNOISE_KEYS) or 0.0
    if gain is None:
        gain = 1.0
        notes.append("no gain in the profile or header: the error assumes 1 e-/ADU")
    var = np.full(data.shape, (rn / gain) ** 2, dtype=np.float32)

    def find(kind: str):
        entry, why = lib.nearest(kind, info, max_age["flat" if kind == "bpm" else kind],
                                 temperature_band=settings.temperature_band, dark_scaling=scaling)
        if entry is not None:
            shape = list(entry.get("shape") or [])
            if shape and shape != list(data.shape):
                return None, f"the {kind} master {entry['file']} is {shape[1]}x{shape[0]}, the trimmed frame " \
                             f"{data.shape[1]}x{data.shape[0]}"
        return entry, why

    missing: list[str] = []
    dark_entry = None
    if want["dark"]:
        dark_entry, why = find("dark")
        if dark_entry is None:
            missing.append(why or f"no {describe_need('dark', info, scaling)}")
    bias_needed = want["bias"] and not (dark_entry is not None and not dark_entry.get("bias_subtracted", True))
    removed = np.zeros(data.shape, dtype=np.float32)
    sat_level = (sat_raw - (level or 0.0)) if sat_raw is not None else None
    if bias_needed:
        entry, why = find("bias")
        if entry is None:
            missing.append(why or "no bias")
        else:
            b = _read(lib, entry)
            removed += b
            var += np.float32((entry.get("error") or 0.0) ** 2)
            record["masters"]["bias"] = _used(entry, info)
    elif want["bias"] and dark_entry is not None:
        notes.append(f"the master dark {dark_entry['file']} holds the bias: no separate bias subtracted")
    if dark_entry is not None:
        exp_d = float(dark_entry.get("exptime") or 0.0)
        exp_f = float(info.exptime or 0.0)
        if not dark_entry.get("bias_subtracted", True):
            scale = 1.0
        else:
            scale = exp_f / exp_d if exp_d > 0 else 0.0
        d = _read(lib, dark_entry)
        removed += d * np.float32(scale)
        var += np.float32((scale * (dark_entry.get("error") or 0.0)) ** 2)
        record["masters"]["dark"] = _used(dark_entry, info, scale=round(scale, 6), exptime=exp_d)
    data -= removed
    if sat_level is not None:
        sat_level -= float(np.median(removed))
    var += np.maximum(data, 0) / np.float32(gain)

    if want["flat"]:
        entry, why = find("flat")
        if entry is None:
            missing.append(why or f"no {describe_need('flat', info)}")
        else:
            f = _read(lib, entry)
            good = f > 0.05
            f = np.where(good, f, 1.0).astype(np.float32)
            data /= f
            ferr = float(entry.get("error") or 0.0)
            var = var / (f * f) + (data * data) * np.float32(ferr * ferr)
            saturated |= ~good
            if sat_level is not None:
                sat_level /= float(np.max(f))
            record["masters"]["flat"] = _used(entry, info, band=entry.get("band"))
    mask = np.where(saturated, SATURATED, 0).astype(np.uint8)
    if want["bpm"]:
        entry, why = find("bpm")
        if entry is not None:
            bpm = _read(lib, entry, np.uint8)
            mask[bpm > 0] |= BAD_PIXEL
            record["masters"]["bpm"] = _used(entry, info, pixels=int(np.count_nonzero(bpm)))
        else:
            notes.append(f"no bad-pixel mask: {why}" if why else "no bad-pixel mask")
    record["missing"] = missing
    if missing and required:
        raise CalibrationMissing("; ".join(missing) + " (the profile requires masters)")
    for m in missing:
        notes.append(f"{m}: not corrected")
    return Outcome(data, np.sqrt(var).astype(np.float32), mask, record, notes, sat_level)

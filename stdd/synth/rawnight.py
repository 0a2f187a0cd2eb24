"""A synthetic raw night as a camera writes it: bias, dark, flat and light frames, with exact truth.

The camera (instrument ``SYNTHRAW``, profile ``config/instruments/synth-raw.toml``): an image area
of ``size``² pixels followed by ``overscan`` columns of overscan; 16-bit unsigned pixels stored as
BITPIX 16 with BZERO 32768; MaxIm DL's IMAGETYP values ('Bias Frame', 'Dark Frame', 'Flat Field',
'Light Frame'), XBINNING/YBINNING, CCD-TEMP, SET-TEMP, EGAIN, READOUTM. What every frame carries:

* bias — a level drifting from frame to frame (the overscan shows the drift), a fixed 2-D pattern
  over the image area (a gradient along x and a smooth bump, ``bias_gradient`` ADU peak to peak),
  and read noise;
* dark current — ``dark_rate`` e⁻/s everywhere, and hot pixels (``hot_fraction`` of the pixels,
  20–400 e⁻/s each), scaling with the exposure time;
* the flat field — vignetting falling to ``1 − vignetting`` in the corners (quadratic in radius),
  ``n_dust`` dust donuts (rings 8–15 % deep), a dead column at 40 % response and 0.5 % pixel-to-pixel
  response; every light and flat frame is multiplied by it.

Light frames are :func:`stdd.synth.field.make_field` skies (its catalogue and truth: stars with
their exact magnitudes) rendered without noise, then multiplied by the flat, given dark current,
Poisson and read noise, the bias and overscan, digitised and clipped at 65535. Masters built
from the bias, dark and flat frames and applied to a light frame give back make_field's sky.

Written into ``out_dir``: ``raw/NNN-<kind>.fits`` in camera order (biases, darks, flats, lights),
``catalog.fits``, ``truth/light-N.json`` (make_field's truth of each light frame), ``truth/flat.fits``
(the true flat), ``truth/hot_pixels.fits`` (their rates, e⁻/s) and ``night.json`` (everything above
and the file list in order).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

INSTRUMENT = "SYNTHRAW"
IMAGETYP = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "light": "Light Frame"}


@dataclass
class RawNight:
    folder: Path
    files: list[Path]           # in camera order
    kinds: list[str]
    lights: list[Path]
    truths: list[Path]
    catalog: Path
    night: dict


def camera_pattern(size: int, rng: np.random.Generator, *, bias_level: float, bias_gradient: float,
                   vignetting: float, n_dust: int, hot_fraction: float) -> dict:
    """The fixed patterns of the camera: 2-D bias, flat, hot-pixel rates."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = x / (size - 1) - 0.5, y / (size - 1) - 0.5
    bias2d = bias_level + bias_gradient * (0.7 * (u + 0.5) + 0.3 * np.exp(-((u - 0.2) ** 2 + (v + 0.1) ** 2) / 0.05))
    r2 = (u * u + v * v) / 0.5  # 1 in the corners
    flat = 1.0 - vignetting * r2
    dust = []
    for _ in range(n_dust):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        radius = rng.uniform(0.025, 0.045) * size
        width = 0.3 * radius
        depth = rng.uniform(0.08, 0.15)
        d = np.hypot(x - cx, y - cy)
        flat *= 1.0 - depth * np.exp(-0.5 * ((d - radius) / width) ** 2)
        dust.append({"x": float(cx), "y": float(cy), "radius": float(radius), "depth": float(depth)})
    dead_col = int(rng.integers(size // 8, size // 3))
    flat[:, dead_col] *= 0.4
    flat *= 1.0 + rng.normal(0.0, 0.005, flat.shape)
    hot = np.zeros((size, size))
    n_hot = int(round(hot_fraction * size * size))
    idx = rng.choice(size * size, n_hot, replace=False)
    hot.ravel()[idx] = rng.uniform(20.0, 400.0, n_hot)
    return {"bias2d": bias2d, "flat": flat, "hot": hot, "dust": dust, "dead_column": dead_col}


def _header(kind: str, date: datetime, exptime: float, temp: float, gain: float, band: str | None,
            extra: fits.Header | None = None) -> fits.Header:
    h = fits.Header()
    h["IMAGETYP"] = IMAGETYP[kind]
    h["DATE-OBS"] = date.isoformat(timespec="seconds")
    h["EXPTIME"] = float(exptime)
    h["EXPOSURE"] = float(exptime)
    h["INSTRUME"] = INSTRUMENT
    h["XBINNING"] = 1
    h["YBINNING"] = 1
    h["CCD-TEMP"] = round(temp, 2)
    h["SET-TEMP"] = -20.0
    h["EGAIN"] = gain
    h["READOUTM"] = "Normal"
    if band:
        h["FILTER"] = band
    if extra is not None:
        h.extend(extra, update=True)
    return h


def _digitise(image_area_adu: np.ndarray, overscan_level: float, overscan: int, readnoise_adu: float,
              rng: np.random.Generator) -> np.ndarray:
    size = image_area_adu.shape[0]
    full = np.empty((size, size + overscan))
    full[:, :size] = image_area_adu
    full[:, size:] = overscan_level + rng.normal(0.0, readnoise_adu, (size, overscan))
    return np.clip(np.round(full), 0, 65535).astype(np.uint16)


def _write(path: Path, data: np.ndarray, header: fits.Header) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(data=data, header=header)  # uint16 is written as BITPIX 16 with BZERO 32768
    hdu.writeto(path, overwrite=True)


def make_raw_night(out_dir, *, seed: int = 1, size: int = 512, overscan: int = 32, n_bias: int = 5,
                   n_dark: int = 5, n_flat: int = 5, n_light: int = 3, dark_exptime: float = 120.0,
                   light_exptime: float = 60.0, flat_exptime: float = 3.0, flat_level: float = 25000.0,
                   band: str = "r", gain: float = 1.5, readnoise: float = 7.0, bias_level: float = 1000.0,
                   bias_gradient: float = 25.0, dark_rate: float = 0.1, hot_fraction: float = 0.002,
                   vignetting: float = 0.2, n_dust: int = 3, sky: float = 800.0, n_stars: int | None = None,
                   date: str = "2026-03-01T18:00:00", ra: float = 150.0, dec: float = 30.0,
                   n_cosmics: int = 5) -> RawNight:
    """Write a raw night into ``out_dir`` (see the module docstring); the lights' sky is that of
    make_field with the same ``seed``."""
    from .field import default_starfield, make_field

    out = Path(out_dir)
    rng = np.random.default_rng([seed, 77])
    cam = camera_pattern(size, rng, bias_level=bias_level, bias_gradient=bias_gradient, vignetting=vignetting,
                         n_dust=n_dust, hot_fraction=hot_fraction)
    rn_adu = readnoise / gain
    t = datetime.fromisoformat(date)
    files: list[Path] = []
    kinds: list[str] = []
    k = 0

    def temp() -> float:
        return -20.0 + float(rng.normal(0.0, 0.1))

    def frame(kind: str, exptime: float, signal_adu: np.ndarray | None, extra=None, name_band=None):
        nonlocal k, t
        electrons = (cam["hot"] + dark_rate) * exptime
        if signal_adu is not None:
            electrons = electrons + np.clip(signal_adu, 0, None) * cam["flat"] * gain
        e = rng.poisson(electrons).astype(np.float64)
        drift = float(rng.normal(0.0, 3.0))
        image = cam["bias2d"] + drift + e / gain + rng.normal(0.0, rn_adu, e.shape)
        raw = _digitise(image, bias_level + drift, overscan, rn_adu, rng)
        k += 1
        path = out / "raw" / f"{k:03d}-{kind}{'-' + name_band if name_band else ''}.fits"
        _write(path, raw, _header(kind, t, exptime, temp(), gain, band if kind in ("flat", "light") else None,
                                  extra))
        files.append(path)
        kinds.append(kind)
        t += timedelta(seconds=exptime + 20)
        return path

    for _ in range(n_bias):
        frame("bias", 0.0, None)
    for _ in range(n_dark):
        frame("dark", dark_exptime, None)
    for i in range(n_flat):
        level = flat_level * (1.0 - 0.1 * i / max(1, n_flat - 1))  # the twilight fades
        frame("flat", flat_exptime, np.full((size, size), level))
    lights, truths = [], []
    sf_kw = dict(width=size, height=size, fwhm=3.0, sky=sky, gain=gain, readnoise=readnoise, saturation=60000.0)
    if n_stars is None:
        n_stars = int(1500 * (size / 1024) ** 2)
    starfield = default_starfield(seed, n_stars=n_stars, **sf_kw)
    t += timedelta(minutes=60)
    tmp = out / "truth" / "tmp"
    for i in range(n_light):
        date_obs = t.isoformat(timespec="seconds")
        prod = make_field(tmp, seed=seed + 100 * i, field_seed=seed, starfield=starfield, width=size, height=size,
                          ra=ra, dec=dec, band=band, fwhm=3.0, sky=sky, gain=1e6, readnoise=0.0,
                          saturation=1e12, exptime=light_exptime, date_obs=date_obs, n_cosmics=n_cosmics,
                          n_transients=0, template=False, catalog_name="catalog.fits" if i == 0 else None,
                          instrument=INSTRUMENT, frame_name="sky.fits", truth_name=f"light-{i + 1}.json")
        with fits.open(prod.frame) as hd:
            signal, sh = hd[0].data.astype(np.float64), hd[0].header
        extra = fits.Header()
        for key in sh:
            if key.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CDELT", "PC1_", "PC2_", "CUNIT", "WCSAXES",
                               "RADESYS", "EQUINOX", "LONPOLE", "LATPOLE", "MJDREF")) or key in ("OBJECT",):
                extra[key] = sh[key]
        path = frame("light", light_exptime, signal, extra)
        lights.append(path)
        truth = out / "truth" / f"light-{i + 1}.json"
        data = json.loads(prod.truth.read_text())
        data.update(gain=gain, readnoise=readnoise, raw_file=str(path.relative_to(out)), saturation=65535.0)
        truth.write_text(json.dumps(data, indent=1) + "\n")
        truths.append(truth)
    catalog = out / "catalog.fits"
    (tmp / "catalog.fits").replace(catalog)
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    fits.PrimaryHDU(cam["flat"].astype(np.float32)).writeto(out / "truth" / "flat.fits", overwrite=True)
    fits.PrimaryHDU(cam["hot"].astype(np.float32)).writeto(out / "truth" / "hot_pixels.fits", overwrite=True)
    night = {
        "generator": "stdd.synth.rawnight.make_raw_night", "seed": seed, "size": size, "overscan": overscan,
        "overscan_section": f"[{size + 1}:{size + overscan},1:{size}]", "trim_section": f"[1:{size},1:{size}]",
        "gain": gain, "readnoise": readnoise, "bias_level": bias_level, "bias_gradient": bias_gradient,
        "dark_rate": dark_rate, "hot_fraction": hot_fraction, "n_hot": int(np.count_nonzero(cam["hot"])),
        "vignetting": vignetting, "dust": cam["dust"], "dead_column": cam["dead_column"], "band": band,
        "sky": sky, "exptime": {"dark": dark_exptime, "light": light_exptime, "flat": flat_exptime},
        "files": [{"file": str(p.relative_to(out)), "kind": kd} for p, kd in zip(files, kinds)],
        "lights": [str(p.relative_to(out)) for p in lights], "truths": [str(p.relative_to(out)) for p in truths],
        "catalog": "catalog.fits", "corner_response": float(1.0 - vignetting),
        "centre_to_corner_mag": float(-2.5 * math.log10(1.0 - vignetting)),
    }
    (out / "night.json").write_text(json.dumps(night, indent=1) + "\n")
    return RawNight(out, files, kinds, lights, truths, catalog, night)

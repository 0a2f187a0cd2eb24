"""Synthetic frames with exact truth: a frame, its reference catalogue, a template and a truth JSON.

Photometric model (all magnitudes are on the frame's own scale; ``zp`` is per frame, not per second)::

    instrumental magnitude  m_inst = m_band + color_term · colour
        colour = g − r for g, r, i frames; B − V for B, V frames
    total flux in ADU       F = 10^(−0.4 · (m_inst − zp))

so ``zp`` is the magnitude of a source giving 1 ADU of total flux in the frame. STDPipe's
``calibrate_photometry`` defines ``obj_mag = cat_mag − colour · color_term``: it recovers
``zero point = zp`` and ``color_term = −color_term`` (recorded as ``stdpipe_color_term`` in the truth).
Transients have no colour: F = 10^(−0.4 · (mag − zp)).

Detection limit (written into the truth, formula included as a string)::

    σ_pix² = sky/gain + (readnoise/gain)²                    [ADU², background-dominated]
    r = 1·FWHM, A = π r²,  F_ap,5σ = 5 σ_pix √A
    mag_limit_aperture = zp − 2.5 log10(F_ap,5σ)             (flux inside the aperture)
    f_ap = 1 − (1 + r²/α²)^(1−β),  α = FWHM / (2 √(2^(1/β) − 1))   (Moffat encircled energy)
    mag_limit = zp − 2.5 log10(F_ap,5σ / f_ap)               (total flux of a point source)

Expected S/N of a transient in that aperture: S/N = f_ap F / √(f_ap F / gain + A σ_pix²).
Pixel integration broadens the PSF slightly, so exact-overlap aperture photometry on the frame finds
``aperture_fraction_pixel`` (0.696 for FWHM 3 px, β 2.5) rather than the analytic ``aperture_fraction``
(0.709); compare measured aperture fluxes with ``flux · aperture_fraction_pixel``.

Files written into ``out_dir`` (names configurable): ``frame.fits`` (float32, TAN or TAN-SIP WCS, header
DATE-OBS = start of exposure, EXPTIME, FILTER (or ``filter_keyword``), GAIN, RDNOISE, SATURATE, INSTRUME,
OBJECT), ``catalog.fits`` (Vizier-style, see :mod:`stdd.synth.starfield`; no transients), ``template.fits``
(another epoch: other seeing, pointing and rotation, deeper, no transients or cosmic rays) and ``truth.json``.
Pixel coordinates in the truth are 0-based (numpy/photutils/sep); FITS = +1.

Randomness: the stars come from a :class:`~stdd.synth.starfield.StarField` (seeded by ``field_seed``, default
``seed``); noise, transients, cosmic rays and the WCS error direction come from independent streams seeded by
``seed``. Same arguments → byte-identical files.

Why this module is long: it makes one consistent truth — stars, colours, PSF, SIP distortion, noise,
transients, template and reference catalogue — whose numbers depend on each other; the rendering and
the star-field model are already in render.py and starfield.py.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field as dc_field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .render import (
    add_cosmic_rays,
    add_moffat_stars,
    add_noise,
    make_tan_wcs,
    moffat_alpha,
    moffat_encircled,
    perturb_wcs,
    world_to_pixel,
)
from .starfield import BANDS, COLOR_OF_BAND, StarField, instrumental_mags

TRUTH_VERSION = 1

MAG_LIMIT_FORMULA = (
    "sigma_pix^2 = sky/gain + (readnoise/gain)^2 [ADU^2]; r = 1*FWHM; A = pi*r^2; "
    "F_ap = 5*sigma_pix*sqrt(A); mag_limit_aperture = zp - 2.5*log10(F_ap); "
    "f_ap = 1 - (1 + r^2/alpha^2)^(1-beta), alpha = FWHM/(2*sqrt(2^(1/beta)-1)); "
    "mag_limit = zp - 2.5*log10(F_ap/f_ap)"
)
SNR_FORMULA = "snr = f_ap*F / sqrt(f_ap*F/gain + A*sigma_pix^2), F = 10^(-0.4*(mag - zp)), aperture r = 1*FWHM"
PHOTOMETRIC_MODEL = (
    "m_inst = m_band + color_term*colour (colour = g-r for g,r,i; B-V for B,V); "
    "flux_ADU = 10^(-0.4*(m_inst - zp)); transients: flux_ADU = 10^(-0.4*(mag - zp))"
)

#: stream ids for independent random generators derived from ``seed``
_NOISE, _TRANSIENTS, _COSMICS, _TEMPLATE, _WCSERR = 1, 2, 3, 4, 5


@dataclass
class FieldProducts:
    """What :func:`make_field` wrote. ``truth_data`` is the content of the truth JSON."""

    frame: Path
    catalog: Path | None
    template: Path | None
    truth: Path
    truth_data: dict[str, Any] = dc_field(repr=False)


@dataclass
class NoiseModel:
    sky: float
    gain: float
    readnoise: float

    @property
    def sigma_pix(self) -> float:
        """Background noise per pixel in ADU."""
        return math.sqrt(self.sky / self.gain + (self.readnoise / self.gain) ** 2)


def detection_limits(zp: float, fwhm: float, beta: float, sky: float, gain: float, readnoise: float) -> dict:
    """The analytic 5σ limits of the module docstring, with the intermediate numbers."""
    sig = NoiseModel(sky, gain, readnoise).sigma_pix
    r = fwhm
    area = math.pi * r * r
    f_ap5 = 5.0 * sig * math.sqrt(area)
    frac = moffat_encircled(r, fwhm, beta)
    return {
        "mag_limit": zp - 2.5 * math.log10(f_ap5 / frac),
        "mag_limit_aperture": zp - 2.5 * math.log10(f_ap5),
        "mag_limit_formula": MAG_LIMIT_FORMULA,
        "sigma_pix_adu": sig,
        "aperture_radius_px": r,
        "aperture_area_px": area,
        "aperture_fraction": frac,
        "aperture_fraction_pixel": pixel_aperture_fraction(fwhm, beta, r),
    }


def pixel_aperture_fraction(fwhm: float, beta: float, radius: float | None = None) -> float:
    """Fraction of a star's total flux that exact-overlap aperture photometry (photutils ``method='exact'``)
    finds within ``radius`` (default 1·FWHM) on the *pixelated* frame, averaged over sub-pixel positions.
    Pixel integration broadens the PSF: at r = FWHM = 3 px (β = 2.5) it is 0.696 against 0.709 analytic."""
    from photutils.aperture import CircularAperture, aperture_photometry

    radius = fwhm if radius is None else radius
    size = int(math.ceil(radius + 6 * fwhm)) * 2 + 1
    c = (size - 1) / 2.0
    fracs = []
    for fx, fy in ((0.0, 0.0), (0.5, 0.0), (0.25, 0.25), (0.5, 0.5), (0.13, 0.37)):
        im = np.zeros((size, size))
        add_moffat_stars(im, [c + fx], [c + fy], [1.0], fwhm, beta, wing_level=1e-9)
        fracs.append(float(aperture_photometry(im, CircularAperture([(c + fx, c + fy)], radius))["aperture_sum"][0]))
    return float(np.mean(fracs))


def expected_snr(flux: float, fwhm: float, beta: float, sky: float, gain: float, readnoise: float) -> float:
    """S/N of a point source of total ``flux`` ADU in a circular aperture of radius 1·FWHM."""
    sig = NoiseModel(sky, gain, readnoise).sigma_pix
    area = math.pi * fwhm * fwhm
    fa = moffat_encircled(fwhm, fwhm, beta) * flux
    return fa / math.sqrt(fa / gain + area * sig * sig)


def flux_for_snr(snr: float, fwhm: float, beta: float, sky: float, gain: float, readnoise: float) -> float:
    """Inverse of :func:`expected_snr`: total flux giving that S/N in the 1·FWHM aperture."""
    sig = NoiseModel(sky, gain, readnoise).sigma_pix
    area = math.pi * fwhm * fwhm
    s2 = snr * snr
    fa = 0.5 * (s2 / gain + math.sqrt(s2 * s2 / gain ** 2 + 4.0 * s2 * area * sig * sig))
    return fa / moffat_encircled(fwhm, fwhm, beta)


def default_starfield(
    seed: int,
    *,
    width: int = 1024,
    height: int = 1024,
    pixscale: float = 1.0,
    n_stars: int = 1500,
    fwhm: float = 3.0,
    beta: float = 2.5,
    sky: float = 1000.0,
    gain: float = 2.0,
    readnoise: float = 5.0,
    saturation: float = 50000.0,
    zp: float = 25.0,
) -> StarField:
    """The sky used by :func:`make_field` when no ``starfield`` is given: on average ``n_stars`` stars on the
    frame, from 1.5 mag brighter than the saturation magnitude (so a few stars saturate) to 1.5 mag fainter
    than the 5σ limit (so the catalogue goes deeper than the frame)."""
    area_sqdeg = width * height * (pixscale / 3600.0) ** 2
    lim = detection_limits(zp, fwhm, beta, sky, gain, readnoise)["mag_limit"]
    alpha = moffat_alpha(fwhm, beta)
    peak_frac = (beta - 1.0) / (math.pi * alpha * alpha)
    m_sat = zp - 2.5 * math.log10((saturation - sky) / peak_frac)
    return StarField(seed=int(seed), density=n_stars / area_sqdeg, mag_bright=min(m_sat - 1.5, lim - 3.0),
                     mag_faint=lim + 1.5)


# ------------------------------------------------------------------------------------------ helpers


def _iso(date_obs: str) -> datetime:
    try:
        return datetime.fromisoformat(date_obs)
    except ValueError as e:
        raise ValueError(f"date_obs must be an ISO date-time like 2026-03-01T03:00:00, got {date_obs!r}") from e


def _header_dict(w: WCS) -> dict[str, Any]:
    h = w.to_header(relax=True)
    return {k: h[k] for k in h if k not in ("COMMENT", "HISTORY", "")}


def wcs_from_truth(header: dict[str, Any]) -> WCS:
    """Astropy WCS from a header dict stored in a truth JSON (``truth['wcs']`` or ``truth['template']['wcs']``)."""
    return WCS(fits.Header(header))


def load_truth(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _rel(target: Path, base_dir: Path) -> str:
    return os.path.relpath(target, base_dir).replace(os.sep, "/")


def _r(v: float, nd: int) -> float:
    return float(round(float(v), nd))


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _write_fits(path: Path, data: np.ndarray, header: fits.Header) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=data.astype(np.float32), header=header).writeto(path, overwrite=True)


def _base_header(
    w: WCS, *, date_obs: str, exptime: float, band: str, filter_keyword: str, filter_value: str,
    gain: float, readnoise: float, saturation: float, instrument: str, object_name: str, role: str,
) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = (date_obs, "start of exposure (UTC)")
    h["EXPTIME"] = (float(exptime), "[s] exposure time")
    h[filter_keyword] = (filter_value, "filter")
    h["GAIN"] = (float(gain), "[e-/ADU]")
    h["RDNOISE"] = (float(readnoise), "[e-] read noise")
    h["SATURATE"] = (float(saturation), "[ADU] saturation level")
    h["INSTRUME"] = instrument
    h["OBJECT"] = object_name
    h["IMAGETYP"] = "object"
    h["BUNIT"] = "adu"
    h.extend(w.to_header(relax=True), update=True)
    h["ORIGIN"] = "stdd.synth"
    h["SYNROLE"] = (role, "synthetic frame or template")
    return h


@dataclass
class _Rendered:
    image: np.ndarray  # noisy ADU, float64, not yet clipped
    stars: dict[str, np.ndarray]  # stars near the image with x, y, flux, peak, instr, color
    noise: NoiseModel


def _render_sky(
    starfield: StarField, w: WCS, width: int, height: int, *, band: str, zp: float, color_term: float,
    fwhm: float, beta: float, sky: float, gain: float, readnoise: float, rng: np.random.Generator,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, star_margin: float = 200.0,
) -> _Rendered:
    noise = NoiseModel(sky, gain, readnoise)
    stars = starfield.stars_near(w, width, height, margin=star_margin)
    instr, color = instrumental_mags(stars, band, color_term)
    stars["instr"] = instr
    stars["color"] = color
    stars["flux"] = 10.0 ** (-0.4 * (instr - zp))
    wing = 0.01 * noise.sigma_pix
    expected = np.full((height, width), float(sky))
    stars["peak"] = add_moffat_stars(expected, stars["x"], stars["y"], stars["flux"], fwhm, beta, wing)
    if extra is not None and len(extra[0]):
        add_moffat_stars(expected, extra[0], extra[1], extra[2], fwhm, beta, wing)
    image = add_noise(expected, gain, readnoise, rng)
    return _Rendered(image, stars, noise)


# ------------------------------------------------------------------------------------------ template


def _make_template(
    path: Path, *, starfield: StarField, center: tuple[float, float], width: int, height: int,
    pixscale: float, rot_deg: float, band: str, zp: float, color_term: float, fwhm: float, beta: float,
    sky: float, gain: float, readnoise: float, saturation: float, depth_gain: float, exptime: float,
    date_obs: str, seed: Sequence[int], filter_keyword: str, filter_value: str, instrument: str,
    object_name: str,
) -> dict[str, Any]:
    """Render and write one template; returns its truth entry (paths filled in by the caller).

    A template is modelled as the mean of ``depth_gain`` exposures: same flux scale and sky as one
    exposure, noise lower by √depth_gain, i.e. effective gain = gain·depth_gain and effective read noise
    (in electrons of that gain) = readnoise·√depth_gain. The header GAIN is the effective one."""
    w = make_tan_wcs(center[0], center[1], pixscale, width, height, rot_deg=rot_deg)
    g_eff = gain * depth_gain
    rn_eff = readnoise * math.sqrt(depth_gain)
    rng = np.random.default_rng(list(seed))
    r = _render_sky(starfield, w, width, height, band=band, zp=zp, color_term=color_term, fwhm=fwhm,
                    beta=beta, sky=sky, gain=g_eff, readnoise=rn_eff, rng=rng)
    image = np.minimum(r.image, saturation)
    h = _base_header(w, date_obs=date_obs, exptime=exptime * depth_gain, band=band,
                     filter_keyword=filter_keyword, filter_value=filter_value, gain=g_eff, readnoise=rn_eff,
                     saturation=saturation, instrument=instrument, object_name=object_name, role="template")
    h["NCOMBINE"] = (float(depth_gain), "mean of this many exposures")
    _write_fits(path, image, h)
    return {
        "band": band,
        "fwhm_px": fwhm,
        "fwhm_arcsec": fwhm * pixscale,
        "beta": beta,
        "zp": zp,
        "sky": sky,
        "gain": g_eff,
        "readnoise": rn_eff,
        "depth_gain": depth_gain,
        "saturation": saturation,
        "sigma_pix_adu": r.noise.sigma_pix,
        "width": width,
        "height": height,
        "center_ra": float(center[0]),
        "center_dec": float(center[1]),
        "rot_deg": rot_deg,
        "date_obs": date_obs,
        "seed": list(seed),
        "n_saturated": int(np.sum(r.stars["peak"] + sky >= saturation)),
        "wcs": _header_dict(w),
    }


# ------------------------------------------------------------------------------------------ main


def make_field(
    out_dir: str | os.PathLike,
    *,
    seed: int = 1,
    width: int = 1024,
    height: int = 1024,
    ra: float = 150.0,
    dec: float = 30.0,
    pixscale: float = 1.0,
    rot_deg: float = 0.0,
    band: str = "r",
    n_stars: int = 1500,
    fwhm: float = 3.0,
    beta: float = 2.5,
    sky: float = 1000.0,
    gain: float = 2.0,
    readnoise: float = 5.0,
    saturation: float = 50000.0,
    zp: float = 25.0,
    color_term: float = 0.1,
    exptime: float = 60.0,
    date_obs: str = "2026-03-01T03:00:00",
    sip: bool = False,
    sip_amplitude_px: float = 1.5,
    n_cosmics: int = 20,
    transients: Sequence[tuple[float, float, float]] | None = None,
    n_transients: int = 2,
    transient_snr: tuple[float, float] = (20.0, 50.0),
    template: bool = True,
    template_fwhm: float = 2.2,
    template_shift: tuple[float, float] = (3.3, -2.1),
    template_rot_deg: float = 0.4,
    template_depth_gain: float = 4.0,
    template_margin: int = 32,
    template_date_obs: str | None = None,
    wcs_error_arcsec: float = 0.0,
    wcs_error_rot_deg: float = 0.0,
    filter_keyword: str = "FILTER",
    filter_value: str | None = None,
    instrument: str = "SYNTH",
    object_name: str = "SYNTH-FIELD",
    starfield: StarField | None = None,
    field_seed: int | None = None,
    catalog_margin: float = 0.25,
    frame_name: str = "frame.fits",
    catalog_name: str | None = "catalog.fits",
    template_name: str = "template.fits",
    truth_name: str = "truth.json",
) -> FieldProducts:
    """Write a synthetic frame, its catalogue, template and truth into ``out_dir`` (see the module docstring).

    transients: list of (ra, dec, mag) to inject (each must fall on the frame), or None for ``n_transients``
    random ones with magnitudes chosen for an expected S/N uniform in ``transient_snr`` (1·FWHM aperture),
    placed ≥ 32 px from the edges and away from catalogue stars. ``template_shift`` (px, along the frame's
    x/y) and ``template_rot_deg`` set the template's pointing; it is ``2·template_margin`` px larger than the
    frame so it covers it. ``wcs_error_*`` perturb only the WCS written into the frame; the truth keeps the
    true one. ``filter_value`` defaults to ``band``. File names are relative to ``out_dir`` (sub-folders ok);
    ``catalog_name=None`` skips the catalogue.
    """
    # ---------------------------------------------------------------- validation
    _check(band in BANDS, f"band must be one of {', '.join(BANDS)}, got {band!r}")
    _check(isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))
           and 32 <= width <= 16384 and 32 <= height <= 16384,
           f"width and height must be integers in 32..16384, got {width}x{height}")
    _check(-90.0 <= dec <= 90.0, f"dec must be within -90..90, got {dec}")
    _check(0 < pixscale <= 3600, f"pixscale must be in (0, 3600] arcsec/px, got {pixscale}")
    _check(0.8 <= fwhm <= 50 and 0.8 <= template_fwhm <= 50,
           f"fwhm and template_fwhm must be 0.8..50 px, got {fwhm}, {template_fwhm}")
    _check(beta > 1.0, f"Moffat beta must be > 1, got {beta}")
    _check(n_stars >= 0, f"n_stars must be >= 0, got {n_stars}")
    _check(sky >= 0 and gain > 0 and readnoise >= 0, "sky and readnoise must be >= 0 and gain > 0")
    _check(saturation > 2 * sky + 10, f"saturation ({saturation}) must be well above the sky ({sky})")
    _check(exptime > 0, f"exptime must be > 0, got {exptime}")
    _check(n_cosmics >= 0 and n_transients >= 0, "n_cosmics and n_transients must be >= 0")
    _check(0 < transient_snr[0] <= transient_snr[1], f"bad transient_snr range {transient_snr}")
    _check(template_depth_gain >= 1.0, f"template_depth_gain must be >= 1, got {template_depth_gain}")
    _check(wcs_error_arcsec >= 0, f"wcs_error_arcsec must be >= 0, got {wcs_error_arcsec}")
    _check(catalog_margin >= 0, f"catalog_margin must be >= 0, got {catalog_margin}")
    start = _iso(date_obs)
    filter_value = band if filter_value is None else filter_value

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame_path = out / frame_name
    truth_path = out / truth_name
    catalog_path = out / catalog_name if catalog_name else None
    template_path = out / template_name if template else None

    if starfield is None:
        starfield = default_starfield(
            seed if field_seed is None else field_seed, width=width, height=height, pixscale=pixscale,
            n_stars=n_stars, fwhm=fwhm, beta=beta, sky=sky, gain=gain, readnoise=readnoise,
            saturation=saturation, zp=zp,
        )
    noise = NoiseModel(sky, gain, readnoise)
    limits = detection_limits(zp, fwhm, beta, sky, gain, readnoise)

    # ---------------------------------------------------------------- geometry
    true_wcs = make_tan_wcs(ra, dec, pixscale, width, height, rot_deg=rot_deg,
                            sip_amplitude_px=sip_amplitude_px if sip else 0.0)
    pa = float(np.random.default_rng([seed, _WCSERR]).uniform(0.0, 360.0))
    header_wcs = perturb_wcs(true_wcs, wcs_error_arcsec, wcs_error_rot_deg, pa) \
        if (wcs_error_arcsec or wcs_error_rot_deg) else true_wcs

    cat_margin = catalog_margin * max(width, height)
    near = starfield.stars_near(true_wcs, width, height, margin=max(cat_margin, 200.0))

    # ---------------------------------------------------------------- transients
    rng_t = np.random.default_rng([seed, _TRANSIENTS])
    tr_x, tr_y, tr_mag = _place_transients(
        rng_t, transients, n_transients, transient_snr, true_wcs, width, height, near, band, color_term, zp,
        fwhm, beta, noise,
    )
    tr_flux = 10.0 ** (-0.4 * (tr_mag - zp))
    tr_ra, tr_dec = true_wcs.all_pix2world(tr_x, tr_y, 0) if len(tr_x) else (np.zeros(0), np.zeros(0))

    # ---------------------------------------------------------------- frame
    rendered = _render_sky(
        starfield, true_wcs, width, height, band=band, zp=zp, color_term=color_term, fwhm=fwhm, beta=beta,
        sky=sky, gain=gain, readnoise=readnoise, rng=np.random.default_rng([seed, _NOISE]),
        extra=(tr_x, tr_y, tr_flux),
    )
    image = rendered.image
    avoid = [(float(x), float(y), 4.0 * fwhm) for x, y in zip(tr_x, tr_y)]
    rays = add_cosmic_rays(image, n_cosmics, np.random.default_rng([seed, _COSMICS]), avoid=avoid)
    image = np.minimum(image, saturation)
    header = _base_header(
        header_wcs, date_obs=date_obs,
        exptime=exptime, band=band, filter_keyword=filter_keyword, filter_value=filter_value, gain=gain,
        readnoise=readnoise, saturation=saturation, instrument=instrument, object_name=object_name, role="frame",
    )
    _write_fits(frame_path, image, header)

    # ---------------------------------------------------------------- catalogue
    if catalog_path is not None:
        inside = ((near["x"] >= -cat_margin) & (near["x"] <= width - 1 + cat_margin)
                  & (near["y"] >= -cat_margin) & (near["y"] <= height - 1 + cat_margin))
        table = starfield.catalog_table({k: v[inside] for k, v in near.items()})
        catalog_path.parent.mkdir(parents=True, exist_ok=True)
        table.write(catalog_path, format="fits", overwrite=True)

    # ---------------------------------------------------------------- template
    template_truth = None
    if template_path is not None:
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        c_ra, c_dec = true_wcs.all_pix2world([cx + template_shift[0]], [cy + template_shift[1]], 0)
        t_date = template_date_obs or (start - timedelta(days=365)).isoformat(timespec="seconds")
        template_truth = _make_template(
            template_path, starfield=starfield, center=(float(c_ra[0]), float(c_dec[0])),
            width=width + 2 * template_margin, height=height + 2 * template_margin, pixscale=pixscale,
            rot_deg=rot_deg + template_rot_deg, band=band, zp=zp, color_term=color_term, fwhm=template_fwhm,
            beta=beta, sky=sky, gain=gain, readnoise=readnoise, saturation=saturation,
            depth_gain=template_depth_gain, exptime=exptime, date_obs=t_date, seed=(seed, _TEMPLATE),
            filter_keyword=filter_keyword, filter_value=filter_value, instrument=instrument,
            object_name=object_name,
        )
        template_truth["file"] = _rel(template_path, truth_path.parent)
        template_truth["shift_px"] = [float(template_shift[0]), float(template_shift[1])]

    # ---------------------------------------------------------------- truth
    st = rendered.stars
    on = (st["x"] >= -0.5) & (st["x"] < width - 0.5) & (st["y"] >= -0.5) & (st["y"] < height - 0.5)
    c1, c2 = COLOR_OF_BAND[band]
    stars_out = [
        {
            "id": int(st["id"][k]),
            "ra": _r(st["ra"][k], 8),
            "dec": _r(st["dec"][k], 8),
            "x": _r(st["x"][k], 5),
            "y": _r(st["y"][k], 5),
            "mag": _r(st[f"true_{band}"][k], 5),
            "color": _r(st["color"][k], 5),
            "instr_mag": _r(st["instr"][k], 5),
            "flux": _r(st["flux"][k], 4),
            "peak_adu": _r(st["peak"][k] + sky, 3),
            "saturated": bool(st["peak"][k] + sky >= saturation),
        }
        for k in np.nonzero(on)[0]
    ]
    trans_out = [
        {
            "ra": _r(tr_ra[k], 8),
            "dec": _r(tr_dec[k], 8),
            "x": _r(tr_x[k], 5),
            "y": _r(tr_y[k], 5),
            "mag": _r(tr_mag[k], 5),
            "flux": _r(tr_flux[k], 4),
            "snr": _r(expected_snr(tr_flux[k], fwhm, beta, sky, gain, readnoise), 3),
        }
        for k in range(len(tr_x))
    ]
    mid = start + timedelta(seconds=exptime / 2.0)
    truth: dict[str, Any] = {
        "version": TRUTH_VERSION,
        "generator": "stdd.synth.field.make_field",
        "seed": int(seed),
        "field_seed": int(starfield.seed),
        "starfield": {
            "seed": starfield.seed, "density_per_sqdeg": starfield.density, "mag_bright": starfield.mag_bright,
            "mag_faint": starfield.mag_faint, "slope": starfield.slope, "cell_deg": starfield.cell_deg,
        },
        "files": {
            "frame": _rel(frame_path, truth_path.parent),
            "catalog": _rel(catalog_path, truth_path.parent) if catalog_path else None,
            "template": _rel(template_path, truth_path.parent) if template_path else None,
        },
        "width": width,
        "height": height,
        "ra": float(ra),
        "dec": float(dec),
        "pixscale_arcsec": float(pixscale),
        "rot_deg": float(rot_deg),
        "band": band,
        "filter_keyword": filter_keyword,
        "filter": filter_value,
        "instrument": instrument,
        "object": object_name,
        "date_obs": date_obs,
        "date_mid": mid.isoformat(),
        "exptime": float(exptime),
        "zp": float(zp),
        "color_term": float(color_term),
        "color": f"{c1}-{c2}",
        "stdpipe_color_term": -float(color_term),
        "photometric_model": PHOTOMETRIC_MODEL,
        "fwhm": float(fwhm),
        "fwhm_px": float(fwhm),
        "fwhm_arcsec": float(fwhm * pixscale),
        "beta": float(beta),
        "moffat_alpha_px": moffat_alpha(fwhm, beta),
        "psf": "moffat",
        "sky": float(sky),
        "gain": float(gain),
        "readnoise": float(readnoise),
        "saturation": float(saturation),
        **limits,
        "snr_formula": SNR_FORMULA,
        "pixel_origin": 0,
        "sip": bool(sip),
        "wcs": _header_dict(true_wcs),
        "wcs_header": _header_dict(header_wcs),
        "wcs_error_arcsec": float(wcs_error_arcsec),
        "wcs_error_rot_deg": float(wcs_error_rot_deg),
        "wcs_error_pa_deg": pa if (wcs_error_arcsec or wcs_error_rot_deg) else None,
        "n_stars": len(stars_out),
        "n_saturated": int(sum(s["saturated"] for s in stars_out)),
        "stars": stars_out,
        "transients": trans_out,
        "cosmics": [
            {"kind": c.kind, "x": _r(c.x, 3), "y": _r(c.y, 3), "length": _r(c.length, 3),
             "angle_deg": _r(c.angle_deg, 3), "peak_adu": _r(c.peak_adu, 2), "pixels": [list(p) for p in c.pixels]}
            for c in rays
        ],
        "template": template_truth,
    }
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return FieldProducts(frame_path, catalog_path, template_path, truth_path, truth)


def _place_transients(
    rng, transients, n, snr_range, w: WCS, width, height, near, band, color_term, zp, fwhm, beta, noise,
):
    """Pixel positions and magnitudes of the transients to inject."""
    if transients is not None:
        tr = [tuple(t) for t in transients]
        for t in tr:
            _check(len(t) == 3, f"each transient must be (ra, dec, mag), got {t!r}")
        if not tr:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        ra = np.array([t[0] for t in tr], float)
        dec = np.array([t[1] for t in tr], float)
        mag = np.array([t[2] for t in tr], float)
        x, y = world_to_pixel(w, ra, dec)
        for k in range(len(x)):
            _check(0 <= x[k] <= width - 1 and 0 <= y[k] <= height - 1,
                   f"transient {k} at ra={ra[k]}, dec={dec[k]} falls outside the frame (x={x[k]:.1f}, y={y[k]:.1f})")
        return x, y, mag
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    instr, _ = instrumental_mags(near, band, color_term)
    sflux = 10.0 ** (-0.4 * (instr - zp))
    edge = min(32.0, 0.2 * min(width, height))
    xs, ys, mags = [], [], []
    for _ in range(n):
        snr = rng.uniform(*snr_range)
        flux = flux_for_snr(snr, fwhm, beta, noise.sky, noise.gain, noise.readnoise)
        mag = zp - 2.5 * math.log10(flux)
        # away from stars brighter than 1 % of the transient (within 5·FWHM) and from other transients
        bright = sflux > 0.01 * flux
        bx, by = near["x"][bright], near["y"][bright]
        for attempt in range(2000):
            x = rng.uniform(edge, width - 1 - edge)
            y = rng.uniform(edge, height - 1 - edge)
            radius = 5.0 * fwhm if attempt < 1000 else 2.5 * fwhm
            if np.any((bx - x) ** 2 + (by - y) ** 2 < radius ** 2):
                continue
            if any((x - a) ** 2 + (y - b) ** 2 < (10 * fwhm) ** 2 for a, b in zip(xs, ys)):
                continue
            break
        xs.append(x)
        ys.append(y)
        mags.append(mag)
    return np.array(xs), np.array(ys), np.array(mags)


# ------------------------------------------------------------------------------------------ library


@dataclass
class TemplateInfo:
    path: Path
    name: str
    role: str  # "field", "overlap", "disjoint", "other-band"
    band: str
    ra: float
    dec: float
    width: int
    height: int


def make_template_library(
    folder: str | os.PathLike,
    *,
    ra: float = 150.0,
    dec: float = 30.0,
    width: int = 1024,
    height: int = 1024,
    pixscale: float = 1.0,
    band: str = "r",
    seed: int = 1,
    starfield: StarField | None = None,
    frame_fwhm: float = 3.0,
    n_stars: int = 1500,
    fwhm: float = 2.2,
    beta: float = 2.5,
    sky: float = 1000.0,
    gain: float = 2.0,
    readnoise: float = 5.0,
    saturation: float = 50000.0,
    zp: float = 25.0,
    color_term: float = 0.1,
    exptime: float = 60.0,
    depth_gain: float = 4.0,
    margin: int = 32,
    shift: tuple[float, float] = (3.3, -2.1),
    rot_deg: float = 0.4,
    neighbours: Sequence[tuple[float, float]] = ((0.6, 0.0), (3.0, 2.0)),
    extra_bands: Sequence[str] = ("g",),
    date_obs: str = "2025-03-01T03:00:00",
    filter_keyword: str = "FILTER",
    instrument: str = "SYNTH",
    object_name: str = "SYNTH-FIELD",
    prefix: str = "tmpl",
) -> list[TemplateInfo]:
    """Write a local template library for the field of a frame centred on (ra, dec) with the given size.

    Templates (all of the same synthetic sky, so they agree with :func:`make_field` for the same seed and
    frame parameters, or with the given ``starfield``):
    * ``field``: covers the frame (pointing offset by ``shift`` px, rotated ``rot_deg``, ``margin`` px larger);
    * one per ``neighbours`` entry, centred (dx·width, dy·height) px away along the frame axes — by default one
      overlapping about 40 % of the frame (``overlap``) and one far off (``disjoint``);
    * the field again in each of ``extra_bands`` (``other-band``).
    File names: ``<prefix>_<object>_<band>.fits``, ``<prefix>_<object>-N<k>_<band>.fits``.
    """
    _check(band in BANDS and all(b in BANDS for b in extra_bands), f"bands must be among {BANDS}")
    _check(depth_gain >= 1.0, "depth_gain must be >= 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if starfield is None:
        starfield = default_starfield(seed, width=width, height=height, pixscale=pixscale, n_stars=n_stars,
                                      fwhm=frame_fwhm, beta=beta, sky=sky, gain=gain, readnoise=readnoise,
                                      saturation=saturation, zp=zp)
    frame_wcs = make_tan_wcs(ra, dec, pixscale, width, height)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tw, th = width + 2 * margin, height + 2 * margin
    plan: list[tuple[str, str, str, float, float]] = []  # name, role, band, x, y (frame pixels)
    plan.append((object_name, "field", band, cx + shift[0], cy + shift[1]))
    for k, (dx, dy) in enumerate(neighbours, start=1):
        role = "overlap" if abs(dx) < 1.0 and abs(dy) < 1.0 else "disjoint"
        plan.append((f"{object_name}-N{k}", role, band, cx + dx * width, cy + dy * height))
    for b in extra_bands:
        plan.append((object_name, "other-band", b, cx + shift[0], cy + shift[1]))
    out: list[TemplateInfo] = []
    for k, (name, role, b, px, py) in enumerate(plan):
        c_ra, c_dec = frame_wcs.all_pix2world([px], [py], 0)
        path = folder / f"{prefix}_{name}_{b}.fits"
        _make_template(
            path, starfield=starfield, center=(float(c_ra[0]), float(c_dec[0])), width=tw, height=th,
            pixscale=pixscale, rot_deg=rot_deg, band=b, zp=zp, color_term=color_term, fwhm=fwhm, beta=beta,
            sky=sky, gain=gain, readnoise=readnoise, saturation=saturation, depth_gain=depth_gain,
            exptime=exptime, date_obs=date_obs, seed=(seed, _TEMPLATE, 100 + k), filter_keyword=filter_keyword,
            filter_value=b, instrument=instrument, object_name=name,
        )
        out.append(TemplateInfo(path, name, role, b, float(c_ra[0]), float(c_dec[0]), tw, th))
    return out

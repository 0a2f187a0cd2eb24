"""Stage 1, inspect: load the frame, fix its header, find gain, saturation, filter and time, mask it.

Reads `original.*` (written by pipeline.prepare_folder); writes `image.fits` (first 2-D image,
linear flux, fixed header, float32), `mask.fits` (uint8 bit planes, see MASK_BITS), `inspect.json`
(what later stages read) and `image_target.fits` (a cutout around the primary target).

Fixed STDWeb weaknesses: the instrument profile (chosen per frame, see stages/profiles.py; its
name and why it was chosen are recorded) is consulted first for gain and saturation and
the source of each value is recorded; an unknown filter is an error naming the header value; the
time is mid-exposure (`pipeline.time` overrides the start, recorded as "setting"); targets come
from settings, else the header's TARGET/OBJECT, and alert regions (stages/targets.py); the user's
crop, custom mask and background maps are in stages/frame_edits.py.

Why this module is long: inspect is one pass over a frame in STDWeb's order (load, header fixes,
gain and saturation with their sources, filter, time, masks, cosmic rays, WCS check, footprint,
target cutout), each step reading what the previous one decided; the reusable parts live beside it
(header.py, filters.py, profiles.py, measure.py).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import filters, frame_edits
from . import targets as target_list
from .base import StageError, StageSettings
from .header import (FrameError, exposure_time, fix_header, linearize_ps1, load_first_image, number,
                     observation_start, parse_section, pointing_hint, GAIN_KEYWORDS)
from .products import guarded, StageRun, finite_or_none, read_json, write_fits, write_json

STAGE = "inspect"

MASK_BITS = {"nonfinite": 1, "saturated": 2, "bad_pixel": 4, "cosmic": 8, "outside_datasec": 16, "custom": 32}

MAX_PIXSCALE_ARCSEC = 100.0
CALIBRATED_STATE = "calibrate.json"  # written by the calibrate stage (stages/calibrate.py)
SATURATION_KEYWORDS = ("SATURATE", "SATURATION", "SATLEVEL", "MAXLIN")


def find_original(folder: Path) -> Path:
    found = sorted(p for p in Path(folder).glob("original*") if p.is_file())
    if not found:
        raise StageError(f"{STAGE}: no original.* frame in {folder}")
    return found[0]


def run(folder: Path, settings: StageSettings):
    return guarded(STAGE, Path(folder), settings, _inspect)


def _inspect(run: StageRun, settings: StageSettings):
    p = settings.pipeline
    prof = settings.instrument
    calibrated = read_json(run.folder / CALIBRATED_STATE)  # the calibrate stage ran: its frame is the input
    src = run.folder / calibrated["image"] if calibrated else find_original(run.folder)
    run.log(f"reading {src.name} ({src.stat().st_size} bytes)")
    profile_source = settings.instrument_source or ("explicit" if prof is not None else "none")
    run.log(f"instrument profile: {prof.name if prof else 'none'} ({profile_source})")
    try:
        image, header, notes = load_first_image(src)
    except FrameError as e:
        raise StageError(f"{STAGE}: {e}") from None
    for n in notes:
        run.note(n)

    if calibrated:
        run.log("the calibrate stage's frame: overscan and trim done there")
    elif prof is not None:
        image, header = _apply_profile_geometry(run, image, header, prof)
    image, lin = linearize_ps1(image, header)
    if lin:
        run.note("Pan-STARRS asinh-scaled image converted to linear flux")
    for n in fix_header(header, image.shape):
        run.note(n)

    finite = np.isfinite(image)
    if not finite.any():
        raise StageError(f"{STAGE}: the image has no finite pixel (all NaN or infinite)")
    if np.nanmin(image) == np.nanmax(image):
        raise StageError(f"{STAGE}: the image is constant (every finite pixel = {np.nanmax(image):g})")
    height, width = image.shape
    if width < 16 or height < 16:
        raise StageError(f"{STAGE}: the image is too small to process ({width}x{height} pixels)")

    # gain: explicit setting, then the profile, then the header, then 1 (or none for scaled images)
    gain, gain_source = _gain(image, header, p, prof)
    run.log(f"gain {gain} ({gain_source})")

    # filter
    value, keyword = filters.header_filter(header)
    try:
        band, filter_source = filters.resolve(value, keyword, prof.filter_aliases if prof else None, p.filter)
    except filters.UnknownFilter as e:
        raise StageError(f"{STAGE}: {e}") from None
    run.log(f"filter {band} ({filter_source})")

    # time
    if p.time is not None:
        from ..config.settings import parse_time_setting

        start, time_source = parse_time_setting(p.time), "setting"
    else:
        start, time_source = observation_start(header)
    exptime, exp_key = exposure_time(header)
    if start is None:
        run.note("no usable observation time in the header (DATE-OBS, DATEOBS, MJD-OBS, MJD, JD, DATE)")
        time_start = time_mid = None
    else:
        time_start = start.utc.isot
        if exptime is None:
            run.note(f"no exposure time in the header; time_mid is the start time ({time_source})")
            time_mid = time_start
        else:
            from astropy import units as u

            time_mid = (start + exptime / 2 * u.s).utc.isot
    if exptime is None:
        run.note("no EXPTIME in the header")

    # mask
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[~finite] |= MASK_BITS["nonfinite"]
    med = float(np.nanmedian(image))
    if calibrated and calibrated.get("saturation") and not p.saturation:
        # the profile's saturation is the raw frame's; calibrate flagged raw-saturated pixels itself
        sat, sat_source = float(calibrated["saturation"]), "calibrate: the raw saturation after bias, dark and flat"
    else:
        sat, sat_source = _saturation(run, image, header, p, prof, med)
    if sat is not None:
        mask[finite & (image >= sat)] |= MASK_BITS["saturated"]
    if calibrated and calibrated.get("mask"):
        cmask = fits.getdata(run.folder / calibrated["mask"]).astype(np.uint8)
        mask |= cmask & np.uint8(MASK_BITS["saturated"] | MASK_BITS["bad_pixel"])
        run.log(f"calibrate's mask: {int(np.count_nonzero(cmask & MASK_BITS['saturated']))} saturated, "
                f"{int(np.count_nonzero(cmask & MASK_BITS['bad_pixel']))} bad pixels")
    if prof is not None and prof.bad_pixel_mask is not None:
        bpm = _read_bpm(prof.bad_pixel_mask, image.shape)
        mask[bpm] |= MASK_BITS["bad_pixel"]
        run.log(f"bad-pixel mask {prof.bad_pixel_mask}: {int(bpm.sum())} pixels")
    for kw in ("TRIMSEC", "DATASEC"):
        sec = parse_section(str(header.get(kw, "")))
        if sec is not None:
            x1, x2, y1, y2 = sec
            outside = np.ones(image.shape, dtype=bool)
            outside[y1:y2 + 1, x1:x2 + 1] = False
            mask[outside] |= MASK_BITS["outside_datasec"]
            run.log(f"pixels outside {kw} {header[kw]} masked")
            break
    try:  # the user's crop and mask (frame_edits)
        box = frame_edits.crop_box(p.crop, image.shape)
        custom = frame_edits.custom_mask(p.mask_regions, p.mask_file, image.shape, box)
    except frame_edits.EditError as e:
        raise StageError(f"{STAGE}: {e}") from None
    if box is not None:
        image, header = frame_edits.apply_crop(image, header, box)
        mask, finite = frame_edits.cut(mask, box), frame_edits.cut(finite, box)
        height, width = image.shape
        run.note(f"cropped to {header['STDDCROP']} ({width}x{height} pixels), as the crop setting asks")
    if custom.any():
        mask[custom] |= MASK_BITS["custom"]
        run.log(f"custom mask: {int(custom.sum())} pixels")
    n_cosmic = 0
    filled, bg = _background(image, mask > 0)  # one SEP background for both uses below
    fwhm_quick = _quick_fwhm(filled, bg, mask > 0)
    run.log(f"quick FWHM estimate: {fwhm_quick} px")
    if p.mask_cosmics:
        if fwhm_quick is not None and fwhm_quick < MIN_FWHM_FOR_COSMICS:
            run.note(f"cosmic rays not masked: the frame is undersampled (FWHM about {fwhm_quick:.1f} px), "
                     "so the detector would take star cores for cosmic rays")
        else:
            cosmic = find_cosmics(run, image, mask > 0, gain, sat, filled=filled, bg=bg)
            frac = float(cosmic.mean())
            if frac > MAX_COSMIC_FRACTION:
                run.note(f"cosmic-ray mask not used: it flags {100 * frac:.1f}% of the pixels, far more than "
                         "cosmic rays cover (an undersampled, resampled or crowded frame?)")
            else:
                n_cosmic = int(cosmic.sum())
                mask[cosmic] |= MASK_BITS["cosmic"]
    masked = float(np.mean(mask > 0))
    if masked > p.max_masked_fraction:
        parts = ", ".join(f"{k} {100 * np.mean((mask & b) > 0):.1f}%" for k, b in MASK_BITS.items()
                          if np.any(mask & b))
        raise StageError(f"{STAGE}: {100 * masked:.1f}% of the pixels are masked ({parts}), more than "
                         f"{100 * p.max_masked_fraction:.0f}%")

    # WCS
    wcs, wcs_state = _wcs(run, header, image.shape)
    ra = dec = radius = pixscale = None
    footprint = None
    if wcs is not None:
        ra, dec, radius, pixscale, footprint = frame_geometry(wcs, image.shape)
    elif prof is not None and prof.pixel_scale_arcsec:
        pixscale = prof.pixel_scale_arcsec
    hint_ra, hint_dec, hint_source = pointing_hint(header)
    if p.blind_match_center:
        hint_ra, hint_dec, hint_source = _blind_center(run, settings, hint_ra, hint_dec, hint_source)

    # targets
    all_targets = target_list.collect(run, settings, settings.regions, wcs, image.shape, header)
    targets = target_list.measurable(all_targets)
    if targets and wcs is not None:
        _target_cutout(run, image, header, wcs, targets[0])

    # products
    hdr = header.copy()
    for k in ("BSCALE", "BZERO", "BLANK"):
        hdr.remove(k, ignore_missing=True)
    big = run.product if p.publish_images else (lambda rel: run.folder / rel)
    write_fits(big("image.fits"), image.astype(np.float32), hdr)
    write_fits(big("mask.fits"), mask, _mask_header())
    if p.inspect_bg:
        back, rms = frame_edits.background_maps(bg, image.shape)
        write_fits(run.product("background.fits"), back, hdr)
        write_fits(run.product("background_rms.fits"), rms, hdr)
    state = {
        "band": band, "gain": gain, "saturation": sat, "time_start": time_start, "time_mid": time_mid,
        "exptime": exptime, "wcs_state": wcs_state, "ra": ra, "dec": dec, "radius_deg": radius,
        "pixscale_arcsec": pixscale, "hint_ra": hint_ra, "hint_dec": hint_dec, "hint_source": hint_source,
        "targets": targets, "width": width, "height": height, "read_noise": prof.read_noise if prof else None,
    }
    write_json(run.product("inspect.json"), state)

    suggestion_dec = dec if dec is not None else hint_dec
    summary = {
        "filter": band, "filter_source": filter_source, "exptime": exptime, "time_start": time_start,
        "time_mid": time_mid, "time_source": time_source, "gain": gain, "gain_source": gain_source,
        "saturation": finite_or_none(sat), "saturation_source": sat_source, "width": width, "height": height,
        "background": finite_or_none(bg.globalback) if bg is not None else None,  # ADU, SEP's global level
        "background_rms": finite_or_none(bg.globalrms) if bg is not None else None,
        "ra": ra, "dec": dec, "radius_deg": radius, "footprint": footprint,
        "pixscale_arcsec": finite_or_none(pixscale), "wcs_initial": wcs_state,
        "masked_fraction": round(masked, 6), "n_cosmics_pixels": n_cosmic,
        "instrument": prof.name if prof else None, "target_outcomes": target_list.outcomes(all_targets),
        "instrument_profile": prof.name if prof else None, "instrument_profile_source": profile_source,
        "catalog_suggestion": filters.suggest_catalog(band, suggestion_dec) if suggestion_dec is not None else None,
        "template_suggestion": (filters.suggest_template(band, ra, dec) if ra is not None else None),
    }
    return run.result(summary)


# ---------------------------------------------------------------- pieces

def _apply_profile_geometry(run, image, header, prof):
    """The profile's overscan and trim (stdd.calib.geometry), when no calibrate stage did them."""
    from ..calib import geometry

    if not prof.overscan and not prof.trim:
        return image, header
    try:
        overscan, trim, notes = geometry.sections(prof, header, image.shape)
    except geometry.GeometryError as e:
        raise StageError(f"{STAGE}: {e}") from None
    image, level = geometry.apply(image, overscan, trim)
    if level is not None:
        run.note(f"overscan subtracted: {notes[0]}, median {level:.1f} ADU")
    if trim is not None:
        geometry.shift_header(header, trim)
        run.note(f"trimmed to {notes[-1]}")
    return image, header


def _gain(image, header, p, prof):
    if p.gain:
        return float(p.gain), "pipeline.gain"
    if prof is not None and prof.gain:
        return float(prof.gain), f"instrument profile {prof.name}"
    v, k = number(header, GAIN_KEYWORDS)
    if v is not None and v > 0:
        return v, f"header {k}"
    if np.nanmax(image) <= 1.0:
        return None, "none: the image is scaled to at most 1, so its noise is taken from the background only"
    return 1.0, "default 1 (no GAIN, EGAIN or CCD_GAIN in the header)"


def _saturation(run, image, header, p, prof, med):
    if p.saturation:
        return float(p.saturation), "pipeline.saturation"
    if prof is not None and prof.saturation:
        return float(prof.saturation), f"instrument profile {prof.name}"
    vmax = float(np.nanmax(image))
    sample = image[np.isfinite(image)][::max(1, image.size // 200000)]
    rms = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    v, k = number(header, SATURATION_KEYWORDS)
    if v is not None:
        if v > med and np.isfinite(v):
            return v, f"header {k}"
        run.note(f"header {k} = {v:g} is not above the median level {med:g}; estimated instead")
    est = 0.05 * med + 0.95 * vmax
    if est - med < 10 * rms:
        run.note(f"estimated saturation {est:g} is barely above the median {med:g}; check the frame")
    return est, "estimated as 0.05·median + 0.95·max"


def _read_bpm(path: Path, shape) -> np.ndarray:
    try:
        data, _, _ = load_first_image(Path(path))
    except FrameError as e:
        raise StageError(f"{STAGE}: the profile's bad-pixel mask {path}: {e}") from None
    if data.shape != tuple(shape):
        raise StageError(f"{STAGE}: the profile's bad-pixel mask {path} is {data.shape[::-1]}, "
                         f"the image {tuple(shape)[::-1]}")
    return data > 0


MIN_FWHM_FOR_COSMICS = 2.0
MAX_COSMIC_FRACTION = 0.01


def _sep():
    try:
        import sep_x as sep
    except ImportError:  # pragma: no cover
        import sep
    return sep


def _background(image, mask):
    """The image as contiguous float32 with non-finite pixels set to the median, and its SEP
    background (None where SEP fails on a pathological frame)."""
    img = np.ascontiguousarray(np.where(np.isfinite(image), image, np.nanmedian(image)), dtype=np.float32)
    try:
        return img, _sep().Background(img, mask=mask)
    except Exception:
        return img, None


def quick_fwhm(image, mask) -> float | None:
    """A rough FWHM (px) of the frame's bright isolated sources, or None."""
    filled, bg = _background(image, mask)
    return _quick_fwhm(filled, bg, mask)


def _quick_fwhm(img, bg, mask) -> float | None:
    """Median 2·(half-light radius) of bright isolated sources found by SEP, or None."""
    if bg is None:
        return None
    sep = _sep()
    try:
        data = img - bg.back()
        # no smoothing kernel: the bright stars it needs stand out without it, at a third of the cost
        objs = sep.extract(data, 10.0, err=bg.globalrms, mask=mask, minarea=3, filter_kernel=None)
        if len(objs) < 5:
            objs = sep.extract(data, 5.0, err=bg.globalrms, mask=mask, minarea=3)
        objs = objs[(objs["flag"] == 0)]
        if len(objs) < 3:
            return None
        objs = objs[np.argsort(-objs["flux"])][:200]
        r, flag = sep.flux_radius(data, objs["x"], objs["y"], 6.0 * objs["a"], 0.5, subpix=5)
        from stdpipe.photometry import estimate_fwhm

        v = estimate_fwhm(2 * r, good=(flag == 0), fwhm_range=(0.3, 50.0), min_candidates=3)
        return float(v) if np.isfinite(v) else None
    except Exception:  # a rough estimate only; without it cosmics are masked as usual
        return None


def find_cosmics(run, image, mask, gain, sat, *, filled=None, bg=None) -> np.ndarray:
    """Cosmic rays by astroscrappy with an empirical noise model (as STDPipe's make_mask).
    `filled`, `bg`: what `_background` gave, if the caller has it already."""
    import astroscrappy

    if filled is None:
        filled, bg = _background(image, mask)
    img = filled
    if bg is None:  # sep fails on pathological frames; cosmics then stay unmasked
        run.note("cosmic-ray masking skipped: the background estimate failed")
        return np.zeros(image.shape, dtype=bool)
    var = bg.rms() ** 2
    if gain:
        var = var + np.abs(img - bg.back()) / gain
    cmask, _ = astroscrappy.detect_cosmics(img, inmask=mask, invar=var.astype(np.float32),
                                           gain=gain or 1.0, satlevel=sat if sat else float(np.max(img)),
                                           niter=2, sigclip=4.5, cleantype="medmask", verbose=False)
    cmask &= ~mask
    run.log(f"{int(cmask.sum())} cosmic-ray pixels masked")
    return cmask


def _wcs(run, header, shape) -> tuple[WCS | None, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w = WCS(header)
        except Exception as e:  # astropy.wcs raises several kinds for broken headers
            run.note(f"the header WCS cannot be read ({type(e).__name__}: {e}); will blind-match")
            return None, "unreadable"
    if not w.has_celestial:
        run.log("no celestial WCS in the header; photometry will blind-match")
        return None, "none"
    w = w.celestial
    try:
        from stdpipe import astrometry as sa

        scale = float(sa.get_pixscale(wcs=w)) * 3600
        ra, dec = w.all_pix2world([shape[1] / 2], [shape[0] / 2], 0)
    except Exception as e:
        run.note(f"the header WCS cannot be evaluated ({e}); will blind-match")
        return None, "unusable"
    if not (np.isfinite(scale) and 0 < scale <= MAX_PIXSCALE_ARCSEC and np.isfinite(ra[0]) and np.isfinite(dec[0])):
        run.note(f"the header WCS has a pixel scale of {scale:.3g}\"/px; will blind-match")
        return None, "implausible"
    return w, "present"


def frame_geometry(wcs: WCS, shape):
    """(ra, dec, radius_deg, pixscale_arcsec, footprint corners [[ra, dec] x4]) of a frame."""
    from stdpipe import astrometry as sa

    h, w = shape
    ra, dec, radius = sa.get_frame_center(wcs=wcs, width=w, height=h)
    cra, cdec = wcs.all_pix2world([-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5], 0)
    corners = [[round(float(a) % 360, 7), round(float(b), 7)] for a, b in zip(cra, cdec)]
    # radius: the farthest corner from the centre
    d = [float(sa.spherical_distance(ra, dec, a, b)) for a, b in corners]
    return (float(ra) % 360, float(dec), max(d + [float(radius)]), float(sa.get_pixscale(wcs=wcs)) * 3600, corners)


def _blind_center(run, settings, ra, dec, source):
    """The blind-match centre from `pipeline.blind_match_center` ("RA Dec" or a name), else the header's."""
    from ..sources import names

    t = target_list.parse_target(
        settings.pipeline.blind_match_center, source="setting",
        resolve_name=lambda n: names.resolve(n, settings.catalog, offline=settings.offline,
                                             cache_dir=Path(settings.cache_dir)))
    if t.get("ra") is None:
        run.note(f"blind_match_center {settings.pipeline.blind_match_center!r} not resolved ({t['outcome']}); "
                 "the header's pointing is used")
        return ra, dec, source
    run.log(f"blind-match centre RA {t['ra']:.5f} Dec {t['dec']:+.5f} (pipeline.blind_match_center)")
    return t["ra"], t["dec"], "pipeline.blind_match_center"


def _target_cutout(run, image, header, wcs, target):
    if not target.get("inside"):
        run.note(f"primary target {target['name']} is outside the frame")
        return
    from stdpipe import cutouts

    r = 64
    crop, hdr = cutouts.crop_image_centered(image, target["x"], target["y"], r, header=header)
    write_fits(run.product("image_target.fits"), crop.astype(np.float32), hdr)


def _mask_header() -> fits.Header:
    h = fits.Header()
    for name, bit in MASK_BITS.items():
        h[f"MASK{bit}"] = (name, "mask bit meaning")
    return h

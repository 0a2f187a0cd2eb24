"""Templates built from the observatory's own best frames of a field (for the `local` library).

Design note: where no survey covers a field in the frame's band, or the network is down, the best
reference is the telescope's own earlier frames: same optics, same band, same pixel scale. A frame
folder that went through inspect and photometry holds everything a co-add needs — the cleaned
image (`image.fits`, ADU), its mask (`mask.fits`), the refined WCS (`image.wcs`) and, in
`result.json`, the band, FWHM, zero point, gain and limit. So a template is built from frame
folders, not from the database: the same code serves the daemon's work and result folders and the
folders `stdd process` leaves.

For each (band, field) group with at least `min_frames` frames:
* keep the frames whose FWHM is within `max_fwhm_ratio` of the sharpest (a template should not be
  blurrier than the frames it will be subtracted from), then the deepest `max_frames` of them;
* the sharpest kept frame gives the grid (its refined WCS and shape) and the zero point;
* every frame: background removed (SEP), scaled to that zero point (10^(0.4·(zp_ref − zp))), its
  masked pixels dropped, resampled onto the grid (SWarp, else Lanczos);
* combined per pixel: the mean of the frames that agree with the median of all within 4σ of their
  own noise (background and Poisson, known from each frame) plus 30 % of the median (star cores
  change with the seeing); a pixel needs two frames or it is NaN. So one frame's transient,
  satellite or cosmic ray does not reach the template, and elsewhere the mean keeps the full depth
  (a plain median would cost 25 % in noise and, where one frame has an excess, leak a bias).

The file's header says what it is: FILTER, MAGZERO (mag = −2.5·log10(ADU) + MAGZERO), GAIN (the
effective e-/ADU of the combination, so the subtraction's noise model holds), SATURATE, FWHM,
NCOMBINE and the frames used (SRCn). It is written atomically into the template library, where
`template.source = "local"` finds it by footprint and band.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import SourceError
from .templates import OWN_ORIGIN

Log = Callable[[str], None]

#: frames whose centres are closer than this × the frame radius show the same field
SAME_FIELD = 0.25
#: a frame whose zero point is less certain than this (mag) would carry its error into the template
MAX_ZP_ERR = 0.05
ORIGIN = OWN_ORIGIN


@dataclass
class FrameInfo:
    folder: Path
    band: str
    fwhm_arcsec: float
    zp: float
    mag_limit: float | None
    gain: float | None
    saturation: float | None
    zp_err: float | None
    ra: float
    dec: float
    radius_deg: float
    name: str


@dataclass
class Built:
    path: Path
    band: str
    frames: list[str]
    fwhm_arcsec: float
    zp: float
    gain: float | None
    shape: tuple[int, int]
    coverage: float                 # fraction of the grid with a value
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "band": self.band, "frames": self.frames, "fwhm_arcsec": self.fwhm_arcsec,
                "zp": self.zp, "gain": self.gain, "shape": list(self.shape), "coverage": self.coverage,
                "notes": self.notes}


def read_frame(folder: Path) -> tuple[FrameInfo | None, str | None]:
    """A frame folder's facts, or (None, why it cannot serve)."""
    folder = Path(folder)
    try:
        res = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"no readable result.json ({type(e).__name__}: {e})"
    stages = res.get("stages") or {}
    if (stages.get("photometry") or {}).get("state") != "done":
        return None, "photometry was not done"
    for name in ("image.fits", "image.wcs"):
        if not (folder / name).is_file():
            return None, f"no {name} (publish_images = false and the work folder is gone?)"
    need = {k: res.get(k) for k in ("filter", "fwhm_arcsec", "zp", "ra", "dec", "radius_deg")}
    missing = [k for k, v in need.items() if v is None]
    if missing:
        return None, f"result.json lacks {', '.join(missing)}"
    zp_err = _num(res.get("zp_err"))
    if zp_err is not None and zp_err > MAX_ZP_ERR:
        return None, f"zero point too uncertain (±{zp_err:.3f} mag, at most {MAX_ZP_ERR} for a template)"
    return FrameInfo(folder=folder, band=str(res["filter"]), fwhm_arcsec=float(res["fwhm_arcsec"]),
                     zp=float(res["zp"]), mag_limit=_num(res.get("mag_limit")), gain=_num(res.get("gain")),
                     saturation=_num(res.get("saturation")), zp_err=zp_err, ra=float(res["ra"]), dec=float(res["dec"]),
                     radius_deg=float(res["radius_deg"]),
                     name=Path(res["source"]).name if res.get("source") else folder.name), None


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _sep_deg(ra1, dec1, ra2, dec2) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def group_fields(frames: Iterable[FrameInfo], same_field: float = SAME_FIELD) -> list[list[FrameInfo]]:
    """Frames of one band whose centres lie within `same_field` × the frame radius of a group's
    first (sharpest) frame form one field; every band apart."""
    groups: list[list[FrameInfo]] = []
    for f in sorted(frames, key=lambda f: f.fwhm_arcsec):
        for g in groups:
            ref = g[0]
            if ref.band == f.band and _sep_deg(ref.ra, ref.dec, f.ra, f.dec) <= same_field * ref.radius_deg:
                g.append(f)
                break
        else:
            groups.append([f])
    return groups


def choose(group: list[FrameInfo], *, max_frames: int, max_fwhm_ratio: float) -> list[FrameInfo]:
    """The sharpest frame first, then the deepest of those sharp enough, up to `max_frames`."""
    best = min(group, key=lambda f: f.fwhm_arcsec)
    sharp = [f for f in group if f.fwhm_arcsec <= max_fwhm_ratio * best.fwhm_arcsec and f is not best]
    sharp.sort(key=lambda f: (-(f.mag_limit if f.mag_limit is not None else -99.0), f.fwhm_arcsec))
    return [best, *sharp[:max_frames - 1]]


def _load(f: FrameInfo) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    image = fits.getdata(f.folder / "image.fits").astype(np.float64)
    header = fits.getheader(f.folder / "image.wcs")
    bad = ~np.isfinite(image)
    if (f.folder / "mask.fits").is_file():
        bad |= fits.getdata(f.folder / "mask.fits") != 0
    return image, bad, header


def _background(image: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, float]:
    import sep_x as sep

    data = np.ascontiguousarray(np.where(bad, 0.0, image), dtype=np.float64)
    bg = sep.Background(data, mask=bad, bw=64, bh=64)
    return bg.back(), float(bg.globalrms)


#: a frame's pixel is left out when it is off the median of all frames by more than this many
#: sigma of its own noise (background and Poisson) ...
CLIP_SIGMA = 4.0
#: ... plus this fraction of the median (star cores differ with the seeing, as in SWarp's CLIP_AMPFRAC)
CLIP_FRACTION = 0.3


def _combine(stack: np.ndarray, noise: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, float]:
    """Per pixel: the mean of the frames that agree with the median within their noise; NaN where
    fewer than two frames cover (one, when only one frame is given). With two frames a pixel where
    they disagree takes the lower (a transient or a cosmic ray is an excess). Returns (image,
    frames used per pixel, fraction of covered values rejected)."""
    n = stack.shape[0]
    finite = np.isfinite(stack)
    n_cover = finite.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        med = np.nanmedian(stack, axis=0)
        keep = finite.copy()
        if n >= 2:
            for i, (rms, per_adu) in enumerate(noise):
                sigma = np.sqrt(rms * rms + np.clip(stack[i], 0, None) * per_adu)
                off = np.abs(stack[i] - med) > CLIP_SIGMA * sigma + CLIP_FRACTION * np.abs(med)
                keep[i] &= ~off
        if n == 2:
            low = np.nanmin(stack, axis=0)
            keep = finite & ((stack == low[None]) | keep.all(axis=0)[None])
        total = np.where(keep, stack, 0.0).sum(axis=0, dtype=np.float64)
        used = keep.sum(axis=0)
        combined = np.where(used > 0, total / np.maximum(used, 1), np.nan)
    combined[n_cover < (2 if n >= 2 else 1)] = np.nan
    rejected = float((finite & ~keep).sum()) / max(1, int(finite.sum()))
    return combined.astype(np.float32), used, rejected


def build_template(frames: list[FrameInfo], out_dir: Path, *, method: str = "swarp", log: Log = print,
                   tmpdir: Path | None = None) -> Built:
    """Co-add `frames` (the first gives the grid and zero point) into a template file in `out_dir`."""
    from .templates import reproject

    if not frames:
        raise SourceError("own-template", "no frames to combine")
    ref = frames[0]
    ref_header = fits.getheader(ref.folder / "image.wcs")
    ref_image_header = fits.getheader(ref.folder / "image.fits")
    shape = (int(ref_image_header["NAXIS2"]), int(ref_image_header["NAXIS1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = WCS(ref_header)
    layers, noise, inv_gains, sats, notes = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="stdd-own-template-", dir=tmpdir) as tmp:
        for f in frames:
            try:
                image, bad, header = _load(f)
            except Exception as e:  # a damaged image.fits, image.wcs or mask.fits (astropy: OSError, TypeError, …)
                raise SourceError("own-template", f"{f.folder}: unreadable frame ({type(e).__name__}: {e})") from None
            back, rms = _background(image, bad)
            scale = 10 ** (0.4 * (ref.zp - f.zp))
            data = np.where(bad, 0.0, (image - back) * scale)
            good = (~bad).astype(np.float64)
            on_grid = reproject(data, header, grid, shape, method=method, tmpdir=Path(tmp), log=log)
            cover = reproject(good, header, grid, shape, method=method, tmpdir=Path(tmp), log=log)
            on_grid[~(np.nan_to_num(cover, nan=0.0) > 0.99)] = np.nan
            layers.append(on_grid.astype(np.float32))
            noise.append((rms * scale, scale / f.gain if f.gain else 0.0))
            if f.gain:
                inv_gains.append(scale / f.gain)
            if f.saturation:
                sats.append((f.saturation - float(np.median(back))) * scale)
            log(f"own template: {f.name} FWHM {f.fwhm_arcsec:.2f}\" zp {f.zp:.3f} scale {scale:.3f} "
                f"bg rms {rms:.2f} ADU")
    combined, n_valid, rejected = _combine(np.stack(layers), noise)
    del layers
    n = len(frames)
    how = f"mean after a {CLIP_SIGMA:g}-sigma + {100 * CLIP_FRACTION:.0f} % clip around the median"
    if n >= 3:
        notes.append(f"{100 * rejected:.3f}% of the frames' pixels rejected (transients, satellites, residual "
                     f"cosmic rays)")
    gain = None
    if len(inv_gains) == n:
        # var(mean of n scaled frames) = d · Σ(sᵢ/gᵢ) / n²  →  effective gain n² / Σ(sᵢ/gᵢ)
        gain = n * n / sum(inv_gains)
    else:
        notes.append("not every frame knew its gain: the template's GAIN is left out")
    coverage = float(np.mean(np.isfinite(combined)))
    hdr = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr.extend(grid.to_header(relax=True), update=True)
    hdr["IMAGETYP"] = ("template", "co-add of this observatory's own frames")
    hdr["FILTER"] = (ref.band, "canonical band of the frames")
    hdr["MAGZERO"] = (round(ref.zp, 4), "mag = -2.5 log10(ADU) + MAGZERO")
    if gain:
        hdr["GAIN"] = (round(gain, 4), "effective e-/ADU of the combination")
    if len(sats) == n:
        hdr["SATURATE"] = (round(min(sats), 2), "lowest scaled saturation of the frames")
    fwhms = [f.fwhm_arcsec for f in frames]
    hdr["FWHM"] = (round(float(np.median(fwhms)), 3), "median FWHM of the frames, arcsec")
    hdr["NCOMBINE"] = (n, "frames combined (clipped mean)")
    for i, f in enumerate(frames):
        hdr[f"SRC{i + 1}"] = (f.name[:45], f"FWHM {f.fwhm_arcsec:.2f} zp {f.zp:.2f}")
    hdr["ORIGIN"] = ORIGIN
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"own_{ref.band}_{ref.ra:08.4f}{ref.dec:+08.4f}.fits"
    partial = path.with_name("." + path.name + ".part")
    fits.PrimaryHDU(combined.astype(np.float32), hdr).writeto(partial, overwrite=True)
    os.replace(partial, path)
    log(f"own template: {path.name} from {n} frames ({how}), {100 * coverage:.0f}% of the grid covered")
    superseded, unreadable = _superseded(out_dir, path, ref)
    for old in superseded:
        old.unlink(missing_ok=True)
        notes.append(f"replaces {old.name}")
        log(f"own template: {old.name} removed, replaced by {path.name}")
    for why in unreadable:
        notes.append(why)
        log(f"own template: {why}")
    return Built(path=path, band=ref.band, frames=[f.name for f in frames], fwhm_arcsec=float(np.median(fwhms)),
                 zp=ref.zp, gain=gain, shape=shape, coverage=coverage, notes=notes)


def _superseded(out_dir: Path, path: Path, ref: FrameInfo) -> tuple[list[Path], list[str]]:
    """Own templates of the same band and field as the new one (built earlier around another
    sharpest frame): two files of one field would leave the library's choice to chance. Also the
    files of the own-template name that cannot be read, each with the reason: left in place (not
    ours to judge), but said."""
    out, unreadable = [], []
    for p in sorted(out_dir.glob(f"own_{ref.band}_*.fits")):
        if p == path:
            continue
        try:
            h = fits.getheader(p)
            if h.get("ORIGIN") != ORIGIN or h.get("FILTER") != ref.band:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ra, dec = WCS(h).celestial.all_pix2world([(h["NAXIS1"] - 1) / 2], [(h["NAXIS2"] - 1) / 2], 0)
        except Exception as e:  # not ours to judge: left in place, and said
            unreadable.append(f"{p.name} left in place: unreadable ({type(e).__name__}: {e})")
            continue
        if _sep_deg(ref.ra, ref.dec, float(ra[0]), float(dec[0])) <= SAME_FIELD * ref.radius_deg:
            out.append(p)
    return out, unreadable


def build_all(folders: Iterable[Path], out_dir: Path, *, min_frames: int = 3, max_frames: int = 7,
              max_fwhm_ratio: float = 1.5, band: str | None = None, method: str = "swarp",
              log: Log = print) -> tuple[list[Built], list[str]]:
    """Every field with enough good frames → one template; what was skipped and why."""
    infos, skipped = [], []
    for folder in folders:
        info, why = read_frame(Path(folder))
        if info is None:
            skipped.append(f"{folder}: {why}")
            log(f"own template: {folder} skipped: {why}")
            continue
        if band and info.band != band:
            continue
        infos.append(info)
    built = []
    for group in group_fields(infos):
        chosen = choose(group, max_frames=max_frames, max_fwhm_ratio=max_fwhm_ratio)
        where = f"{group[0].band} field at {group[0].ra:.4f} {group[0].dec:+.4f}"
        if len(chosen) < min_frames:
            skipped.append(f"{where}: {len(chosen)} good frame(s) of {len(group)}, {min_frames} needed")
            continue
        try:
            built.append(build_template(chosen, out_dir, method=method, log=log))
        except Exception as e:  # one field's failure does not stop the others
            skipped.append(f"{where}: {type(e).__name__}: {e}")
            log(f"own template: {where} not built: {type(e).__name__}: {e}")
    return built, skipped

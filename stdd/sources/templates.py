"""Reference images for subtraction: a local library, one custom file, or a survey; on the frame's grid.

Sources (TemplateSettings.source):
* `local`  — a folder of reference FITS images; the one covering most of the frame in the frame's
  band wins (at least `template.min_overlap` of the frame). The folder's headers are indexed once
  into `<cache>/templates/index-<key>.json` and re-read only when a file changes.
* `custom` — one file (`template.file`, or `stdd process --template`).
* `survey` — Pan-STARRS or Legacy Survey cells through STDPipe (cached as downloaded cells), or any
  HiPS through hips2fits (cached as the reprojected image, keyed by the frame's grid).
* `none`   — no subtraction.

Every template is returned reprojected onto the frame's pixel grid (SWarp when available, else
STDPipe's Lanczos), with NaN where it has no data. Online sources raise OfflineError when
`offline = true`; an unreachable survey raises SourceError naming it and the error.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from . import OfflineError, SourceError
from .cache import DiskCache, key_of

Log = Callable[[str], None]

#: the ORIGIN of templates built from the telescope's own frames (sources.own_templates)
OWN_ORIGIN = "stdd own template"

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz")


@dataclass
class Template:
    image: np.ndarray          # on the frame's grid, NaN where not covered
    source: str
    gain: float | None = None  # e-/ADU of the template, when known
    saturation: float | None = None
    notes: list[str] = field(default_factory=list)


def swarp_exe() -> str | None:
    import shutil

    for name in ("swarp", "SWarp"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/SWarp" if os.path.isfile("/usr/bin/SWarp") else None


def reproject(image: np.ndarray, header: fits.Header, wcs: WCS, shape: tuple[int, int], *,
              method: str = "swarp", tmpdir: Path | None = None, log: Log = print) -> np.ndarray:
    """`image` (with WCS in `header`) on the grid (wcs, shape); NaN outside its footprint."""
    from stdpipe import reproject as srep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twcs = WCS(header)
    if tuple(image.shape) == tuple(shape) and _same_grid(twcs, wcs, shape):
        log("template is on the frame's grid already")
        return image.astype(np.float64)
    exe = swarp_exe() if method == "swarp" else None
    if exe:
        out = srep.reproject_swarp([(image.astype(np.float64), header)], wcs=wcs, shape=shape, _exe=exe,
                                   _tmpdir=str(tmpdir) if tmpdir else None)
        if out is not None:
            return np.asarray(out, dtype=np.float64)
        log("SWarp failed; reprojecting with Lanczos instead")
    out = srep.reproject_lanczos([(image.astype(np.float64), header)], wcs=wcs, shape=shape)
    if out is None:
        raise SourceError("reproject", "the template could not be reprojected onto the frame")
    return np.asarray(out, dtype=np.float64)


def _same_grid(a: WCS, b: WCS, shape) -> bool:
    h, w = shape
    xs = np.array([0, w - 1, 0, w - 1, w / 2])
    ys = np.array([0, 0, h - 1, h - 1, h / 2])
    ra1, dec1 = a.all_pix2world(xs, ys, 0)
    x2, y2 = b.all_world2pix(ra1, dec1, 0)
    return bool(np.all(np.hypot(x2 - xs, y2 - ys) < 0.01))


def read_image(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image HDU of a file, with header fixes applied (see stages/header.py)."""
    from ..stages.header import FrameError, fix_header, load_first_image

    try:
        data, header, _ = load_first_image(Path(path))
    except FrameError as e:
        raise SourceError(f"template:{path}", str(e)) from None
    fix_header(header, data.shape)
    return data.astype(np.float64), header


def _template_from_file(path: Path, wcs: WCS, shape, method: str, tmpdir, log: Log, source: str,
                        reuse_dir: Path | None = None, mask_file: Path | None = None) -> Template:
    """The template file on the frame's grid. With `reuse_dir` (the frame's own folder), the
    reprojection is kept there, keyed by the file (path, size, mtime), the frame's WCS, shape and
    method, and reused by a rerun of the same frame (the reprojection is most of the template's
    cost; nothing else depends on the file's content)."""
    kept = _reused(path, wcs, shape, method, reuse_dir, mask_file)
    if kept is not None and kept.is_file():
        try:
            with fits.open(kept) as hdul:
                data, hdr = np.asarray(hdul[0].data, dtype=np.float64), hdul[0].header
            log(f"template reprojection reused from this frame's earlier run ({kept.name})")
            return Template(data, source, gain=_float(hdr.get("TGAIN")), saturation=_float(hdr.get("TSATUR")))
        except (OSError, ValueError, TypeError):
            kept.unlink(missing_ok=True)
    image, header = read_image(path)
    hwcs = WCS(header)
    if not hwcs.has_celestial:
        raise SourceError(source, f"{path} has no celestial WCS")
    if mask_file is not None:  # the template's own bad pixels (nonzero), on its grid: left out before reprojection
        try:
            bad = fits.getdata(mask_file) != 0
        except OSError as e:
            raise SourceError(source, f"template mask {mask_file}: {e}") from None
        if bad.shape != image.shape:
            raise SourceError(source, f"template mask {mask_file} is {bad.shape[1]}x{bad.shape[0]}, the template "
                                      f"{image.shape[1]}x{image.shape[0]}")
        image = np.where(bad, np.nan, image)
        log(f"template mask {Path(mask_file).name}: {int(bad.sum())} pixel(s) left out")
    out = reproject(image, header, wcs, shape, method=method, tmpdir=tmpdir, log=log)
    gain = _float(header.get("GAIN"))
    sat = _float(header.get("SATURATE"))
    if kept is not None:
        _keep_reprojection(kept, out, gain, sat)
    return Template(out, source, gain=gain, saturation=sat)


def _reused(path: Path, wcs: WCS, shape, method: str, reuse_dir: Path | None,
            mask_file: Path | None = None) -> Path | None:
    if reuse_dir is None:
        return None
    st = Path(path).stat()
    mst = Path(mask_file).stat() if mask_file is not None and Path(mask_file).is_file() else None
    key = key_of("reprojected", str(Path(path).resolve()), st.st_size, st.st_mtime_ns, tuple(shape), method,
                 wcs.to_header_string(relax=True), str(mask_file), mst.st_mtime_ns if mst else None)
    return Path(reuse_dir) / f"template-{key}.fits"


def _keep_reprojection(dest: Path, data: np.ndarray, gain, sat) -> None:
    """Write the reprojected template for a rerun (atomically; older ones of the frame removed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob("template-*.fits"):
        old.unlink(missing_ok=True)
    hdr = fits.Header()
    if gain:
        hdr["TGAIN"] = gain
    if sat:
        hdr["TSATUR"] = sat
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    try:
        fits.writeto(tmp, data, hdr, overwrite=True)
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)  # a rerun then reprojects again: nothing is lost


def _float(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


# ---------------------------------------------------------------- local library

def _index_folder(folder: Path, cache_dir: Path, log: Log) -> tuple[list[dict], list[str]]:
    """Footprint and band of every FITS image in `folder` (cached by file name, size and mtime),
    and the files that cannot serve, each with the reason ("name: why"). The reasons are logged
    on every call, from the cache too, so each frame's log says which library files were left out."""
    from ..stages import filters
    from ..stages.header import FrameError, load_first_image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES))
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime) for p in files]
    cache = DiskCache(cache_dir, "templates")
    key = "index-" + key_of(str(folder.resolve()))
    hit = cache.get(key, ".json")
    if hit:
        try:
            data = json.loads(hit.read_text())
            if data.get("stamp") == [list(s) for s in stamp]:
                skipped = list(data.get("skipped") or [])
                for why in skipped:
                    log(f"template library: {why}")
                return data["entries"], skipped
        except ValueError:
            pass
    entries: list[dict] = []
    skipped: list[str] = []

    def skip(p: Path, why: str) -> None:
        skipped.append(f"{p.name} skipped: {why}")
        log(f"template library: {p.name} skipped: {why}")

    for p in files:
        try:
            data, header, _ = load_first_image(p, header_only=True)
        except FrameError as e:
            skip(p, str(e))
            continue
        from ..stages.header import fix_header

        shape = (int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0)))
        fix_header(header, shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                w = WCS(header)
                if w.has_celestial and all(shape):
                    h, wd = shape
                    ra, dec = w.celestial.all_pix2world([0, wd - 1, wd - 1, 0], [0, 0, h - 1, h - 1], 0)
            except Exception as e:  # wcslib's errors: an unknown projection, inconsistent axes, a singular matrix
                skip(p, f"unreadable WCS ({type(e).__name__}: {_last_line(e)})")
                continue
        if not w.has_celestial or not all(shape):
            skip(p, "no celestial WCS")
            continue
        value, _kw = filters.header_filter(header)
        band = filters.lookup(value) if value else None
        entries.append({"path": str(p), "band": band, "shape": [h, wd],
                        "corners": [[float(a), float(b)] for a, b in zip(ra, dec)],
                        "own": header.get("ORIGIN") == OWN_ORIGIN})
    cache.write(key, ".json", lambda t: t.write_text(json.dumps({"stamp": stamp, "entries": entries,
                                                                   "skipped": skipped})))
    return entries, skipped


def _last_line(e: Exception) -> str:
    """wcslib's messages start with where in its C code the error was raised: keep what it says."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def overlap_fraction(corners_sky: list, wcs: WCS, shape) -> float:
    """Fraction of the frame (wcs, shape) covered by a polygon of sky corners."""
    from matplotlib.path import Path as MPath

    h, w = shape
    ra, dec = np.array(corners_sky).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            x, y = wcs.all_world2pix(ra, dec, 0, quiet=True)
        except Exception:
            x, y = wcs.wcs_world2pix(ra, dec, 0)
    if not np.all(np.isfinite(x)):
        return 0.0
    poly = MPath(np.c_[x, y])
    gx, gy = np.meshgrid(np.linspace(0, w - 1, 24), np.linspace(0, h - 1, 24))
    inside = poly.contains_points(np.c_[gx.ravel(), gy.ravel()])
    return float(np.mean(inside))


def local_template(folder: Path, band: str, wcs: WCS, shape, *, min_overlap: float, cache_dir: Path,
                   method: str, tmpdir, log: Log, reuse_dir: Path | None = None) -> Template | None:
    if folder is None or not Path(folder).is_dir():
        return None
    entries, skipped = _index_folder(Path(folder), cache_dir, log)
    scored = []
    for e in entries:
        if e["band"] != band:
            continue
        f = overlap_fraction(e["corners"], wcs, shape)
        if f >= min_overlap:
            # the widest cover wins; at the same cover (to 2 %) a template built from this
            # telescope's own frames (same PSF sampling and band response) beats another file
            scored.append((round(f / 0.02), bool(e.get("own")), f, e["path"]))
    if not scored:
        return None
    scored.sort(reverse=True)
    _, _, f, path = scored[0]
    log(f"template library: {path} covers {100 * f:.0f}% of the frame")
    t = _template_from_file(Path(path), wcs, shape, method, tmpdir, log, f"local:{path}", reuse_dir)
    t.notes.append(f"template {Path(path).name} from the local library covers {100 * f:.0f}% of the frame")
    if skipped:
        t.notes.append(f"{len(skipped)} file(s) of the template library could not be read: "
                       + "; ".join(skipped[:3]) + (" …" if len(skipped) > 3 else ""))
    return t


# ---------------------------------------------------------------- surveys

#: the surveys STDWeb names, as CDS HiPS ids by band (template.survey = "des", ...; template.hips wins)
NAMED_HIPS = {
    "des": lambda b: f"CDS/P/DES-DR2/{b}",
    "decaps": lambda b: f"CDS/P/DECaPS/DR2/{b}",
    "ztf": lambda b: f"CDS/P/ZTF/DR7/{b}",
    "2mass": lambda b: f"CDS/P/2MASS/{b.upper()[:1]}",
    "skymapper": lambda b: f"CDS/P/skymapper-{b.upper()}",
}

def survey_template(survey: str, band: str, wcs: WCS, shape, *, hips: str | None, offline: bool,
                    cache_dir: Path, method: str, tmpdir, timeout: float, log: Log) -> Template:
    from stdpipe import templates as stt

    from ..stages.filters import survey_band, suggest_template

    ra, dec = wcs.all_pix2world([shape[1] / 2], [shape[0] / 2], 0)
    ra, dec = float(ra[0]), float(dec[0])
    if survey == "auto":
        survey = "hips" if hips else suggest_template(band, ra, dec)
    sband = survey_band(band)
    if survey in NAMED_HIPS:
        hips = hips or NAMED_HIPS[survey](sband)
        survey = "hips"
    source = f"survey:{survey}" + (f":{hips}" if survey == "hips" else f":{sband}")
    if offline:
        raise OfflineError(source)
    import socket

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        if survey in ("ps1", "ls"):
            if survey == "ps1" and dec < -30:
                raise SourceError(source, f"Pan-STARRS does not cover Dec {dec:+.1f}")
            cells = Path(cache_dir) / "templates" / survey
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    img = stt.get_survey_image(band=sband, survey=survey, wcs=wcs, shape=shape,
                                               reproject="swarp" if (method == "swarp" and swarp_exe()) else "lanczos",
                                               _cachedir=str(cells), _tmpdir=str(tmpdir) if tmpdir else None,
                                               **({"_exe": swarp_exe()} if method == "swarp" and swarp_exe() else {}))
                except Exception as e:
                    raise SourceError(source, f"{type(e).__name__}: {e}") from None
            if img is None or not np.any(np.isfinite(img)):
                raise SourceError(source, "no survey cell could be downloaded or none covers the frame")
            return Template(np.asarray(img, dtype=np.float64), source)
        if survey == "hips":
            if not hips:
                raise SourceError(source, "template.survey = 'hips' needs template.hips (a HiPS id)")
            cache = DiskCache(cache_dir, "templates")
            header = wcs.to_header(relax=True)
            key = key_of("hips", hips, shape, sorted((k, str(v)) for k, v in header.items()))
            hit = cache.get(key, ".fits")
            if hit:
                log(f"{source}: from the cache")
                return Template(fits.getdata(hit).astype(np.float64), source)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    img, _hdr = stt.get_hips_image(hips, wcs=wcs, shape=shape, get_header=True)
                except Exception as e:
                    raise SourceError(source, f"{type(e).__name__}: {e}") from None
            if img is None:
                raise SourceError(source, "hips2fits did not answer (unreachable or no data)")
            cache.write(key, ".fits", lambda p: fits.writeto(p, img.astype(np.float32), overwrite=True))
            return Template(np.asarray(img, dtype=np.float64), source)
        raise SourceError(source, f"unknown survey {survey!r}")
    finally:
        socket.setdefaulttimeout(old)


def get_template(settings, band: str, wcs: WCS, shape, *, offline: bool, cache_dir: Path,
                 method: str = "swarp", tmpdir=None, file: Path | None = None, log: Log = print,
                 reuse_dir: Path | None = None, mask_file: Path | None = None) -> Template | None:
    """The template for a frame from the configured source, or None when the source has none.
    `reuse_dir`: the frame's folder, where a file template's reprojection is kept for a rerun."""
    src = "custom" if file else settings.source
    if src == "none":
        return None
    if src == "custom":
        path = Path(file or settings.file or "")
        if not str(file or settings.file or ""):
            raise SourceError("custom", "template.source = 'custom' but template.file is not set")
        if not path.is_file():
            raise SourceError(f"custom:{path}", "template file not found")
        return _template_from_file(path, wcs, shape, method, tmpdir, log, f"custom:{path}", reuse_dir, mask_file)
    if src == "local":
        return local_template(settings.folder, band, wcs, shape, min_overlap=settings.min_overlap,
                              cache_dir=cache_dir, method=method, tmpdir=tmpdir, log=log, reuse_dir=reuse_dir)
    if src == "survey":
        return survey_template(settings.survey, band, wcs, shape, hips=settings.hips, offline=offline,
                               cache_dir=cache_dir, method=method, tmpdir=tmpdir,
                               timeout=settings.timeout_seconds, log=log)
    raise SourceError(src, f"unknown template source {src!r}")

"""Files or folders of calibration frames → masters in a library (`stdd calib build`, the daemon's job).

Each file is described (`frametypes`), light frames and unreadable files are set aside with the
reason, the rest grouped (`grouping`) and built bias first, then darks (less the nearest master
bias, which may be one just built), then flats (less bias and scaled dark), each written to the
library with its index entry while the library is locked. After darks or flats, the bad-pixel
mask of that camera geometry is rebuilt from its newest master dark and flat. The outcome is
plain data (what was built, with its quality figures and warnings; what was skipped and why),
so a child process can hand it back to the daemon.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import badpixels, masters
from .frametypes import FrameInfo, read_info
from .grouping import Group, group_frames
from .library import Library

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the FITS files inside given folders (recursively), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(FITS_SUFFIXES)
                              and not f.name.startswith(".")))
        else:
            out.append(p)
    return out


def max_age(profile, settings, kind: str) -> float:
    ages = profile.calibration.max_age_days if profile is not None and profile.calibration.max_age_days else None
    return float(getattr(ages or settings.max_age_days, kind))


def build(items: list[tuple[Path, object]], library: str | Path, settings, log: Callable[[str], None] = print) -> dict:
    """Build masters from `items` = [(file, its instrument profile or None)] into `library`.
    `settings` is the CalibrationSettings. Returns {"masters": [...], "skipped": [...], ...}."""
    t0 = time.monotonic()
    lib = Library(library)
    profiles: dict[str, object] = {}
    infos: list[FrameInfo] = []
    skipped: list[dict] = []
    lights = 0
    from ..stages.header import FrameError

    for path, profile in items:
        try:
            info = read_info(path, profile)
        except FrameError as e:
            skipped.append({"file": str(path), "reason": str(e)})
            continue
        if info.kind == "light":
            lights += 1
            skipped.append({"file": str(path), "reason": "a light frame" + (f" ({info.imagetyp})" if info.imagetyp
                                                                              else " (no image type in the header)")})
            continue
        profiles[info.path] = profile
        infos.append(info)
    groups = group_frames(infos, settings.temperature_band)
    built: list[dict] = []
    failed: list[dict] = []
    geometries: dict[tuple, tuple[FrameInfo, object]] = {}
    with lib.locked():
        for g in groups:
            profile = profiles[g.frames[0].path]
            try:
                entry = _build_group(lib, g, profile, settings, log)
            except (masters.MasterError, ValueError, OSError, FrameError) as e:
                failed.append({"group": g.label(), "files": [f.path for f in g.frames], "reason": str(e)})
                log(f"calib: {g.label()}: not built: {e}")
                continue
            built.append(entry)
            if g.kind in ("dark", "flat"):
                geometries[(g.instrument, g.shape, g.binning)] = (g.frames[0], profile)
        for info, profile in geometries.values():
            entry = _build_bpm(lib, info, profile, settings, log)
            if entry is not None:
                built.append(entry)
    return {"library": str(lib.folder), "masters": built, "failed": failed, "skipped": skipped,
            "n_files": len(items), "n_calibration_frames": len(infos), "n_light_frames": lights,
            "seconds": round(time.monotonic() - t0, 2)}


def _build_group(lib: Library, g: Group, profile, settings, log) -> dict:
    t0 = time.monotonic()
    log(f"calib: building {g.label()} from {len(g.frames)} frame(s)")
    frames = [masters.load(f, profile) for f in g.frames]
    ref = g.frames[len(g.frames) // 2]
    made_with: dict[str, str] = {}
    temp_band = settings.temperature_band
    scaling = profile.calibration.dark_scaling if profile is not None else True
    if g.kind == "bias":
        m = masters.build_bias(g, frames, settings)
    else:
        bias_entry, why_bias = lib.nearest("bias", ref, max_age(profile, settings, "bias"),
                                           temperature_band=temp_band)
        bias = _read(lib, bias_entry) if bias_entry else None
        bias_err = float(bias_entry.get("error") or 0.0) if bias_entry else 0.0
        if bias_entry:
            made_with["bias"] = bias_entry["file"]
        if g.kind == "dark":
            m = masters.build_dark(g, frames, bias, bias_err, settings)
            if why_bias:
                m.warnings.append(why_bias)
        else:
            dark_entry, _ = lib.nearest("dark", ref, max_age(profile, settings, "dark"), temperature_band=temp_band,
                                        dark_scaling=scaling)
            dark = None
            if dark_entry is not None:
                with_bias = not dark_entry.get("bias_subtracted", True)
                same_exp = abs((dark_entry.get("exptime") or 0) - (ref.exptime or 0)) < 0.01 * max(ref.exptime or 1, 1)
                if with_bias and same_exp:  # a dark that holds the bias replaces it
                    bias, made_with = None, {}
                    dark = (_read(lib, dark_entry), ref.exptime, False)
                elif not with_bias and bias is not None:
                    dark = (_read(lib, dark_entry), float(dark_entry.get("exptime") or 0.0), True)
                if dark is not None:
                    made_with["dark"] = dark_entry["file"]
            sat = masters.raw_saturation(frames[0].header, profile)
            if sat is not None and frames[0].overscan is not None:
                sat -= frames[0].overscan
            m = masters.build_flat(g, frames, bias, dark, sat, settings)
            if bias is None and "dark" not in made_with:
                m.warnings.append(why_bias or "no master bias")
    entry = _write(lib, m, profile, settings, made_with)
    log(f"calib: {entry['file']}: {len(m.used)} frame(s) in {time.monotonic() - t0:.1f} s; "
        + ", ".join(f"{k} {v}" for k, v in m.quality.items() if v is not None)
        + ("; " + "; ".join(m.warnings) if m.warnings else ""))
    return entry


def _read(lib: Library, entry: dict) -> np.ndarray:
    from astropy.io import fits

    return fits.getdata(lib.path_of(entry)).astype(np.float32)


def _name(kind: str, g: Group, mjd: float | None, sources: list[str]) -> str:
    from astropy.time import Time

    date = Time(mjd, format="mjd").utc.strftime("%Y%m%d") if mjd is not None else "nodate"
    extra = ""
    if g.band:
        extra += f"-{_slug(g.band)}"
    if g.exptime is not None:
        extra += f"-{g.exptime:g}s"
    digest = hashlib.sha1("\n".join(sorted(Path(s).name for s in sources)).encode()).hexdigest()[:8]
    return f"{kind}-{date}-{_slug(g.instrument or 'camera')}-{g.shape[1]}x{g.shape[0]}-{g.binning}{extra}-{digest}.fits"


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "_", str(text)).strip("_") or "x"


def _entry(kind: str, g_or_info, profile, settings, infos: list[FrameInfo]) -> dict:
    from astropy.time import Time

    mjds = [i.mjd for i in infos if i.mjd is not None]
    temps = [i.temperature for i in infos if i.temperature is not None]
    mjd = float(np.median(mjds)) if mjds else None
    age = max_age(profile, settings, kind if kind != "bpm" else "flat")
    ref = infos[0]
    return {
        "kind": kind, "instrument": ref.instrument, "raw_shape": list(ref.shape), "binning": ref.binning,
        "readout": ref.readout, "temperature": round(float(np.median(temps)), 2) if temps else None,
        "band": ref.band if kind == "flat" else None,
        "exptime": ref.exptime if kind == "dark" else None,
        "mjd": mjd, "date_obs": Time(mjd, format="mjd").utc.isot if mjd is not None else None,
        "mjd_first": min(mjds) if mjds else None, "mjd_last": max(mjds) if mjds else None,
        "valid_from": min(mjds) - age if mjds else None, "valid_until": max(mjds) + age if mjds else None,
        "profile": profile.name if profile is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write(lib: Library, m: masters.Master, profile, settings, made_with: dict) -> dict:
    from astropy.io import fits

    used = [f for f in m.group.frames if f.path in set(m.used)]
    entry = _entry(m.kind, m.group, profile, settings, used)
    name = _name(m.kind, m.group, entry["mjd"], m.used)
    entry.update(file=name, shape=list(m.data.shape), n_frames=len(m.used), error=m.error,
                 bias_subtracted=m.bias_subtracted, quality=m.quality, warnings=m.warnings,
                 sources=m.used, left_out=m.left_out, made_with=made_with, geometry=m.geometry_notes)
    h = _header(entry)
    lib.folder.mkdir(parents=True, exist_ok=True)
    tmp = lib.folder / f".{name}.tmp"
    fits.PrimaryHDU(m.data.astype(np.float32), h).writeto(tmp, overwrite=True)
    tmp.replace(lib.folder / name)
    lib.add(entry)
    return entry


def _header(entry: dict):
    from astropy.io import fits

    h = fits.Header()
    h["STDDCAL"] = (entry["kind"], "stdd calibration master")
    h["INSTRUME"] = entry["instrument"]
    h["BINNING"] = entry["binning"]
    if entry.get("readout"):
        h["READOUTM"] = str(entry["readout"])
    if entry.get("temperature") is not None:
        h["CCD-TEMP"] = entry["temperature"]
    if entry.get("band"):
        h["FILTER"] = str(entry["band"])
    if entry.get("exptime") is not None:
        h["EXPTIME"] = entry["exptime"]
    if entry.get("date_obs"):
        h["DATE-OBS"] = (entry["date_obs"], "median start of the frames combined")
    h["NCOMBINE"] = entry.get("n_frames", 0)
    h["MASTERR"] = (float(entry.get("error") or 0.0), "typical 1-sigma per pixel of the master")
    for k, v in (entry.get("quality") or {}).items():
        if isinstance(v, (int, float)) and v is not None:
            h[f"HIERARCH Q {k.upper()}"] = v
    for w in entry.get("warnings", [])[:20]:
        h.add_history(f"warning: {w}"[:70])
    return h


def _build_bpm(lib: Library, info: FrameInfo, profile, settings, log) -> dict | None:
    """The bad-pixel mask of one camera geometry from its newest master dark and flat."""
    from astropy.io import fits

    same = [e for e in lib.entries() if e.get("instrument") == info.instrument
            and list(e.get("raw_shape") or []) == list(info.shape) and e.get("binning") == info.binning]
    newest = {}
    for kind in ("dark", "flat"):
        cands = [e for e in same if e.get("kind") == kind and e.get("bias_subtracted", True)]
        if cands:
            newest[kind] = max(cands, key=lambda e: ((e.get("mjd") or 0.0), e.get("exptime") or 0.0))
    if not newest:
        return None
    dark = (_read(lib, newest["dark"]), float(newest["dark"].get("error") or 0.0)) if "dark" in newest else None
    flat = _read(lib, newest["flat"]) if "flat" in newest else None
    shape = (dark[0] if dark is not None else flat).shape
    mask, counts = badpixels.build_mask(shape, dark, flat, settings)
    srcs = [newest[k] for k in ("dark", "flat") if k in newest]
    mjd = max(e.get("mjd") or 0.0 for e in srcs)
    entry = {k: srcs[0].get(k) for k in ("instrument", "raw_shape", "binning", "readout", "temperature", "profile")}
    # a camera's defects last: valid from the masters' time for as long as the longest master age
    age = max(max_age(profile, settings, k) for k in ("dark", "flat"))
    from astropy.time import Time

    name = f"bpm-{Time(mjd, format='mjd').utc.strftime('%Y%m%d')}-{_slug(info.instrument or 'camera')}-" \
           f"{shape[1]}x{shape[0]}-{info.binning}.fits"
    entry.update(kind="bpm", file=name, shape=list(shape), band=None, exptime=None, mjd=mjd,
                 date_obs=Time(mjd, format="mjd").utc.isot, mjd_first=mjd, mjd_last=mjd, valid_from=mjd - age,
                 valid_until=mjd + age, n_frames=None, error=None, quality=counts, warnings=[],
                 made_with={k: v["file"] for k, v in newest.items()}, sources=[], left_out=[],
                 created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    h = fits.Header()
    h["STDDCAL"] = ("bpm", "stdd bad-pixel mask: 1 hot, 2 bad in flat, 4 bad column")
    h["INSTRUME"] = entry["instrument"]
    tmp = lib.folder / f".{name}.tmp"
    fits.PrimaryHDU(mask, h).writeto(tmp, overwrite=True)
    tmp.replace(lib.folder / name)
    lib.add(entry)
    log(f"calib: {name}: {counts['total']} bad pixels ({counts['fraction'] * 100:.3f} %: hot {counts['hot']}, "
        f"flat {counts['bad']}, columns {counts['columns']}) from {', '.join(entry['made_with'].values())}")
    return entry

"""Thumbnails for the status page: a stage's own preview image, else one drawn from the frame.

Design note: a picture for people, not a measurement. When a stage published a PNG/JPEG preview
it is used as it is. Otherwise the frame's image (the inspect stage's `image.fits`, else the
original file in its work folder) is read with a stride (memory-mapped raw values when
uncompressed, scaled afterwards, so a 4k×4k frame costs a few hundred kilobytes of reads), block-averaged, stretched from one
sigma below the sky to the 99.5th percentile with an asinh, and saved with Pillow as a small PNG under
`<paths.cache>/thumbnails/`, keyed by the frame's SHA-256 and the source file's mtime, so it is
drawn once. All of it runs in the endpoint's reader threads.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .page import thumbnail as published_preview

SIZE = 128
BLOCK = 4  # samples averaged per thumbnail pixel (each way)


class NoThumbnail(Exception):
    pass


def _source(frame: dict) -> Path | None:
    for folder in (frame.get("work_dir"), frame.get("result_dir")):
        if folder and (Path(folder) / "image.fits").is_file():
            return Path(folder) / "image.fits"
    work = frame.get("work_dir")
    if work and Path(work).is_dir():
        for p in sorted(Path(work).glob("original.*")):
            if p.is_file():
                return p
    return None


def _image(path: Path, size: int) -> np.ndarray:
    from astropy.io import fits

    # raw values, memory-mapped; the (linear) scaling is applied to the few pixels kept
    with fits.open(path, memmap=True, lazy_load_hdus=True, do_not_scale_image_data=True) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
                data = hdu.data
                if data is None:
                    continue
                while data.ndim > 2:
                    data = data[0]
                step = max(1, int(np.ceil(max(data.shape) / (size * BLOCK))))
                raw = np.array(data[::step, ::step])
                small = raw.astype(np.float32)
                if "BLANK" in hdu.header and np.issubdtype(raw.dtype, np.integer):
                    small[raw == hdu.header["BLANK"]] = np.nan
                return small * float(hdu.header.get("BSCALE", 1.0)) + float(hdu.header.get("BZERO", 0.0))
    raise NoThumbnail(f"{path.name} has no 2-D image")


def draw(path: Path, out: Path, size: int = SIZE) -> Path:
    from PIL import Image

    sampled = _image(path, size)
    h, w = (sampled.shape[0] // BLOCK) * BLOCK, (sampled.shape[1] // BLOCK) * BLOCK
    if h and w and max(sampled.shape) > size:  # average BLOCK×BLOCK samples: less aliasing of stars
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                small = np.nanmean(sampled[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK), axis=(1, 3))
    else:
        small = sampled
    finite = small[np.isfinite(small)]
    if finite.size == 0:
        raise NoThumbnail(f"{path.name} has no finite pixels")
    # sky a little above black, stars bright: from median - 1 sigma (MAD) to the 99.5th percentile, asinh
    median = float(np.median(finite))
    sigma = 1.4826 * float(np.median(np.abs(finite - median)))
    lo = max(float(finite.min()), median - sigma)
    hi = float(np.percentile(finite, 99.5))
    if hi <= lo:
        hi = float(finite.max()) if finite.max() > lo else lo + 1.0
    scaled = np.clip((np.nan_to_num(small, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    stretched = np.arcsinh(10 * scaled) / np.arcsinh(10)
    pixels = (stretched * 255).astype(np.uint8)[::-1]  # FITS row 1 is at the bottom
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(pixels, mode="L").save(fh, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def thumbnail_path(frame: dict, cache: Path, published: bool = True) -> Path:
    """The PNG to show for `frame` (made now if needed); NoThumbnail when there is nothing to show.
    `published` False: always the frame's own image, never a stage's preview (the web interface)."""
    from .files import FileRefused, find_frame_file

    rel = published_preview(frame) if published else None
    if rel:
        try:
            return find_frame_file([frame.get("result_dir"), frame.get("work_dir")], rel)
        except FileRefused:
            pass
    source = _source(frame)
    if source is None:
        raise NoThumbnail(f"frame {frame['id']} has no image yet")
    mtime = int(source.stat().st_mtime)
    out = Path(cache) / "thumbnails" / f"{frame['sha256'][:32]}-{mtime}.png"
    if out.is_file():
        return out
    try:
        return draw(source, out)
    except (OSError, ValueError, TypeError) as e:
        raise NoThumbnail(f"frame {frame['id']}: cannot draw a thumbnail from {source.name}: {e}") from None

"""Pictures of FITS images for people: the viewer's tiles, thumbnails and cutout panels.

Design note: rendered on the server, as STDWeb's preview is, so the page needs no FITS reader
and no build step: the browser asks for a region of an image at a width, with a stretch
(linear, sqrt, log, asinh — astropy.visualization's), a colour map (matplotlib's), the
percentiles that set black and white (default 0.5 and 99.5), and an optional Gaussian smoothing,
and gets a PNG or JPEG. The levels come from the whole image (a strided sample, so a 4k frame
costs milliseconds), so zooming and panning keep the same contrast. Images are kept
memory-mapped and the few last ones' levels cached, keyed by path and mtime. Row 1 of a FITS
image is at the bottom: the picture is flipped so north-up frames look north-up.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRETCHES = ("linear", "sqrt", "log", "asinh")
CMAPS = ("gray", "gray_r", "viridis", "inferno", "magma", "cividis", "hot", "cubehelix", "coolwarm")
FORMATS = ("png", "jpeg")
MAX_WIDTH = 2048


class PreviewError(ValueError):
    """The picture cannot be made; the message says why."""


@dataclass(frozen=True)
class View:
    """What to draw: region [x0, x1) × [y0, y1) in 0-based pixels (None: the whole image)."""

    width: int = 800
    stretch: str = "asinh"
    cmap: str = "gray"
    qmin: float = 0.5
    qmax: float = 99.5
    smooth: float = 0.0
    fmt: str = "png"
    region: tuple[int, int, int, int] | None = None

    def checked(self) -> "View":
        if not 8 <= self.width <= MAX_WIDTH:
            raise PreviewError(f"width must be between 8 and {MAX_WIDTH}, got {self.width}")
        if self.stretch not in STRETCHES:
            raise PreviewError(f"stretch must be one of {', '.join(STRETCHES)}, got {self.stretch!r}")
        if self.cmap not in CMAPS:
            raise PreviewError(f"cmap must be one of {', '.join(CMAPS)}, got {self.cmap!r}")
        if self.fmt not in FORMATS:
            raise PreviewError(f"format must be png or jpeg, got {self.fmt!r}")
        if not (0 <= self.qmin < self.qmax <= 100):
            raise PreviewError(f"percentiles must satisfy 0 <= qmin < qmax <= 100, got {self.qmin}, {self.qmax}")
        if not 0 <= self.smooth <= 10:
            raise PreviewError(f"smooth (Gaussian sigma, px) must be between 0 and 10, got {self.smooth}")
        return self


class _Images:
    """The last few images read (memory-mapped) and their levels, keyed by (path, mtime)."""

    def __init__(self, size: int = 6):
        self._lock = threading.Lock()
        self._data: OrderedDict = OrderedDict()
        self._levels: dict = {}
        self.size = size

    def get(self, path: Path, hdu: str | None = None) -> np.ndarray:
        key = (str(path), path.stat().st_mtime_ns, hdu)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        data = read_image(path, hdu)
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.size:
                old, _ = self._data.popitem(last=False)
                self._levels = {k: v for k, v in self._levels.items() if k[0] != old}
        return data

    def levels(self, path: Path, data: np.ndarray, qmin: float, qmax: float,
               hdu: str | None = None) -> tuple[float, float]:
        key = ((str(path), path.stat().st_mtime_ns, hdu), qmin, qmax)
        with self._lock:
            if key in self._levels:
                return self._levels[key]
        step = max(1, int(np.sqrt(data.size / 250_000)))
        sample = np.asarray(data[::step, ::step], dtype=np.float32)
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            raise PreviewError(f"{path.name} has no finite pixels")
        lo, hi = (float(v) for v in np.percentile(sample, [qmin, qmax]))
        if hi <= lo:
            hi = lo + 1.0
        with self._lock:
            self._levels[key] = (lo, hi)
        return lo, hi


IMAGES = _Images()


def read_image(path: Path, name: str | None = None) -> np.ndarray:
    """The first 2-D image in a FITS file (a cube's first plane), or the extension `name` (a
    cutout's IMAGE, TEMPLATE, DIFF, ...), as float32."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True) as hdul:
            for hdu in hdul:
                if name is not None and hdu.name.upper() != name.upper():
                    continue
                if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2 and hdu.data is not None:
                    data = hdu.data
                    while data.ndim > 2:
                        data = data[0]
                    return np.asarray(data, dtype=np.float32)
    except (OSError, ValueError, TypeError) as e:
        raise PreviewError(f"{path.name}: not a readable FITS image ({e})") from None
    raise PreviewError(f"{path.name} has no 2-D image" + (f" named {name}" if name else ""))


def image_shape(path: Path) -> tuple[int, int]:
    return IMAGES.get(Path(path)).shape


def render(path: Path, view: View, hdu: str | None = None) -> tuple[bytes, dict]:
    """The picture (bytes) and what it shows: {width, height (of the picture), region, levels}.
    `hdu`: the extension to draw (default: the first 2-D image)."""
    from PIL import Image

    view = view.checked()
    path = Path(path)
    data = IMAGES.get(path, hdu)
    lo, hi = IMAGES.levels(path, data, view.qmin, view.qmax, hdu)
    ny, nx = data.shape
    x0, x1, y0, y1 = view.region or (0, nx, 0, ny)
    x0, x1 = max(0, min(x0, nx - 1)), max(1, min(x1, nx))
    y0, y1 = max(0, min(y0, ny - 1)), max(1, min(y1, ny))
    if x1 <= x0 or y1 <= y0:
        raise PreviewError(f"empty region x {x0}:{x1}, y {y0}:{y1}")
    crop = np.asarray(data[y0:y1, x0:x1], dtype=np.float32)
    out_w = min(view.width, MAX_WIDTH)
    factor = (x1 - x0) / out_w
    if factor > 1.5:  # more pixels than the picture: average blocks (less aliasing than striding)
        b = int(factor)
        h, w = (crop.shape[0] // b) * b, (crop.shape[1] // b) * b
        if h and w:
            crop = np.nanmean(crop[:h, :w].reshape(h // b, b, w // b, b), axis=(1, 3)) if np.isnan(crop).any() \
                else crop[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))
    if view.smooth > 0:
        from scipy.ndimage import gaussian_filter

        crop = gaussian_filter(np.nan_to_num(crop, nan=lo), view.smooth / max(1.0, factor))
    scaled = stretch(np.clip((np.nan_to_num(crop, nan=lo) - lo) / (hi - lo), 0, 1), view.stretch)
    rgba = colour(scaled, view.cmap)[::-1]  # FITS row 1 at the bottom
    img = Image.fromarray(rgba, mode="RGB")
    out_h = max(1, round(out_w * (y1 - y0) / (x1 - x0)))
    if img.size != (out_w, out_h):
        img = img.resize((out_w, out_h), Image.NEAREST if img.size[0] < out_w else Image.BILINEAR)
    buf = io.BytesIO()
    if view.fmt == "jpeg":
        img.save(buf, format="JPEG", quality=88)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), {"width": out_w, "height": out_h, "region": [x0, x1, y0, y1], "levels": [lo, hi],
                            "shape": [nx, ny]}


def stretch(x: np.ndarray, name: str) -> np.ndarray:
    from astropy.visualization import AsinhStretch, LinearStretch, LogStretch, SqrtStretch

    fn = {"linear": LinearStretch(), "sqrt": SqrtStretch(), "log": LogStretch(), "asinh": AsinhStretch(0.1)}[name]
    return np.asarray(fn(x, clip=True), dtype=np.float32)


def colour(x: np.ndarray, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    if cmap == "gray":
        g = (x * 255).astype(np.uint8)
        return np.dstack([g, g, g])
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[(x * 255).astype(np.uint8)]

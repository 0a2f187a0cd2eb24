"""Overscan and trim, per the instrument profile (`overscan`, `trim`: FITS sections, or "header"
for the frame's own BIASSEC and TRIMSEC/DATASEC).

The overscan level is one value per row when the overscan is a strip of columns spanning the
image's height (one per column for a strip of rows; one for the frame otherwise): the median
across the strip, smoothed along it by a running median of 31 (a row's median of a 16-column
strip is as noisy as the read noise / 3; the bias level drifts slowly, if at all, along a read).
Masters and the frames they calibrate get exactly the same treatment, so a level the overscan
misses ends in the master bias and leaves the frame with it.
"""
from __future__ import annotations

import numpy as np

from ..stages.header import parse_section

SMOOTH_ROWS = 31


class GeometryError(ValueError):
    """The profile's (or header's) sections do not fit the frame; the message says how."""


def sections(profile, header, shape) -> tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None,
                                                list[str]]:
    """(overscan, trim) as 0-based inclusive (x1, x2, y1, y2) or None, and notes. Raises
    GeometryError when a section is unreadable or outside the `shape` (height, width) image."""
    notes: list[str] = []
    h, w = shape
    out = []
    for name, value, keys in (("overscan", getattr(profile, "overscan", None), ("BIASSEC",)),
                              ("trim", getattr(profile, "trim", None), ("TRIMSEC", "DATASEC"))):
        if value is None:
            out.append(None)
            continue
        text, source = value, f"the profile's {name}"
        if value == "header":
            key = next((k for k in keys if str(header.get(k, "")).strip()), None)
            if key is None:
                raise GeometryError(f"the profile takes the {name} from the header, which has no "
                                    f"{' or '.join(keys)}")
            text, source = str(header[key]), f"header {key}"
        sec = parse_section(str(text))
        if sec is None:
            raise GeometryError(f"{source} {text!r} is not a FITS section like [1:2048,1:2048]")
        x1, x2, y1, y2 = sec
        if x2 >= w or y2 >= h:
            raise GeometryError(f"{source} {text.strip()} is outside the {w}x{h} image")
        out.append(sec)
        notes.append(f"{text.strip()} ({source})")
    return out[0], out[1], notes


def overscan_level(image: np.ndarray, sec) -> np.ndarray | float:
    """The overscan level to subtract: per row, per column or one value (module docstring)."""
    x1, x2, y1, y2 = sec
    region = image[y1:y2 + 1, x1:x2 + 1]
    h, w = image.shape
    if region.shape[0] == h and region.shape[1] < w:
        level = _smooth(np.nanmedian(region, axis=1))
        return level[:, None]
    if region.shape[1] == w and region.shape[0] < h:
        level = _smooth(np.nanmedian(region, axis=0))
        return level[None, :]
    return float(np.nanmedian(region))


def _smooth(values: np.ndarray) -> np.ndarray:
    if values.size < 2 * SMOOTH_ROWS:
        return np.full_like(values, np.nanmedian(values))
    from scipy.ndimage import median_filter

    return median_filter(values, size=SMOOTH_ROWS, mode="nearest")


def apply(image: np.ndarray, overscan, trim) -> tuple[np.ndarray, float | None]:
    """`image` with the overscan level subtracted and trimmed; (result, median overscan level)."""
    level = None
    if overscan is not None:
        lv = overscan_level(image, overscan)
        image = image - lv
        level = float(np.nanmedian(lv))
    if trim is not None:
        x1, x2, y1, y2 = trim
        image = image[y1:y2 + 1, x1:x2 + 1]
    return image, level


def trimmed_shape(shape, trim) -> tuple[int, int]:
    if trim is None:
        return tuple(shape)
    x1, x2, y1, y2 = trim
    return (y2 - y1 + 1, x2 - x1 + 1)


def shift_header(header, trim) -> None:
    """The WCS reference pixel moved with the trim; the sections no longer apply. In place."""
    if trim is None:
        return
    x1, _, y1, _ = trim
    if "CRPIX1" in header:
        header["CRPIX1"] = float(header["CRPIX1"]) - x1
        header["CRPIX2"] = float(header["CRPIX2"]) - y1
    for kw in ("TRIMSEC", "DATASEC", "BIASSEC"):
        header.remove(kw, ignore_missing=True)

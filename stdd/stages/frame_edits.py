"""The user's per-frame edits of the pixels in inspect: crop, custom mask, background maps.

STDWeb lets a user crop a task's image, draw mask rectangles on it and ask for the background maps;
here these are the settings `crop`, `mask_regions`, `mask_file` and `inspect_bg`
(docs/stdweb-settings.md). Mask rectangles and a frame-sized mask file are in the pixels of the frame
as read (before the crop), so a mask keeps its place whatever is cropped; a mask file of the cropped
size is taken as it is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config.settings import parse_crop
from .header import FrameError, load_first_image


class EditError(ValueError):
    """A crop or mask that does not fit the frame; the message says how."""


def crop_box(crop, shape) -> tuple[int, int, int, int] | None:
    """(x0, x1, y0, y1) of `pipeline.crop` on an image of `shape`, clipped to it; None for no crop."""
    if crop is None:
        return None
    x0, x1, y0, y1 = parse_crop(crop)
    h, w = shape
    x1, y1 = min(x1, w), min(y1, h)
    if x1 - x0 < 16 or y1 - y0 < 16:
        raise EditError(f"crop {crop!r} leaves less than 16x16 pixels of the {w}x{h} frame")
    return x0, x1, y0, y1


def apply_crop(image: np.ndarray, header, box) -> tuple[np.ndarray, object]:
    """The image cut to `box` and its header with the WCS (and any DATASEC/TRIMSEC) following."""
    from stdpipe import cutouts

    x0, x1, y0, y1 = box
    data, hdr = cutouts.crop_image(image, x0, y0, x1 - x0, y1 - y0, header=header)
    for kw in ("TRIMSEC", "DATASEC", "BIASSEC"):
        hdr.remove(kw, ignore_missing=True)
    hdr["STDDCROP"] = (f"[{x0 + 1}:{x1},{y0 + 1}:{y1}]", "stdd: part of the frame kept (crop setting)")
    return data, hdr


def custom_mask(regions, mask_file: Path | None, shape, box) -> np.ndarray:
    """Boolean mask of the cropped frame (or the whole frame when `box` is None)."""
    h, w = shape
    full = np.zeros(shape, bool)
    for x0, x1, y0, y1 in regions:
        full[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = True
    out = cut(full, box)
    if mask_file is not None:
        try:
            data, _, _ = load_first_image(Path(mask_file))
        except FrameError as e:
            raise EditError(f"mask_file {mask_file}: {e}") from None
        data = np.nan_to_num(data) != 0
        if data.shape == tuple(shape):
            out |= cut(data, box)
        elif data.shape == out.shape:
            out |= data
        else:
            raise EditError(f"mask_file {mask_file} is {data.shape[1]}x{data.shape[0]}, the frame "
                            f"{w}x{h}" + (f" ({out.shape[1]}x{out.shape[0]} cropped)" if box else ""))
    return out


def cut(array: np.ndarray, box) -> np.ndarray:
    if box is None:
        return array
    x0, x1, y0, y1 = box
    return array[y0:y1, x0:x1]


def background_maps(bg, shape) -> tuple[np.ndarray, np.ndarray]:
    """(background, background RMS) as float32 images from a SEP background (or zeros without one)."""
    if bg is None:
        z = np.zeros(shape, np.float32)
        return z, z
    return bg.back().astype(np.float32), bg.rms().astype(np.float32)

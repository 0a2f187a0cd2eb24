"""The bad-pixel mask of a camera, from a master dark and a master flat.

* hot pixels — master dark pixels above its median by more than `calibration.hot_pixel_sigma`
  times its robust spread (or the master's own noise, whichever is larger): the dark subtracts
  their mean, but their noise stays, so a hot pixel makes a false detection;
* bad pixels — master flat pixels off the flat's local level (a 32-pixel block median,
  interpolated) by more than `calibration.bad_flat_ratio`: dead or weak pixels and the cores of
  deep dust shadows;
* bad columns — columns whose median ratio to the local level is off by more than half that:
  a dead or hot column is masked over its whole length, not only where it crosses the threshold.

ccdproc's `ccdmask` finds the same things in a flat, but takes ~40 s on a 2048² frame; this
takes well under a second. Bits: 1 hot (dark), 2 bad (flat), 4 column.
"""
from __future__ import annotations

import numpy as np

HOT, BAD, COLUMN = 1, 2, 4
BLOCK = 32


def hot_pixels(dark: np.ndarray, dark_error: float, sigma: float) -> np.ndarray:
    from .masters import robust_std

    level = float(np.median(dark))
    spread = robust_std(dark)
    return dark > level + sigma * max(spread, dark_error, 1e-6)


def local_level(a: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """A smooth version of `a`: block medians, bilinearly interpolated back to full size."""
    from scipy.ndimage import zoom

    h, w = a.shape
    nb_y, nb_x = max(1, h // block), max(1, w // block)
    hh, ww = nb_y * block, nb_x * block
    if hh == 0 or ww == 0:
        return np.full_like(a, np.median(a))
    blocks = np.median(a[:hh, :ww].reshape(nb_y, block, nb_x, block).transpose(0, 2, 1, 3)
                       .reshape(nb_y, nb_x, -1), axis=2)
    # a block holding a dead column is still dominated by good pixels: the median ignores it
    out = zoom(blocks, (h / nb_y, w / nb_x), order=1, mode="nearest", grid_mode=True)
    return out[:h, :w].astype(np.float32)


def flat_defects(flat: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(bad pixels, bad columns) of a normalised master flat."""
    level = local_level(flat)
    rel = flat / np.maximum(level, 1e-6)
    bad = np.abs(rel - 1.0) > ratio
    col = np.abs(np.median(rel, axis=0) - 1.0) > ratio / 2.0
    columns = np.zeros(flat.shape, dtype=bool)
    columns[:, col] = True
    return bad, columns


def build_mask(shape, dark: tuple[np.ndarray, float] | None, flat: np.ndarray | None, settings
               ) -> tuple[np.ndarray, dict]:
    """(uint8 mask with the bits above, counts). `dark`: (master dark, its noise)."""
    mask = np.zeros(shape, dtype=np.uint8)
    counts = {"hot": None, "bad": None, "columns": None}
    if dark is not None:
        hot = hot_pixels(dark[0], dark[1], settings.hot_pixel_sigma)
        mask[hot] |= HOT
        counts["hot"] = int(hot.sum())
    if flat is not None:
        bad, cols = flat_defects(flat, settings.bad_flat_ratio)
        mask[bad] |= BAD
        mask[cols] |= COLUMN
        counts["bad"] = int(bad.sum())
        counts["columns"] = int(cols[0].sum()) if cols.size else 0
    counts["total"] = int(np.count_nonzero(mask))
    counts["fraction"] = round(counts["total"] / mask.size, 6)
    return mask, counts

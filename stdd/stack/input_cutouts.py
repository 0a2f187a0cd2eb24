"""Cutouts of a stack's candidates from each of its inputs: is the source in every frame, in one
(a cosmic ray, a satellite), or moving across them? One FITS file per candidate
(`cutouts_inputs/<id>.fits`, one image HDU per input, named by it, with the input's time) and the
list in result.json (`candidates_input_cutouts`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits


def input_cutouts(result: dict, inputs: list[dict], folder: Path, size: int = 31) -> list[dict]:
    from .combine import read_input

    cands = [c for key in ("candidates_sub", "candidates_simple") for c in result.get(key) or []
             if c.get("ra") is not None and c.get("dec") is not None]
    if not cands:
        return []
    frames = []
    for rec in inputs:
        try:
            frames.append((rec, read_input(Path(rec["file"]))))
        except Exception:  # an input moved away since: its cutouts are left out, the others kept
            continue
    out_dir = Path(folder) / "cutouts_inputs"
    out_dir.mkdir(parents=True, exist_ok=True)
    half = size // 2
    written = []
    for c in cands:
        hdus = [fits.PrimaryHDU()]
        for rec, inp in frames:
            if inp.wcs is None:
                continue
            x, y = (float(v[0]) for v in inp.wcs.all_world2pix([c["ra"]], [c["dec"]], 0))
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            ix, iy = int(round(x)), int(round(y))
            box = np.full((size, size), np.nan, dtype=np.float32)
            y0, y1, x0, x1 = iy - half, iy + half + 1, ix - half, ix + half + 1
            sy0, sx0 = max(0, y0), max(0, x0)
            sy1, sx1 = min(inp.data.shape[0], y1), min(inp.data.shape[1], x1)
            if sy1 <= sy0 or sx1 <= sx0:
                continue
            box[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = inp.data[sy0:sy1, sx0:sx1]
            h = fits.Header()
            h["EXTNAME"] = rec["name"][:60]
            h["DATE-OBS"] = rec.get("start") or ""
            h["X0"], h["Y0"] = x0, y0
            hdus.append(fits.ImageHDU(box, h))
        if len(hdus) > 1:
            rel = f"cutouts_inputs/{c.get('id')}.fits"
            fits.HDUList(hdus).writeto(Path(folder) / rel, overwrite=True)
            written.append({"id": c.get("id"), "file": rel, "inputs": len(hdus) - 1})
    return written

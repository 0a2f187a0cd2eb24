"""Forced photometry at a sky position on a frame already processed: astronomy, nothing of the
daemon (stdd.stages.measure, the frame's own zero-point model).

The frame's image (`image.fits`, with `mask.fits`) is read from its result folder (kept there with
`pipeline.publish_images`) or its work folder (kept `retention.work_days`); the position is put on
it with the frame's refined WCS (`image.wcs`), measured in the frame's own aperture with a local
annulus, calibrated with the frame's zero-point model at that pixel (`zeropoint.json`): a magnitude
when S/N ≥ `sn`, and always the 5σ (`sn`σ) upper limit there. With no image kept, the answer is the
frame's own limit, marked `image: false`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _find(folders, name):
    for f in folders:
        if f and (Path(f) / name).is_file():
            return Path(f) / name
    return None


def measure_at(frame: dict, result: dict, ra: float, dec: float, sn: float = 5.0) -> dict:
    """{"mag", "mag_err", "limit", "snr", "flux", "flux_err", "image": bool, "note"} at (ra, dec)."""
    folders = [frame.get("result_dir"), frame.get("work_dir")]
    out = {"mag": None, "mag_err": None, "limit": result.get("mag_limit"), "snr": None, "image": False,
           "note": None}
    img_path = _find(folders, "image.fits")
    if img_path is None:
        out["note"] = "no image kept: the frame's limit"
        return out
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from ..stages.measure import measure
    from ..stages.zeropoint import ZeroPointModel

    image, header = fits.getdata(img_path, header=True)
    image = np.asarray(image, dtype=np.float64)
    mpath = _find(folders, "mask.fits")
    mask = fits.getdata(mpath) > 0 if mpath is not None else ~np.isfinite(image)
    wpath = _find(folders, "image.wcs")
    wcs = WCS(fits.getheader(wpath)) if wpath is not None else WCS(header)
    x, y = (float(v[0]) for v in wcs.all_world2pix([ra], [dec], 0))
    h, w = image.shape
    if not (np.isfinite(x) and 0 <= x < w and 0 <= y < h):
        out["note"] = "the position is outside the frame"
        return out
    fwhm = float(result.get("fwhm_pixels") or 3.0)
    aper = float(result.get("aperture_pixels") or fwhm)
    tab = Table({"x": [x], "y": [y], "flags": np.zeros(1, np.int32)})
    res = measure(tab, image, mask, fwhm=fwhm, aper=aper, bkgann=(5 * fwhm, 7 * fwhm),
                  gain=result.get("gain"), bg_size=256)
    flux, err = float(res["flux"][0]), float(res["fluxerr"][0])
    zpath = _find(folders, "zeropoint.json")
    if zpath is not None:
        model = ZeroPointModel.from_json(json.loads(zpath.read_text()))
        zp = float(model.zp([x], [y], None)[0])
    else:
        zp = result.get("zp")
    out.update(image=True, flux=flux, flux_err=err, snr=flux / err if err > 0 else None)
    if zp is None or not err > 0:
        out["note"] = "no zero point"
        return out
    out["limit"] = zp - 2.5 * math.log10(sn * err)
    if flux > 0 and flux / err >= sn:
        out["mag"] = zp - 2.5 * math.log10(flux)
        out["mag_err"] = 2.5 / math.log(10) * err / flux
    return out

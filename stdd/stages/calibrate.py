"""Stage 0, calibrate: a raw light frame corrected with the calibration library's masters.

Reads `original.*`; writes `calibrated.fits` (float32, the frame's header with what was done in
HISTORY and STDDCALB), `calibrated_err.fits` (1σ per pixel, ADU), `calibrated_mask.fits` (uint8:
2 saturated in the raw frame, 4 bad pixel) and `calibrate.json`, which tells inspect to read the
calibrated frame (overscan and trim are then done) and its saturation level. result.json gets
`calibration` (the library, the masters used with their age, scale and warnings, what is
missing) and `image_type`.

The stage runs first when `calibration.library` is set (or `stdd process --calib LIBRARY`). A
bias, dark or flat frame fails here, naming its type: calibration frames go into masters
(`stdd calib build`, or the daemon), never through the science stages. A master that is missing
is a note ("no r flat within 30 days ...: not corrected"), or a failure when the profile (or
`calibration.required`) requires masters. Without a library the stage is skipped, and inspect
does the profile's overscan and trim as before. The work is in `stdd.calib.apply`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import StageError, StageSettings
from .products import StageRun, guarded, write_fits, write_json

STAGE = "calibrate"
STATE_FILE = "calibrate.json"


def run(folder: Path, settings: StageSettings):
    return guarded(STAGE, Path(folder), settings, _calibrate)


def _calibrate(run: StageRun, settings: StageSettings):
    from ..calib import geometry
    from ..calib.apply import CalibrationMissing, calibrate
    from ..calib.build import max_age
    from ..calib.frametypes import describe
    from ..calib.library import Library
    from .header import FrameError, load_first_image
    from .inspect import find_original

    cs = settings.calibration
    prof = settings.instrument
    src = find_original(run.folder)
    try:
        image, header, notes = load_first_image(src)
    except FrameError as e:
        raise StageError(f"{STAGE}: {e}") from None
    info = describe(src, header, image.shape, prof)
    for n in info.notes:
        run.note(n)
    run.log(f"{src.name}: {info.kind} ({info.type_keyword} = {info.imagetyp!r}); instrument {info.instrument!r}, "
            f"binning {info.binning}, readout {info.readout}, temperature {info.temperature}, band {info.band}, "
            f"exposure {info.exptime}")
    if info.kind != "light":
        raise StageError(f"{STAGE}: {info.type_keyword} = {info.imagetyp!r}: a {info.kind} frame, not a science "
                         "frame; calibration frames are combined into masters (stdd calib build, or the daemon "
                         "with calibration.library), not processed")
    summary = {"image_type": info.imagetyp, "calibration": None}
    if cs.library is None:
        return run.skipped("no calibration library (calibration.library, or stdd process --calib LIBRARY); "
                           "the frame is taken as calibrated", summary)
    lib = Library(cs.library)
    if not lib.folder.is_dir():
        raise StageError(f"{STAGE}: the calibration library {lib.folder} does not exist")
    cal = prof.calibration if prof is not None else None
    required = cal.required if cal is not None and cal.required is not None else cs.required
    ages = {k: max_age(prof, cs, k) for k in ("bias", "dark", "flat")}
    try:
        out = calibrate(image, header, info, prof, lib, cs, max_age=ages, required=required)
    except CalibrationMissing as e:
        raise StageError(f"{STAGE}: {e}") from None
    except geometry.GeometryError as e:
        raise StageError(f"{STAGE}: {e}") from None
    except ValueError as e:  # an unreadable index
        raise StageError(f"{STAGE}: {e}") from None
    for n in out.notes:
        run.note(n)
    for kind, used in out.record["masters"].items():
        run.log(f"{kind}: {used['file']} ({used.get('age_days')} days from the frame)"
                + (f", scaled by {used['scale']:g}" if "scale" in used else ""))

    hdr = header.copy()
    for k in ("BSCALE", "BZERO", "BLANK"):
        hdr.remove(k, ignore_missing=True)
    overscan, trim, _ = geometry.sections(prof, header, image.shape)
    geometry.shift_header(hdr, trim)
    done = [k for k in ("bias", "dark", "flat", "bpm") if k in out.record["masters"]]
    hdr["STDDCALB"] = (",".join(["overscan"] * (overscan is not None) + done) or "none", "stdd calibrate")
    for kind in done:
        hdr.add_history(f"stdd calibrate: {kind} {out.record['masters'][kind]['file']}"[:72])
    if out.saturation is not None:
        hdr["SATURATE"] = (round(float(out.saturation), 1), "[ADU] after calibration (conservative)")
    big = run.product if settings.pipeline.publish_images else (lambda rel: run.folder / rel)
    write_fits(big("calibrated.fits"), out.image, hdr)
    write_fits(big("calibrated_err.fits"), out.error, None)
    write_fits(big("calibrated_mask.fits"), out.mask, None)
    out.record["error_median_adu"] = round(float(np.median(out.error)), 3)
    state = {"image": "calibrated.fits", "error": "calibrated_err.fits", "mask": "calibrated_mask.fits",
             "saturation": out.saturation, "record": out.record}
    write_json(run.product(STATE_FILE), state)
    summary["calibration"] = out.record
    return run.result(summary)

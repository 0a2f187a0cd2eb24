"""A test-only photometry stage for the delivery tests (through `pool.stage_functions`): reports
what the real photometry stage reports for a frame's targets (`targets` in result.json), with
the values read from the frame's header (T_TARGET, T_RA, T_DEC, T_MAG, T_MAGERR, T_TIME; T_LATE:
seconds to sleep first)."""
from __future__ import annotations

import time
from pathlib import Path

from stdd.stages.base import StageResult


def measured(folder: Path, settings) -> StageResult:
    from astropy.io import fits

    h = fits.getheader(next(Path(folder).glob("original.*")))
    time.sleep(float(h.get("T_LATE", 0)))
    target = {"name": h["T_TARGET"], "ra": float(h["T_RA"]), "dec": float(h["T_DEC"]), "inside": True,
              "mag": float(h["T_MAG"]), "mag_err": float(h["T_MAGERR"]), "mag_limit": 20.0}
    (Path(folder) / "quick.txt").write_text("ok\n")
    return StageResult(stage="photometry", summary={"time_mid": h["T_TIME"], "targets": [target]},
                       products=["quick.txt"])

"""Test-only stage functions for the HTTP endpoint tests (set through `pool.stage_functions`).

`preview`: a real little stage — reads the frame, writes a PNG preview (matplotlib) and reports
the numbers the status page shows (zero point, FWHM, limit, candidates with sky positions).
`burn`: keeps one CPU core busy for `T_BURN` seconds (header), like a photometry stage does.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stdd.stages.base import StageResult


def _frame(folder: Path):
    from astropy.io import fits

    original = next(Path(folder).glob("original.*"))
    with fits.open(original) as hdul:
        return hdul[0].data.astype(float), hdul[0].header


def preview(folder: Path, settings) -> StageResult:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    data, header = _frame(folder)
    (folder / "plots").mkdir(exist_ok=True)
    fig = plt.figure(figsize=(2, 2), dpi=32)
    plt.imshow(data, origin="lower", cmap="gray")
    plt.axis("off")
    fig.savefig(folder / "plots" / "inspect_preview.png", format="png")
    plt.close(fig)
    (folder / "inspect.log").write_text("inspect: preview written\nline two\n")
    ra, dec = float(header.get("T_RA", 10.0)), float(header.get("T_DEC", 20.0))
    cands = [{"ra": ra + 0.001, "dec": dec, "mag": 18.2}, {"ra": ra + 5.0, "dec": dec, "mag": 17.0}]
    return StageResult(stage="inspect", summary={
        "zp": float(header.get("T_ZP", 24.123)), "fwhm_arcsec": 2.34, "mag_limit": 19.87, "filter": "r",
        "ra": ra, "dec": dec, "radius": 0.2, "candidates_simple": cands,
    }, products=["plots/inspect_preview.png"])


def burn(folder: Path, settings) -> StageResult:
    _, header = _frame(folder)
    until = time.monotonic() + float(header.get("T_BURN", 1.0))
    x = np.random.default_rng(1).random(20_000)
    n = 0
    while time.monotonic() < until:
        x = np.sqrt(x * x + 1.0) - 0.5
        n += 1
    return StageResult(stage="inspect", summary={"zp": 20.0, "loops": n})

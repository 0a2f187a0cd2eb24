"""STDWeb's cone restrictions of the candidate search (`simple_center`/`simple_sr0` for simple
transients, `filter_center`/`filter_sr0` for difference candidates): a centre as "RA Dec" in degrees
or sexagesimal, and a radius in degrees."""
from __future__ import annotations

import numpy as np

from ..config.positions import parse_center  # noqa: F401 (the stages' name for it)


def inside(ra, dec, center: tuple[float, float], radius_deg: float) -> np.ndarray:
    r1, d1, r2, d2 = map(np.radians, (np.asarray(ra, float), np.asarray(dec, float), center[0], center[1]))
    cosd = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return np.degrees(np.arccos(np.clip(cosd, -1, 1))) <= radius_deg

"""The region provider backed by the alerts service: live alert regions → queue priority.

Design note: a frame's sky position is astronomy, which the daemon leaves to the stages: the
footprint of a file waiting in the queue comes from `stdd.stages` helpers (the first image's
header WCS, the same geometry the inspect stage records), and the overlap tests from
`stdd.alerts` (`AlertService.regions_for_footprint`). A frame without a usable header WCS
simply keeps the normal priority; the stages still get every live region.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from ..stages.base import Region

log = logging.getLogger("stdd.daemon")


def header_footprint(path: Path) -> dict | None:
    """{'ra', 'dec', 'radius', 'corners'} of a FITS file from its header WCS, or None."""
    from astropy.wcs import WCS

    from ..stages.header import FrameError, load_first_image
    from ..stages.inspect import frame_geometry

    try:
        _, header, _ = load_first_image(Path(path), header_only=True)
    except FrameError:
        return None
    try:
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            ra, dec, radius, _, corners = frame_geometry(wcs.celestial, shape)
    except Exception:  # a header WCS that cannot be evaluated: no footprint, normal priority
        return None
    return {"ra": ra, "dec": dec, "radius": radius, "corners": corners}


class AlertRegionProvider:
    """`RegionProvider` on an `stdd.alerts.AlertService`."""

    def __init__(self, service):
        self.service = service

    def live_regions(self) -> list[Region]:
        out = []
        for r in self.service.live_regions():
            try:
                out.append(Region(**r.stage_region()))
            except Exception as e:
                log.warning("alert %s: region not usable by the stages: %s", getattr(r, "alert_id", "?"), e)
        return out

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        fp = header_footprint(path)
        if fp is None:
            return 0, []
        hits = self.service.regions_for_footprint({"ra": fp["ra"], "dec": fp["dec"], "radius": fp["radius"]})
        if not hits:
            return 0, []
        return max(int(r.priority or 0) for r in hits), [r.alert_id for r in hits]

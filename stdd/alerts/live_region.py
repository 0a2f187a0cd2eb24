"""The daemon's view of an alert's region: a live region rebuilt from its stored description,
with the tests the daemon needs (contains a position, overlaps a frame's footprint)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .region import Circle, Ellipse, Polygon
from .sky_geometry import (RegionError, angular_separation, cap_radius_deg, circle_boundary, moc_cone, moc_polygon,
                           outlines_overlap)

# -- the daemon's view: a live region ----------------------------------------------------
class LiveRegion:
    """The sky region of one live alert, with the tests the daemon needs.

    Built from a stored region dict (`region_to_dict`), so it needs no skymap decoding.
    `forced_position` is set when the region is a small circle or ellipse
    (90 % radius ≤ the configured limit): photometry is forced at that position.
    """

    def __init__(self, alert_id: str, region: dict, *, event_id: str | None = None, mission: str | None = None,
                 priority: int = 0, live_until: float | None = None, forced_max_radius_deg: float = 0.05):
        self.alert_id = alert_id
        self.event_id = event_id
        self.mission = mission
        self.priority = priority
        self.live_until = live_until
        self.region = region
        self.kind = region["kind"]
        self.radius_deg = float(region["radius90"])
        self._shape = None
        self._moc = None
        if self.kind == "circle":
            self._shape = Circle(region["ra"], region["dec"], region["radius"], region.get("containment", 0.9))
        elif self.kind == "ellipse":
            self._shape = Ellipse(region["ra"], region["dec"], region["a"], region["b"], region.get("pa", 0.0),
                                  region.get("containment", 0.9))
        elif self.kind == "polygon":
            self._shape = Polygon([tuple(c) for c in region["corners"]], region.get("containment", 0.9))
        elif self.kind == "skymap":
            from mocpy import MOC

            self._moc = MOC.from_str(region["moc"])
        else:
            raise RegionError(f"unknown region kind {self.kind!r}")
        if self._shape is not None:
            self.center = self._shape.center
        else:
            self.center = (region.get("max_ra"), region.get("max_dec"))
        self.forced_position: tuple[float, float] | None = None
        if self.kind in ("circle", "ellipse") and self.radius_deg <= forced_max_radius_deg:
            self.forced_position = (float(region["ra"]), float(region["dec"]))

    def moc(self):
        if self._moc is None:
            self._moc = self._shape.moc()
        return self._moc

    def contains(self, ra, dec):
        """Whether (ra, dec) in degrees lies in the region (vectorised over arrays)."""
        if self._shape is not None:
            res = self._shape.contains(ra, dec)
        else:
            import astropy.units as u

            ra_a, dec_a = np.atleast_1d(np.asarray(ra, dtype=float)), np.atleast_1d(np.asarray(dec, dtype=float))
            res = self._moc.contains_lonlat(ra_a * u.deg, dec_a * u.deg)
        return bool(np.all(res)) if np.ndim(ra) == 0 else np.asarray(res, dtype=bool)

    def overlaps(self, ra: float, dec: float, radius_deg: float) -> bool:
        """Whether a circular footprint (centre, radius in degrees) overlaps the region."""
        if self.kind == "circle":
            return bool(angular_separation(self._shape.ra, self._shape.dec, ra, dec) <= self.radius_deg + radius_deg)
        if self._shape is not None and bool(self._shape.contains(ra, dec)):
            return True
        if self.center[0] is not None and angular_separation(self.center[0], self.center[1], ra, dec) <= radius_deg:
            return True
        if self._shape is not None and radius_deg < 80:
            exact = outlines_overlap(*self._shape.outline(), *circle_boundary(ra, dec, radius_deg), ra, dec)
            if exact is not None:
                return exact
        return not self.moc().intersection(moc_cone(ra, dec, radius_deg)).empty()

    def overlaps_polygon(self, corners: Iterable[Sequence[float]]) -> bool:
        """Whether a footprint given by its corners (ra, dec in degrees) overlaps the region."""
        corners = [(float(c[0]), float(c[1])) for c in corners]
        poly = Polygon(corners)
        if self.center[0] is not None and poly.contains(self.center[0], self.center[1]):
            return True
        if self._shape is not None and bool(np.any(self._shape.contains([c[0] for c in corners],
                                                                          [c[1] for c in corners]))):
            return True
        if self._shape is not None:
            exact = outlines_overlap(*self._shape.outline(), *poly.outline(), *poly.center)
            if exact is not None:
                return exact
        size = min(cap_radius_deg(poly.area_deg2), self.radius_deg)
        return not self.moc().intersection(moc_polygon(corners, size)).empty()

    def overlaps_footprint(self, footprint: Any) -> bool:
        """A footprint as {'ra', 'dec', 'radius'} or a list of corners."""
        if isinstance(footprint, dict):
            if "corners" in footprint:
                return self.overlaps_polygon(footprint["corners"])
            return self.overlaps(footprint["ra"], footprint["dec"], footprint["radius"])
        return self.overlaps_polygon(footprint)

    def stage_region(self) -> dict:
        """The fields of `stdd.stages.base.Region` (id, ra, dec, radius_deg, forced_photometry, moc) for the stages.

        Circles are exact as (ra, dec, radius_deg); other shapes also carry their MOC (ASCII), which
        is what a stage should test candidates against."""
        ra, dec = self.center
        return {"id": self.alert_id, "ra": float(ra), "dec": float(dec), "radius_deg": self.radius_deg,
                "forced_photometry": self.forced_position is not None,
                "moc": None if self.kind == "circle" else self.moc().serialize(format="str")}

    def to_dict(self) -> dict:
        return {"alert_id": self.alert_id, "event_id": self.event_id, "mission": self.mission,
                "priority": self.priority, "live_until": self.live_until, "kind": self.kind,
                "center": list(self.center), "radius_deg": self.radius_deg,
                "forced_position": list(self.forced_position) if self.forced_position else None}

    def __repr__(self) -> str:
        return f"LiveRegion({self.alert_id!r}, {self.kind}, r90={self.radius_deg:.4g} deg)"

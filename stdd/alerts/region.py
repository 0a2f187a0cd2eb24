"""Error regions of alerts: circles, ellipses, polygons and HEALPix skymaps.

Design note: every region answers the same three questions — how large is it (a 90 %
circle-equivalent radius, for policy and display), does it contain a sky position (to flag
candidates), and does it overlap a frame footprint (to prioritise frames). Circles and
ellipses are answered exactly on the tangent plane; polygons and skymaps through a MOC
(Multi-Order Coverage map, CDS's `mocpy`), which also serialises compactly, so a live
skymap region survives a daemon restart without decoding the 1 MB notice again.

Containment conversions assume a circular 2-D Gaussian (Rayleigh radial distribution):
P(<r) = 1 - exp(-r²/2σ²), so a radius quoted at containment p scales to containment q by
sqrt(ln(1-q) / ln(1-p)); 1σ (2-D, p = 39.3 %) → 90 % is ×2.146, 68 % → 90 % is ×1.422.
An ellipse's circle-equivalent radius is the radius of the circle of the same area, √(ab).
"""
from __future__ import annotations

import base64
import binascii
import gzip
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sky_geometry import (
    ALL_SKY_RADIUS_DEG,
    FULL_SKY_DEG2,
    SIGMA_2D,
    RegionError,
    angular_separation,
    cap_area_deg2,
    cap_radius_deg,
    circle_boundary,
    from_tangent,
    moc_cone,
    moc_depth,
    moc_polygon,
    point_in_polygon,
    polygon_center,
    scale_containment,
    tangent_offsets,
    validate_position,
)


#: the region classes, and the geometry names long imported from here
__all__ = ["ALL_SKY_RADIUS_DEG", "FULL_SKY_DEG2", "SIGMA_2D", "Circle", "Ellipse", "Polygon", "RegionError", "Skymap",
           "angular_separation", "cap_area_deg2", "cap_radius_deg", "region_to_dict", "scale_containment"]


@dataclass
class Circle:
    ra: float
    dec: float
    radius: float  # degrees, at `containment`
    containment: float = 0.9
    systematic_included: bool | None = None
    kind: str = field(default="circle", init=False)

    def __post_init__(self):
        validate_position(self.ra, self.dec)
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise RegionError(f"circle radius must be positive, got {self.radius}")

    @property
    def radius90(self) -> float:
        return min(scale_containment(self.radius, self.containment), 180.0)

    @property
    def center(self) -> tuple[float, float]:
        return self.ra, self.dec

    def contains(self, ra, dec):
        return angular_separation(self.ra, self.dec, ra, dec) <= self.radius90

    def moc(self):
        return moc_cone(self.ra, self.dec, self.radius90)

    def outline(self, n: int = 256):
        return circle_boundary(self.ra, self.dec, self.radius90, n)

    def to_dict(self) -> dict:
        return {"kind": "circle", "ra": self.ra, "dec": self.dec, "radius": self.radius,
                "containment": self.containment, "systematic_included": self.systematic_included,
                "radius90": self.radius90}


@dataclass
class Ellipse:
    ra: float
    dec: float
    a: float  # semi-major axis, degrees, at `containment`
    b: float  # semi-minor axis
    pa: float = 0.0  # position angle of the major axis, North through East, degrees
    containment: float = 0.9
    systematic_included: bool | None = None
    kind: str = field(default="ellipse", init=False)

    def __post_init__(self):
        validate_position(self.ra, self.dec)
        if not (self.a > 0 and self.b > 0 and math.isfinite(self.a) and math.isfinite(self.b)):
            raise RegionError(f"ellipse axes must be positive, got a={self.a}, b={self.b}")
        if self.b > self.a:  # tolerate swapped axes: keep the geometry, name them right
            self.a, self.b, self.pa = self.b, self.a, (self.pa + 90.0) % 180.0

    @property
    def radius90(self) -> float:
        return min(scale_containment(math.sqrt(self.a * self.b), self.containment), 180.0)

    @property
    def axes90(self) -> tuple[float, float]:
        k = scale_containment(1.0, self.containment)
        return self.a * k, self.b * k

    @property
    def center(self) -> tuple[float, float]:
        return self.ra, self.dec

    def contains(self, ra, dec):
        a, b = self.axes90
        x, y = tangent_offsets(self.ra, self.dec, ra, dec)
        pa = math.radians(self.pa)
        u = x * math.sin(pa) + y * math.cos(pa)  # along the major axis
        v = x * math.cos(pa) - y * math.sin(pa)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    def outline(self, n: int = 256):
        a, b = self.axes90
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        u_, v_ = a * np.cos(t), b * np.sin(t)  # along the major / minor axis (small-angle offsets)
        pa = math.radians(self.pa)
        x = u_ * math.sin(pa) + v_ * math.cos(pa)
        y = u_ * math.cos(pa) - v_ * math.sin(pa)
        return from_tangent(self.ra, self.dec, x, y)

    def moc(self):
        import astropy.units as u
        from mocpy import MOC

        a, b = self.axes90
        return MOC.from_elliptical_cone(lon=self.ra * u.deg, lat=self.dec * u.deg, a=a * u.deg, b=b * u.deg,
                                        pa=self.pa * u.deg, max_depth=moc_depth(b))

    def to_dict(self) -> dict:
        return {"kind": "ellipse", "ra": self.ra, "dec": self.dec, "a": self.a, "b": self.b, "pa": self.pa,
                "containment": self.containment, "systematic_included": self.systematic_included,
                "radius90": self.radius90}


@dataclass
class Polygon:
    """A region given by its corners (e.g. MAXI's rectangular error box)."""

    corners: list[tuple[float, float]]
    containment: float = 0.9
    systematic_included: bool | None = None
    kind: str = field(default="polygon", init=False)

    def __post_init__(self):
        if len(self.corners) < 3:
            raise RegionError(f"a polygon needs at least 3 corners, got {len(self.corners)}")
        self.corners = [(float(c[0]) % 360.0, float(c[1])) for c in self.corners]
        for ra, dec in self.corners:
            validate_position(ra, dec)
        self._center = polygon_center(self.corners)

    @property
    def center(self) -> tuple[float, float]:
        return self._center

    @property
    def area_deg2(self) -> float:
        x, y = tangent_offsets(*self._center, [c[0] for c in self.corners], [c[1] for c in self.corners])
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)

    @property
    def radius90(self) -> float:
        return min(scale_containment(cap_radius_deg(self.area_deg2), self.containment), 180.0)

    def contains(self, ra, dec):
        px, py = tangent_offsets(*self._center, [c[0] for c in self.corners], [c[1] for c in self.corners])
        x, y = tangent_offsets(*self._center, ra, dec)
        inside = point_in_polygon(x, y, px, py)
        return inside if np.ndim(ra) else bool(inside[0])

    def moc(self):
        return moc_polygon(self.corners, cap_radius_deg(self.area_deg2))

    def outline(self, n: int = 0):
        return np.array([c[0] for c in self.corners]), np.array([c[1] for c in self.corners])

    def to_dict(self) -> dict:
        return {"kind": "polygon", "corners": [list(c) for c in self.corners], "containment": self.containment,
                "systematic_included": self.systematic_included, "radius90": self.radius90}


# -- HEALPix skymaps ---------------------------------------------------------------------
def _uniq_order(uniq: np.ndarray) -> np.ndarray:
    return (np.floor(np.log2(uniq // 4) / 2)).astype(np.int64)


@dataclass
class Skymap:
    """A HEALPix probability map, kept multi-order: UNIQ cells and their probability density (/sr)."""

    uniq: np.ndarray
    probdensity: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0
    kind: str = field(default="skymap", init=False)

    @classmethod
    def from_base64(cls, text: str) -> "Skymap":
        try:
            data = base64.b64decode(text.strip(), validate=False)
        except (binascii.Error, ValueError) as e:
            raise RegionError(f"skymap is not valid base64: {e}") from None
        return cls.from_fits_bytes(data)

    @classmethod
    def from_fits_bytes(cls, data: bytes) -> "Skymap":
        from astropy.io import fits

        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as e:
                raise RegionError(f"skymap is gzip but cannot be decompressed: {e}") from None
        if not data.startswith(b"SIMPLE  ="):
            raise RegionError("skymap is not a FITS file (no SIMPLE card)")
        try:
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                hdu = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)), None)
                if hdu is None:
                    raise RegionError("skymap FITS has no binary table")
                header = dict(hdu.header)
                table = hdu.data
                names = [n.upper() for n in table.columns.names]
                cols = {n.upper(): table[n] for n in table.columns.names}
                ordering = str(header.get("ORDERING", "")).upper()
                coordsys = str(header.get("COORDSYS", "C")).upper()[:1]
                if coordsys not in ("C", "E", ""):
                    raise RegionError(f"skymap in coordinate system {coordsys!r}: only equatorial maps are supported")
                if ordering == "NUNIQ" or "UNIQ" in names:
                    uniq = np.asarray(cols["UNIQ"], dtype=np.int64).ravel()
                    if "PROBDENSITY" in names:
                        dens = np.asarray(cols["PROBDENSITY"], dtype=float).ravel()
                    elif "PROB" in names:
                        order = _uniq_order(uniq)
                        dens = np.asarray(cols["PROB"], dtype=float).ravel() / (4 * np.pi / (12 * 4.0 ** order))
                    else:
                        raise RegionError(f"multi-order skymap without PROBDENSITY column (has {names})")
                else:
                    uniq, dens = cls._flat_to_uniq(cols, names, header, ordering)
        except RegionError:
            raise
        except Exception as e:  # astropy raises many kinds for a truncated or corrupt file
            raise RegionError(f"skymap FITS cannot be read: {e}") from None
        meta = {k: header[k] for k in ("OBJECT", "DATE-OBS", "MJD-OBS", "CREATOR", "ORIGIN", "INSTRUME",
                                        "DISTMEAN", "DISTSTD", "MOCORDER", "ORDERING") if k in header}
        ok = np.isfinite(dens) & (dens > 0) & (uniq >= 4)
        if not ok.any():
            raise RegionError("skymap has no cell with positive probability")
        return cls(uniq=uniq[ok], probdensity=dens[ok], meta=meta, nbytes=len(data))

    @staticmethod
    def _flat_to_uniq(cols, names, header, ordering):
        from astropy_healpix.core import ring_to_nested

        col = next((n for n in ("PROB", "PROBABILITY", "PROBDENSITY") if n in names), names[0])
        values = np.asarray(cols[col], dtype=float).ravel()
        npix = values.size
        nside = int(header.get("NSIDE") or round(math.sqrt(npix / 12)))
        if 12 * nside * nside != npix or nside & (nside - 1):
            raise RegionError(f"flat skymap with {npix} pixels is not a full HEALPix map")
        order = int(round(math.log2(nside)))
        ipix = np.arange(npix, dtype=np.int64)
        if ordering.startswith("RING") or not ordering:
            ipix = ring_to_nested(ipix, nside).astype(np.int64)
        area = 4 * np.pi / npix
        dens = values if col == "PROBDENSITY" else values / area
        return 4 * 4 ** order + ipix, dens

    # -- derived quantities ----------------------------------------------------------------
    @property
    def orders(self) -> np.ndarray:
        return _uniq_order(self.uniq)

    @property
    def cell_area_sr(self) -> np.ndarray:
        return 4 * np.pi / (12 * 4.0 ** self.orders)

    @property
    def total_probability(self) -> float:
        return float((self.probdensity * self.cell_area_sr).sum())

    def credible_cells(self, level: float = 0.9) -> np.ndarray:
        """Indices of the smallest set of cells holding `level` of the probability."""
        prob = self.probdensity * self.cell_area_sr
        order = np.argsort(-self.probdensity, kind="stable")
        cum = np.cumsum(prob[order]) / prob.sum()
        n = int(np.searchsorted(cum, level, side="left")) + 1
        return order[:min(n, order.size)]

    def area_deg2(self, level: float = 0.9) -> float:
        idx = self.credible_cells(level)
        return float(self.cell_area_sr[idx].sum() * (180 / math.pi) ** 2)

    def radius90(self, level: float = 0.9) -> float:
        return cap_radius_deg(self.area_deg2(level))

    def max_position(self) -> tuple[float, float]:
        from astropy_healpix import HEALPix

        i = int(np.argmax(self.probdensity))
        order = int(self.orders[i])
        lon, lat = HEALPix(nside=2 ** order, order="nested").healpix_to_lonlat(int(self.uniq[i] - 4 * 4 ** order))
        return float(lon.deg) % 360.0, float(lat.deg)

    def credible_moc(self, level: float = 0.9):
        from mocpy import MOC

        idx = self.credible_cells(level)
        depth = int(self.orders[idx].max())
        return MOC.from_healpix_cells(ipix=(self.uniq[idx] - 4 * 4 ** self.orders[idx]).astype(np.uint64),
                                      depth=self.orders[idx].astype(np.uint8), max_depth=depth)

    def summary(self, level: float = 0.9) -> dict:
        ra, dec = self.max_position()
        area = self.area_deg2(level)
        return {"kind": "skymap", "level": level, "area_deg2": area, "radius90": cap_radius_deg(area),
                "max_ra": ra, "max_dec": dec, "cells": int(self.uniq.size), "fits_bytes": self.nbytes,
                "max_order": int(self.orders.max()), "meta": {k: _jsonable(v) for k, v in self.meta.items()}}


def _jsonable(v):
    if isinstance(v, (np.generic,)):
        return v.item()
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)



def region_to_dict(region, level: float = 0.9) -> dict:
    """A JSON-ready description of a region, enough to rebuild a LiveRegion later."""
    if isinstance(region, Skymap):
        d = region.summary(level)
        d["moc"] = region.credible_moc(level).serialize(format="str")
        return d
    return region.to_dict()

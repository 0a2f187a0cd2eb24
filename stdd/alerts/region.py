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
from typing import Any, Iterable, Sequence

import numpy as np

FULL_SKY_DEG2 = 4 * math.pi * (180 / math.pi) ** 2  # 41252.96
SIGMA_2D = 1 - math.exp(-0.5)  # containment of a 1σ circle of a 2-D Gaussian, 0.3935
#: a region this large (90 % circle-equivalent radius, degrees) is treated as all-sky
ALL_SKY_RADIUS_DEG = 90.0


class RegionError(ValueError):
    """A region or skymap that cannot be used (bad numbers, undecodable FITS)."""


# -- containment and area conversions ----------------------------------------------------
def scale_containment(radius: float, from_p: float, to_p: float = 0.9) -> float:
    """Radius at containment `to_p` of a 2-D Gaussian whose `from_p` radius is `radius`."""
    if not (0 < from_p < 1 and 0 < to_p < 1):
        raise RegionError(f"containment must be between 0 and 1 (got {from_p}, {to_p})")
    return radius * math.sqrt(math.log(1 - to_p) / math.log(1 - from_p))


def cap_area_deg2(radius_deg: float) -> float:
    """Area of a spherical cap of angular radius `radius_deg`, in square degrees."""
    r = math.radians(min(radius_deg, 180.0))
    return 4 * math.pi * math.sin(r / 2) ** 2 * (180 / math.pi) ** 2  # = 2π(1 - cos r), stable at small r


def cap_radius_deg(area_deg2: float) -> float:
    """Angular radius of the spherical cap of area `area_deg2`."""
    sr = min(max(area_deg2, 0.0), FULL_SKY_DEG2) / (180 / math.pi) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(sr / (4 * math.pi)))))


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance in degrees (vectorised; haversine, exact at small angles)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1))))


def _tangent_offsets(ra0, dec0, ra, dec):
    """Gnomonic (x east, y north) offsets in degrees of (ra, dec) around (ra0, dec0)."""
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    rar, decr = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    cosc = np.sin(dec0r) * np.sin(decr) + np.cos(dec0r) * np.cos(decr) * np.cos(rar - ra0r)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.cos(decr) * np.sin(rar - ra0r) / cosc
        y = (np.cos(dec0r) * np.sin(decr) - np.sin(dec0r) * np.cos(decr) * np.cos(rar - ra0r)) / cosc
    x = np.where(cosc > 0, np.degrees(x), np.inf)
    y = np.where(cosc > 0, np.degrees(y), np.inf)
    return x, y


def _moc_depth(radius_deg: float) -> int:
    """A MOC depth whose cells are ~1/16 of `radius_deg` (between 3 and 18)."""
    cell = 58.6 / 8  # deg, the size of a depth-3 cell is ~7.3 deg
    depth = 3
    target = max(radius_deg, 1e-4) / 16
    while cell > target and depth < 18:
        cell /= 2
        depth += 1
    return depth


def _moc_cone(ra: float, dec: float, radius_deg: float):
    import astropy.units as u
    from mocpy import MOC

    if radius_deg >= 180.0:
        return MOC.from_str("0/0-11")
    if radius_deg > 90.0:  # large cones: the complement of the small cone around the antipode
        inner = 180.0 - radius_deg
        return MOC.from_cone(lon=((ra + 180.0) % 360.0) * u.deg, lat=-dec * u.deg, radius=inner * u.deg,
                             max_depth=_moc_depth(inner)).complement()
    return MOC.from_cone(lon=ra * u.deg, lat=dec * u.deg, radius=max(radius_deg, 1e-5) * u.deg,
                         max_depth=_moc_depth(radius_deg))


def _moc_polygon(corners: Sequence[Sequence[float]], size_deg: float):
    import astropy.units as u
    from mocpy import MOC

    lon = np.array([c[0] for c in corners], dtype=float) * u.deg
    lat = np.array([c[1] for c in corners], dtype=float) * u.deg
    return MOC.from_polygon(lon=lon, lat=lat, max_depth=_moc_depth(size_deg))


def _polygon_center(corners: Sequence[Sequence[float]]) -> tuple[float, float]:
    ra = np.radians([c[0] for c in corners])
    dec = np.radians([c[1] for c in corners])
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).sum(axis=1)
    n = np.linalg.norm(v)
    if n == 0:
        raise RegionError("polygon corners have no defined centre")
    v /= n
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360), float(np.degrees(np.arcsin(v[2])))


def _point_in_polygon(x, y, px, py):
    """Even-odd rule on the tangent plane (vectorised over points x, y)."""
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    inside = np.zeros(x.shape, dtype=bool)
    n = len(px)
    for i in range(n):
        x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xint)
    return inside


def _from_tangent(ra0: float, dec0: float, x, y):
    """Inverse gnomonic projection: (x east, y north) degrees around (ra0, dec0) -> (ra, dec)."""
    x, y = np.radians(np.asarray(x, dtype=float)), np.radians(np.asarray(y, dtype=float))
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(dec0r) + np.where(rho > 0, y * np.sin(c) * np.cos(dec0r) / rho, 0.0))
        ra = ra0r + np.arctan2(x * np.sin(c), rho * np.cos(dec0r) * np.cos(c) - y * np.sin(dec0r) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _circle_boundary(ra: float, dec: float, radius: float, n: int = 256):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    d = math.tan(math.radians(min(radius, 89.0)))
    return _from_tangent(ra, dec, np.degrees(d * np.sin(t)), np.degrees(d * np.cos(t)))


def _segments_cross(px, py, qx, qy) -> bool:
    """Whether any edge of closed polygon P crosses any edge of closed polygon Q (tangent plane)."""
    p1 = np.stack([px, py], axis=1)
    p2 = np.roll(p1, -1, axis=0)
    q1 = np.stack([qx, qy], axis=1)
    q2 = np.roll(q1, -1, axis=0)

    def orient(a, b, c):
        return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])

    A, B = p1[:, None, :], p2[:, None, :]
    C, D = q1[None, :, :], q2[None, :, :]
    d1, d2 = orient(C, D, A), orient(C, D, B)
    d3, d4 = orient(A, B, C), orient(A, B, D)
    return bool(np.any((d1 * d2 <= 0) & (d3 * d4 <= 0)))


def _outlines_overlap(a_ra, a_dec, b_ra, b_dec, ra0: float, dec0: float) -> bool | None:
    """Exact overlap of two closed outlines (great-circle edges) on the gnomonic plane at (ra0, dec0);
    None when an outline reaches 80 deg or more from the projection centre."""
    ax, ay = _tangent_offsets(ra0, dec0, a_ra, a_dec)
    bx, by = _tangent_offsets(ra0, dec0, b_ra, b_dec)
    lim = math.degrees(math.tan(math.radians(80)))
    if not (np.all(np.hypot(ax, ay) < lim) and np.all(np.hypot(bx, by) < lim)):
        return None
    if _point_in_polygon(ax, ay, bx, by).any() or _point_in_polygon(bx, by, ax, ay).any():
        return True
    return _segments_cross(ax, ay, bx, by)


def _validate_position(ra: float, dec: float) -> None:
    if not (math.isfinite(ra) and math.isfinite(dec)) or not -90 <= dec <= 90:
        raise RegionError(f"position out of range: ra={ra}, dec={dec}")


# -- region shapes -----------------------------------------------------------------------
@dataclass
class Circle:
    ra: float
    dec: float
    radius: float  # degrees, at `containment`
    containment: float = 0.9
    systematic_included: bool | None = None
    kind: str = field(default="circle", init=False)

    def __post_init__(self):
        _validate_position(self.ra, self.dec)
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
        return _moc_cone(self.ra, self.dec, self.radius90)

    def outline(self, n: int = 256):
        return _circle_boundary(self.ra, self.dec, self.radius90, n)

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
        _validate_position(self.ra, self.dec)
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
        x, y = _tangent_offsets(self.ra, self.dec, ra, dec)
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
        return _from_tangent(self.ra, self.dec, x, y)

    def moc(self):
        import astropy.units as u
        from mocpy import MOC

        a, b = self.axes90
        return MOC.from_elliptical_cone(lon=self.ra * u.deg, lat=self.dec * u.deg, a=a * u.deg, b=b * u.deg,
                                        pa=self.pa * u.deg, max_depth=_moc_depth(b))

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
            _validate_position(ra, dec)
        self._center = _polygon_center(self.corners)

    @property
    def center(self) -> tuple[float, float]:
        return self._center

    @property
    def area_deg2(self) -> float:
        x, y = _tangent_offsets(*self._center, [c[0] for c in self.corners], [c[1] for c in self.corners])
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)

    @property
    def radius90(self) -> float:
        return min(scale_containment(cap_radius_deg(self.area_deg2), self.containment), 180.0)

    def contains(self, ra, dec):
        px, py = _tangent_offsets(*self._center, [c[0] for c in self.corners], [c[1] for c in self.corners])
        x, y = _tangent_offsets(*self._center, ra, dec)
        inside = _point_in_polygon(x, y, px, py)
        return inside if np.ndim(ra) else bool(inside[0])

    def moc(self):
        return _moc_polygon(self.corners, cap_radius_deg(self.area_deg2))

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
            exact = _outlines_overlap(*self._shape.outline(), *_circle_boundary(ra, dec, radius_deg), ra, dec)
            if exact is not None:
                return exact
        return not self.moc().intersection(_moc_cone(ra, dec, radius_deg)).empty()

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
            exact = _outlines_overlap(*self._shape.outline(), *poly.outline(), *poly.center)
            if exact is not None:
                return exact
        size = min(cap_radius_deg(poly.area_deg2), self.radius_deg)
        return not self.moc().intersection(_moc_polygon(corners, size)).empty()

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


def region_to_dict(region, level: float = 0.9) -> dict:
    """A JSON-ready description of a region, enough to rebuild a LiveRegion later."""
    if isinstance(region, Skymap):
        d = region.summary(level)
        d["moc"] = region.credible_moc(level).serialize(format="str")
        return d
    return region.to_dict()

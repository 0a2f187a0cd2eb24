"""Sky geometry for alert regions: containment and area conversions, separations, the tangent
plane, MOC cones and polygons, and outline overlap tests. Plain functions on degrees; the
region classes (region.py) and the daemon's live regions (live_region.py) are built on them.
"""
from __future__ import annotations

import math
from typing import Sequence

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


def tangent_offsets(ra0, dec0, ra, dec):
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


def moc_depth(radius_deg: float) -> int:
    """A MOC depth whose cells are ~1/16 of `radius_deg` (between 3 and 18)."""
    cell = 58.6 / 8  # deg, the size of a depth-3 cell is ~7.3 deg
    depth = 3
    target = max(radius_deg, 1e-4) / 16
    while cell > target and depth < 18:
        cell /= 2
        depth += 1
    return depth


def moc_cone(ra: float, dec: float, radius_deg: float):
    import astropy.units as u
    from mocpy import MOC

    if radius_deg >= 180.0:
        return MOC.from_str("0/0-11")
    if radius_deg > 90.0:  # large cones: the complement of the small cone around the antipode
        inner = 180.0 - radius_deg
        return MOC.from_cone(lon=((ra + 180.0) % 360.0) * u.deg, lat=-dec * u.deg, radius=inner * u.deg,
                             max_depth=moc_depth(inner)).complement()
    return MOC.from_cone(lon=ra * u.deg, lat=dec * u.deg, radius=max(radius_deg, 1e-5) * u.deg,
                         max_depth=moc_depth(radius_deg))


def moc_polygon(corners: Sequence[Sequence[float]], size_deg: float):
    import astropy.units as u
    from mocpy import MOC

    lon = np.array([c[0] for c in corners], dtype=float) * u.deg
    lat = np.array([c[1] for c in corners], dtype=float) * u.deg
    return MOC.from_polygon(lon=lon, lat=lat, max_depth=moc_depth(size_deg))


def polygon_center(corners: Sequence[Sequence[float]]) -> tuple[float, float]:
    ra = np.radians([c[0] for c in corners])
    dec = np.radians([c[1] for c in corners])
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).sum(axis=1)
    n = np.linalg.norm(v)
    if n == 0:
        raise RegionError("polygon corners have no defined centre")
    v /= n
    return float(np.degrees(np.arctan2(v[1], v[0])) % 360), float(np.degrees(np.arcsin(v[2])))


def point_in_polygon(x, y, px, py):
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


def from_tangent(ra0: float, dec0: float, x, y):
    """Inverse gnomonic projection: (x east, y north) degrees around (ra0, dec0) -> (ra, dec)."""
    x, y = np.radians(np.asarray(x, dtype=float)), np.radians(np.asarray(y, dtype=float))
    ra0r, dec0r = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(dec0r) + np.where(rho > 0, y * np.sin(c) * np.cos(dec0r) / rho, 0.0))
        ra = ra0r + np.arctan2(x * np.sin(c), rho * np.cos(dec0r) * np.cos(c) - y * np.sin(dec0r) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def circle_boundary(ra: float, dec: float, radius: float, n: int = 256):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    d = math.tan(math.radians(min(radius, 89.0)))
    return from_tangent(ra, dec, np.degrees(d * np.sin(t)), np.degrees(d * np.cos(t)))


def segments_cross(px, py, qx, qy) -> bool:
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


def outlines_overlap(a_ra, a_dec, b_ra, b_dec, ra0: float, dec0: float) -> bool | None:
    """Exact overlap of two closed outlines (great-circle edges) on the gnomonic plane at (ra0, dec0);
    None when an outline reaches 80 deg or more from the projection centre."""
    ax, ay = tangent_offsets(ra0, dec0, a_ra, a_dec)
    bx, by = tangent_offsets(ra0, dec0, b_ra, b_dec)
    lim = math.degrees(math.tan(math.radians(80)))
    if not (np.all(np.hypot(ax, ay) < lim) and np.all(np.hypot(bx, by) < lim)):
        return None
    if point_in_polygon(ax, ay, bx, by).any() or point_in_polygon(bx, by, ax, ay).any():
        return True
    return segments_cross(ax, ay, bx, by)


def validate_position(ra: float, dec: float) -> None:
    if not (math.isfinite(ra) and math.isfinite(dec)) or not -90 <= dec <= 90:
        raise RegionError(f"position out of range: ra={ra}, dec={dec}")


# -- region shapes -----------------------------------------------------------------------

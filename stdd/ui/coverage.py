"""The picture of an alert's region over the footprints of the frames that covered it.

Drawn with matplotlib on a gnomonic (TAN) projection centred on the region: the region filled
(its MOC when it has one — skymaps — else its circle), each frame's footprint as an outline
labelled with its id (colour by time since the trigger when known), the alert position marked.
The field shown spans the region and every footprint, at least half a degree.
"""
from __future__ import annotations

import io
import math

import numpy as np


def _extent(points: list[tuple[float, float]], ra0: float, dec0: float) -> float:
    """The largest angular distance (deg) of the points from the centre."""
    from astropy.coordinates import SkyCoord

    if not points:
        return 0.0
    c0 = SkyCoord(ra0, dec0, unit="deg")
    pts = SkyCoord([p[0] for p in points], [p[1] for p in points], unit="deg")
    return float(np.max(c0.separation(pts).deg))


def region_center(region: dict, moc=None) -> tuple[float, float, float]:
    """(ra, dec, radius deg) that frames the region."""
    if region.get("ra") is not None and region.get("dec") is not None:
        return float(region["ra"]), float(region["dec"]), float(region.get("radius") or region.get("radius90") or 0.1)
    if moc is not None:
        from astropy.coordinates import SkyCoord

        lon, lat = moc.barycenter().ra.deg, moc.barycenter().dec.deg
        c = SkyCoord(lon, lat, unit="deg")
        area = moc.sky_fraction * 41253.0
        return float(lon), float(lat), max(0.1, math.sqrt(area / math.pi)) if c is not None else 1.0
    return 0.0, 0.0, 1.0


def coverage_png(region: dict, frames: list[dict], title: str = "", moc=None) -> bytes:
    """PNG bytes: `region` (an alert's stored region: circle or MOC), `frames` with `footprint`
    ([[ra, dec] x4]) and `id` (and optional `dt_hours`)."""
    from astropy.visualization.wcsaxes import SphericalCircle
    from astropy import units as u
    from astropy.wcs import WCS
    from matplotlib.figure import Figure

    ra0, dec0, radius = region_center(region, moc)
    corners = [tuple(c) for f in frames for c in (f.get("footprint") or []) if isinstance(c, (list, tuple))]
    half = max(0.25, 1.2 * max(radius, _extent(corners, ra0, dec0)))
    npix = 400
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [npix / 2 + 0.5, npix / 2 + 0.5]
    w.wcs.cdelt = [-2 * half / npix, 2 * half / npix]
    fig = Figure(figsize=(6, 6), dpi=80)
    ax = fig.add_subplot(1, 1, 1, projection=w)
    ax.set_xlim(-0.5, npix - 0.5)
    ax.set_ylim(-0.5, npix - 0.5)
    drawn = False
    if moc is not None:
        try:
            moc.fill(ax=ax, wcs=w, alpha=0.3, fill=True, color="magenta", linewidth=0)
            drawn = True
        except Exception:  # an old mocpy or an odd MOC: fall back to the circle
            drawn = False
    if not drawn and region.get("ra") is not None:
        ax.add_patch(SphericalCircle((ra0 * u.deg, dec0 * u.deg), radius * u.deg, transform=ax.get_transform("icrs"),
                                     facecolor="magenta", edgecolor="magenta", alpha=0.3))
    if region.get("ra") is not None:
        ax.plot([ra0], [dec0], "x", color="magenta", transform=ax.get_transform("icrs"), ms=8)
    world = ax.get_transform("icrs")
    for f in frames:
        fp = f.get("footprint")
        if not isinstance(fp, (list, tuple)) or len(fp) < 3:
            continue
        xs = [c[0] for c in fp] + [fp[0][0]]
        ys = [c[1] for c in fp] + [fp[0][1]]
        ax.plot(xs, ys, "-", color="tab:blue", lw=1, transform=world)
        ax.text(float(np.mean(xs[:-1])), float(np.mean(ys[:-1])), str(f.get("id")), transform=world,
                fontsize=7, color="tab:blue", ha="center")
    ax.coords[0].set_axislabel("RA")
    ax.coords[1].set_axislabel("Dec")
    ax.coords.grid(color="gray", alpha=0.3)
    ax.set_title(title or f"{len(frames)} frame(s) over the region", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

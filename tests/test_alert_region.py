"""Alert regions: HEALPix skymaps (multi-order and flat), credible areas, footprint overlaps."""
from __future__ import annotations

import gzip
import io
import json
import math

import numpy as np
import pytest
from alert_skymap import expected_area90, make_gwalert, make_skymap_fits

from stdd.alerts import Circle, Ellipse, LiveRegion, Polygon, RegionError, Skymap, parse_notice
from stdd.alerts.region import angular_separation, cap_area_deg2, cap_radius_deg, region_to_dict


def offset(ra0, dec0, east_deg, north_deg):
    """Position at tangent-plane offsets (degrees) from (ra0, dec0)."""
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    c = SkyCoord(ra0 * u.deg, dec0 * u.deg)
    sep = math.hypot(east_deg, north_deg)
    pa = math.degrees(math.atan2(east_deg, north_deg))
    p = c.directional_offset_by(pa * u.deg, sep * u.deg)
    return float(p.ra.deg), float(p.dec.deg)


@pytest.fixture(scope="module")
def skymap_fits():
    return make_skymap_fits(ra0=150.0, dec0=-20.0, sigma_a=6.0, sigma_b=2.0, pa=30.0)


def test_multiorder_skymap_credible_area(skymap_fits):
    sm = Skymap.from_fits_bytes(skymap_fits)
    assert sm.total_probability == pytest.approx(1.0, abs=1e-9)
    assert int(sm.orders.max()) == 11 and int(sm.orders.min()) == 4
    assert sm.area_deg2(0.9) == pytest.approx(expected_area90(6.0, 2.0), rel=0.06)
    assert sm.area_deg2(0.5) == pytest.approx(2 * math.log(2) * math.pi * 12.0, rel=0.08)
    ra, dec = sm.max_position()
    assert angular_separation(ra, dec, 150.0, -20.0) < 0.05
    assert sm.radius90() == pytest.approx(cap_radius_deg(sm.area_deg2()))


def test_gzip_and_corrupt_skymaps(skymap_fits):
    assert Skymap.from_fits_bytes(gzip.compress(skymap_fits)).uniq.size == Skymap.from_fits_bytes(skymap_fits).uniq.size
    with pytest.raises(RegionError, match="not a FITS"):
        Skymap.from_fits_bytes(b"hello")
    with pytest.raises(RegionError):
        Skymap.from_fits_bytes(skymap_fits[: len(skymap_fits) // 3])
    with pytest.raises(RegionError):
        Skymap.from_base64("U0lNUExF...")


@pytest.mark.parametrize("ordering", ["NESTED", "RING"])
def test_flat_skymap(ordering):
    from astropy.io import fits
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=128, order=ordering.lower())
    lon, lat = hp.healpix_to_lonlat(np.arange(hp.npix))
    d = angular_separation(lon.deg, lat.deg, 40.0, 10.0)
    prob = np.exp(-0.5 * (d / 3.0) ** 2)
    prob /= prob.sum()
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="PROB", format="D", array=prob)])
    hdu.header.update({"PIXTYPE": "HEALPIX", "ORDERING": ordering, "NSIDE": 128, "COORDSYS": "C"})
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    sm = Skymap.from_fits_bytes(buf.getvalue())
    assert sm.area_deg2(0.9) == pytest.approx(2 * math.log(10) * math.pi * 9.0, rel=0.03)
    ra, dec = sm.max_position()
    assert angular_separation(ra, dec, 40.0, 10.0) < 0.5


def test_skymap_live_region(skymap_fits):
    sm = Skymap.from_fits_bytes(skymap_fits)
    stored = json.loads(json.dumps(region_to_dict(sm)))  # what the alerts table keeps
    region = LiveRegion("S1", stored)
    assert region.kind == "skymap" and region.forced_position is None
    major_in = offset(150, -20, 8 * math.sin(math.radians(30)), 8 * math.cos(math.radians(30)))
    minor_out = offset(150, -20, 6 * math.cos(math.radians(30)), -6 * math.sin(math.radians(30)))
    assert region.contains(150.0, -20.0) and region.contains(*major_in)
    assert not region.contains(*minor_out) and not region.contains(330.0, 20.0)
    flags = region.contains(np.array([150.0, major_in[0], minor_out[0]]), np.array([-20.0, major_in[1], minor_out[1]]))
    assert flags.tolist() == [True, True, False]
    # the 90 % region reaches ~4.3 deg along the minor axis
    assert region.overlaps(*minor_out, 2.5) and not region.overlaps(*minor_out, 1.0)
    assert region.overlaps(330.0, 20.0, 179.0) and not region.overlaps(330.0, 20.0, 10.0)
    corners = [offset(*minor_out, dx, dy) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    assert not region.overlaps_polygon(corners)
    big = [offset(*minor_out, dx, dy) for dx, dy in ((-2.5, -2.5), (2.5, -2.5), (2.5, 2.5), (-2.5, 2.5))]
    assert region.overlaps_polygon(big)
    assert region.overlaps_footprint({"corners": big}) and region.overlaps_footprint({"ra": 150, "dec": -20, "radius": 0.1})


def test_circle_region_and_forced_photometry():
    c = Circle(10.0, 20.0, 0.03, containment=0.9)
    region = LiveRegion("A", region_to_dict(c), forced_max_radius_deg=0.05)
    assert region.forced_position == (10.0, 20.0)
    ra, dec = offset(10, 20, 0.5, 0)
    assert region.overlaps(ra, dec, 0.48) and not region.overlaps(ra, dec, 0.46)
    assert region.contains(*offset(10, 20, 0.029, 0)) and not region.contains(*offset(10, 20, 0.031, 0))
    square = [offset(10, 20, dx, dy) for dx, dy in ((0.01, -0.2), (0.4, -0.2), (0.4, 0.2), (0.01, 0.2))]
    assert region.overlaps_polygon(square)
    far = [offset(10, 20, dx, dy) for dx, dy in ((0.1, -0.2), (0.4, -0.2), (0.4, 0.2), (0.1, 0.2))]
    assert not region.overlaps_polygon(far)
    wide = LiveRegion("B", region_to_dict(Circle(10.0, 20.0, 1.0, containment=0.68)), forced_max_radius_deg=0.05)
    assert wide.forced_position is None and wide.radius_deg == pytest.approx(1.42155, abs=1e-4)


def test_ellipse_and_polygon_regions():
    e = Ellipse(200.0, -45.0, 1.0, 0.2, pa=90.0)  # major axis east-west
    region = LiveRegion("E", region_to_dict(e))
    assert region.contains(*offset(200, -45, 0.9, 0)) and not region.contains(*offset(200, -45, 0, 0.3))
    assert region.overlaps(*offset(200, -45, 0, 0.5), 0.35) and not region.overlaps(*offset(200, -45, 0, 0.5), 0.25)
    swapped = Ellipse(200.0, -45.0, 0.2, 1.0, pa=0.0)  # axes given the other way round: same ellipse
    assert (swapped.a, swapped.b, swapped.pa) == (1.0, 0.2, 90.0)
    p = Polygon([(359.5, -0.5), (0.5, -0.5), (0.5, 0.5), (359.5, 0.5)])  # across RA 0
    assert p.contains(0.0, 0.0) and p.contains(359.8, 0.2) and not p.contains(1.0, 0.0)
    assert p.area_deg2 == pytest.approx(1.0, rel=1e-3)
    pr = LiveRegion("P", region_to_dict(p))
    assert pr.overlaps(1.2, 0.0, 0.75) and not pr.overlaps(1.2, 0.0, 0.65)


def test_region_errors():
    with pytest.raises(RegionError):
        Circle(10.0, 95.0, 1.0)
    with pytest.raises(RegionError):
        Circle(10.0, 10.0, -1.0)
    with pytest.raises(RegionError):
        Polygon([(0, 0), (1, 1)])


def test_cap_area_round_trip():
    for r in (0.01, 1.0, 30.0, 90.0, 179.0):
        assert cap_radius_deg(cap_area_deg2(r)) == pytest.approx(r, rel=1e-9)
    assert cap_area_deg2(180.0) == pytest.approx(41252.96, rel=1e-6)


def test_one_megabyte_lvk_alert_decodes(skymap_fits):
    raw = make_gwalert("S260101ab", skymap_fits=skymap_fits)
    assert len(raw) > 1_000_000
    alert = parse_notice(raw, topic="igwn.gwalert")
    assert alert.role == "observation" and alert.has_skymap and alert.ra is None
    assert alert.skymap.area_deg2() == pytest.approx(expected_area90(), rel=0.06)
    d = alert.to_dict()
    assert d["skymap"]["area_deg2"] == pytest.approx(alert.skymap.area_deg2())
    assert d["error_radius_deg"] == pytest.approx(cap_radius_deg(alert.skymap.area_deg2()))

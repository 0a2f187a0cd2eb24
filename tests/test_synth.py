"""The synthetic-frame generator and the demo data set, checked by measuring the files it writes."""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from click.testing import CliRunner
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
from photutils.centroids import centroid_2dg, centroid_sources
from scipy.spatial import cKDTree

from stdd.cli import cli
from stdd.synth import (
    detection_limits,
    make_field,
    make_template_library,
    wcs_from_truth,
)
from stdd.synth.demo import make_demo

warnings.simplefilter("ignore", FITSFixedWarning)


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A 1024² frame without cosmic rays (seed 7), with template and two transients."""
    return make_field(tmp_path_factory.mktemp("clean"), seed=7, n_cosmics=0)


@pytest.fixture(scope="module")
def clean_sip(tmp_path_factory):
    return make_field(tmp_path_factory.mktemp("sip"), seed=8, n_cosmics=0, sip=True, template=False,
                      n_transients=0)


def _stars(truth, *, min_flux=0.0, isolation_px=15.0, edge=20):
    """x, y, flux of the frame's unsaturated stars brighter than min_flux, away from the edges, with no
    other frame star brighter than 1 % of their flux within isolation_px."""
    st = truth["stars"]
    x = np.array([s["x"] for s in st])
    y = np.array([s["y"] for s in st])
    flux = np.array([s["flux"] for s in st])
    sat = np.array([s["saturated"] for s in st])
    tree = cKDTree(np.c_[x, y])
    keep = []
    for i in np.nonzero((flux > min_flux) & ~sat)[0]:
        if not (edge < x[i] < truth["width"] - edge and edge < y[i] < truth["height"] - edge):
            continue
        near = [j for j in tree.query_ball_point([x[i], y[i]], isolation_px) if j != i]
        if all(flux[j] < 0.01 * flux[i] for j in near):
            keep.append(i)
    keep = np.array(keep, int)
    return x[keep], y[keep], flux[keep]


def _aperture_flux(image, x, y, r):
    pos = np.c_[np.atleast_1d(x), np.atleast_1d(y)]
    ap = CircularAperture(pos, r)
    bkg = ApertureStats(image, CircularAnnulus(pos, 5 * r, 7 * r)).median
    return np.asarray(aperture_photometry(image, ap)["aperture_sum"]) - np.asarray(bkg) * ap.area


# ----------------------------------------------------------------------------------------- tests


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    kw = dict(width=256, height=200, n_stars=300)
    a = make_field(tmp_path / "a", seed=11, **kw)
    b = make_field(tmp_path / "b", seed=11, **kw)
    c = make_field(tmp_path / "c", seed=12, **kw)
    for name, shape in (("frame.fits", (200, 256)), ("template.fits", (264, 320))):
        da, db = fits.getdata(tmp_path / "a" / name), fits.getdata(tmp_path / "b" / name)
        assert da.dtype == np.dtype(">f4") and da.shape == shape
        assert da.tobytes() == db.tobytes()
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a.truth.read_text() == b.truth.read_text()
    assert a.catalog.read_bytes() == b.catalog.read_bytes()
    assert fits.getdata(c.frame).tobytes() != fits.getdata(a.frame).tobytes()


def test_header_and_truth_basics(clean):
    t = clean.truth_data
    h = fits.getheader(clean.frame)
    assert h["BITPIX"] == -32
    assert h["DATE-OBS"] == "2026-03-01T03:00:00" and h["EXPTIME"] == 60.0 and h["FILTER"] == "r"
    assert h["GAIN"] == 2.0 and h["SATURATE"] == 50000.0 and h["INSTRUME"] == "SYNTH" and h["OBJECT"]
    assert WCS(h).wcs.ctype[0] == "RA---TAN"
    assert abs(t["n_stars"] - 1500) < 5 * math.sqrt(1500)  # Poisson around n_stars
    assert 1 <= t["n_saturated"] <= 15
    for key in ("zp", "color_term", "band", "fwhm_px", "fwhm_arcsec", "wcs", "stars", "transients",
                "mag_limit", "mag_limit_aperture", "mag_limit_formula", "saturation", "gain", "sky", "seed"):
        assert key in t
    assert t["mag_limit"] < t["mag_limit_aperture"]  # total flux needed > flux in the aperture
    lim = detection_limits(t["zp"], t["fwhm"], t["beta"], t["sky"], t["gain"], t["readnoise"])
    sig = math.sqrt(1000 / 2 + (5 / 2) ** 2)
    assert lim["mag_limit_aperture"] == pytest.approx(25 - 2.5 * math.log10(5 * sig * math.sqrt(math.pi * 9)))
    assert json.loads(clean.truth.read_text())["files"]["frame"] == "frame.fits"


def test_positions_and_fluxes_match_truth(clean):
    t = clean.truth_data
    img = fits.getdata(clean.frame).astype(float)
    x, y, flux = _stars(t, min_flux=1e4)
    assert len(x) >= 25
    cx, cy = centroid_sources(img - t["sky"], x, y, box_size=11, centroid_func=centroid_2dg)
    dx, dy = cx - x, cy - y
    assert np.sqrt(np.mean(dx ** 2)) < 0.05 and np.sqrt(np.mean(dy ** 2)) < 0.05
    assert abs(np.mean(dx)) < 0.01 and abs(np.mean(dy)) < 0.01
    # aperture of radius FWHM: the pixelated Moffat puts aperture_fraction_pixel of the flux inside
    ratio = _aperture_flux(img, x, y, t["fwhm"]) / (flux * t["aperture_fraction_pixel"])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    assert np.std(ratio) < 0.03
    assert t["aperture_fraction_pixel"] == pytest.approx(t["aperture_fraction"], rel=0.03)


def test_sep_detection_finds_bright_stars_at_their_true_positions(clean):
    from stdpipe import photometry

    t = clean.truth_data
    img = fits.getdata(clean.frame).astype(float)
    obj = photometry.get_objects_sep(img, thresh=3.0, aper=t["fwhm"], gain=t["gain"], edge=10, sn=5,
                                     verbose=False)
    x, y, _ = _stars(t, min_flux=3e4)
    d, k = cKDTree(np.c_[obj["x"], obj["y"]]).query(np.c_[x, y])
    assert np.all(d < 0.3)
    assert np.sqrt(np.mean((obj["x"][k] - x) ** 2)) < 0.05
    assert np.sqrt(np.mean((obj["y"][k] - y) ** 2)) < 0.05


def test_background_noise_matches_the_limit_formula(clean):
    t = clean.truth_data
    img = fits.getdata(clean.frame).astype(float)
    xs = np.array([s["x"] for s in t["stars"]])
    ys = np.array([s["y"] for s in t["stars"]])
    pts = np.random.default_rng(0).uniform(20, 1000, (6000, 2))
    d, _ = cKDTree(np.c_[xs, ys]).query(pts)
    pts = pts[d > 15][:1500]
    r = t["fwhm"]
    sums = np.asarray(aperture_photometry(img - t["sky"], CircularAperture(pts, r))["aperture_sum"])
    expected = t["sigma_pix_adu"] * math.sqrt(math.pi * r * r)
    assert np.std(sums) == pytest.approx(expected, rel=0.07)
    assert np.median(sums) == pytest.approx(0.0, abs=0.1 * expected)


def test_transients_have_the_expected_snr_and_are_only_in_the_frame(clean):
    t = clean.truth_data
    img = fits.getdata(clean.frame).astype(float)
    assert len(t["transients"]) == 2
    r = t["fwhm"]
    area = math.pi * r * r
    for tr in t["transients"]:
        assert 20 <= tr["snr"] <= 50
        f = float(_aperture_flux(img, tr["x"], tr["y"], r)[0])
        snr = f / math.sqrt(max(f, 0) / t["gain"] + area * t["sigma_pix_adu"] ** 2)
        assert snr == pytest.approx(tr["snr"], rel=0.2)
    cat = Table.read(clean.catalog)
    ra = np.array([tr["ra"] for tr in t["transients"]])
    dec = np.array([tr["dec"] for tr in t["transients"]])
    for a, b in zip(ra, dec):
        sep = np.hypot((cat["RAJ2000"] - a) * math.cos(math.radians(b)), cat["DEJ2000"] - b) * 3600
        assert sep.min() > 2.0 * t["fwhm_arcsec"]
    # nothing at the transients' positions in the template
    tt = t["template"]
    timg = fits.getdata(clean.template).astype(float)
    tx, ty = wcs_from_truth(tt["wcs"]).all_world2pix(ra, dec, 0)
    tf = _aperture_flux(timg, tx, ty, tt["fwhm_px"])
    noise = tt["sigma_pix_adu"] * math.sqrt(math.pi * tt["fwhm_px"] ** 2)
    assert np.all(np.abs(tf) < 5 * noise)


def test_stdpipe_calibration_recovers_zero_point_and_colour_term(clean):
    from stdpipe import photometry, pipeline

    t = clean.truth_data
    img = fits.getdata(clean.frame).astype(float)
    header = fits.getheader(clean.frame)
    r = t["fwhm"]
    obj = photometry.get_objects_sep(img, header=header, thresh=3.0, aper=r, bkgann=(5 * r, 7 * r),
                                     gain=t["gain"], edge=10, sn=5, wcs=WCS(header), verbose=False)
    cat = Table.read(clean.catalog)
    m = pipeline.calibrate_photometry(obj, cat, pixscale=t["pixscale_arcsec"] / 3600, cat_col_mag="rmag",
                                      cat_col_mag_err="e_rmag", cat_col_mag1="gmag", cat_col_mag2="rmag",
                                      order=0, verbose=False)
    expected_zero = t["zp"] + 2.5 * math.log10(t["aperture_fraction_pixel"])  # aperture magnitudes
    assert m["color_term"] == pytest.approx(t["stdpipe_color_term"], abs=0.03)
    # the zero point at the stars' typical colour is what the fit pins down best
    c = 0.7
    fitted = float(np.ravel(m["zero_fn"](512, 512, 0))[0]) + m["color_term"] * c
    assert fitted == pytest.approx(expected_zero + t["stdpipe_color_term"] * c, abs=0.02)


def test_saturated_stars_are_clipped(clean):
    t = clean.truth_data
    img = fits.getdata(clean.frame)
    assert img.max() == pytest.approx(t["saturation"])
    for s in t["stars"]:
        ix, iy = int(round(s["x"])), int(round(s["y"]))
        if not (2 <= ix < t["width"] - 2 and 2 <= iy < t["height"] - 2):
            continue
        box = img[iy - 1:iy + 2, ix - 1:ix + 2]
        if s["saturated"]:
            assert box.max() == pytest.approx(t["saturation"])
        elif s["peak_adu"] < 0.8 * t["saturation"]:
            assert box.max() < t["saturation"]


def test_cosmic_rays_are_exactly_where_the_truth_says(tmp_path):
    kw = dict(seed=21, width=512, height=512, n_stars=400, template=False)
    with_cr = make_field(tmp_path / "cr", n_cosmics=30, **kw)
    without = make_field(tmp_path / "nocr", n_cosmics=0, **kw)
    diff = fits.getdata(with_cr.frame).astype(float) - fits.getdata(without.frame).astype(float)
    rays = with_cr.truth_data["cosmics"]
    assert len(rays) == 30
    assert {r["kind"] for r in rays} == {"hit", "track"}
    mask = np.zeros(diff.shape, bool)
    for r in rays:
        for x, y in r["pixels"]:
            mask[y, x] = True
        if r["kind"] == "track":
            assert 5 <= r["length"] <= 25
    assert np.all(diff[~mask] == 0)
    unclipped = fits.getdata(without.frame)[mask] < with_cr.truth_data["saturation"] - 1e4
    assert np.all(diff[mask][unclipped] > 50)


def test_sip_distortion_is_real_and_the_header_carries_it(clean_sip):
    t = clean_sip.truth_data
    h = fits.getheader(clean_sip.frame)
    w_file, w_true = WCS(h), wcs_from_truth(t["wcs"])
    assert w_file.sip is not None and "A_3_0" in h and "B_0_3" in h and "AP_3_0" in h and "BP_0_3" in h
    ra = np.array([s["ra"] for s in t["stars"]])
    dec = np.array([s["dec"] for s in t["stars"]])
    xs = np.array([s["x"] for s in t["stars"]])
    ys = np.array([s["y"] for s in t["stars"]])
    fx, fy = w_file.all_world2pix(ra, dec, 0, tolerance=1e-8)
    assert np.max(np.hypot(fx - xs, fy - ys)) < 1e-3
    assert np.max(np.abs(np.array(w_true.all_pix2world(xs, ys, 0)) - [ra, dec])) < 1e-7
    # the distortion moves the corners by more than a pixel with respect to the pure TAN part
    tan = w_true.deepcopy()
    tan.sip = None
    tan.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], float)
    cra, cdec = w_true.all_pix2world(corners[:, 0], corners[:, 1], 0)
    tx, ty = tan.wcs_world2pix(cra, cdec, 0)
    assert np.min(np.hypot(tx - corners[:, 0], ty - corners[:, 1])) > 1.0
    # the inverse (AP/BP) polynomials are accurate
    px, py = w_file.sip_foc2pix(*w_file.sip_pix2foc(corners[:, 0], corners[:, 1], 0), 0)
    assert np.max(np.hypot(px - corners[:, 0], py - corners[:, 1])) < 0.01
    # stars sit where the distorted WCS says, also in the corners
    img = fits.getdata(clean_sip.frame).astype(float)
    x, y, _ = _stars(t, min_flux=1e4)
    cx, cy = centroid_sources(img - t["sky"], x, y, box_size=11, centroid_func=centroid_2dg)
    assert np.sqrt(np.mean((cx - x) ** 2 + (cy - y) ** 2)) < 0.07


def test_wcs_error_perturbs_only_the_header(tmp_path):
    p = make_field(tmp_path, seed=3, width=512, height=512, n_stars=300, template=False,
                   wcs_error_arcsec=12.0, wcs_error_rot_deg=0.1)
    t = p.truth_data
    w_file, w_true = WCS(fits.getheader(p.frame)), wcs_from_truth(t["wcs"])
    c_file = w_file.pixel_to_world(255.5, 255.5)
    c_true = w_true.pixel_to_world(255.5, 255.5)
    assert c_file.separation(c_true).arcsec == pytest.approx(12.0, abs=0.05)
    corner_file = w_file.pixel_to_world(0, 0)
    corner_true = w_true.pixel_to_world(0, 0)
    assert corner_file.separation(corner_true).arcsec > 12.0 + 0.1  # rotation adds at the corners
    assert t["wcs_header"] != t["wcs"]


def test_template_has_its_own_seeing_pointing_and_depth(clean):
    from stdpipe import photometry

    t = clean.truth_data
    tt = t["template"]
    h = fits.getheader(clean.template)
    w = WCS(h)
    timg = fits.getdata(clean.template).astype(float)
    assert timg.shape == (1024 + 64, 1024 + 64)
    assert h["FILTER"] == "r" and h["GAIN"] == pytest.approx(2.0 * 4.0) and h["DATE-OBS"] < t["date_obs"]
    assert tt["fwhm_px"] == 2.2 and tt["depth_gain"] == 4.0 and h["NCOMBINE"] == 4.0
    # the template's pointing is off by the requested shift (in frame pixels) and rotated
    fx, fy = wcs_from_truth(t["wcs"]).all_world2pix([tt["center_ra"]], [tt["center_dec"]], 0)
    assert fx[0] - 511.5 == pytest.approx(3.3, abs=1e-3) and fy[0] - 511.5 == pytest.approx(-2.1, abs=1e-3)
    assert abs(tt["rot_deg"]) == pytest.approx(0.4)
    # measured seeing
    obj = photometry.get_objects_sep(timg, thresh=5.0, aper=3.0, gain=h["GAIN"], edge=20, sn=20,
                                     fwhm=True, verbose=False)
    good = (obj["flags"] == 0) & (obj["flux"] / obj["fluxerr"] > 50)
    assert np.median(obj["fwhm"][good]) == pytest.approx(2.2, rel=0.12)
    # the frame's bright stars are where the template's WCS puts them
    x, y, _ = _stars(t, min_flux=1e4)
    ra, dec = wcs_from_truth(t["wcs"]).all_pix2world(x, y, 0)
    tx, ty = w.all_world2pix(ra, dec, 0)
    cx, cy = centroid_sources(timg - tt["sky"], tx, ty, box_size=9, centroid_func=centroid_2dg)
    assert np.sqrt(np.mean((cx - tx) ** 2 + (cy - ty) ** 2)) < 0.05
    # deeper: background noise lower by about sqrt(depth)
    assert tt["sigma_pix_adu"] == pytest.approx(t["sigma_pix_adu"] / 2.0, rel=0.01)
    # robust noise (MAD) of the background of both images
    frame = fits.getdata(clean.frame).astype(float)
    mad = lambda a: 1.4826 * np.median(np.abs(a - np.median(a)))  # noqa: E731
    assert mad(timg) == pytest.approx(tt["sigma_pix_adu"], rel=0.1)
    assert mad(frame) == pytest.approx(t["sigma_pix_adu"], rel=0.1)


def test_catalogue_columns_colours_and_coverage(clean):
    t = clean.truth_data
    cat = Table.read(clean.catalog)
    for col in ("RAJ2000", "DEJ2000", "gmag", "e_gmag", "rmag", "e_rmag", "imag", "e_imag", "Bmag", "Vmag"):
        assert col in cat.colnames
    gr = cat["gmag"] - cat["rmag"]
    assert np.percentile(gr, 1) > 0.15 and np.percentile(gr, 99) < 1.55
    assert 0.0099 <= cat["e_rmag"].min() and cat["e_rmag"].max() <= 0.0201
    w = wcs_from_truth(t["wcs"])
    x, y = w.all_world2pix(cat["RAJ2000"], cat["DEJ2000"], 0)
    outside = (x < 0) | (x > 1023) | (y < 0) | (y > 1023)
    assert outside.sum() > 0.3 * len(cat) and x.min() < -200 and x.max() > 1200
    assert np.sum(cat["rmag"] > t["mag_limit_aperture"] + 0.5) > 200
    # catalogue noise is what e_rmag states
    true = {s["id"]: s["mag"] for s in t["stars"]}
    ids = np.array([i for i in cat["ID"] if i in true])
    sel = np.isin(cat["ID"], ids)
    resid = np.array(cat["rmag"][sel]) - np.array([true[i] for i in cat["ID"][sel]])
    assert np.std(resid) == pytest.approx(np.sqrt(np.mean(np.array(cat["e_rmag"][sel]) ** 2)), rel=0.1)
    assert abs(np.mean(resid)) < 0.002


def test_template_library_is_consistent_with_the_frame_and_covers_by_footprint(tmp_path, clean):
    t = clean.truth_data
    lib = make_template_library(tmp_path / "lib", seed=7)  # same sky as make_field(seed=7) defaults
    roles = {i.role: i for i in lib}
    assert set(roles) == {"field", "overlap", "disjoint", "other-band"}
    frame_w = wcs_from_truth(t["wcs"])
    corners = frame_w.all_pix2world([0, 1023, 0, 1023], [0, 0, 1023, 1023], 0)
    covered = {}
    for info in lib:
        w = WCS(fits.getheader(info.path))
        x, y = w.all_world2pix(*corners, 0)
        covered[info.role] = int(np.sum((x >= 0) & (x < info.width) & (y >= 0) & (y < info.height)))
    assert covered == {"field": 4, "overlap": 2, "disjoint": 0, "other-band": 4}
    assert fits.getheader(roles["other-band"].path)["FILTER"] == "g"
    # same stars: the library's field template and make_field's template differ only by noise
    a = fits.getdata(roles["field"].path).astype(float)
    b = fits.getdata(clean.template).astype(float)
    assert WCS(fits.getheader(roles["field"].path)).wcs.compare(WCS(fits.getheader(clean.template)).wcs, tolerance=1e-9)
    sigma = t["template"]["sigma_pix_adu"]
    core = np.abs(a - b)[b < t["sky"] + 20 * sigma]
    assert np.std(a - b) < 3 * sigma * math.sqrt(2)
    assert np.median(core) < 1.0 * sigma * math.sqrt(2)


@pytest.mark.parametrize("ra, dec", [(0.0, 20.0), (359.98, -40.0), (75.0, 89.97), (300.0, -89.95)])
def test_sky_is_uniform_across_ra_wrap_and_poles(tmp_path, ra, dec):
    p = make_field(tmp_path, ra=ra, dec=dec, width=256, height=256, n_stars=2000, template=False, n_cosmics=0,
                   n_transients=0)
    x = np.array([s["x"] for s in p.truth_data["stars"]])
    assert abs(len(x) - 2000) < 4 * math.sqrt(2000)
    left, right = np.sum(x < 127.5), np.sum(x >= 127.5)
    assert abs(left - right) < 4 * math.sqrt(len(x))


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="band"):
        make_field(tmp_path, band="z")
    with pytest.raises(ValueError, match="outside the frame"):
        make_field(tmp_path, width=64, height=64, transients=[(10.0, 10.0, 15.0)], template=False)
    with pytest.raises(ValueError, match="date_obs"):
        make_field(tmp_path, width=64, height=64, date_obs="yesterday")
    with pytest.raises(ValueError, match="n_frames"):
        make_demo(tmp_path, n_frames=2)


def test_given_transients_are_injected_where_asked(tmp_path):
    p = make_field(tmp_path, seed=4, width=256, height=256, n_stars=100, template=False, n_cosmics=0,
                   ra=150.0, dec=30.0, transients=[(150.0, 30.0, 14.0)])
    tr = p.truth_data["transients"]
    assert len(tr) == 1 and tr[0]["mag"] == 14.0
    assert tr[0]["x"] == pytest.approx(127.5, abs=1e-4) and tr[0]["y"] == pytest.approx(127.5, abs=1e-4)
    assert tr[0]["flux"] == pytest.approx(10 ** (-0.4 * (14.0 - 25.0)), rel=1e-6)
    img = fits.getdata(p.frame).astype(float)
    f = float(_aperture_flux(img, tr[0]["x"], tr[0]["y"], 3.0)[0])
    assert f / (tr[0]["flux"] * p.truth_data["aperture_fraction_pixel"]) == pytest.approx(1.0, abs=0.02)


def test_generation_is_fast(tmp_path):
    t0 = time.perf_counter()
    make_field(tmp_path, seed=5)  # 1024², template included
    elapsed = time.perf_counter() - t0
    assert elapsed < 6.0, f"make_field 1024² took {elapsed:.1f} s"


def test_demo_data_set(tmp_path, shared_data):
    prod = make_demo(tmp_path / "demo", n_frames=4, seed=5, size=384)
    man = json.loads(prod.manifest.read_text())
    assert [f["role"] for f in man["frames"]] == ["reference", "reference", "transients", "broken"]
    assert prod.catalog.exists() and len(prod.templates) == 3 and len(prod.truths) == 4
    assert {t["role"] for t in man["templates"]} == {"field", "overlap", "disjoint"}
    # the broken frame cannot be read
    with pytest.raises(Exception):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.asarray(fits.getdata(prod.broken_frame)).sum()
    # the good ones can, with their truths
    for f in man["frames"][:3]:
        data = fits.getdata(tmp_path / "demo" / f["file"])
        truth = json.loads((tmp_path / "demo" / f["truth"]).read_text())
        assert data.shape == (384, 384) and len(truth["transients"]) == f["n_transients"]
    # the alert: same fields as the real EP WXT sample, error circle on the transient frame, around a transient
    sample = json.loads((shared_data / "gcn" / "json" / "ep_wxt_alert_EP240508.json").read_text())
    alert = json.loads(prod.alert.read_text())
    assert list(alert) == list(sample)
    assert alert["$schema"] == sample["$schema"] and alert["instrument"] == "WXT"
    truth = json.loads(prod.truths[2].read_text())
    w = WCS(fits.getheader(prod.transient_frame))
    r_px = alert["ra_dec_error"] * 3600 / truth["pixscale_arcsec"]
    x, y = w.all_world2pix([alert["ra"]], [alert["dec"]], 0)
    assert r_px <= x[0] <= 383 - r_px and r_px <= y[0] <= 383 - r_px
    tr = min(truth["transients"], key=lambda t: t["mag"])
    sep = math.hypot((tr["ra"] - alert["ra"]) * math.cos(math.radians(alert["dec"])), tr["dec"] - alert["dec"])
    assert sep < alert["ra_dec_error"]
    trig = alert["trigger_time"]
    assert trig.endswith("Z") and trig[:10] == truth["date_obs"][:10] and trig < truth["date_obs"]
    # deterministic
    again = make_demo(tmp_path / "again", n_frames=4, seed=5, size=384)
    for a, b in zip(prod.frames[:3], again.frames[:3]):
        assert a.read_bytes() == b.read_bytes()
    assert prod.alert.read_bytes() == again.alert.read_bytes()


def test_cli_field_and_demo(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["synth", "field", str(tmp_path / "f"), "--size", "128", "--seed", "3", "--sip",
                              "--transients", "1", "--wcs-error", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert Path(out["frame"]).exists() and Path(out["truth"]).exists() and len(out["transients"]) == 1
    truth = json.loads(Path(out["truth"]).read_text())
    assert truth["sip"] and truth["wcs_error_arcsec"] == 5.0
    for bad in (["--size", "10"], ["--wcs-error", "-1"], ["--transients", "-2"], ["--seed", "x"]):
        res = runner.invoke(cli, ["synth", "field", str(tmp_path / "g"), *bad])
        assert res.exit_code == 2, (bad, res.output)
    res = runner.invoke(cli, ["synth", "demo", str(tmp_path / "d"), "--frames", "2"])
    assert res.exit_code == 2
    res = runner.invoke(cli, ["synth", "demo", str(tmp_path / "d"), "--size", "256", "--frames", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d" / "demo.json").exists() and "frame_02.fits" in res.output

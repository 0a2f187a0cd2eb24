"""Accuracy on synthetic frames with exact truth (stdd.synth): all four stages, real binaries."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from stdd.config.settings import CatalogSettings, PipelineSettings, TemplateSettings
from stdd.pipeline import prepare_folder, run_chain, select_steps
from stdd.stages.base import Region, StageSettings

synth = pytest.importorskip("stdd.synth")


def _settings(fp, tmp: Path, **pipeline) -> StageSettings:
    return StageSettings(catalog=CatalogSettings(source="local", files=[fp.catalog]),
                         template=TemplateSettings(source="custom", file=fp.template),
                         pipeline=PipelineSettings(**pipeline), cache_dir=tmp / "cache")


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """1024², SIP distortion, header WCS wrong by 18" and 0.3°, three transients of S/N 10..40."""
    tmp = tmp_path_factory.mktemp("synth")
    fp = synth.make_field(tmp / "field", seed=11, width=1024, height=1024, sip=True, wcs_error_arcsec=18.0,
                          wcs_error_rot_deg=0.3, n_transients=3, transient_snr=(10.0, 40.0))
    truth = fp.truth_data
    region = Region(id="S1", ra=truth["transients"][0]["ra"], dec=truth["transients"][0]["dec"],
                    radius_deg=10 / 3600, forced_photometry=True)
    s = _settings(fp, tmp)
    s.regions = [region]
    folder = tmp / "work"
    prepare_folder(fp.frame, folder)
    res = run_chain(folder, s)
    return fp, truth, res, folder


def _match(ra1, dec1, ra2, dec2, r_arcsec):
    from stdpipe import astrometry as sa

    return sa.spherical_match(ra1, dec1, ra2, dec2, r_arcsec / 3600)


def test_all_stages_done(field):
    _, truth, res, folder = field
    assert res["status"] == "done", res["error"]
    # the default chain: every stage but the optional calibrate (no calibration library here)
    assert [res["stages"][s]["state"] for s in select_steps(None)] == ["done"] * 4 and "calibrate" not in res["stages"]
    assert res["time_mid"].startswith(truth["date_mid"][:19])
    assert res["filter"] == truth["band"]
    assert res["fwhm_arcsec"] == pytest.approx(truth["fwhm_arcsec"], rel=0.15)


def test_calibrated_magnitudes_agree_with_the_catalogue(field):
    _, truth, res, folder = field
    obj = Table.read(folder / res["objects_table"])
    stars = [s for s in truth["stars"] if not s["saturated"]]
    ra = np.array([s["ra"] for s in stars])
    dec = np.array([s["dec"] for s in stars])
    mag = np.array([s["mag"] for s in stars])
    oi, ci, _ = _match(obj["ra"], obj["dec"], ra, dec, 1.0)
    good = ((np.asarray(obj["flags"])[oi] & ~0x02) == 0) & (np.asarray(obj["snr"])[oi] > 10)
    assert good.sum() > 100
    dm = np.asarray(obj["mag_calib"])[oi][good] - mag[ci][good]
    assert abs(np.median(dm)) <= 0.01, np.median(dm)
    # the colour term is STDPipe's sign convention of the truth's
    assert res["color_term"] == pytest.approx(truth["stdpipe_color_term"], abs=0.03)


def test_astrometry_after_a_deliberate_wcs_error(field):
    _, truth, res, folder = field
    obj = Table.read(folder / res["objects_table"])
    stars = [s for s in truth["stars"] if not s["saturated"]]
    oi, ci, d = _match(obj["ra"], obj["dec"], np.array([s["ra"] for s in stars]),
                       np.array([s["dec"] for s in stars]), 1.5)
    clean = (np.asarray(obj["flags"])[oi] == 0) & (np.asarray(obj["snr"])[oi] > 20)
    assert clean.sum() > 50
    rms = float(np.sqrt(np.mean((d[clean] * 3600) ** 2)))
    assert rms <= 0.15, rms
    assert res["wcs_rms_arcsec"] < 0.3


def test_transients_found_by_both_searches(field):
    _, truth, res, _ = field
    for key in ("candidates_simple", "candidates_sub"):
        cands = res[key]
        found = set()
        for t in truth["transients"]:
            if t["snr"] < 10:
                continue
            hits = [c for c in cands if np.hypot((c["ra"] - t["ra"]) * np.cos(np.radians(t["dec"])),
                                                 c["dec"] - t["dec"]) * 3600 < 1.5]
            assert hits, f"{key}: transient at {t['x']:.0f},{t['y']:.0f} (S/N {t['snr']:.0f}) not found"
            c = hits[0]
            assert abs(c["mag"] - t["mag"]) <= 3 * c["mag_err"], (key, c, t)
            found.add(c["id"])
        others = [c for c in cands if c["id"] not in found]
        assert len(others) <= 1, (key, others)
    # the transient inside the alert region is flagged with its id
    assert any("S1" in c["regions"] for c in res["candidates_sub"])


def test_limit(field):
    _, truth, res, _ = field
    assert res["mag_limit"] == pytest.approx(truth["mag_limit"], abs=0.2)


def test_region_forced_photometry_as_a_target(field):
    _, truth, res, _ = field
    t = truth["transients"][0]
    assert [x["name"] for x in res["targets"]] == ["S1"]
    tgt = res["targets"][0]
    assert tgt["mag"] == pytest.approx(t["mag"], abs=max(0.3, 3 * tgt["mag_err"]))
    sub = res["targets_sub"][0]
    assert sub["mag"] == pytest.approx(t["mag"], abs=max(0.3, 3 * sub["mag_err"]))


def test_products_and_result_keys(field):
    _, _, res, folder = field
    for key in ("status", "error", "stages", "filter", "exptime", "time_mid", "ra", "dec", "fwhm_arcsec", "zp",
                "zp_err", "color_term", "mag_limit", "n_stars_calib", "wcs_rms_arcsec", "objects_table",
                "candidates_simple", "candidates_sub", "targets", "radius_deg", "footprint"):
        assert key in res, key
    for c in res["candidates_simple"] + res["candidates_sub"]:
        assert {"ra", "dec", "mag", "mag_err", "snr", "flags"} <= set(c)
    for rel in ("candidates_simple.ecsv", "candidates_simple.reg", "candidates_sub.ecsv", "candidates_sub.reg",
                "sub/tile_0_0/candidates.reg"):
        assert rel in res["products"] and (folder / rel).is_file(), rel
    c = res["candidates_sub"][0]
    assert (folder / c["cutout"]).is_file()
    from stdpipe import cutouts

    cut = cutouts.load_cutout(str(folder / c["cutout"].replace(".png", ".fits")))
    assert {"image", "template", "convolved", "diff", "err", "mask"} <= set(cut)
    t = Table.read(folder / "candidates_sub.ecsv")
    assert len(t) == len(res["candidates_sub"])


def test_tiles_all_kept_and_target_mode(tmp_path):
    fp = synth.make_field(tmp_path / "f", seed=5, width=512, height=512, n_stars=400, n_transients=1,
                          transient_snr=(30, 30))
    t = fp.truth_data["transients"][0]
    s = _settings(fp, tmp_path, sub_size=256, sub_mode="target", targets=[f"T={t['ra']} {t['dec']}",
                                                                         "blank=5 5 px"])
    prepare_folder(fp.frame, tmp_path / "w")
    res = run_chain(tmp_path / "w", s)
    assert res["status"] == "done", res["error"]
    assert len(res["sub_tiles"]) == 4
    for tile in res["sub_tiles"]:
        assert tile["error"] is None
        assert (tmp_path / "w" / tile["products"] / "diff.fits").is_file()
        assert f"{tile['products']}/candidates.reg" in res["products"]
    assert res["candidates_sub"] is None  # target mode
    by = {x["name"]: x for x in res["targets_sub"]}
    assert by["T"]["mag"] == pytest.approx(t["mag"], abs=3 * by["T"]["mag_err"])
    assert by["blank"]["mag"] is None and by["blank"]["mag_limit"] > 15
    assert 0.8 < res["diff_noise_ratio"] < 1.25

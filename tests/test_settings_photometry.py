"""STDWeb's photometry settings (issue 15): each changes what it should on a synthetic frame."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings

synth = pytest.importorskip("stdd.synth")


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("photset")
    return d, synth.make_field(d / "f", seed=13, width=512, height=512, n_stars=400, n_transients=0, n_cosmics=3)


def run(field, name: str, **pipeline) -> tuple[dict, Path]:
    d, fp = field
    st = StageSettings.model_validate({"catalog": {"source": "local", "files": [str(fp.catalog)]},
                                       "template": {"source": "none"}, "cache_dir": str(d / "cache"),
                                       "pipeline": pipeline})
    work = d / name
    prepare_folder(fp.frame, work)
    res = run_chain(work, st, ["inspect", "photometry"])
    assert res["status"] == "done", res["error"]
    return res, work


@pytest.fixture(scope="module")
def base(field):
    return run(field, "base")


def test_products_objects_parquet_and_segmentation(field, base):
    res, work = base
    fits_t, pq = Table.read(work / "objects.fits"), Table.read(work / "objects.parquet")
    assert len(pq) == len(fits_t) and np.allclose(pq["mag_calib"], fits_t["mag_calib"], equal_nan=True)
    assert "objects.parquet" in res["products"] and not (work / "segmentation.fits").exists()
    res2, work2 = run(field, "segm", write_segmentation=True)
    from astropy.io import fits

    seg = fits.getdata(work2 / "segmentation.fits")
    assert seg.shape == (512, 512) and seg.max() >= len(Table.read(work2 / "objects.fits")) * 0.5


def test_fwhm_override_sets_the_fwhm_and_the_aperture(field, base):
    res, _ = run(field, "fwhm", fwhm_override=5.0)
    assert res["fwhm_pixels"] == pytest.approx(5.0)
    assert res["aperture_pixels"] == pytest.approx(5.0)  # rel_aper = 1
    assert abs(base[0]["fwhm_pixels"] - 5.0) > 1.0


def test_force_color_term_is_used_instead_of_fitting(field, base):
    res, _ = run(field, "color", force_color_term=0.3)
    assert res["color_term"] == pytest.approx(0.3)
    assert abs(base[0]["color_term"] - 0.3) > 0.05


def test_catalogue_magnitude_limits_select_the_calibration_stars(field, base):
    res, work = run(field, "lims", cat_mag_lower=15.5, cat_mag_upper=17.0)
    o = Table.read(work / "objects.fits")
    cm = np.asarray(o["cat_mag"], float)
    cm = cm[np.isfinite(cm)]
    assert len(cm) >= 10 and cm.min() >= 15.5 and cm.max() <= 17.0
    assert res["n_stars_calib"] < base[0]["n_stars_calib"]


def test_sr_override_sets_the_matching_radius(field, base):
    res, work = run(field, "sr", sr_override=0.3)
    ph = json.loads((work / "photometry.json").read_text())
    assert ph["match_radius_arcsec"] == pytest.approx(0.3)
    assert res["n_stars_calib"] < base[0]["n_stars_calib"]  # a tighter match keeps fewer stars


def test_initial_r0_smooths_detection(field, base):
    res, work = run(field, "r0", initial_r0=2.0)
    assert res["n_objects"] != base[0]["n_objects"]  # smoothing changes what is detected
    assert res["settings"]["pipeline"]["initial_r0"] == 2.0


def test_the_diagnostic_plots(base):
    res, work = base
    for name in ("photometry_fwhm_map", "photometry_objects", "photometry_mag_histogram", "photometry_zeropoint",
                 "photometry_astrometry", "photometry_match", "photometry_limit"):
        assert (work / "plots" / f"{name}.png").stat().st_size > 5000, name
        assert f"plots/{name}.png" in res["products"]


def test_diagnose_color_compares_every_colour(field, base):
    res, work = run(field, "diag", diagnose_color=True)
    d = json.loads((work / "color_diagnostics.json").read_text())
    fits_ = [f for f in d["fits"] if f.get("scatter") is not None]
    assert len(fits_) >= 3 and all(f["n_stars"] > 10 for f in fits_)
    assert (work / "plots" / "photometry_colors.png").is_file()
    assert res["zp"] == pytest.approx(base[0]["zp"], abs=1e-9)  # the calibration itself is unchanged
    assert not (base[1] / "color_diagnostics.json").exists()

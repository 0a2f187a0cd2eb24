"""STDWeb's blind-match hints: blind_match_center, blind_match_sr0, blind_match_ps_lo / _up (and the former
stdd names), on a synthetic frame without WCS solved offline by solve-field on an index built from the local
catalogue (as tests/test_stages_photometry.py's blind test)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from pydantic import ValidationError

from stdd.config.settings import CatalogSettings, PipelineSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings
from stdd.synth import make_field

WCS_KEYS = ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT", "CD1_", "CD2_", "PC1_", "PC2_", "WCSAXES", "LONPOLE",
            "LATPOLE", "RADESYS", "MJDREF", "EQUINOX")


@pytest.fixture(scope="module")
def nowcs(tmp_path_factory):
    """A frame at RA 150, Dec 30 with no WCS and a header pointing 3 degrees off (RA 153.5)."""
    d = tmp_path_factory.mktemp("blind")
    fp = make_field(d / "f", seed=4, width=512, height=512, n_stars=500, template=False, n_transients=0)
    header, data = fits.getheader(fp.frame), fits.getdata(fp.frame)
    for k in list(header.keys()):
        if k.startswith(WCS_KEYS):
            del header[k]
    header["RA"], header["DEC"] = 153.5, 30.0
    fits.writeto(d / "nowcs.fits", data, header)
    return d / "nowcs.fits", fp


def _run(tmp_path, src, catalog, **pipeline):
    folder = tmp_path / "work"
    prepare_folder(src, folder)
    s = StageSettings(pipeline=PipelineSettings(**pipeline), catalog=CatalogSettings(source="local", files=[catalog]),
                      cache_dir=tmp_path / "cache")
    return run_chain(folder, s, steps=["inspect", "photometry"]), folder


def test_wrong_pointing_fails_and_blind_match_center_solves(tmp_path, nowcs):
    src, fp = nowcs
    res, folder = _run(tmp_path / "header", src, fp.catalog)
    assert res["status"] == "failed"
    assert "RA 153.5000" in res["error"] and "blind" in res["error"]
    res, folder = _run(tmp_path / "center", src, fp.catalog, blind_match_center="10:00:00 +30:00:00")
    assert res["status"] == "done", res["error"]
    assert "blind" in res["wcs_method"]
    log = (folder / "photometry.log").read_text()
    assert "around RA 150.0000 Dec +30.0000 (pipeline.blind_match_center), radius 2 deg, pixel scale 0.2-4" in log
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = WCS(fits.getheader(folder / "image.wcs"))
    truth = WCS(fits.getheader(fp.frame))
    x = np.array([10, 256, 500])
    r1, d1 = truth.all_pix2world(x, x, 0)
    r2, d2 = mine.all_pix2world(x, x, 0)
    assert np.max(np.hypot((r1 - r2) * np.cos(np.radians(d1)), d1 - d2)) * 3600 < 0.5


def test_search_radius_and_scale_limits_reach_the_solver(tmp_path, nowcs):
    """sr0 large enough to include the true field from the wrong pointing solves it; the scale limits
    given (here under their former stdd names) are the solver's."""
    src, fp = nowcs
    res, folder = _run(tmp_path, src, fp.catalog, blind_radius_deg=4.0, blind_scale_lower_arcsec=0.5,
                       blind_scale_upper_arcsec=2.0)
    assert res["status"] == "done", res["error"]
    log = (folder / "photometry.log").read_text()
    assert "around RA 153.5000 Dec +30.0000 (RA/DEC), radius 4 deg, pixel scale 0.5-2 arcsec/px" in log


def test_blind_hint_settings_validated():
    assert PipelineSettings().blind_match_sr0 == 2.0
    assert PipelineSettings(blind_radius_deg=3).blind_match_sr0 == 3
    with pytest.raises(ValidationError, match="former name"):
        PipelineSettings(blind_radius_deg=3, blind_match_sr0=1)
    with pytest.raises(ValidationError, match="blind_match_ps_up must be larger"):
        PipelineSettings(blind_match_ps_lo=4, blind_match_ps_up=1)
    with pytest.raises(ValidationError, match="blind_match_sr"):
        PipelineSettings(blind_match_sr=3)  # a typo is named


def test_blind_match_center_name_offline_is_a_note_and_the_header_pointing_stays(tmp_path, nowcs):
    import json

    src, fp = nowcs
    folder = tmp_path / "work"
    prepare_folder(src, folder)
    s = StageSettings(pipeline=PipelineSettings(blind_match_center="NGC 3000"), cache_dir=tmp_path / "cache")
    res = run_chain(folder, s, steps=["inspect"])
    assert res["status"] == "done"
    assert any("blind_match_center 'NGC 3000' not resolved (offline)" in n for n in res["notes"])
    state = json.loads((folder / "inspect.json").read_text())
    assert (state["hint_ra"], state["hint_dec"], state["hint_source"]) == (153.5, 30.0, "RA/DEC")

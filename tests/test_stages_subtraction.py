"""subtraction: two real DECam epochs; template sources through the stage; outcomes without a template."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from stdd.config.settings import CatalogSettings, PipelineSettings, TemplateSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings


def test_decam_epochs(tmp_path, shared_data):
    frames = shared_data / "frames"
    prepare_folder(frames / "decam_i_sfft_stack_OBS04.fits", tmp_path / "w")
    s = StageSettings(template=TemplateSettings(source="custom", file=frames / "decam_i_sfft_stack_OBS18.fits"),
                      cache_dir=tmp_path / "cache")
    res = run_chain(tmp_path / "w", s)
    assert res["status"] == "done", res["error"]
    assert res["stages"]["subtraction"]["state"] == "done"
    assert res["sub_method"] == "sfft"
    # the difference's noise matches its error map (image and template noise propagated through the kernel)
    assert 0.85 < res["diff_noise_ratio"] < 1.15
    diff = fits.getdata(tmp_path / "w" / "diff.fits")
    err = fits.getdata(tmp_path / "w" / "diff_err.fits")
    assert diff.shape == err.shape == (256, 256) and np.isfinite(diff).mean() > 0.8
    # the PSFs of the two epochs differ more than a constant kernel follows: residuals on stars are
    # measured, reported, and not taken for transients
    assert any("of the stars' flux" in n for n in res["notes"]), res["notes"]
    assert len(res["candidates_sub"]) <= 3
    assert res["zp"] is None and all(c["mag"] is not None for c in res["candidates_sub"])  # instrumental


def test_no_template_is_a_recorded_skip(tmp_path, shared_data):
    prepare_folder(shared_data / "frames" / "decam_i_sfft_stack_OBS04.fits", tmp_path / "w")
    for src, text in (("none", "template.source = 'none'"), ("local", "no template of band i")):
        s = StageSettings(template=TemplateSettings(source=src, folder=tmp_path / "empty"), cache_dir=tmp_path)
        res = run_chain(tmp_path / "w", s)
        assert res["status"] == "done"
        assert res["stages"]["subtraction"]["state"] == "skipped"
        assert any(text in n for n in res["notes"]), res["notes"]
        assert res["candidates_sub"] is None


def test_survey_template_offline_fails_saying_so(tmp_path, shared_data):
    prepare_folder(shared_data / "frames" / "decam_i_sfft_stack_OBS04.fits", tmp_path / "w")
    s = StageSettings(template=TemplateSettings(source="survey", survey="auto"), offline=True, cache_dir=tmp_path)
    res = run_chain(tmp_path / "w", s, steps=["inspect", "subtraction"])
    assert res["status"] == "failed"
    assert res["error"].startswith("subtraction: template survey:") and "offline" in res["error"]


def test_local_library_through_the_stage(tmp_path):
    synth = pytest.importorskip("stdd.synth")
    fp = synth.make_field(tmp_path / "f", seed=9, width=384, height=384, n_stars=250, template=False,
                          n_transients=1, transient_snr=(40, 40))
    synth.make_template_library(tmp_path / "lib", width=384, height=384, n_stars=250, seed=9)
    prepare_folder(fp.frame, tmp_path / "w")
    s = StageSettings(catalog=CatalogSettings(source="local", files=[fp.catalog]),
                      template=TemplateSettings(source="local", folder=tmp_path / "lib"),
                      pipeline=PipelineSettings(mask_cosmics=False), cache_dir=tmp_path / "cache")
    res = run_chain(tmp_path / "w", s)
    assert res["status"] == "done", res["error"]
    assert res["template"].startswith("local:") and res["template"].endswith("_r.fits")
    t = fp.truth_data["transients"][0]
    assert any(abs(c["x"] - t["x"]) < 1.5 and abs(c["y"] - t["y"]) < 1.5 for c in res["candidates_sub"])
    assert any("local library covers" in n for n in res["notes"])

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


# ---------------------------------------------------------------- tiles and HOTPANTS

def _two_tile_frame(tmp_path, seed=21):
    """A 768x384 synthetic frame (two 384² tiles with sub_size = 384) with a transient in each half."""
    import math

    from stdd.synth import make_field

    # 1"/px around (150, 30): ±190 px from the centre along x, one transient in each half
    dra = 190 / 3600 / math.cos(math.radians(30.0))
    return make_field(tmp_path / "f", seed=seed, width=768, height=384, n_stars=500, n_cosmics=0,
                      transients=[(150.0 - dra, 30.0 + 20 / 3600, 15.5), (150.0 + dra, 29.99, 15.5)])


def _tile_settings(tmp_path, fp, **pipeline):
    return StageSettings(catalog=CatalogSettings(source="local", files=[fp.catalog]),
                         template=TemplateSettings(source="custom", file=fp.template),
                         pipeline=PipelineSettings(mask_cosmics=False, sub_size=384, **pipeline),
                         cache_dir=tmp_path / "cache")


def _log_body(log: str) -> list[str]:
    """The log's lines without their times, folder names and the stage's own start and end lines."""
    lines = [ln.split(" ", 1)[1] for ln in log.splitlines()]
    return [ln for ln in lines if not ln.startswith(("subtraction started", "subtraction done")) and
            "tiles at a time" not in ln]


def test_tiles_side_by_side_give_what_one_by_one_gives(tmp_path):
    """With a budget of 2 threads the two tiles run at once; the candidates, the difference image,
    the products and the log (in tile order) are those of the tiles run one by one."""
    fp = _two_tile_frame(tmp_path)
    s = _tile_settings(tmp_path, fp)
    out = {}
    for threads in (1, 2):
        folder = tmp_path / f"w{threads}"
        prepare_folder(fp.frame, folder)
        res = run_chain(folder, s, threads=threads)
        assert res["status"] == "done", res["error"]
        assert [t["id"] for t in res["sub_tiles"]] == ["tile_0_0", "tile_1_0"]
        out[threads] = (res, folder)
    (r1, f1), (r2, f2) = out[1], out[2]
    log1, log2 = (f1 / "subtraction.log").read_text(), (f2 / "subtraction.log").read_text()
    assert "2 tiles at a time" in log2 and "tiles at a time" not in log1
    assert _log_body(log1) == _log_body(log2) and len(_log_body(log1)) > 3
    assert [c["tile"] for c in r2["candidates_sub"]] == [c["tile"] for c in r1["candidates_sub"]]
    assert [(round(c["x"], 2), round(c["y"], 2)) for c in r2["candidates_sub"]] == \
        [(round(c["x"], 2), round(c["y"], 2)) for c in r1["candidates_sub"]]
    assert r2["diff_noise_ratio"] == r1["diff_noise_ratio"]
    assert r2["products"] == r1["products"]
    np.testing.assert_array_equal(fits.getdata(f1 / "diff.fits"), fits.getdata(f2 / "diff.fits"))
    # both transients, one per tile
    for t in fp.truth_data["transients"]:
        assert any(abs(c["x"] - t["x"]) < 1.5 and abs(c["y"] - t["y"]) < 1.5 for c in r2["candidates_sub"]), t


def test_a_failing_hotpants_is_explained_by_its_own_words(tmp_path):
    """HOTPANTS that fails: each tile's error quotes its last output, which is kept in the tile's
    hotpants.log; the stage fails naming it (the stand-in program plays HOTPANTS refusing its input)."""
    fake = tmp_path / "bin" / "hotpants"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Doing : image - template'\necho 'ERROR: no good stamps in region 0' >&2\nexit 1\n")
    fake.chmod(0o755)
    fp = _two_tile_frame(tmp_path)
    folder = tmp_path / "w"
    prepare_folder(fp.frame, folder)
    res = run_chain(folder, _tile_settings(tmp_path, fp, sub_method="hotpants", hotpants_exe=fake), threads=2)
    assert res["status"] == "failed" and res["stages"]["subtraction"]["state"] == "failed"
    assert res["error"].startswith("subtraction: the subtraction failed on every tile: hotpants failed")
    assert "ERROR: no good stamps in region 0" in res["error"] and "sub/tile_0_0/hotpants.log" in res["error"]
    for tile in ("tile_0_0", "tile_1_0"):
        assert "no good stamps" in (folder / "sub" / tile / "hotpants.log").read_text()


def _hotpants() -> str | None:
    import os
    import shutil

    exe = os.environ.get("STDD_HOTPANTS") or shutil.which("hotpants")
    return exe if exe and os.access(exe, os.X_OK) else None


@pytest.mark.skipif(_hotpants() is None, reason="no HOTPANTS binary (on PATH or $STDD_HOTPANTS): it is in no "
                                                "package registry reachable here")
def test_hotpants_subtraction_finds_the_transients(tmp_path):
    fp = _two_tile_frame(tmp_path, seed=22)
    folder = tmp_path / "w"
    prepare_folder(fp.frame, folder)
    res = run_chain(folder, _tile_settings(tmp_path, fp, sub_method="hotpants", hotpants_exe=_hotpants()), threads=2)
    assert res["status"] == "done", res["error"]
    assert res["sub_method"] == "hotpants" and all(t["error"] is None for t in res["sub_tiles"])
    assert 0.8 < res["diff_noise_ratio"] < 1.2
    for t in fp.truth_data["transients"]:
        assert any(abs(c["x"] - t["x"]) < 1.5 and abs(c["y"] - t["y"]) < 1.5 for c in res["candidates_sub"]), t
    assert len(res["candidates_sub"]) == len(fp.truth_data["transients"])
    for tile in ("tile_0_0", "tile_1_0"):
        assert "Doing" in (folder / "sub" / tile / "hotpants.log").read_text()
    assert "Doing" not in (folder / "subtraction.log").read_text()  # HOTPANTS' own output stays in the tile's log

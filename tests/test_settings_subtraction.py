"""STDWeb's transients and subtraction settings (issue 15): each changes what it should on a
synthetic frame with a transient (earlier stages run once; each setting reruns the stage it affects)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

from stdd.config.settings import PipelineSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings

synth = pytest.importorskip("stdd.synth")


def settings(fp, d, template=None, **pipeline) -> StageSettings:
    return StageSettings.model_validate({
        "catalog": {"source": "local", "files": [str(fp.catalog)]},
        "template": template or {"source": "custom", "file": str(fp.template)},
        "cache_dir": str(d / "cache"), "pipeline": pipeline})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("subset")
    fp = synth.make_field(d / "f", seed=17, width=384, height=384, n_stars=250, n_transients=1,
                          transient_snr=(40, 40), n_cosmics=3)
    work = d / "base"
    prepare_folder(fp.frame, work)
    t = json.loads(fp.truth.read_text())["transients"][0]
    res = run_chain(work, settings(fp, d, targets=[f"{t['ra']} {t['dec']}"]))
    assert res["status"] == "done", res["error"]
    assert res["candidates_sub"] and res["candidates_simple"]
    return d, fp, work, res, t


def rerun(base, name, stage, template=None, **pipeline):
    d, fp, work, res, t = base
    w = d / name
    shutil.copytree(work, w)
    r = run_chain(w, settings(fp, d, template=template, targets=[f"{t['ra']} {t['dec']}"], **pipeline), [stage])
    return r, w


def test_simple_center_restricts_the_simple_search(base):
    d, fp, work, res, t = base
    far = f"{t['ra'] + 0.05} {t['dec'] + 0.05}"
    r, w = rerun(base, "sc_far", "transients", simple_center=far, simple_sr0=0.01)
    assert r["candidates_simple"] == []
    r, w = rerun(base, "sc_near", "transients", simple_center=f"{t['ra']} {t['dec']}", simple_sr0=0.01)
    assert len(r["candidates_simple"]) >= 1


def test_filter_center_restricts_difference_candidates(base):
    d, fp, work, res, t = base
    r, w = rerun(base, "fc_far", "subtraction", filter_center=f"{t['ra'] + 0.05} {t['dec'] + 0.05}", filter_sr0=0.01)
    assert r["candidates_sub"] == [] and "outside the filter_center cone" in (w / "subtraction.log").read_text()
    r, w = rerun(base, "fc_near", "subtraction", filter_center=f"{t['ra']} {t['dec']}", filter_sr0=0.01)
    assert len(r["candidates_sub"]) >= 1


def test_cutout_size_sets_the_cutouts(base):
    r, w = rerun(base, "cut", "subtraction", cutout_size=21)
    name = r["candidates_sub"][0]["cutout"].replace(".png", ".fits")
    with fits.open(w / name) as hdul:
        assert hdul["IMAGE"].data.shape == (21, 21)
    with fits.open(base[2] / name) as hdul:
        assert hdul["IMAGE"].data.shape == (31, 31)


def test_simple_skybot_offline_is_a_recorded_outcome(base):
    r, w = rerun(base, "skybot", "transients", simple_skybot=True)
    assert any("SkyBoT" in n or "skybot" in n.lower() for n in r["notes"]), r["notes"]


def test_sub_target_votable(base):
    d, fp, work, res, t = base
    vot = Table.read(work / "sub_target.vot")
    ecsv = Table.read(work / "targets_sub.ecsv")
    assert len(vot) == len(ecsv) == 1 and abs(float(vot["ra"][0]) - t["ra"]) < 1e-6


def test_custom_template_gain_changes_the_noise_model(base):
    d, fp, work, res, t = base
    r, w = rerun(base, "tgain", "subtraction", custom_template_gain=0.05)
    log = (w / "subtraction.log").read_text()
    assert "custom template: gain 0.05" in log
    assert r["diff_noise_ratio"] < res["diff_noise_ratio"]  # a noisier template: the error map grows


def test_named_survey_templates_map_to_hips_and_are_offline_outcomes(base):
    from stdd.sources.templates import NAMED_HIPS

    assert NAMED_HIPS["des"]("r") == "CDS/P/DES-DR2/r" and NAMED_HIPS["2mass"]("J") == "CDS/P/2MASS/J"
    r, w = rerun(base, "des", "subtraction", template={"source": "survey", "survey": "des"})
    text = json.dumps(r)
    assert "CDS/P/DES-DR2/r" in text and "offline" in text


def test_hotpants_extra_is_checked_against_hotpants_options():
    assert PipelineSettings(hotpants_extra={"nsx": 10, "ko": 1}).hotpants_extra == {"nsx": 10, "ko": 1}
    with pytest.raises(ValueError, match="nsxx"):
        PipelineSettings(hotpants_extra={"nsxx": 10})
    with pytest.raises(ValueError, match="filter_center"):
        PipelineSettings(filter_center="somewhere nice")


def test_simple_others_rejects_what_another_frame_saw(base):
    d, fp, work, res, t = base
    r, w = rerun(base, "others", "transients", simple_others=[str(work)])  # a frame that saw the same sky
    assert r["candidates_simple"] == []
    assert any("in base" in line for line in (w / "transients.log").read_text().splitlines())


def test_filter_skybot_and_vizier_offline_are_recorded(base):
    r, w = rerun(base, "fsky", "subtraction", filter_skybot=True)
    assert any("SkyBoT" in n and "offline" in n for n in r["notes"]), r["notes"]
    assert len(r["candidates_sub"]) >= 1  # nothing dropped on a check that was not done


def test_filter_prefilter_rejects_sharp_difference_detections(tmp_path):
    """Cosmic rays left unmasked (mask_cosmics = false) show on the difference: the shape pre-filter
    (STDWeb's filter_prefilter, on by default) rejects them; the real transient stays."""
    fp = synth.make_field(tmp_path / "f", seed=23, width=384, height=384, n_stars=250, n_transients=1,
                          transient_snr=(40, 40), n_cosmics=40)
    t = json.loads(fp.truth.read_text())["transients"][0]
    out = {}
    for on in (True, False):
        w = tmp_path / f"w{on}"
        prepare_folder(fp.frame, w)
        res = run_chain(w, settings(fp, tmp_path, mask_cosmics=False, filter_prefilter=on, dipole_test=False))
        assert res["status"] == "done", res["error"]
        out[on] = res["candidates_sub"]
    assert len(out[False]) > len(out[True])
    assert any(abs(c["ra"] - t["ra"]) * 3600 < 2 and abs(c["dec"] - t["dec"]) * 3600 < 2 for c in out[True])


def test_custom_template_mask_leaves_its_pixels_out(base, tmp_path):
    d, fp, work, res, t = base
    data = fits.getdata(fp.template)
    mask = (data * 0).astype("uint8")
    mask[: data.shape[0] // 2, :] = 1  # the template's lower half is bad
    mpath = tmp_path / "tmask.fits"
    fits.writeto(mpath, mask)
    r, w = rerun(base, "tmask", "subtraction", custom_template_mask=str(mpath))
    assert "template mask tmask.fits" in (w / "subtraction.log").read_text()
    before = fits.getdata(work / "template_mask.fits").astype(bool).mean()
    after = fits.getdata(w / "template_mask.fits").astype(bool).mean()
    assert after > before + 0.3  # about half the frame is now masked for the subtraction


def test_hotpants_extra_and_template_fwhm_reach_hotpants(base, tmp_path):
    """The options reach HOTPANTS's command line (a stand-in program records its arguments and, like
    HOTPANTS refusing its input, fails: no HOTPANTS binary is in any registry reachable here)."""
    args = tmp_path / "args.txt"
    fake = tmp_path / "bin" / "hotpants"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {args}\necho 'ERROR: stand-in' >&2\nexit 1\n")
    fake.chmod(0o755)
    r, w = rerun(base, "hp", "subtraction", sub_method="hotpants", hotpants_exe=str(fake),
                 hotpants_extra={"nsx": 7, "ko": 1, "bgo": 0}, template_fwhm_override=4.0)
    line = args.read_text()
    assert " -nsx 7" in line and " -ko 1" in line and " -bgo 0" in line
    # the template FWHM sets HOTPANTS's kernel Gaussians (-ng, matched to the two FWHMs); without it
    # HOTPANTS keeps its defaults
    r2, w2 = rerun(base, "hp2", "subtraction", sub_method="hotpants", hotpants_exe=str(fake))
    lines = args.read_text().splitlines()
    assert all(" -ng " in ln for ln in lines if "/hp/" in ln)
    assert not any(" -ng " in ln for ln in lines if "/hp2/" in ln)
    assert r["status"] == "failed" and "stand-in" in r["error"]  # and its refusal is said

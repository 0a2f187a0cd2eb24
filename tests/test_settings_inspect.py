"""STDWeb's per-frame settings of inspect: each one's effect on a synthetic frame (docs/stdweb-settings.md).

time, crop, mask_regions / mask_file, inspect_bg; targets (header, pixels, names) are in
test_settings_targets.py, the blind-match hints in test_settings_blind.py.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import astropy.units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from pydantic import ValidationError

from stdd.config.settings import CatalogSettings, PipelineSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings
from stdd.synth import make_field


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("field")
    return make_field(d, seed=11, width=512, height=512, n_stars=400, template=False, n_transients=0,
                      n_cosmics=0)


def _run(tmp_path: Path, src: Path, steps=("inspect",), catalog: Path | None = None, **pipeline) -> tuple[dict, Path]:
    folder = tmp_path / "work"
    prepare_folder(src, folder)
    cat = CatalogSettings(source="local", files=[catalog] if catalog else [])
    s = StageSettings(pipeline=PipelineSettings(**pipeline), catalog=cat, cache_dir=tmp_path / "cache")
    return run_chain(folder, s, steps=list(steps)), folder


def _wcs(path: Path) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(fits.getheader(path)).celestial


# ---------------------------------------------------------------- time

def test_time_override_iso_and_mjd(tmp_path, field):
    exptime = field.truth_data["exptime"]
    res, _ = _run(tmp_path / "iso", field.frame, time="2025-01-02 03:04:05")
    assert res["status"] == "done", res["error"]
    assert res["time_source"] == "setting"
    assert res["time_start"].startswith("2025-01-02T03:04:05")
    mid = Time("2025-01-02T03:04:05") + exptime / 2 * u.s
    assert abs((Time(res["time_mid"]) - mid).sec) < 1e-3
    res, folder = _run(tmp_path / "mjd", field.frame, time="60000.25")
    assert res["time_source"] == "setting"
    assert abs(Time(res["time_start"]).mjd - 60000.25) < 1e-8
    assert json.loads((folder / "inspect.json").read_text())["time_start"] == res["time_start"]
    # without the setting, the header's DATE-OBS
    res, _ = _run(tmp_path / "hdr", field.frame)
    assert res["time_source"] != "setting" and res["time_start"].startswith(field.truth_data["date_obs"])


def test_time_that_is_no_time_is_refused_naming_the_key():
    with pytest.raises(ValidationError, match="time"):
        PipelineSettings(time="last night")


# ---------------------------------------------------------------- crop

@pytest.mark.parametrize("crop", ["[101:356,51:306]", [100, 356, 50, 306], "100,356,50,306"])
def test_crop_keeps_the_part_and_its_wcs(tmp_path, field, crop):
    res, folder = _run(tmp_path, field.frame, crop=crop)
    assert res["status"] == "done", res["error"]
    data = fits.getdata(folder / "image.fits")
    assert data.shape == (256, 256) and (res["width"], res["height"]) == (256, 256)
    assert fits.getdata(folder / "mask.fits").shape == (256, 256)
    full = fits.getdata(field.frame).astype(np.float32)
    assert np.array_equal(data, full[50:306, 100:356])
    # the same pixel has the same sky position in both WCSs
    w0, w1 = _wcs(field.frame), _wcs(folder / "image.fits")
    r0, d0 = w0.all_pix2world([100 + 37.0], [50 + 211.0], 0)
    r1, d1 = w1.all_pix2world([37.0], [211.0], 0)
    assert abs(r0[0] - r1[0]) * 3600 < 1e-3 and abs(d0[0] - d1[0]) * 3600 < 1e-3
    assert any("cropped to [101:356,51:306]" in n for n in res["notes"])


def test_crop_outside_the_frame_fails_naming_it(tmp_path, field):
    res, _ = _run(tmp_path, field.frame, crop=[600, 700, 0, 100])
    assert res["status"] == "failed" and "crop" in res["error"]
    with pytest.raises(ValidationError, match="crop"):
        PipelineSettings(crop="[1:10]")


# ---------------------------------------------------------------- custom mask

def test_mask_regions_and_mask_file_set_the_custom_bit(tmp_path, field):
    mf = tmp_path / "mymask.fits"
    m = np.zeros((512, 512), np.uint8)
    m[400:420, 10:30] = 1
    fits.writeto(mf, m)
    res, folder = _run(tmp_path, field.frame, mask_regions=[[100, 200, 300, 350]], mask_file=mf)
    assert res["status"] == "done", res["error"]
    mask = fits.getdata(folder / "mask.fits")
    custom = (mask & 32) > 0
    assert fits.getheader(folder / "mask.fits")["MASK32"] == "custom"
    assert custom[300:350, 100:200].all() and custom[400:420, 10:30].all()
    assert custom.sum() == 100 * 50 + 20 * 20
    # with a crop, the rectangles stay on the same pixels of the frame as read
    res, folder = _run(tmp_path / "crop", field.frame, mask_regions=[[100, 200, 300, 350]], crop=[50, 450, 250, 500])
    custom = (fits.getdata(folder / "mask.fits") & 32) > 0
    assert custom[50:100, 50:150].all() and custom.sum() == 100 * 50


def test_mask_file_of_another_size_fails_naming_it(tmp_path, field):
    mf = tmp_path / "small.fits"
    fits.writeto(mf, np.ones((100, 100), np.uint8))
    res, _ = _run(tmp_path, field.frame, mask_file=mf)
    assert res["status"] == "failed" and "mask_file" in res["error"] and "100x100" in res["error"]


def test_no_detections_in_a_masked_region(tmp_path, field):
    """The effect that matters: photometry detects nothing under the custom mask."""
    box = [150, 350, 150, 350]
    stars = [s for s in field.truth_data["stars"] if box[0] + 5 < s["x"] < box[1] - 5 and box[2] + 5 < s["y"] < box[3] - 5
             and s["mag"] < 18]
    assert len(stars) >= 5  # bright stars are there to be found
    res, folder = _run(tmp_path, field.frame, steps=("inspect", "photometry"), catalog=field.catalog,
                       mask_regions=[box])
    assert res["status"] == "done", res["error"]
    obj = Table.read(folder / res["objects_table"])
    x, y = np.asarray(obj["x"]), np.asarray(obj["y"])
    inside = (x > box[0] + 3) & (x < box[1] - 3) & (y > box[2] + 3) & (y < box[3] - 3)
    assert len(obj) > 50 and not inside.any()


# ---------------------------------------------------------------- background maps

def test_inspect_bg_writes_background_and_rms_maps(tmp_path, field):
    res, folder = _run(tmp_path / "off", field.frame)
    assert not (folder / "background.fits").exists()
    res, folder = _run(tmp_path / "on", field.frame, inspect_bg=True)
    assert res["status"] == "done", res["error"]
    back, rms = fits.getdata(folder / "background.fits"), fits.getdata(folder / "background_rms.fits")
    assert back.shape == rms.shape == (512, 512)
    t = field.truth_data
    assert np.median(back) == pytest.approx(t["sky"], rel=0.02)
    noise = np.sqrt(t["sky"] / t["gain"] + (t["readnoise"] / t["gain"]) ** 2)
    assert np.median(rms) == pytest.approx(noise, rel=0.1)
    assert "background.fits" in res["products"] and "background_rms.fits" in res["products"]
    assert _wcs(folder / "background.fits").has_celestial


def test_keys_from_a_config_file(tmp_path, config_file):
    from stdd.config.load import load_settings

    path = config_file('[pipeline]\ntime = "60000.5"\ncrop = [0, 256, 0, 256]\nmask_regions = [[1, 5, 1, 5]]\n'
                       'mask_file = "masks/m.fits"\ninspect_bg = true\ntargets = "M 31\\nx=1 y=2"\n'
                       'blind_radius_deg = 3.0\n')
    p = load_settings(path).pipeline
    assert p.crop == (0, 256, 0, 256) and p.mask_regions == [(1, 5, 1, 5)] and p.inspect_bg
    assert p.mask_file == (tmp_path / "masks" / "m.fits").resolve()  # relative to the config file
    assert p.targets == ["M 31", "x=1 y=2"] and p.blind_match_sr0 == 3.0
    with pytest.raises(Exception, match="mask_region"):
        load_settings(config_file('[pipeline]\nmask_region = [[1, 5, 1, 5]]\n'))

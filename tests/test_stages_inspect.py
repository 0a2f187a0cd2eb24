"""inspect: real files in, a clean image or a failure naming the problem out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stdd.config.settings import InstrumentProfile, PipelineSettings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages import filters
from stdd.stages.base import Region, StageSettings

FRAMES = "frames"


def _run(tmp_path, src: Path, steps=("inspect",), **kw) -> tuple[dict, Path]:
    folder = tmp_path / "work"
    prepare_folder(src, folder)
    res = run_chain(folder, StageSettings(**kw), steps=list(steps))
    return res, folder


def _frame(tmp_path, name="f.fits", data=None, **cards) -> Path:
    data = np.random.default_rng(1).normal(1000, 10, (64, 64)).astype("f4") if data is None else data
    h = fits.Header()
    h["FILTER"] = "r"
    h["DATE-OBS"] = "2026-03-01T03:00:00"
    h["EXPTIME"] = 60.0
    for k, v in cards.items():
        if v is None:
            h.remove(k, ignore_missing=True)
        else:
            h[k.replace("_", "-") if k == "DATE_OBS" else k] = v
    path = tmp_path / name
    fits.writeto(path, data, h, overwrite=True)
    return path


# ---------------------------------------------------------------- bad inputs

def _bad_files(d: Path, shared: Path) -> dict[str, tuple[Path, str]]:
    real = (shared / FRAMES / "feder_aspencg16_EYUMa_r_thumb256_wcs.fits").read_bytes()
    out = {}
    p = d / "zero.fits"
    p.write_bytes(b"")
    out["zero"] = (p, "empty file (0 bytes)")
    p = d / "trunc.fits"
    p.write_bytes(real[: len(real) // 2])
    out["truncated"] = (p, "truncated file")
    p = d / "text.fits"
    p.write_text("this is a text file, not an image\n" * 50)
    out["not fits"] = (p, "not a FITS file")
    p = d / "cube.fits"
    fits.writeto(p, np.zeros((3, 32, 32), "f4"))
    out["cube"] = (p, "3-D cube")
    p = d / "nan.fits"
    fits.writeto(p, np.full((64, 64), np.nan, "f4"), fits.Header({"FILTER": "r"}))
    out["all nan"] = (p, "no finite pixel")
    p = d / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(Table({"a": [1, 2]}), name="CAT")]).writeto(p)
    out["table only"] = (p, "only table(s)")
    return out


def test_bad_inputs_fail_with_specific_reasons(tmp_path, shared_data):
    for label, (path, reason) in _bad_files(tmp_path, shared_data).items():
        res, folder = _run(tmp_path / label, path)
        assert res["status"] == "failed", label
        assert res["stages"]["inspect"]["state"] == "failed"
        assert reason in res["error"], (label, res["error"])
        assert "Traceback" not in res["error"]
        # the reason is also in the stage log
        assert reason in (folder / "inspect.log").read_text()


def test_truncated_gzip_is_named(tmp_path, shared_data):
    import gzip

    raw = gzip.decompress((shared_data / FRAMES / "feder_aspencg16_EYUMa_r_thumb256_orig.fit.gz").read_bytes())
    p = tmp_path / "cut.fits.gz"
    p.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    res, _ = _run(tmp_path, p)
    assert res["status"] == "failed" and "truncated" in res["error"]


# ---------------------------------------------------------------- filter

def test_unknown_filter_is_an_error_naming_the_value(tmp_path):
    res, _ = _run(tmp_path, _frame(tmp_path, FILTER="Clear"))
    assert res["status"] == "failed"
    assert "'Clear'" in res["error"] and "FILTER" in res["error"]


def test_missing_filter_is_an_error(tmp_path):
    res, _ = _run(tmp_path, _frame(tmp_path, FILTER=None))
    assert res["status"] == "failed" and "no filter in the header" in res["error"]


def test_profile_alias_and_pipeline_filter(tmp_path):
    path = _frame(tmp_path, FILTER="Clear")
    prof = InstrumentProfile(name="cam", filter_aliases={"Clear": "r"})
    res, _ = _run(tmp_path / "a", path, instrument=prof)
    assert res["status"] == "done" and res["filter"] == "r"
    res, _ = _run(tmp_path / "b", path, pipeline=PipelineSettings(filter="V"))
    assert res["filter"] == "V" and "pipeline.filter" in res["filter_source"]


@pytest.mark.parametrize("value,band", [
    ("r", "r"), ("R", "R"), ("Rc", "R"), ("i DECam SDSS c0003 7835.0 1470.0", "i"), ("SDSS g", "g"),
    ("g'", "g"), ("zr", "r"), ("Ks", "K"), ("BP", "BP"), ("Bessell V", "V"), ("J", "J")])
def test_filter_table(value, band):
    assert filters.lookup(value) == band


def test_filter_table_rejects_nonsense():
    for v in ("Clear", "L", "48", "Halpha", ""):
        assert filters.lookup(v) is None


# ---------------------------------------------------------------- time, gain, header fixes

def test_mid_exposure_time(tmp_path):
    res, _ = _run(tmp_path, _frame(tmp_path, EXPTIME=120.0))
    assert res["time_start"] == "2026-03-01T03:00:00.000"
    assert res["time_mid"] == "2026-03-01T03:01:00.000"
    assert res["exptime"] == 120.0


def test_old_date_formats(tmp_path):
    # MIDAS: DATE-OBS 'DD/MM/YY' and the start in seconds (TM-START)
    res, _ = _run(tmp_path / "a", _frame(tmp_path, **{"DATE_OBS": "26/10/92", "TM-START": 11048.0, "EXPTIME": 1200.0}))
    assert res["time_start"] == "1992-10-26T03:04:08.000"
    assert res["time_mid"] == "1992-10-26T03:14:08.000"
    # date only + UT
    res, _ = _run(tmp_path / "b", _frame(tmp_path, name="g.fits", **{"DATE_OBS": "2013-07-13", "UT": "00:57:33",
                                                                       "EXPTIME": 150.0}))
    assert res["time_start"] == "2013-07-13T00:57:33.000"


def test_gain_sources(tmp_path):
    path = _frame(tmp_path, GAIN=None, EGAIN=1.7)
    res, _ = _run(tmp_path / "a", path)
    assert res["gain"] == 1.7 and "EGAIN" in res["gain_source"]
    res, _ = _run(tmp_path / "b", path, instrument=InstrumentProfile(name="cam", gain=3.1))
    assert res["gain"] == 3.1 and "profile" in res["gain_source"]
    res, _ = _run(tmp_path / "c", _frame(tmp_path, name="n.fits"))
    assert res["gain"] == 1.0 and "default" in res["gain_source"]


def test_real_frame_footprint_and_header_fixes(tmp_path, shared_data):
    res, folder = _run(tmp_path, shared_data / FRAMES / "feder_aspencg16_EYUMa_r_thumb256_wcs.fits")
    assert res["status"] == "done"
    assert res["filter"] == "r" and res["exptime"] == 90.0
    assert res["time_mid"] == "2018-04-17T03:36:07.000"
    assert abs(res["ra"] - 135.6195) < 0.01 and abs(res["dec"] - 49.7869) < 0.01
    assert 0.2 < res["radius_deg"] < 0.5
    assert len(res["footprint"]) == 4 and all(len(c) == 2 for c in res["footprint"])
    # TRIMSEC of the unbinned camera does not fit the 256x256 thumbnail: dropped, not used as a mask
    assert any("TRIMSEC" in n for n in res["notes"])
    assert res["masked_fraction"] < 0.05
    state = json.loads((folder / "inspect.json").read_text())
    assert state["band"] == "r" and state["wcs_state"] == "present"
    mask = fits.getdata(folder / "mask.fits")
    assert mask.dtype == np.uint8 and mask.shape == (256, 256)


def test_decam_stack_from_its_header(tmp_path, shared_data):
    res, _ = _run(tmp_path, shared_data / FRAMES / "decam_i_sfft_stack_OBS04.fits")
    assert res["status"] == "done" and res["filter"] == "i"
    assert res["gain"] == pytest.approx(3.984, abs=1e-3) and res["gain_source"] == "header GAIN"


def test_targets_and_regions(tmp_path, shared_data):
    src = shared_data / FRAMES / "feder_aspencg16_EYUMa_r_thumb256_wcs.fits"
    res, folder = _run(tmp_path, src, pipeline=PipelineSettings(targets=["EY UMa=135.62 49.79", "10 20 px",
                                                                          "SN 2099xyz"]),
                       regions=[Region(id="GRB1", ra=135.6, dec=49.8, radius_deg=0.1, forced_photometry=True)])
    state = json.loads((folder / "inspect.json").read_text())
    names = [t["name"] for t in state["targets"]]
    assert names == ["EY UMa", "10 20 px", "GRB1"]
    assert any("SN 2099xyz" in n and "offline" in n for n in res["notes"])  # a name is not resolved offline
    assert (folder / "image_target.fits").is_file()


def test_rerun_clears_later_products(tmp_path):
    folder = tmp_path / "work"
    prepare_folder(_frame(tmp_path), folder)
    (folder / "objects.fits").write_text("stale")
    (folder / "candidates_sub.ecsv").write_text("stale")
    (folder / "photometry.log").write_text("stale")
    run_chain(folder, StageSettings(), steps=["inspect"])
    assert not (folder / "objects.fits").exists()
    assert not (folder / "candidates_sub.ecsv").exists()
    assert not (folder / "photometry.log").exists()
    assert (folder / "image.fits").is_file()

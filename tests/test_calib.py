"""Calibration of raw frames (issue 16), on a synthetic raw night with exact truth and real processes:
`stdd calib build` and `stdd process --calib` as commands, real SExtractor, the real SAAO raw frame.

The night (stdd.synth.rawnight): 512² image area + 32 overscan columns, uint16 with BZERO 32768,
MaxIm DL image types; bias drift and a 2-D bias pattern, dark current with hot pixels (darks of
120 s, lights of 60 s: the dark is scaled), a flat with 20 % vignetting, dust donuts and a dead
column. Photometry is checked against make_field's truth with `spatial_order = 0`, so that the zero
point's polynomial can neither hide nor invent a centre-to-edge trend.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stdd.calib.frametypes import kind_of
from stdd.config.settings import InstrumentProfile
from stdd.synth.rawnight import make_raw_night

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "stdd.toml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}


def stdd(*args, cwd=None, check=False) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "stdd", "--config", str(CONFIG), *map(str, args)],
                       capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"stdd {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("night")
    n = make_raw_night(root, seed=3, size=512, n_light=2, n_stars=1200)
    p = stdd("calib", "build", root / "raw", "--out", root / "lib", "--json", cwd=root, check=True)
    n.report = json.loads(p.stdout)
    n.root = root
    return n


def processed(n, out: str, *extra) -> list[dict]:
    """Run photometry on the night's lights (once per `out`); their result.json."""
    folder = n.root / out
    if not folder.exists():
        stdd("process", *n.lights, "--catalog", n.catalog, "--steps", "inspect,photometry", "--out", folder,
             "-c", "spatial_order=0", *extra, cwd=n.root)
    return [json.loads((folder / p.stem / "result.json").read_text()) for p in n.lights]


def matched(n, out: str):
    """(mag_calib − truth, instrumental − truth (centred), radius / corner radius, objects, unmatched
    objects) over the lights, for unsaturated matched stars with S/N > 30."""
    res, inst, rad, unmatched = [], [], [], []
    for light, truth_path in zip(n.lights, n.truths):
        truth = json.loads(Path(truth_path).read_text())
        obj = Table.read(n.root / out / light.stem / "objects.fits")
        st = truth["stars"]
        tx, ty = np.array([s["x"] for s in st]), np.array([s["y"] for s in st])
        tm, tf = np.array([s["mag"] for s in st]), np.array([s["flux"] for s in st])
        x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
        d = np.hypot(x[:, None] - tx[None, :], y[:, None] - ty[None, :])
        j = d.argmin(1)
        ok = d[np.arange(len(x)), j] < 1.5
        good = ok & (np.asarray(obj["snr"]) > 30) & ((np.asarray(obj["flags"]) & 0x4) == 0)
        res.append(np.asarray(obj["mag_calib"], float)[good] - tm[j[good]])
        i = -2.5 * np.log10(np.asarray(obj["flux"], float)[good] / tf[j[good]])
        inst.append(i - np.median(i))
        c = (truth["width"] - 1) / 2
        rad.append(np.hypot(x[good] - c, y[good] - c) / (np.sqrt(2) * c))
        unmatched.append(np.c_[x[~ok], y[~ok]])
    return np.concatenate(res), np.concatenate(inst), np.concatenate(rad), np.concatenate(unmatched)


def trend(values, radius) -> float:
    """Median at the edge (beyond 0.7 of the corner radius) minus median at the centre (within 0.4)."""
    return float(np.median(values[radius > 0.7]) - np.median(values[radius < 0.4]))


# ---------------------------------------------------------------- frame types (no files)

@pytest.mark.parametrize("value, kind", [
    ("Bias Frame", "bias"), ("zero", "bias"), ("Dark Frame", "dark"), ("Flat Field", "flat"),
    ("dome flat", "flat"), ("SKY_FLAT", "flat"), ("twilight flat", "flat"), ("Light Frame", "light"),
    ("object", "light"), ("OBJECT", "light"),
])
def test_image_type_aliases(value, kind):
    h = fits.Header({"IMAGETYP": value})
    assert kind_of(h)[0] == kind
    assert kind_of(fits.Header({"OBSTYPE": value}))[0] == kind


def test_image_types_of_a_profile_and_unknown_values():
    prof = InstrumentProfile(name="cam", image_types={"Flat Frame (sky)": "flat", "calib-z": "bias"},
                             image_type_keywords=["CAMTYPE"])
    assert kind_of(fits.Header({"IMAGETYP": "flat frame (SKY)"}), prof)[0] == "flat"
    assert kind_of(fits.Header({"CAMTYPE": "calib-z", "IMAGETYP": "object"}), prof)[:3] == ("bias", "calib-z",
                                                                                            "CAMTYPE")
    kind, raw, kw, note = kind_of(fits.Header({"IMAGETYP": "acquisition"}))
    assert kind == "light" and "'acquisition' is not a known image type" in note
    assert kind_of(fits.Header({"OBJECT": "Bias"}))[0] == "bias"  # no type keyword: OBJECT, when exact
    assert kind_of(fits.Header({"OBJECT": "M51"}))[0] == "light"


# ---------------------------------------------------------------- masters

def test_masters_built_with_quality_and_bad_pixels(night):
    rep = night.report
    kinds = sorted(m["kind"] for m in rep["masters"])
    assert kinds == ["bias", "bpm", "dark", "flat"], rep
    assert rep["n_light_frames"] == 2 and all(s["reason"].startswith("a light frame") for s in rep["skipped"])
    by = {m["kind"]: m for m in rep["masters"]}
    assert by["bias"]["n_frames"] == 5 and by["dark"]["exptime"] == 120.0 and by["flat"]["band"] == "r"
    q = by["bias"]["quality"]
    # per-frame noise of a bias = read noise in ADU (7 e- / 1.5)
    assert abs(q["noise_adu"] - 7.0 / 1.5) < 0.5 and abs(q["overscan_adu"] - 1000) < 5
    assert abs(by["dark"]["quality"]["dark_rate_adu_s"] - 0.1 / 1.5) < 0.02
    fq = by["flat"]["quality"]
    assert 0.75 < fq["illumination_min"] < 0.9 and fq["illumination_max"] > 1.0
    assert by["dark"]["made_with"] == {"bias": by["bias"]["file"]}
    # the bad-pixel mask holds the hot pixels and the dead column
    lib = night.root / "lib"
    bpm = fits.getdata(lib / by["bpm"]["file"])
    hot = fits.getdata(night.root / "truth" / "hot_pixels.fits")
    strong = hot > 30
    assert np.mean(bpm[strong] > 0) > 0.95
    col = night.night["dead_column"]
    assert np.all(bpm[:, col] > 0)
    assert by["bpm"]["quality"]["fraction"] < 0.01
    index = json.loads((lib / "index.json").read_text())["masters"]
    assert {e["file"] for e in index} == {m["file"] for m in rep["masters"]}
    for e in index:
        assert e["valid_from"] < e["mjd"] < e["valid_until"] and (lib / e["file"]).is_file()


# ---------------------------------------------------------------- the calibrate stage

def test_calibrated_photometry_matches_truth_without_vignetting(night):
    results = processed(night, "cal", "--calib", night.root / "lib")
    for r in results:
        assert r["status"] == "done", r["error"]
        assert r["stages"]["calibrate"]["state"] == "done"
        used = r["calibration"]["masters"]
        assert set(used) == {"bias", "dark", "flat", "bpm"} and used["dark"]["scale"] == pytest.approx(0.5)
        assert r["calibration"]["missing"] == [] and r["width"] == 512
    res, inst, rad, unmatched = matched(night, "cal")
    assert len(res) > 100
    assert abs(np.median(res)) <= 0.02
    assert abs(trend(res, rad)) <= 0.01 and abs(trend(inst, rad)) <= 0.01
    # the same frames uncalibrated (the profile's overscan and trim only): vignetting shows
    raw = processed(night, "uncal")
    assert all(r["status"] == "done" for r in raw)
    res0, inst0, rad0, unmatched0 = matched(night, "uncal")
    assert trend(inst0, rad0) > 0.08 and trend(res0, rad0) > 0.08
    # no detection on a hot pixel after calibration; plenty before
    hot = fits.getdata(night.root / "truth" / "hot_pixels.fits")
    hy, hx = np.nonzero(hot > 30)

    def on_hot(xy):
        if not len(xy):
            return 0
        return int(np.sum(np.hypot(xy[:, :1] - hx[None, :], xy[:, 1:] - hy[None, :]).min(1) < 1.0))

    assert on_hot(unmatched) == 0
    assert on_hot(unmatched0) > 10


def test_default_zero_point_model_on_calibrated_frames(night):
    """With the default spatial order 2 as well: calibrated magnitudes agree with the truth."""
    folder = night.root / "cal2"
    stdd("process", *night.lights, "--catalog", night.catalog, "--steps", "inspect,photometry", "--out", folder,
         "--calib", night.root / "lib", cwd=night.root)
    for light in night.lights:
        assert json.loads((folder / light.stem / "result.json").read_text())["status"] == "done"
    res, _, _, _ = matched(night, "cal2")
    assert abs(np.median(res)) <= 0.02


def test_missing_masters_are_said_or_fail_when_required(night, tmp_path):
    lib = tmp_path / "lib"
    biases = [p for p, k in zip(night.files, night.kinds) if k == "bias"]
    stdd("calib", "build", *biases, "--out", lib, check=True)
    light = night.lights[0]
    p = stdd("process", light, "--calib", lib, "--steps", "inspect", "--out", tmp_path / "a", "--json")
    r = json.loads(p.stdout)
    assert r["status"] == "done" and list(r["calibration"]["masters"]) == ["bias"]
    assert "calibrate: no dark in the library: not corrected" in r["notes"]
    assert "calibrate: no r flat in the library: not corrected" in r["notes"]
    p = stdd("process", light, "--calib", lib, "--steps", "inspect", "--out", tmp_path / "b", "--json",
             "-c", "calibration.required=true")
    r = json.loads(p.stdout)
    assert p.returncode == 1 and r["status"] == "failed"
    assert r["error"] == "calibrate: no dark in the library; no r flat in the library (the profile requires masters)"
    # the full library, but masters too old for the frame
    p = stdd("process", light, "--calib", night.root / "lib", "--steps", "inspect", "--out", tmp_path / "c",
             "--json", "-c", "calibration.max_age_days.flat=0.01")
    r = json.loads(p.stdout)
    note = next(n for n in r["notes"] if "flat" in n)
    assert note.startswith("calibrate: no r flat within 0.01 days (the nearest is 0.0") and "not corrected" in note


def test_a_bias_frame_is_not_processed_as_science(night, tmp_path):
    bias = night.files[0]
    p = stdd("process", bias, "--calib", night.root / "lib", "--out", tmp_path, "--json")
    r = json.loads(p.stdout)
    assert r["status"] == "failed"
    assert r["error"].startswith("calibrate: IMAGETYP = 'Bias Frame': a bias frame, not a science frame")


def test_config_check_names_bad_calibration_keys(tmp_path):
    inst = tmp_path / "instruments"
    inst.mkdir()
    (inst / "cam.toml").write_text('overscan = "[1:10]"\n[match]\nINSTRUME = "CAM"\n[image_types]\n"zero" = "bais"\n'
                                   '[calibration]\nbias = true\nflats = false\n')
    cfg = tmp_path / "stdd.toml"
    cfg.write_text(f'instruments_dir = "{inst}"\n[calibration]\nmax_age_days = {{ bias = -1 }}\n')
    p = subprocess.run([sys.executable, "-m", "stdd", "config", "check", str(cfg)], capture_output=True, text=True,
                       env=ENV, cwd=tmp_path)
    assert p.returncode == 2
    assert "calibration.max_age_days.bias" in p.stderr
    (inst / "cam.toml").write_text('overscan = "[1:10]"\n[match]\nINSTRUME = "CAM"\n[image_types]\n"zero" = "bais"\n'
                                   '[calibration]\nbias = true\nflats = false\n')
    cfg.write_text(f'instruments_dir = "{inst}"\n')
    p = subprocess.run([sys.executable, "-m", "stdd", "config", "check", str(cfg)], capture_output=True, text=True,
                       env=ENV, cwd=tmp_path)
    assert p.returncode == 2
    for key in ("overscan", "image_types.zero", "calibration.flats"):
        assert key in p.stderr, p.stderr


# ---------------------------------------------------------------- the real raw SAAO frame

def test_real_saao_raw_frame_overscan_removed(shared_data, tmp_path):
    frame = shared_data / "frames" / "saao1m_ste3_raw_a8280271.fits"
    if not frame.is_file():
        pytest.skip(f"{frame} is not in the shared data")
    lib = tmp_path / "lib"
    lib.mkdir()
    p = stdd("process", frame, "--calib", lib, "--steps", "inspect", "-c", "filter=R", "--out", tmp_path / "out",
             "--json", "--keep-work")
    r = json.loads(p.stdout)
    assert r["status"] == "done", r["error"]
    assert r["instrument_profile"] == "saao-ste3"
    assert "calibrate: overscan subtracted: [   4:  13,   1: 520] (header BIASSEC), median 214.0 ADU" in r["notes"]
    assert r["width"] == 512 and r["height"] == 512 and r["calibration"]["overscan_adu"] == 214.0
    assert "calibrate: no bias in the library: not corrected" in r["notes"]
    image = fits.getdata(tmp_path / "out" / ".work" / frame.stem / "image.fits")
    # the sky is ~86 ADU above the overscan level; no overscan column or row is left in the frame
    assert 80 < np.median(image) < 95 and np.median(image[:, :4]) > 50 and np.median(image[-4:, :]) > 50

"""Stacking (issue 15, part 4) with the real stages and the real SWarp: three dithered frames of one
field with independent noise → a deeper frame whose header carries the right noise model and time,
processed like any frame; and the real 5-frame M13 series (no WCS: aligned on its stars)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

synth = pytest.importorskip("stdd.synth")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "frames"


def stdd(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("STDD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "stdd", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def dithered(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack")
    sky = synth.default_starfield(3, width=512, height=512, n_stars=400)
    f0 = synth.make_field(d / "f0", seed=31, width=512, height=512, starfield=sky, n_transients=1,
                          transient_snr=(5, 5), n_cosmics=5, date_obs="2026-03-01T03:00:00")
    t = json.loads(f0.truth.read_text())["transients"][0]
    frames = [f0.frame]
    for i, (dra, ddec) in enumerate([(0.0015, -0.001), (-0.001, 0.0012)], 1):
        f = synth.make_field(d / f"f{i}", seed=31 + i, width=512, height=512, ra=150 + dra, dec=30 + ddec,
                             starfield=sky, transients=[(t["ra"], t["dec"], t["mag"])], n_cosmics=5,
                             date_obs=f"2026-03-01T03:0{2 * i}:00", template=False, catalog_name=None)
        frames.append(f.frame)
    return d, f0, frames, t


def test_three_dithered_frames_stack_deeper_and_find_the_faint_transient(dithered):
    d, f0, frames, t = dithered
    r = stdd("stack", *frames, "--out", d / "out", "--process", "--catalog", f0.catalog, "--template", f0.template,
             "--json", cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout)
    assert Path(rec["path"]).is_file() and rec["n"] == 3 and rec["method"] == "sum"
    assert all(i["alignment"] in ("reference", "wcs (SWarp)") for i in rec["inputs"])
    h = fits.getheader(rec["path"])
    assert h["NCOMBINE"] == 3 and h["EXPTIME"] == h["TOTEXP"] == 180.0 and h["STK_MTHD"] == "sum"
    assert h["GAIN"] == pytest.approx(2.0, rel=1e-6)  # a sum of frames in ADU keeps their gain
    assert [h[f"STKIN{k:03d}"] for k in (1, 2, 3)] == ["frame.fits"] * 3
    assert h["SATURATE"] > 2 * 50000 and h["DATE-MID"].startswith("2026-03-01T03:02:30")
    res = rec["result"]
    assert res["status"] == "done", res["error"]
    assert res["time_mid"].startswith("2026-03-01T03:02:30")  # the midpoint of the set
    single = stdd("process", frames[0], "--catalog", f0.catalog, "--template", f0.template, "--out", d / "single",
                  "--json", cwd=d)
    one = json.loads(single.stdout)
    # 5-sigma limit: at least 0.5 mag deeper than one frame (0.6 in theory for three)
    assert res["mag_limit"] - one["mag_limit"] >= 0.5, (res["mag_limit"], one["mag_limit"])
    # calibrated magnitudes of stars agree with the catalogue
    objs = Table.read(Path(rec["result_dir"]) / "objects.fits")
    ok = np.isfinite(objs["cat_mag"]) & (objs["snr"] > 30)
    assert ok.sum() > 20
    assert abs(float(np.median(objs["mag_calib"][ok] - objs["cat_mag"][ok]))) <= 0.02
    # the S/N ~ 5 transient of each frame is a candidate of the stack (none in the single frame's search)
    cands = res["candidates_sub"] + res["candidates_simple"]
    near = [c for c in cands if math.hypot((c["ra"] - t["ra"]) * math.cos(math.radians(t["dec"])),
                                           c["dec"] - t["dec"]) * 3600 < 2]
    assert near and max(c["snr"] for c in near) > 7
    # ... with cutouts from each input
    cut = {c["id"]: c for c in res["candidates_input_cutouts"]}
    c0 = cut[near[0]["id"]]
    with fits.open(Path(rec["result_dir"]) / c0["file"]) as hdul:
        assert len(hdul) - 1 == 3 == c0["inputs"]
    assert res["stack_inputs"] == ["frame.fits"] * 3


def test_methods_and_their_noise_model(dithered, tmp_path):
    from stdd.stack import stack

    d, f0, frames, t = dithered
    gains = {}
    for method in ("sum", "clipped_mean", "median"):
        rec = stack(frames, tmp_path / f"{method}.fits", method=method, tmpdir=tmp_path, log=lambda m: None)
        gains[method] = rec["gain"]
        data = fits.getdata(rec["path"])
        sky = data[np.isfinite(data)]
        # the scatter of the sky follows the gain written: sigma_ADU^2 ~ (sky e- + ...)/gain^2 scaling
        gains[method + "_rms"] = float(1.4826 * np.median(np.abs(sky - np.median(sky))))
    assert gains["clipped_mean"] == pytest.approx(3 * gains["sum"])
    assert gains["median"] == pytest.approx(6 / math.pi * gains["sum"])
    # a mean of three is three times quieter in ADU than their sum; a median a little noisier than the mean
    assert gains["sum_rms"] / gains["clipped_mean_rms"] == pytest.approx(3, rel=0.1)
    assert 1.05 < gains["median_rms"] / gains["clipped_mean_rms"] < 1.35


def test_usage_and_bad_inputs(dithered, tmp_path):
    d, f0, frames, t = dithered
    r = stdd("stack", frames[0], "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "at least two" in r.stderr
    bad = tmp_path / "bad.fits"
    bad.write_text("not a FITS file")
    r = stdd("stack", frames[0], bad, "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 1 and "bad.fits" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not (SHARED / "orion_ssdsi_M13_blue_0001.fits").is_file(),
                    reason="../shared/data/frames (the real M13 series) is not beside the checkout")
def test_the_real_m13_series_is_aligned_on_its_stars_then_fails_specifically(tmp_path):
    files = [SHARED / f"orion_ssdsi_M13_blue_000{i}.fits" for i in range(1, 6)]
    r = stdd("stack", *files, "--out", tmp_path / "m13", "--process", "-c", "filter=B", "--catalog",
             SHARED.parent / "catalogs" / "tycho2vt_M13.fits", "--json", cwd=tmp_path)
    rec = json.loads(r.stdout)
    assert rec["n"] == 5 and Path(rec["path"]).is_file()
    h = fits.getheader(rec["path"])
    assert h["EXPTIME"] == 25.0 and h["NCOMBINE"] == 5 and h["DATE-MID"].startswith("2013-05-05T04:10:05")
    # no WCS: aligned by the translation of its stars; the telescope drifted ~11 px a frame
    shifts = [i["alignment"] for i in rec["inputs"][1:]]
    assert all(s.startswith("pixel shift") and s.endswith("no WCS") for s in shifts)
    dx = [float(s.split("(")[1].split(",")[0]) for s in shifts]
    slope, icept = np.polyfit([1, 2, 3, 4], dx, 1)
    assert slope > 5 and max(abs(np.polyval([slope, icept], [1, 2, 3, 4]) - dx)) < 3
    # processed like any frame: no WCS and a blind solve that finds none is said specifically
    res = rec["result"]
    assert res["status"] == "failed" and "WCS" in res["error"] and r.returncode == 1

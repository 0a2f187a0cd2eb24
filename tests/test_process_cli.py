"""`stdd process` as a real subprocess: result folders, JSON, exit codes, no tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

ROOT = Path(__file__).resolve().parents[1]
synth = pytest.importorskip("stdd.synth")


def stdd(*args, cwd: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", **(env_extra or {})}
    env.pop("STDD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "stdd", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def small_field(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    fp = synth.make_field(d / "f", seed=7, width=384, height=384, n_stars=250, n_transients=1,
                          transient_snr=(40, 40), n_cosmics=5)
    return d, fp


def test_process_one_file_json(small_field):
    d, fp = small_field
    out = d / "out1"
    r = stdd("process", fp.frame, "--catalog", fp.catalog, "--template", fp.template, "--out", out, "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["status"] == "done" and res["error"] is None
    assert res["instrument_profile"] is None  # run outside the checkout: no profile folder
    folder = Path(res["result_dir"])
    assert folder == out / "frame"
    on_disk = json.loads((folder / "result.json").read_text())
    assert on_disk["zp"] == res["zp"]
    assert Table.read(folder / on_disk["objects_table"])["mag_calib"].size > 50
    for log in ("inspect.log", "photometry.log", "transients.log", "subtraction.log"):
        assert (folder / log).is_file()
    assert (out / ".work" / "frame" / "image.fits").is_file()  # kept: a rerun --from starts from it
    assert res["run"] == 1 and res["kept_stages"] == []
    assert res["settings"]["catalog"]["files"] == [str(fp.catalog.resolve())]
    assert len(res["candidates_sub"]) >= 1 and len(res["candidates_simple"]) >= 1
    assert "Traceback" not in r.stderr


def test_process_several_files_and_failures(small_field, tmp_path, shared_data):
    d, fp = small_field
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    r = stdd("process", fp.frame, bad, empty, tmp_path / "missing.fits", "--catalog", fp.catalog,
             "--steps", "inspect,photometry", "--out", tmp_path / "out", "--json", cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    res = json.loads(r.stdout)
    assert [x["status"] for x in res] == ["done", "failed", "failed", "failed"]
    assert "not a FITS file" in res[1]["error"]
    assert "empty file" in res[2]["error"]
    assert "no such file" in res[3]["error"]
    assert set(res[0]["stages"]) == {"inspect", "photometry"}
    for x in res:
        assert (Path(x["result_dir"]) / "result.json").is_file()
    assert len({x["result_dir"] for x in res}) == 4


def test_same_names_get_their_own_folders(small_field, tmp_path):
    d, fp = small_field
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub / "frame.fits").write_bytes(fp.frame.read_bytes())
    r = stdd("process", tmp_path / "a" / "frame.fits", tmp_path / "b" / "frame.fits", "--steps", "inspect",
             "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "frame" / "result.json").is_file()
    assert (tmp_path / "out" / "frame-2" / "result.json").is_file()
    assert "frame: done" in r.stdout


def test_usage_errors_exit_2(small_field, tmp_path):
    d, fp = small_field
    r = stdd("process", fp.frame, "-c", "no_such_key=1", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "no_such_key" in r.stderr and "unknown key" in r.stderr
    r = stdd("process", fp.frame, "-c", "sn=abc", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "sn" in r.stderr
    r = stdd("process", fp.frame, "--steps", "inspect,photmetry", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "photmetry" in r.stderr
    r = stdd("process", fp.frame, "--profile", "nosuchcamera", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "nosuchcamera" in r.stderr
    r = stdd("process", fp.frame, "--catalog", tmp_path / "nope.fits", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "nope.fits" in r.stderr


def test_overrides_and_profiles_from_the_checkout(small_field, tmp_path):
    """In the checkout, the synthetic camera's profile is found by its header; -c wins over it."""
    d, fp = small_field
    h = fits.getheader(fp.frame)
    data = fits.getdata(fp.frame)
    h["FILTER"] = "SDSS r"  # a spelling the synth profile maps
    fits.writeto(tmp_path / "x.fits", data, h)
    r = stdd("--config", ROOT / "stdd.toml", "process", tmp_path / "x.fits", "--steps", "inspect", "-c",
             "mask_cosmics=false", "--out", tmp_path / "o", "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["instrument_profile"] == "synth" and res["filter"] == "r"
    assert res["n_cosmics_pixels"] == 0
    h["FILTER"] = "Clear"
    fits.writeto(tmp_path / "y.fits", data, h)
    r = stdd("process", tmp_path / "y.fits", "--steps", "inspect", "--out", tmp_path / "o2", cwd=tmp_path)
    assert r.returncode == 1 and "'Clear'" in r.stdout
    r = stdd("process", tmp_path / "y.fits", "--steps", "inspect", "-c", "filter=r", "--out", tmp_path / "o3",
             cwd=tmp_path)
    assert r.returncode == 0, r.stdout


def test_offline_online_source_is_reported(small_field, tmp_path):
    d, fp = small_field
    r = stdd("process", fp.frame, "--steps", "inspect,photometry", "-c", "catalog.source=vizier", "--out",
             tmp_path / "o", "--json", cwd=tmp_path)
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res["stages"]["photometry"]["state"] == "failed"
    assert "offline" in res["error"] and "vizier" in res["error"]

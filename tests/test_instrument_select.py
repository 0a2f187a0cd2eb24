"""Which instrument profile each frame gets: folder (watch.profiles), else header match, else
pipeline.instrument, else none — the same in `stdd process` and in a running `stdd run`.

Real synthetic FITS frames with different INSTRUME/TELESCOP headers, real profile TOML files in a
temp instruments_dir, the real inspect stage, a real daemon process with SIGHUP.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from astropy.io import fits

from stdd.config import ConfigError, load_settings
from stdd.pipeline import prepare_folder, run_chain
from stdd.stages.base import StageSettings
from stdd.stages.profiles import load_profiles, settle
from stdd.synth import make_field

from daemon_harness import DaemonProcess

PROFILES = {
    # matched by INSTRUME
    "cam-a": """
        description = "camera A"
        gain = 3.0
        [match]
        INSTRUME = "CAM-A"
        [pipeline]
        detection_thresh = 3.0
    """,
    # matched by TELESCOP (a glob, case-insensitive)
    "cam-b": """
        description = "camera B"
        gain = 7.0
        saturation = 30000.0
        [match]
        TELESCOP = "scope-b*"
    """,
    # no match table: chosen by name only
    "generic": """
        description = "any other camera"
        gain = 1.5
    """,
}


def write_profiles(folder: Path, profiles: dict[str, str] = PROFILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in profiles.items():
        (folder / f"{name}.toml").write_text(textwrap.dedent(text))
    return folder


def write_config(root: Path, watch_profiles: str = '"in/north" = "cam-b"', instrument: str = "generic",
                 extra: str = "") -> Path:
    text = textwrap.dedent(f"""\
        log_level = "DEBUG"
        instruments_dir = "instruments"
        [paths]
        var = "var"
        incoming = ["in/north", "in/south"]
        [watch]
        settle_seconds = 0.3
        incomplete_seconds = 3.0
        rescan_minutes = 0.05
        profiles = {{ {watch_profiles} }}
        [pool]
        workers = 2
        max_attempts = 1
        shutdown_grace_seconds = 3.0
        kill_grace_seconds = 1.0
        [pipeline]
        steps = ["inspect"]
        mask_cosmics = false
        {f'instrument = "{instrument}"' if instrument else ""}
        [http]
        enabled = false
        """) + extra
    (root / "stdd.toml").write_text(text)
    return root / "stdd.toml"


_FRAME_CACHE: dict[int, bytes] = {}


def frame(path: Path, instrume: str, telescop: str | None = None, seed: int = 1) -> Path:
    """A 256x256 synthetic frame (stars, WCS, GAIN 2 in its header) with these headers."""
    if seed not in _FRAME_CACHE:
        tmp = path.parent / f".make-{seed}"
        fp = make_field(tmp, seed=seed, width=256, height=256, n_stars=120, n_cosmics=0, n_transients=0,
                        template=False, catalog_name=None)
        _FRAME_CACHE[seed] = fp.frame.read_bytes()
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_FRAME_CACHE[seed])
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["INSTRUME"] = instrume
        if telescop:
            hdul[0].header["TELESCOP"] = telescop
    return path


@pytest.fixture
def site(tmp_path):
    write_profiles(tmp_path / "instruments")
    for sub in ("north", "north/deep", "south"):
        (tmp_path / "in" / sub).mkdir(parents=True)
    return tmp_path


def chosen(settings, path: Path, work: Path, **overrides) -> StageSettings:
    """What the frame at `path` gets: the job builder's part, then the frame process's part."""
    prepare_folder(path, work)
    ss = StageSettings.from_settings(settings, profiles=load_profiles(settings).choice_for(path), **overrides)
    ss = StageSettings.model_validate(ss.model_dump(mode="json"))  # as a pool job carries it
    return settle(ss, work)


# ---------------------------------------------------------------- precedence

def test_precedence_folder_then_header_then_default_then_none(site):
    s = load_settings(write_config(site))
    w = site / "work"
    # 1. folder beats a header that matches another profile
    a = chosen(s, frame(site / "in/north/a.fits", "CAM-A"), w)
    assert (a.instrument.name, a.instrument_source) == ("cam-b", "folder")
    assert a.profile_choice is None
    # ... including folders inside a mapped one
    a2 = chosen(s, frame(site / "in/north/deep/a.fits", "CAM-A"), w)
    assert (a2.instrument.name, a2.instrument_source) == ("cam-b", "folder")
    # 2. header match: INSTRUME, or TELESCOP by a case-insensitive glob
    b = chosen(s, frame(site / "in/south/b.fits", "CAM-A"), w)
    assert (b.instrument.name, b.instrument_source) == ("cam-a", "header match")
    assert b.pipeline.detection_thresh == 3.0  # the profile's [pipeline] table applied
    c = chosen(s, frame(site / "in/south/c.fits", "whatever", telescop="Scope-B 0.5m"), w)
    assert (c.instrument.name, c.instrument_source) == ("cam-b", "header match")
    # 3. pipeline.instrument when nothing matches
    d = chosen(s, frame(site / "in/south/d.fits", "CAM-Z"), w)
    assert (d.instrument.name, d.instrument_source) == ("generic", "configured default")
    # 4. none
    s_none = load_settings(write_config(site, instrument=""))
    e = chosen(s_none, frame(site / "in/south/e.fits", "CAM-Z"), w)
    assert (e.instrument, e.instrument_source) == (None, "none")
    # an unreadable file matches nothing (inspect then fails with its own reason)
    bad = site / "in/south/bad.fits"
    bad.write_text("not FITS")
    f = chosen(s, bad, w)
    assert (f.instrument.name, f.instrument_source) == ("generic", "configured default")


def test_deepest_folder_wins_and_explicit_overrides_win_over_the_profile(site):
    s = load_settings(write_config(site, watch_profiles='"in/north" = "cam-b", "in/north/deep" = "cam-a"'))
    w = site / "work"
    a = chosen(s, frame(site / "in/north/deep/a.fits", "CAM-Z"), w)
    assert (a.instrument.name, a.instrument_source) == ("cam-a", "folder")
    assert a.pipeline.detection_thresh == 3.0
    b = chosen(s, frame(site / "in/north/deep/b.fits", "CAM-Z"), w, detection_thresh=4.5)
    assert b.instrument.name == "cam-a" and b.pipeline.detection_thresh == 4.5  # per-frame option wins
    c = chosen(s, frame(site / "in/north/c.fits", "CAM-A"), w)
    assert c.instrument.name == "cam-b"
    # --profile (explicit) beats the folder
    ps = load_profiles(s)
    choice = ps.choice_for(site / "in/north/c.fits", explicit=ps.default)
    ss = settle(StageSettings.from_settings(s, profiles=choice), w)
    assert (ss.instrument.name, ss.instrument_source) == ("generic", "explicit")


def test_inspect_records_the_profile_and_why(site):
    s = load_settings(write_config(site))
    w = site / "work"
    path = frame(site / "in/south/b.fits", "CAM-A")
    prepare_folder(path, w)
    res = run_chain(w, StageSettings.from_settings(s, profiles=load_profiles(s).choice_for(path)), ["inspect"])
    assert res["status"] == "done", res["error"]
    assert res["instrument_profile"] == "cam-a" and res["instrument_profile_source"] == "header match"
    assert res["gain"] == 3.0 and res["gain_source"] == "instrument profile cam-a"
    assert "instrument profile: cam-a (header match)" in (w / "inspect.log").read_text()


# ---------------------------------------------------------------- config errors name the key

def test_unknown_profile_name_is_a_config_error_naming_the_key(site):
    cfg = write_config(site, watch_profiles='"in/south" = "nosuchcam"')
    with pytest.raises(ConfigError) as e:
        load_profiles(load_settings(cfg))
    text = "\n".join(e.value.errors)
    assert 'stdd.toml: watch.profiles."in/south": no instrument profile \'nosuchcam\'' in text  # as written
    assert "cam-a, cam-b, generic" in text  # what does exist

    cfg = write_config(site, instrument="nosuch2")
    with pytest.raises(ConfigError) as e:
        load_profiles(load_settings(cfg))
    assert "pipeline.instrument" in e.value.errors[0] and "'nosuch2'" in e.value.errors[0]

    # a folder that is not watched (a typo) is named too
    cfg = write_config(site, watch_profiles='"in/sooth" = "cam-a"')
    with pytest.raises(ConfigError) as e:
        load_profiles(load_settings(cfg))
    assert 'watch.profiles."in/sooth"' in e.value.errors[0] and "paths.incoming" in e.value.errors[0]


def test_invalid_profile_files_are_config_errors_naming_file_and_key(site):
    (site / "instruments" / "broken.toml").write_text('gain = "lots"\n[pipeline]\nsn = -1\n')
    cfg = write_config(site)
    with pytest.raises(ConfigError) as e:
        load_profiles(load_settings(cfg))
    assert any("broken.toml" in line and "gain" in line for line in e.value.errors)
    (site / "instruments" / "broken.toml").write_text('[pipeline]\nsn = -1\n')
    with pytest.raises(ConfigError) as e:
        load_profiles(load_settings(cfg))
    assert any("broken.toml" in line and "pipeline.sn" in line for line in e.value.errors)


def test_cli_config_check_and_run_refuse_an_unknown_profile(site):
    cfg = write_config(site, watch_profiles='"in/north" = "nosuchcam"')
    env = {k: v for k, v in os.environ.items() if k != "STDD_CONFIG"}
    r = subprocess.run([sys.executable, "-m", "stdd", "config", "check", str(cfg)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2 and 'watch.profiles."' in r.stderr and "nosuchcam" in r.stderr
    r = subprocess.run([sys.executable, "-m", "stdd", "--config", str(cfg), "run"], capture_output=True,
                       text=True, env=env, timeout=60, cwd=site)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "config error" in r.stderr and "nosuchcam" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- stdd process = the daemon

def test_stdd_process_chooses_like_the_daemon(site):
    cfg = write_config(site)
    files = [frame(site / "in/north/a.fits", "CAM-A"), frame(site / "in/south/b.fits", "CAM-A"),
             frame(site / "in/south/c.fits", "CAM-Z")]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("STDD_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", "stdd", "--config", str(cfg), "process", *map(str, files),
                        "--out", str(site / "out"), "--json"], capture_output=True, text=True, env=env,
                       timeout=120, cwd=site)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    res = {Path(x["file"]).name: x for x in json.loads(r.stdout)}
    got = {k: (v["instrument_profile"], v["instrument_profile_source"], v["gain"]) for k, v in res.items()}
    assert got == {"a.fits": ("cam-b", "folder", 7.0), "b.fits": ("cam-a", "header match", 3.0),
                   "c.fits": ("generic", "configured default", 1.5)}


# ---------------------------------------------------------------- the daemon, with a reload

def test_daemon_gives_each_folder_and_header_its_profile_and_reloads_profiles(site):
    write_config(site)
    d = DaemonProcess(site, config=None)
    staging = site / "staging"
    try:
        d.start(timeout=60)
        # the same camera header in two folders: the mapped folder wins in one, the header in the other
        for sub, seed in (("north", 1), ("south", 2)):
            p = frame(staging / f"{sub}.fits", "CAM-A", seed=seed)
            os.replace(p, site / "in" / sub / p.name)
        frames = d.wait_terminal(2, timeout=90)
        assert {f["state"] for f in frames} == {"done"}, frames

        # SIGHUP re-reads the profiles: camera A's gain changes
        (site / "instruments" / "cam-a.toml").write_text(
            textwrap.dedent(PROFILES["cam-a"]).replace("gain = 3.0", "gain = 4.5"))
        n_reloads = d.log().count("reload: ")
        d.send(signal.SIGHUP)
        d.wait(lambda: d.log().count("reload: ") > n_reloads, 20, "the reload")
        assert "loaded" in d.log().split("reload: ")[-1]
        p = frame(staging / "south2.fits", "CAM-A", seed=3)
        os.replace(p, site / "in" / "south" / p.name)
        frames = d.wait_terminal(3, timeout=60)
        assert {f["state"] for f in frames} == {"done"}, frames

        # a reload naming an unknown profile changes nothing and says which key is wrong
        write_config(site, watch_profiles='"in/south" = "nosuchcam"')
        d.send(signal.SIGHUP)
        d.wait(lambda: "nosuchcam" in d.log(), 20, "the failed reload")
        assert 'watch.profiles."' in d.log() and "the running config stays" in d.log()
    finally:
        code = d.stop()
    assert code == 0, d.log()[-3000:]

    results = {}
    for folder in d.result_dirs():
        r = json.loads((folder / "result.json").read_text())
        results[Path(r["source"]).name] = (r["instrument_profile"], r["instrument_profile_source"], r["gain"])
    assert results == {"north.fits": ("cam-b", "folder", 7.0), "south.fits": ("cam-a", "header match", 3.0),
                       "south2.fits": ("cam-a", "header match", 4.5)}

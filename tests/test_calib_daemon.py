"""A raw night dropped into the real daemon's incoming folder in camera order (issue 16): the
calibration frames are recorded with their type and never queued, the masters are built when the
set closes, and the light frames (held meanwhile) are calibrated with them. Real daemon process,
real stages, real SExtractor."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from daemon_harness import DaemonProcess

from stdd.synth.rawnight import make_raw_night

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
log_level = "DEBUG"
instruments_dir = "{instruments}"
[paths]
var = "var"
incoming = ["in"]
[watch]
settle_seconds = 0.3
rescan_minutes = 0.05
[pool]
workers = 2
stage_timeout_seconds = 300
[pipeline]
steps = ["inspect", "photometry"]
spatial_order = 0
[catalog]
files = ["{catalog}"]
[template]
source = "none"
[calibration]
library = "var/calib"
set_close_minutes = 0.05
hold_lights_minutes = 10
build_hour_utc = 3
[http]
enabled = false
"""


def test_raw_night_through_the_daemon(tmp_path):
    night = make_raw_night(tmp_path / "night", seed=5, size=512, n_bias=4, n_dark=3, n_flat=4, n_light=2,
                           n_stars=800)
    d = DaemonProcess(tmp_path, CONFIG.format(instruments=ROOT / "config" / "instruments", catalog=night.catalog))
    try:
        d.start()
        for path in night.files:  # camera order: biases, darks, flats, then the lights
            tmp = d.incoming / f".{path.name}.part"
            tmp.write_bytes(path.read_bytes())
            os.replace(tmp, d.incoming / path.name)
            time.sleep(0.1)
        n_cal = sum(k != "light" for k in night.kinds)
        frames = d.wait_terminal(2, timeout=240)
        d.wait(lambda: all(f["master"] for f in d.frames() if f["state"] == "calibration"), 30,
               "every calibration frame to be marked with its master")
        frames = d.frames()
        cal = [f for f in frames if f["state"] == "calibration"]
        assert len(cal) == n_cal and len(frames) == len(night.files)
        assert {f["kind"] for f in cal} == {"bias", "dark", "flat"}
        assert {f["imagetyp"] for f in cal} == {"Bias Frame", "Dark Frame", "Flat Field"}
        assert all(f["master"].startswith(f["kind"] + "-") for f in cal), [f["master"] for f in cal]
        assert all(f["attempts"] == 0 and f["result_dir"] is None for f in cal)  # never run as science
        spool = tmp_path / "var" / "spool"
        d.wait(lambda: not any(list(spool.glob(f"{f['sha256']}.*")) for f in cal), 10,
               "the calibration frames' spool copies to go once their masters are recorded")
        lights = [f for f in frames if f["kind"] == "light"]
        assert len(lights) == 2 and all(f["state"] == "done" for f in lights), [f["error"] for f in lights]
        library = tmp_path / "var" / "calib"
        index = json.loads((library / "index.json").read_text())["masters"]
        assert sorted(e["kind"] for e in index) == ["bias", "bpm", "dark", "flat"]
        for f in lights:
            res = json.loads((Path(f["result_dir"]) / "result.json").read_text())
            assert res["stages"]["calibrate"]["state"] == "done"
            assert set(res["calibration"]["masters"]) == {"bias", "dark", "flat", "bpm"}
            assert {m["file"] for m in res["calibration"]["masters"].values()} == {e["file"] for e in index}
            assert res["calibration"]["missing"] == []
        log = d.log()
        assert "held: calibration frames wait for their masters" in log
        assert "calibration: 4 master(s) from" in log
        assert "only 0 objects" not in log and not any(f["state"] == "failed" for f in frames)
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()

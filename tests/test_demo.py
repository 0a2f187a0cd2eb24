"""`stdd demo` — the README's first command — end to end: the real daemon on the demo field."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stdd.store import Database


@pytest.mark.slow
def test_demo_runs_the_daemon_and_every_frame_ends_as_expected(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stdd", "demo", "--dir", str(tmp_path), "--timeout", "600"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo: OK" in r.stdout
    db = Database(tmp_path / "var" / "stdd.sqlite", readonly=True)
    frames = {f["name"]: f for f in db.query("SELECT * FROM frames")}
    alerts = db.query("SELECT id FROM alerts")
    actions = db.query("SELECT state FROM actions")
    db.close()
    assert frames["frame_04.fits"]["state"] == "failed" and "truncated" in frames["frame_04.fits"]["error"]
    assert len(alerts) == 1 and [a["state"] for a in actions] == ["done"]
    truth = json.loads((tmp_path / "data" / "truth" / "frame_03.json").read_text())
    result_dir = next((tmp_path / "var" / "results").glob(f"{frames['frame_03.fits']['id']}-*"))
    result = json.loads((result_dir / "result.json").read_text())
    assert result["status"] == "done" and result["zp_err"] < 0.05
    # both injected transients are found by the subtraction
    assert len(result["candidates_sub"]) >= len(truth["transients"]) == 2
    for name in ("frame_01.fits", "frame_02.fits", "frame_03.fits"):
        assert frames[name]["state"] == "done" and frames[name]["alert_ids"]  # the alert covers the field
    assert len(list((tmp_path / "var" / "requests").glob("*.json"))) == 1

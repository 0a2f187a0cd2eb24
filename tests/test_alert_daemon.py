"""Alerts inside `stdd run`: a dropped notice is recorded and acted on once, and a frame that covers
its region jumps the queue and runs every stage. A real daemon process, a real notice, real files."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import socket

from daemon_harness import DaemonProcess, config_text
from pool_stages import write_frame

ALERTS = """
[alerts]
enabled = true
[alerts.kafka]
enabled = false
[[alerts.rules]]
missions = ["*"]
roles = ["observation"]
require_visible = false
priority = 77
actions = ["request"]
[alerts.actions.request]
kind = "request_file"
folder = "requests"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dropped_notice_acts_once_and_steers_the_queue(tmp_path, shared_data):
    frame = shared_data / "frames" / "feder_aspencg16_EYUMa_r_thumb256_wcs.fits"
    cfg = (config_text().replace("[paths]\n", '[paths]\nalert_drop = "alerts-in"\n')
           .replace("workers = 2", "workers = 1")
           .replace("[http]\nenabled = false", f"[http]\nport = {free_port()}") + ALERTS)
    d = DaemonProcess(tmp_path, cfg).start()
    try:
        notice = json.loads((shared_data / "gcn" / "json" / "ep_wxt_alert_EP240508.json").read_text())
        notice.update(ra=135.65, dec=49.79, trigger_time=datetime.now(timezone.utc).isoformat())
        drop = tmp_path / "alerts-in"
        drop.mkdir(exist_ok=True)
        (drop / "ep.json").write_text(json.dumps(notice))
        (drop / "ep-again.json").write_text(json.dumps(notice))  # the same notice twice: one action
        requests = tmp_path / "requests"
        d.wait(lambda: requests.is_dir() and len(list(requests.glob("*.json"))) >= 1, 60, "the observation request")

        # a frame elsewhere on the sky, and the frame on the alert's field
        assert d.cli("pause").returncode == 0
        write_frame(tmp_path / "in" / "elsewhere.fits", "x")
        d.wait(lambda: len(d.frames()) == 1, 30, "the first frame queued")
        shutil.copy(frame, tmp_path / "in" / "feder.fits")
        d.wait(lambda: len(d.frames()) == 2, 30, "the alert frame queued")
        d.cli("resume")
        rows = d.wait_terminal(2, 120)
    finally:
        d.stop()
    by_name = {r["name"]: r for r in rows}
    feder, other = by_name["feder.fits"], by_name["elsewhere.fits"]
    assert feder["priority"] == 77 and len(feder["alert_ids"]) == 1
    assert not other["alert_ids"] and other["priority"] == 0
    assert feder["started_at"] < other["started_at"]  # queued later, ran first
    result = json.loads((tmp_path / "var" / "results" / f"{feder['id']}-feder" / "result.json").read_text())
    assert list(result["stages"]) == ["inspect", "photometry", "transients", "subtraction"]
    assert len(list(requests.glob("*.json"))) == 1
    body = json.loads(next(requests.glob("*.json")).read_text())
    assert body["purpose"] == "observe" and body["decision"]["priority"] == 77
    assert (body["alert"]["ra"], body["alert"]["dec"]) == (135.65, 49.79)
    assert body["alert"]["id"] == feder["alert_ids"][0]

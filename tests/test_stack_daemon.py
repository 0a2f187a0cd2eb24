"""The daemon stacks a sequence by itself (`[stack]`): three dithered frames of one field and filter,
processed; once the sequence has closed, its frames' images are stacked in a child process and the
stack is queued as a new frame with the highest priority of its inputs, processed like any frame —
once, also when the job runs again."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from http_env import running_daemon, wait_for
from stdd.config.load import load_settings

synth = pytest.importorskip("stdd.synth")

CONFIG = """
[paths]
var = "var"
incoming = ["incoming"]
[pool]
workers = 1
[watch]
settle_seconds = 0.2
[http]
port = {port}
token_file = "var/http.token"
[pipeline]
steps = ["inspect", "photometry", "transients"]
[catalog]
source = "local"
files = ["{catalog}"]
[template]
source = "none"
[stack]
enabled = true
max_gap_minutes = 5
close_after_minutes = 0.05
min_frames = 3
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_closed_sequence_is_stacked_and_queued_once(tmp_path):
    sky = synth.default_starfield(4, width=384, height=384, n_stars=250)
    frames = []
    for i, (dra, ddec) in enumerate([(0.0, 0.0), (0.001, -0.001), (-0.001, 0.001)]):
        fp = synth.make_field(tmp_path / f"f{i}", seed=60 + i, width=384, height=384, ra=150 + dra, dec=30 + ddec,
                              starfield=sky, n_transients=0, n_cosmics=3, template=False,
                              catalog_name="catalog.fits" if i == 0 else None,
                              date_obs=f"2026-03-01T03:0{2 * i}:00")
        frames.append(fp)
    cfg = tmp_path / "stdd.toml"
    cfg.write_text(CONFIG.format(port=free_port(), catalog=(tmp_path / "f0" / "catalog.fits").resolve()))
    (tmp_path / "incoming").mkdir()
    settings = load_settings(cfg)
    async with running_daemon(settings, cfg) as (daemon, svc):
        assert "stacks" in daemon.scheduler.job_ids()
        for i, fp in enumerate(frames):
            (tmp_path / "incoming" / f"seq_{i}.fits").write_bytes(fp.frame.read_bytes())

        async def all_done(n):
            rows = await daemon.gate.run(daemon.frames.list)
            return len(rows) >= n and all(r["state"] in ("done", "failed") for r in rows)
        await wait_for(lambda: all_done(3), 180, "the three frames processed")
        rows = await daemon.gate.run(daemon.frames.list)
        assert all(r["state"] == "done" for r in rows), [r["error"] for r in rows]
        def prioritise():  # one input was urgent (an alert's region): the stack inherits its priority
            with daemon.db.write() as conn:
                conn.execute("UPDATE frames SET priority = 7 WHERE id = 2")
        await daemon.gate.run(prioritise)
        await asyncio.sleep(3.5)  # close_after_minutes = 3 s
        made = await daemon.scheduler.run("stacks")
        assert len(made) == 1 and sorted(made[0]["inputs"]) == [1, 2, 3] and made[0]["priority"] == 7
        again = await daemon.scheduler.run("stacks")
        assert again == []  # once per sequence
        sid = made[0]["frame_id"]
        await wait_for(lambda: all_done(4), 180, "the stack processed")
        frame = await daemon.gate.run(daemon.frames.get, sid)
        assert frame["state"] == "done", frame["error"]
        from pathlib import Path

        res = json.loads((Path(frame["result_dir"]) / "result.json").read_text())
        single = await daemon.gate.run(daemon.frames.get, 1)
        assert res["exptime"] == 180.0 and res["mag_limit"] > single["mag_limit"] + 0.4
        events = [e for e in daemon.events.recent(50) if e["kind"] == "stack.queued"]
        assert len(events) == 1

"""`stdd status|frames|submit|cancel|retry|pause|resume|alerts` as real subprocesses talking to
the real daemon over HTTP (token from the token file), and what they say when it is not running."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import pytest

from http_env import running_daemon, wait_for, write_frame
from stdd.config.load import load_settings

CONFIG = """
[paths]
var = "var"
incoming = ["incoming"]
[pool]
workers = 2
kill_grace_seconds = 1.0
shutdown_grace_seconds = 2.0
stage_functions = {{ inspect = "pool_stages:behave", photometry = "pool_stages:quick" }}
[pipeline]
steps = ["inspect", "photometry"]
[watch]
settle_seconds = 0.2
[http]
port = {port}
token_file = "var/http.token"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("STDD_HTTP_TOKEN", raising=False)
    path = tmp_path / "stdd.toml"
    port = free_port()
    path.write_text(CONFIG.format(port=port))
    return path, port


async def stdd(config, *args) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STDD_HTTP_TOKEN", "STDD_CONFIG")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stdd", "--config", str(config), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_without_a_daemon(config, tmp_path):
    path, port = config
    code, out, err = await stdd(path, "status")
    assert code == 0 and "daemon: not running" in out
    assert f"daemon is not running at http://127.0.0.1:{port}" in err
    code, out, _ = await stdd(path, "status", "--json")
    data = json.loads(out)
    assert data["daemon"] == "not running" and data["frames"] == {s: 0 for s in
                                                                   ("queued", "running", "done", "failed", "cancelled")}
    code, out, _ = await stdd(path, "frames", "--json")
    assert code == 0 and json.loads(out) == []
    for args in (("submit", str(tmp_path / "x.fits")), ("cancel", "1"), ("retry", "1"), ("pause",), ("resume",)):
        code, out, err = await stdd(path, *args)
        assert code == 1 and f"error: daemon is not running at http://127.0.0.1:{port}" in err, args


async def test_cli_against_the_running_daemon(config, tmp_path):
    path, port = config
    settings = load_settings(path)
    async with running_daemon(settings, config_path=path) as (daemon, svc):
        assert svc.url == f"http://127.0.0.1:{port}"
        frame = write_frame(tmp_path / "incoming" / "cli.fits", 1.0, T_ID="cli")
        code, out, err = await stdd(path, "submit", str(frame), "--json")
        assert code == 0, err
        submitted = json.loads(out)
        fid = submitted["frame"]["id"]  # (created here, or just before by the folder watcher)

        async def done():
            c, o, _ = await stdd(path, "frames", "--json", "--state", "done")
            return any(f["id"] == fid for f in json.loads(o))
        await wait_for(done, 40, "the frame done, seen through stdd frames")

        code, out, _ = await stdd(path, "status", "--json")
        status = json.loads(out)
        assert code == 0 and status["daemon"] == "running" and status["frames"]["done"] == 1
        assert status["pid"] == os.getpid() and status["endpoint"] == svc.url
        code, out, _ = await stdd(path, "frames", "--json")
        rows = json.loads(out)
        assert [r["id"] for r in rows] == [fid]
        assert {"id", "path", "sha256", "state", "error"} <= set(rows[0]) and rows[0]["sha256"] == \
            submitted["frame"]["sha256"]
        code, out, _ = await stdd(path, "submit", str(frame))
        assert code == 0 and f"already known as frame {fid}" in out

        code, out, err = await stdd(path, "cancel", str(fid))
        assert code == 1 and "already done" in err and "409" in err
        code, out, err = await stdd(path, "retry", "4242")
        assert code == 1 and "no frame 4242" in err
        code, out, err = await stdd(path, "submit", str(tmp_path / "stdd.toml"))
        assert code == 1 and "not under an allowed root" in err

        code, out, _ = await stdd(path, "pause", "--reason", "clouds")
        assert code == 0 and "paused: clouds" in out and daemon.state == "paused"
        code, out, _ = await stdd(path, "status")
        assert "paused: clouds" in out
        code, out, _ = await stdd(path, "retry", str(fid), "--from", "photometry")
        assert code == 0 and f"frame {fid}: queued (from photometry)" in out
        code, out, _ = await stdd(path, "resume")
        assert code == 0 and out.strip() == "resumed" and daemon.state == "running"
        code, out, _ = await stdd(path, "alerts", "--json")
        assert code == 0 and json.loads(out) == []

        running = write_frame(tmp_path / "incoming" / "slow.fits", 2.0, T_ID="slow", T_SLEEP=60)
        code, out, _ = await stdd(path, "submit", str(running), "--json")
        slow = json.loads(out)["frame"]["id"]
        await wait_for(lambda: slow in daemon.pool.running_ids(), 30, "the slow frame running")
        code, out, _ = await stdd(path, "cancel", str(slow))
        assert code == 0 and f"frame {slow}: cancelling" in out

        (tmp_path / "var" / "http.token").write_text("not-the-token\n")
        code, out, err = await stdd(path, "pause")
        assert code == 1 and "401" in err and daemon.state == "running"

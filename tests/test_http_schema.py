"""A bounded schemathesis run against /openapi.json of the running daemon: no 5xx, and every
answer has a documented status, content type and body shape."""
from __future__ import annotations

import asyncio
import sys

import pytest

from http_env import make_settings, running_daemon, write_frame

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def test_schemathesis_finds_no_server_errors(tmp_path):
    pytest.importorskip("schemathesis")
    settings = make_settings(tmp_path)
    for i in range(2):  # something to list, read and retry
        write_frame(tmp_path / "incoming" / f"s{i}.fits", float(i), T_ID=f"s{i}")
    async with running_daemon(settings) as (daemon, svc):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "run", svc.url + "/openapi.json",
            "-H", f"Authorization: Bearer {svc.token}", "--checks", CHECKS,
            "--max-examples", "15", "--max-time", "10", "--seed", "7", "--generation-database", "none",
            "--workers", "1", "--request-timeout", "10", "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert "passed" in text and "Server error" not in text
        status = daemon.state
    assert status in ("running", "paused")

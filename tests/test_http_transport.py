"""The endpoint on a unix socket with closed reads, the CLI client over that socket, and a
health check that goes down for real (the folder watcher dead, and its folder replaced by a file
so the daemon cannot start it again) → 503, and back to 200 once the daemon can."""
from __future__ import annotations

import asyncio
import stat

import aiohttp
import pytest

from http_env import make_settings, running_daemon, wait_for
from stdd.http.client import ApiError, Client


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("STDD_HTTP_TOKEN", raising=False)
    return make_settings(tmp_path, http={"unix_socket": "var/stdd.sock", "open_reads": False})


async def test_unix_socket_closed_reads_and_health_503(settings, tmp_path):
    sock = tmp_path / "var" / "stdd.sock"
    async with running_daemon(settings) as (daemon, svc):
        assert svc.url == f"unix:{sock}"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        conn = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.get("http://localhost/status") as r:
                assert r.status == 401  # reads are closed by config
            async with s.get("http://localhost/status", headers={"Authorization": f"Bearer {svc.token}"}) as r:
                assert r.status == 200 and (await r.json())["state"] == "running"

        client = Client(settings.http)  # the CLI's client: token from the file, over the socket
        assert client.address == f"unix:{sock}"
        # the client is synchronous: run it in a thread while this loop serves
        status = await asyncio.to_thread(client.get, "/status")
        assert status["frames"]["queued"] == 0
        health = await asyncio.to_thread(client.get, "/health")
        assert health["ok"] is True and health["checks"]["watcher"]["ok"] is True

        incoming = settings.paths.incoming[0]
        incoming.rmdir()
        incoming.write_text("not a folder")  # the watcher cannot be started again on it
        daemon.intake.watcher.stop()  # the watcher dies
        with pytest.raises(ApiError) as e:
            await asyncio.to_thread(client.get, "/health")
        assert e.value.status == 503
        assert e.value.body["checks"]["watcher"] == {"ok": False, "alive": False, "mode": "inotify",
                                                     "detail": "the folder watcher is not running"}
        assert e.value.body["checks"]["database"]["ok"] is True

        async def metric_says_down():
            text = await asyncio.to_thread(client.get, "/metrics")
            return 'stdd_health_check{check="watcher"} 0.0' in text
        await wait_for(metric_says_down, 10, "the watcher check in /metrics")

        incoming.unlink()  # the folder is back: the intake loop starts a new watcher by itself
        async def healthy_again():
            try:
                return (await asyncio.to_thread(client.get, "/health"))["checks"]["watcher"]["ok"] is True
            except ApiError:
                return False
        await wait_for(healthy_again, 40, "the watcher to be started again")

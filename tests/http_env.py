"""Helpers for the HTTP endpoint tests: small FITS frames, settings in a temp folder, and the
real daemon running with its real endpoint in the test's event loop."""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
from astropy.io import fits

from stdd.config.load import settings_from_dict
from stdd.daemon import Daemon
from stdd.http import HttpService


def write_frame(path: Path, value: float = 0.0, size: int = 16, **header: Any) -> Path:
    """A small whole FITS file whose header steers the test stages (T_ID, T_SLEEP, T_FAIL, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = fits.Header()
    for key, v in header.items():
        h[key] = v
    fits.PrimaryHDU(np.full((size, size), value, np.float32), header=h).writeto(path, overwrite=True)
    return path


def make_settings(tmp: Path, *, stages: dict[str, str] | None = None, steps: list[str] | None = None,
                  workers: int = 2, http: dict | None = None, extra: dict | None = None):
    data: dict[str, Any] = {
        "paths": {"var": "var", "incoming": ["incoming"], "work": "var/work", "results": "var/results",
                  "quarantine": "var/quarantine", "archive": "var/archive", "database": "var/stdd.sqlite",
                  "cache": "var/cache"},
        "pool": {"workers": workers, "retry_backoff_seconds": 0.5, "kill_grace_seconds": 1.0,
                 "shutdown_grace_seconds": 2.0,
                 "stage_functions": stages or {"inspect": "pool_stages:behave", "photometry": "pool_stages:quick"}},
        "pipeline": {"steps": steps or ["inspect", "photometry"]},
        "watch": {"settle_seconds": 0.2},
        "http": {"port": 0, "token_file": "var/http.token", **(http or {})},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return settings_from_dict(data, base=tmp)


@contextlib.asynccontextmanager
async def running_daemon(settings, config_path: Path | None = None, token: str | None = None,
                         services: tuple = ()) -> AsyncIterator[tuple[Daemon, HttpService]]:
    """The real daemon with its endpoint on a free port, stopped (and checked) at the end."""
    svc = HttpService(token=token)
    daemon = Daemon(settings, config_path=config_path, services=[*services, svc])
    task = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + 30
    while svc.url is None:
        if task.done():
            task.result()  # raises what stopped it
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not start its endpoint within 30 s")
        await asyncio.sleep(0.05)
    try:
        yield daemon, svc
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 60) == 0


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class AlertServiceBeside:
    """The real AlertService running beside the daemon, as the daemon's alert wiring runs it
    (own connection; notices handled in threads), with the real Kafka intake when asked."""

    name = "alerts"

    def __init__(self, kafka: bool = False):
        self.service = None
        self.db = None
        self.kafka = None
        self.with_kafka = kafka

    async def start(self, daemon) -> None:
        from stdd.alerts import AlertService, KafkaIntake
        from stdd.store import Database

        self.db = Database(daemon.db_path)
        self.service = AlertService(self.db, daemon.settings)
        if self.with_kafka:
            self.kafka = KafkaIntake(daemon.settings, self.service.handle)
            self.kafka.start()

    async def stop(self) -> None:
        if self.kafka is not None:
            await asyncio.to_thread(self.kafka.stop)
        if self.service is not None:
            await asyncio.to_thread(self.service.close)
        if self.db is not None:
            self.db.close()


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


async def chromium_dom(url: str, profile: Path, budget_ms: int = 3000, timeout: float = 60.0) -> str:
    """The page's DOM after its scripts ran, from headless Chromium (run without blocking the
    loop that serves the page)."""
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        import pytest

        pytest.skip("chromium is not installed (Debian package 'chromium'; scripts/setup.sh test installs it)")
    proc = await asyncio.create_subprocess_exec(
        exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return out.decode()

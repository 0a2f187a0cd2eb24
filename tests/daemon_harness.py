"""Running `stdd run` as a real process in a temp folder, for the daemon tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stdd.store import Database, FrameStore

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

BASE_CONFIG = """\
log_level = "DEBUG"
[paths]
var = "var"
incoming = ["in"]
work = "var/work"
results = "var/results"
quarantine = "var/quarantine"
archive = "var/archive"
database = "var/stdd.sqlite"
cache = "var/cache"
[watch]
settle_seconds = {settle}
incomplete_seconds = 3.0
rescan_minutes = 0.05
[pool]
workers = 2
max_attempts = 4
retry_backoff_seconds = 0.2
kill_grace_seconds = 1.0
shutdown_grace_seconds = 3.0
stage_timeout_seconds = 60
stage_functions = {{inspect = "pool_stages:behave", photometry = "pool_stages:quick"}}
{pool_extra}
[pipeline]
steps = ["inspect", "photometry"]
[http]
enabled = false
"""


def config_text(settle: float = 0.3, pool_extra: str = "") -> str:
    return BASE_CONFIG.format(settle=settle, pool_extra=pool_extra)


class DaemonProcess:
    def __init__(self, root: Path, config: str | None = None, env: dict | None = None):
        self.root = root
        self.config = root / "stdd.toml"
        if config is not None or not self.config.exists():
            self.config.write_text(config if config is not None else config_text())
        self.incoming = root / "in"
        self.results = root / "var" / "results"
        self.quarantine = root / "var" / "quarantine"
        self.db_path = root / "var" / "stdd.sqlite"
        self.log_path = root / "daemon.log"
        self.env = {**os.environ, "PYTHONPATH": f"{TESTS}:{ROOT}", **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: subprocess.Popen | None = None

    # -- process -----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "DaemonProcess":
        self.log_fh = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "stdd", "--config", str(self.config), "run"],
                                     stdout=self.log_fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        self.wait(lambda: self.status().get("state") == "running" and self.status().get("pid") == self.proc.pid,
                  timeout, "the daemon to be ready")
        return self

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_fh.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log_fh.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # -- state -------------------------------------------------------------------------
    def status(self) -> dict:
        try:
            return json.loads((self.db_path.parent / "stdd.daemon.json").read_text())
        except (OSError, ValueError):
            return {}

    def frames(self) -> list[dict]:
        if not self.db_path.exists():
            return []
        with Database(self.db_path, readonly=True) as db:
            return FrameStore(db).list(limit=100000)

    def stage_runs(self, frame_id: int) -> list[dict]:
        with Database(self.db_path, readonly=True) as db:
            return FrameStore(db).stage_runs(frame_id)

    def wait(self, cond, timeout: float = 60, what: str = "a condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) waiting for {what}:\n"
                                     + self.log()[-3000:])
            try:
                if cond():
                    return
            except Exception:  # the database may be mid-creation
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n" + self.log()[-3000:])

    def wait_terminal(self, n: int, timeout: float = 60) -> list[dict]:
        self.wait(lambda: sum(f["state"] in ("done", "failed", "cancelled") for f in self.frames()) >= n,
                  timeout, f"{n} frames to finish")
        return self.frames()

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stdd", "--config", str(self.config), *args],
                              capture_output=True, text=True, env=self.env, timeout=60)

    def result_dirs(self) -> list[Path]:
        """The frames' current result folders (not the versions kept beside them, `<name>.versions`)."""
        return sorted(p for p in self.results.iterdir() if p.is_dir() and p.name[0].isdigit()
                      and not p.name.endswith(".versions"))

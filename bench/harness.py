"""A real daemon for the benchmark: `stdd run` in a subprocess with a temp config, fed through its
incoming folder.

Built on the daemon tests' own harness (tests/daemon_harness.py: start, wait until ready, read
frames, stop with SIGTERM), loaded from the checkout, with the benchmark's config: the real
stages (no test stage functions), a field's local catalogue and template, the chosen number of
workers and settle window, and the HTTP endpoint on a free localhost port with a known token.
Files are dropped the way a camera writes them: opened in the incoming folder, written, closed;
the drop time is taken right after the close.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .common import ROOT, Unavailable, descendants, hwm_mb, session_mb, tree_rss_mb
from .inputs import Field

TOKEN_ENV = "STDD_BENCH_HTTP_TOKEN"


def _load_test_harness():
    path = ROOT / "tests" / "daemon_harness.py"
    if not path.is_file():
        raise Unavailable(f"the daemon test harness {path} is not in this checkout")
    spec = importlib.util.spec_from_file_location("stdd_bench_daemon_harness", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_text(field: Field | None, *, workers: int, settle: float, http_port: int | None,
                log_level: str = "INFO", extra: str = "", pool: str = "") -> str:
    http = (f"[http]\nenabled = true\nhost = \"127.0.0.1\"\nport = {http_port}\ntoken_env = \"{TOKEN_ENV}\"\n"
            if http_port else "[http]\nenabled = false\n")
    return (
        f"offline = true\nlog_level = \"{log_level}\"\n"
        "[paths]\nvar = \"var\"\nincoming = [\"in\"]\nwork = \"var/work\"\nresults = \"var/results\"\n"
        "quarantine = \"var/quarantine\"\narchive = \"var/archive\"\ndatabase = \"var/stdd.sqlite\"\n"
        "cache = \"var/cache\"\n"
        f"[watch]\nsettle_seconds = {settle}\n"
        f"[pool]\nworkers = {workers}\nmax_attempts = 1\nkill_grace_seconds = 2.0\nshutdown_grace_seconds = 5.0\n"
        + pool
        + http + (field.config_toml() if field else "") + extra
    )


class BenchDaemon:
    """`with BenchDaemon(root, field, workers=1) as d: t = d.drop(frame); d.wait_terminal(1)`."""

    def __init__(self, root: Path, field: Field | None, *, workers: int, settle: float = 0.5, http: bool = False,
                 extra: str = "", pool: str = ""):
        self.harness_mod = _load_test_harness()
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port() if http else None
        self.token = secrets.token_hex(16)
        self.settle = settle
        self.workers = workers
        text = config_text(field, workers=workers, settle=settle, http_port=self.port, extra=extra, pool=pool)
        self.proc_h = self.harness_mod.DaemonProcess(root, config=text, env={TOKEN_ENV: self.token})
        self.incoming = self.proc_h.incoming
        self.drops: dict[str, float] = {}

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> "BenchDaemon":
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.t_start = time.time()
        self.proc_h.start(timeout=timeout)
        self.ready_s = time.time() - self.t_start
        if self.port:
            self.proc_h.wait(self._http_up, 60, "the HTTP endpoint")
        return self

    def _http_up(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self, timeout: float = 60) -> int:
        return self.proc_h.stop(timeout=timeout)

    def __enter__(self) -> "BenchDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except Exception:
            self.proc_h.kill()

    @property
    def pid(self) -> int:
        return self.proc_h.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 3000) -> str:
        return self.proc_h.log()[-n:]

    # -- input ------------------------------------------------------------------------------
    def drop(self, src: Path, name: str | None = None) -> float:
        """Write `src` into the incoming folder as a camera would; returns the time it was closed."""
        name = name or src.name
        dst = self.incoming / name
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
        t = time.time()
        self.drops[str(dst)] = t
        return t

    # -- state ------------------------------------------------------------------------------
    def frames(self) -> list[dict]:
        return self.proc_h.frames()

    def wait(self, cond, timeout: float, what: str) -> None:
        self.proc_h.wait(cond, timeout, what)

    def wait_terminal(self, n: int, timeout: float) -> list[dict]:
        return self.proc_h.wait_terminal(n, timeout)

    def wait_queued(self, paths: list[str], timeout: float) -> list[dict]:
        want = set(paths)
        self.wait(lambda: want <= {f["path"] for f in self.frames()}, timeout, f"{len(want)} frames recorded")
        return [f for f in self.frames() if f["path"] in want]

    def result_written(self, frame: dict) -> float | None:
        """When the frame's result.json was written (its mtime), else the recorded finish time."""
        rd = frame.get("result_dir")
        if rd:
            p = Path(rd) / "result.json"
            if not p.is_absolute():
                p = self.root / p
            try:
                return p.stat().st_mtime
            except OSError:
                pass
        return frame.get("finished_at")

    def result(self, frame: dict) -> dict | None:
        rd = frame.get("result_dir")
        if not rd:
            return None
        p = Path(rd) / "result.json"
        if not p.is_absolute():
            p = self.root / p
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def status(self) -> dict:
        return self.proc_h.status()

    def pool_warm(self) -> bool | None:
        """The pool's warm fork server is up (from the daemon's status file, rewritten every 5 s)."""
        return (self.status().get("pool") or {}).get("warm")

    def wait_warm(self, warm: bool = True, timeout: float = 120) -> None:
        self.wait(lambda: self.pool_warm() is warm, timeout, f"the pool's fork server {'up' if warm else 'stopped'}")

    # -- memory -----------------------------------------------------------------------------
    def tree_rss(self) -> dict[str, Any]:
        return tree_rss_mb(self.pid)

    def frame_processes(self) -> list[int]:
        """Frame processes: the daemon's descendants that lead their own session."""
        out = []
        for p in descendants(self.pid):
            if p == self.pid:
                continue
            try:
                if os.getsid(p) == p:
                    out.append(p)
            except OSError:
                pass
        return out


class FrameMemorySampler:
    """Samples, every `interval` s, each frame process's session (the process and the programs it
    runs): the peak of their summed RSS and the frame process's own VmHWM, per frame process."""

    def __init__(self, daemon: BenchDaemon, interval: float = 0.1):
        self.daemon = daemon
        self.interval = interval
        self.peaks: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-mem", daemon=True)

    def __enter__(self) -> "FrameMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for leader in self.daemon.frame_processes():
                    total = session_mb(leader)
                    own = hwm_mb(leader)
                    pk = self.peaks.setdefault(leader, {"session_mb": 0.0, "hwm_mb": 0.0})
                    pk["session_mb"] = max(pk["session_mb"], round(total, 1))
                    if own is not None:
                        pk["hwm_mb"] = max(pk["hwm_mb"], round(own, 1))
            except Exception:  # a process ended between listing and reading: next round
                continue

    def worst(self) -> float | None:
        vals = [max(v["session_mb"], v["hwm_mb"]) for v in self.peaks.values()]
        return max(vals) if vals else None

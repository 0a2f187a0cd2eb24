"""Faults between the daemon's parts, on the real daemon process: another process holding the
database locked past the busy timeout, a full disk under the database, a dispatcher that
raises and one that hangs (fault points, stdd/faults.py), with the systemd watchdog emulated."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, config_text
from pool_stages import write_frame
from stdd.store import Database, EventLog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_http(text: str, port: int) -> str:
    return text.replace("[http]\nenabled = false", f"[http]\nenabled = true\nport = {port}\n"
                        'token_file = "var/http.token"')


def get_health(port: int, timeout: float = 5.0) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return status, json.loads(body), time.monotonic() - t0


def hold_lock(db_path: Path, seconds: float) -> subprocess.Popen:
    """A second process holding BEGIN EXCLUSIVE on the database (a backup, a sqlite3 shell)."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "c.execute('COMMIT')\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(db_path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def daemon_text(extra: str = "", settle: float = 0.3) -> str:
    return config_text(settle) + "[daemon]\n" + extra


class WatchdogListener:
    """systemd's side of sd_notify: a datagram socket, drained on a thread, timing the pings."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = str(path)
        self.pings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.sock.recv(4096) == b"WATCHDOG=1":
                    self.pings.append(time.monotonic())
            except socket.timeout:
                continue
            except OSError:
                return

    def between(self, t0: float, t1: float) -> list[float]:
        return [t for t in self.pings if t0 <= t <= t1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_a_database_locked_past_the_busy_timeout_loses_nothing(tmp_path):
    port = free_port()
    # a stall time shorter than the lock: the loops wait beating, so the watchdog must go on
    text = daemon_text("db_busy_timeout_seconds = 1.0\nintake_retry_seconds = 1.0\nloop_stall_seconds = 8.0\n")
    d = DaemonProcess(tmp_path, with_http(text, port), env={"WATCHDOG_USEC": "1500000"})
    watchdog = WatchdogListener(tmp_path / "notify.sock")
    d.env["NOTIFY_SOCKET"] = watchdog.path
    lock = None
    try:
        d.start()
        pid = d.proc.pid
        write_frame(d.incoming / "first.fits", "first")
        d.wait_terminal(1, 30)
        # a frame that is running when the lock begins and finishes while it is held
        write_frame(d.incoming / "slow.fits", "slow", T_SLEEP=3)
        d.wait(lambda: any(f["name"] == "slow.fits" and f["state"] == "running" for f in d.frames()), 20,
               "the slow frame to start")
        lock = hold_lock(d.db_path, 12)
        t_lock = time.monotonic()
        for name in ("b", "c", "d"):  # files arriving during the lock
            write_frame(d.incoming / f"{name}.fits", name)
        time.sleep(4)  # past the busy timeout: the intake's and the recorder's writes are refused
        status, body, seconds = get_health(port)
        assert seconds < 1.0, f"/health took {seconds:.2f} s during the lock"
        assert status == 503 and not body["ok"]
        text = json.dumps(body["checks"])
        assert "locked" in text, body
        assert lock.wait(30) == 0
        released = time.monotonic()
        assert released - t_lock > 10
        pings = watchdog.between(t_lock, released)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert len(pings) > 10 and max(gaps) < 3, f"the watchdog ping stopped during the lock: {gaps}"
        frames = d.wait_terminal(5, 60)
        assert time.monotonic() - released < 60
        assert {f["name"]: f["state"] for f in frames} == {n: "done" for n in
                                                          ("first.fits", "slow.fits", "b.fits", "c.fits", "d.fits")}
        slow = next(f for f in frames if f["name"] == "slow.fits")
        assert slow["attempts"] == 1, "the slow frame ran twice"
        assert [r["state"] for r in d.stage_runs(slow["id"])] == ["done", "done"]
        assert d.proc.poll() is None and d.proc.pid == pid, "the daemon restarted"
        d.wait(lambda: get_health(port)[0] == 200, 20, "/health to be 200 again")
        log = d.log()
        assert "database locked" in log and "trying again" in log and "written after" in log
        assert "not pinging systemd" not in log
        assert d.stop() == 0
    finally:
        watchdog.close()
        if lock is not None and lock.poll() is None:
            lock.kill()
        if d.proc and d.proc.poll() is None:
            d.kill()


def _fill(path: Path) -> None:
    """Take every free byte of the file system `path` is on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "statedisk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_under_the_database_loses_nothing(tmp_path, small_disk):
    port = free_port()
    text = with_http(daemon_text("intake_retry_seconds = 1.0\n"), port)
    text = text.replace('database = "var/stdd.sqlite"', f'database = "{small_disk}/stdd.sqlite"')
    d = DaemonProcess(tmp_path, text)
    d.db_path = small_disk / "stdd.sqlite"
    filler = small_disk / "filler"
    try:
        d.start()
        write_frame(d.incoming / "before.fits", "before")
        d.wait_terminal(1, 30)
        write_frame(d.incoming / "slow.fits", "slow", T_SLEEP=3)
        d.wait(lambda: any(f["name"] == "slow.fits" and f["state"] == "running" for f in d.frames()), 20,
               "the slow frame to start")
        t_full = time.monotonic()
        # an empty WAL (as after a checkpoint), then no byte left: the next write needs space
        import sqlite3
        c = sqlite3.connect(d.db_path, isolation_level=None)
        for _ in range(50):
            if c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                break
            time.sleep(0.1)
        c.close()
        _fill(filler)
        for name in ("x", "y"):
            write_frame(d.incoming / f"{name}.fits", name)
        deadline = time.monotonic() + 20
        while True:
            status, body, seconds = get_health(port)
            if status == 503 and "disk full" in json.dumps(body["checks"]):
                break
            assert time.monotonic() < deadline, f"/health never said 'disk full': {body}"
            time.sleep(0.5)
        assert seconds < 1.0
        time.sleep(max(0.0, 6 - (time.monotonic() - t_full)))  # the slow frame ends while the disk is full
        filler.unlink()
        frames = d.wait_terminal(4, 60)
        assert sorted(f["name"] for f in frames if f["state"] == "done") == \
            ["before.fits", "slow.fits", "x.fits", "y.fits"], [(f["name"], f["state"], f["error"]) for f in frames]
        assert next(f for f in frames if f["name"] == "slow.fits")["attempts"] == 1
        log = d.log()
        assert "could not be recorded (disk full" in log and "disk full" in log.split("retrying until it is written")[0]
        with Database(d.db_path, readonly=True) as db:
            assert db.query_one("PRAGMA integrity_check")["integrity_check"] == "ok"
        assert d.stop() == 0
    finally:
        if d.proc and d.proc.poll() is None:
            d.kill()


def test_a_dispatcher_that_raises_recovers(tmp_path):
    d = DaemonProcess(tmp_path, daemon_text(), env={"STDD_FAULTS": "daemon.dispatch=once:raise"})
    try:
        d.start()
        for name in ("a", "b"):
            write_frame(d.incoming / f"{name}.fits", name)
        frames = d.wait_terminal(2, 40)
        assert all(f["state"] == "done" for f in frames)
        assert "loop dispatch: iteration failed (FaultInjected: fault injected at daemon.dispatch)" in d.log()
        with Database(d.db_path, readonly=True) as db:
            kinds = [(e["kind"], e["message"]) for e in EventLog(db).recent(200)]
        assert ("daemon.loop_error", "dispatch: FaultInjected: fault injected at daemon.dispatch") in kinds
        assert d.stop() == 0
    finally:
        if d.proc and d.proc.poll() is None:
            d.kill()


def test_a_hung_dispatcher_stops_the_watchdog_ping(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    d = DaemonProcess(tmp_path, daemon_text("loop_stall_seconds = 2.0\n"),
                      env={"STDD_FAULTS": "daemon.dispatch=hang", "WATCHDOG_USEC": "600000"})
    d.env["NOTIFY_SOCKET"] = str(sock_path)
    pings: list[float] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = sock.recv(4096).decode()
            except socket.timeout:
                continue
            if msg == "WATCHDOG=1":
                pings.append(time.monotonic())

    try:
        d.start()
        drain(3)
        assert len(pings) >= 5, "no watchdog pings while healthy"
        write_frame(d.incoming / "a.fits", "a")  # its claim hangs
        t_frame = time.monotonic()
        drain(12)
        last = pings[-1]
        assert last - t_frame < 8, "the pings went on with the dispatcher hung"
        assert time.monotonic() - last > 3
        assert "watchdog: loop dispatch stalled; not pinging systemd" in d.log()
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
        sock.close()

"""The systemd unit (systemd-analyze verify where available) and `stdd run` as systemd runs
it: a real notify socket, a watchdog interval, and journald-style log lines."""
from __future__ import annotations

import configparser
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, config_text
from pool_stages import write_frame

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "stdd.service"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    return cp


def test_unit_has_what_the_issue_asks():
    s = unit()["Service"]
    assert s["Type"] == "notify" and int(s["WatchdogSec"]) > 0 and s["Restart"] == "on-failure"
    assert "kill -HUP $MAINPID" in s["ExecReload"] and s["User"] == "stdd"
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict" and s["PrivateTmp"] == "yes"
    assert "/var/lib/stdd" in s["ReadWritePaths"] and s["ExecStart"].endswith(" run")
    assert (ROOT / "systemd" / "stdd.sysusers.conf").read_text().count("u stdd") == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_passes(tmp_path):
    # the unit names /opt/stdd; point it at this checkout's stdd so the command exists
    text = UNIT.read_text().replace("/opt/stdd/.venv/bin/stdd", str(ROOT / ".venv" / "bin" / "stdd"))
    (tmp_path / "stdd.service").write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "stdd.service")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_run_under_a_systemd_like_environment(tmp_path):
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain(until=None, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                if until is None:
                    return
            if until is not None and until():
                return
        if until is not None:
            raise AssertionError(f"notify messages: {messages}")

    d = DaemonProcess(tmp_path, config_text(), env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "900000",
                                                    "JOURNAL_STREAM": "8:1234"})
    d.env["NOTIFY_SOCKET"] = addr
    try:
        d.start()
        drain(lambda: any("READY=1" in m for m in messages))
        drain(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 3, timeout=5)
        write_frame(d.incoming / "a.fits", "a")
        d.wait_terminal(1, 60)  # the warm fork server may take 10 s to start on a loaded machine
        d.send(signal.SIGHUP)
        drain(lambda: any(m.startswith("RELOADING=1") for m in messages), timeout=10)
        assert d.stop() == 0
        drain()
    finally:
        if d.proc and d.proc.poll() is None:
            d.kill()
        sock.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=running" in ready and f"MAINPID={d.proc.pid}" in ready
    assert any(m.startswith("STOPPING=1") for m in messages)
    lines = d.log().splitlines()
    assert any(line.startswith("<6>stdd.daemon: frame=1 done") for line in lines)
    assert all(line.startswith("<") for line in lines if line.strip()), lines[:5]

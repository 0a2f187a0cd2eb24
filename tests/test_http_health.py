"""/health answers within a second, honestly: against the real `stdd run` process while a
second process holds the SQLite file with `BEGIN EXCLUSIVE` (the database check fails naming
the lock; the endpoint still answers at once); 200 with the demo's own config (alerts from the
drop folder only, Kafka off) and with alerts from the drop folder in-process; the problems the
database check names, from real SQLite errors; and the daemon's own `health()` merged in when
the daemon has one. The Kafka case is in test_http_alert_stream.py, alerts disabled in
test_http_routes.py."""
from __future__ import annotations

import errno
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from daemon_harness import ROOT, DaemonProcess, config_text
from http_env import AlertServiceBeside, make_settings, running_daemon
from pool_stages import write_frame
from stdd.daemon import Daemon
from stdd.demo import DEMO_CONFIG
from stdd.http.dbprobe import describe_error, probe
from stdd.http.health import as_check
from stdd.http.offloop import OffLoop, Overdue

# a second process: takes the whole file, says so, and keeps it until its stdin closes
HOLD_EXCLUSIVE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_health(url: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, json.loads(raw), time.monotonic() - t0


def with_http(config: str, port: int) -> str:
    return config.replace("[http]\nenabled = false\n", f'[http]\nport = {port}\ntoken_file = "var/http.token"\n')


def assert_every_check_says_why(body: dict) -> None:
    for name, check in body["checks"].items():
        assert isinstance(check["ok"], bool) and isinstance(check["detail"], str) and check["detail"], (name, check)
    assert body["ok"] is all(c["ok"] for c in body["checks"].values())


def test_health_answers_within_a_second_while_another_process_holds_the_database(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    d = DaemonProcess(tmp_path, config=with_http(config_text(), port)).start()
    try:
        status, body, _ = get_health(url)
        assert status == 200 and body["checks"]["database"]["ok"] is True, body
        assert_every_check_says_why(body)

        holder = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(d.db_path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            answers = [get_health(url) for _ in range(3)]
            with ThreadPoolExecutor(4) as pool:  # several at once share one check
                answers += list(pool.map(lambda _: get_health(url), range(4)))
        finally:
            holder.stdin.close()
            holder.wait(10)
        for status, body, seconds in answers:
            assert seconds < 1.0, f"/health took {seconds:.2f} s"
            db = body["checks"]["database"]
            assert status == 503 and body["ok"] is False, body
            assert db["ok"] is False and db["problem"] == "database locked", db
            assert db["detail"].startswith("database locked") and db["since"].endswith("Z"), db
            assert body["checks"]["workers"]["ok"] and body["checks"]["watcher"]["ok"]  # in memory: unaffected
            assert_every_check_says_why(body)

        deadline = time.monotonic() + 10
        while True:  # the lock is gone: healthy again
            status, body, seconds = get_health(url)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200 and body["checks"]["database"]["ok"] is True and seconds < 1.0, body
    finally:
        assert d.stop() == 0, d.log()[-3000:]


@pytest.mark.skipif(not callable(getattr(Daemon, "health", None)),
                    reason="needs the daemon's writes off its event loop (comes with daemon.health()): this daemon "
                           "claims a frame on the loop, which then waits out the lock")
def test_health_answers_within_a_second_while_a_frame_arrives_at_a_locked_database(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    d = DaemonProcess(tmp_path, config=with_http(config_text(), port)).start()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_EXCLUSIVE, str(d.db_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        write_frame(d.incoming / "a.fits", 1)  # the daemon now wants to write
        time.sleep(2.0)
        for _ in range(3):
            status, body, seconds = get_health(url)
            assert seconds < 1.0 and status == 503, (seconds, body)
            assert body["checks"]["database"]["problem"] == "database locked"
    finally:
        holder.stdin.close()
        holder.wait(10)
        assert d.stop() == 0, d.log()[-3000:]


def test_health_is_200_with_the_demo_config(tmp_path):
    """The demo's own config (alerts on, Kafka off, the drop folder) run by `stdd run`."""
    port = free_port()
    (tmp_path / "stdd.toml").write_text(DEMO_CONFIG.format(instruments=ROOT / "config" / "instruments", workers=1,
                                                           port=port))
    d = DaemonProcess(tmp_path)  # keeps the config written above
    d.start()
    try:
        status, body, seconds = get_health(f"http://127.0.0.1:{port}/health")
        assert status == 200 and body["ok"] is True, body
        assert seconds < 1.0
        stream = body["checks"]["alert_stream"]
        # the alert link's own health(): the drop folder's loop is running, no Kafka expected
        assert stream["ok"] is True and stream["stalled"] is False and not stream.get("kafka"), stream
        assert "drop folder: running" in stream["detail"]
        assert_every_check_says_why(body)
    finally:
        assert d.stop() == 0, d.log()[-3000:]


async def test_health_with_alerts_from_the_drop_folder_only(tmp_path):
    settings = make_settings(tmp_path, extra={"alerts": {"enabled": True, "kafka": {"enabled": False}}})
    async with running_daemon(settings, services=(AlertServiceBeside(),)) as (daemon, svc):
        async with aiohttp.ClientSession() as s:
            async with s.get(svc.url + "/health") as r:
                body = await r.json()
                assert r.status == 200 and body["ok"] is True, body
        assert body["checks"]["alert_stream"]["ok"] is True and body["checks"]["alert_stream"]["kafka"] is False
        assert_every_check_says_why(body)


async def test_health_without_a_running_alert_service_says_so(tmp_path):
    """Alerts enabled, drop folder only, but nothing handles them: 503, and why."""
    settings = make_settings(tmp_path, extra={"alerts": {"enabled": True, "kafka": {"enabled": False}}})
    async with running_daemon(settings) as (daemon, svc):
        async with aiohttp.ClientSession() as s:
            async with s.get(svc.url + "/health") as r:
                body = await r.json()
    assert r.status == 503 and body["checks"]["alert_stream"]["ok"] is False
    assert "not running" in body["checks"]["alert_stream"]["detail"]
    assert all(c["ok"] for name, c in body["checks"].items() if name != "alert_stream")


@pytest.mark.skipif(not callable(getattr(Daemon, "health", None)), reason="this daemon has no health() yet")
async def test_the_daemons_own_health_is_merged(tmp_path):
    async with running_daemon(make_settings(tmp_path)) as (daemon, svc):
        own = daemon.health()
        async with aiohttp.ClientSession() as s:
            async with s.get(svc.url + "/health") as r:
                body = await r.json()
    ours = {"database", "workers", "watcher", "event_loop"}
    for name, check in own.items():
        shown = body["checks"][f"daemon.{name}" if name in ours else name]
        assert shown["ok"] is bool(check["ok"]) and shown["detail"] == check["detail"]
    assert_every_check_says_why(body)
    assert (r.status == 200) is body["ok"]


# -- the database check's words, from real SQLite and filesystem errors -------------------
def test_database_problems_are_named(tmp_path):
    path = tmp_path / "x.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x BLOB)")
    assert probe(path)["ok"] is True

    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")
    assert describe_error(locked.value)[0] == "database locked"
    t0 = time.monotonic()
    found = probe(path, busy_wait=0.1)
    assert found["ok"] is False and found["problem"] == "database locked" and time.monotonic() - t0 < 0.5
    conn.execute("ROLLBACK")

    small = sqlite3.connect(path, isolation_level=None)
    small.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.Error) as full:
        small.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert describe_error(full.value)[0] == "disk full"
    assert describe_error(OSError(errno.ENOSPC, "No space left on device"))[0] == "disk full"

    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(sqlite3.Error) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    assert describe_error(readonly.value)[0] == "read-only"
    assert describe_error(OSError(errno.EROFS, "Read-only file system"))[0] == "read-only"

    missing = tmp_path / "none.sqlite"
    assert probe(missing)["problem"] == "database missing" and not missing.exists()  # never made by the check
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    assert probe(garbage)["problem"] == "database corrupt"


def test_checks_are_normalised():
    assert as_check("x", {"ok": 1}) == {"ok": True, "detail": "ok"}
    assert as_check("x", {"ok": False, "detail": "stalled since 21:10"}) == {"ok": False, "detail": "stalled since 21:10"}
    assert as_check("loops", "fine") == {"ok": False, "detail": "loops: the check gave str, not an object"}
    assert as_check("x", {})["detail"] == "x is not ok (no detail given)"


async def test_a_stuck_call_costs_one_thread_and_every_caller_gets_its_answer_in_time():
    release, calls = threading.Event(), []

    def stuck():
        calls.append(threading.current_thread().name)
        release.wait(10)
        return "late"

    off = OffLoop("test")
    t0 = time.monotonic()
    with pytest.raises(Overdue) as first:
        await off.call(stuck, 0.2)
    with pytest.raises(Overdue) as second:  # still running: waited for, not started again
        await off.call(stuck, 0.2)
    assert time.monotonic() - t0 < 1.0 and len(calls) == 1 and off.busy
    assert second.value.running_seconds >= 0.2 and "did not answer within 0.2 s" in str(first.value)
    release.set()
    assert await off.call(stuck, 1.0) == "late"  # the one in flight, now done
    assert await off.call(lambda: 42, 1.0) == 42 and not off.busy
    with pytest.raises(ZeroDivisionError):
        await off.call(lambda: 1 / 0, 1.0)

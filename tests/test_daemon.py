"""The daemon as a real process (`stdd run`): intake, exactly-once, kills, signals, CLI.

Stages are the test stages of pool_stages.py (`pool.stage_functions`), driven by each frame's
FITS header; the daemon, the pool, SQLite, watchdog and the signals are all real.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess, config_text
from pool_stages import frame_bytes, write_frame


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def daemon(tmp_path):
    procs: list[DaemonProcess] = []

    def make(config: str | None = None, env: dict | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, config, env)
        procs.append(d)
        return d

    yield make
    for d in procs:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.mark.slow
def test_fifty_frames_at_once_each_once_then_a_copy_is_not_processed(daemon, tmp_path):
    d = daemon().start()
    staging = tmp_path / "staging"
    for i in range(50):
        write_frame(staging / f"f{i:02d}.fits", i)
    t0 = time.monotonic()
    for p in sorted(staging.iterdir()):
        os.replace(p, d.incoming / p.name)
    frames = d.wait_terminal(50, timeout=120)
    took = time.monotonic() - t0
    assert len(frames) == 50 and {f["state"] for f in frames} == {"done"}
    assert len({f["sha256"] for f in frames}) == 50
    for f in frames:
        runs = d.stage_runs(f["id"])
        assert [(r["stage"], r["state"]) for r in runs] == [("inspect", "done"), ("photometry", "done")]
        assert f["attempts"] == 1 and f["zp"] == 20.5
    dirs = d.result_dirs()
    assert len(dirs) == 50
    assert {json.loads((p / "result.json").read_text())["frame_id"] for p in dirs} == {f["id"] for f in frames}
    print(f"\n50 frames through 2 workers in {took:.1f} s ({50 / took:.1f} frames/s)")

    # a copy of a processed file under another name: recorded as a duplicate, never processed
    shutil.copy(d.incoming / "f07.fits", d.incoming / "copy-of-f07.fits")
    d.wait(lambda: "copy-of-f07.fits: same content as" in d.log(), 15, "the duplicate to be noticed")
    time.sleep(0.5)
    assert len(d.frames()) == 50

    # the command line, reading the state file
    st = json.loads(d.cli("status", "--json").stdout)
    assert st["frames"]["done"] == 50 and st["daemon"] == "running" and st["state"] == "running"
    listed = json.loads(d.cli("frames", "--state", "done", "--limit", "100", "--json").stdout)
    assert len(listed) == 50 and {"id", "path", "sha256", "state", "error"} <= set(listed[0])
    assert json.loads(d.cli("frames", "--state", "failed", "--json").stdout) == []
    assert d.stop() == 0
    assert json.loads(d.cli("status", "--json").stdout)["daemon"] == "not running"


def test_slow_writer_and_rsync_rename_are_taken_once_when_complete(daemon, tmp_path):
    d = daemon(config_text(settle=0.5)).start()
    slow = frame_bytes("slow", size=200)          # ~160 kB
    synced = frame_bytes("synced", size=200)
    chunks = 10

    def write_slowly(path: Path, data: bytes) -> None:
        step = len(data) // chunks + 1
        with open(path, "wb") as fh:
            for i in range(chunks):
                fh.write(data[i * step:(i + 1) * step])
                fh.flush()
                time.sleep(0.55)                # longer than settle_seconds: stable but incomplete

    def rsync_like() -> None:
        tmp = d.incoming / ".synced.fits.Xa81Qz"
        write_slowly(tmp, synced)
        os.rename(tmp, d.incoming / "synced.fits")

    t0 = time.monotonic()
    threads = [threading.Thread(target=write_slowly, args=(d.incoming / "slow.fits", slow)),
               threading.Thread(target=rsync_like)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frames = d.wait_terminal(2, timeout=30)
    assert sorted((f["name"], f["sha256"], f["state"]) for f in frames) == [
        ("slow.fits", sha(slow), "done"), ("synced.fits", sha(synced), "done")]
    for f in frames:
        assert f["created_at"] >= time.time() - (time.monotonic() - t0) + 5.0  # after the writer finished
    assert "Xa81Qz" not in "".join(f["path"] for f in frames)
    assert d.stop() == 0


def test_bad_files_fail_with_a_reason_and_go_to_quarantine(daemon):
    d = daemon().start()
    whole = frame_bytes("trunc", size=100)
    (d.incoming / "empty.fits").write_bytes(b"")
    (d.incoming / "truncated.fits").write_bytes(whole[: len(whole) // 2])
    (d.incoming / "notes.fits").write_text("observing log, not an image\n" * 100)
    write_frame(d.incoming / "good.fits", "good")
    frames = {f["name"]: f for f in d.wait_terminal(4, timeout=30)}
    assert frames["good.fits"]["state"] == "done"
    assert frames["empty.fits"]["state"] == "failed" and "empty file (0 bytes)" in frames["empty.fits"]["error"]
    assert frames["truncated.fits"]["state"] == "failed" and "truncated" in frames["truncated.fits"]["error"]
    assert frames["notes.fits"]["state"] == "failed" and "not a FITS file" in frames["notes.fits"]["error"]
    q = sorted(p.name for p in d.quarantine.iterdir())
    for name in ("empty.fits", "truncated.fits", "notes.fits"):
        fid = frames[name]["id"]
        assert f"{fid}-{name}" in q and f"{fid}-{name}.reason.txt" in q
        assert not (d.incoming / name).exists()
        res = json.loads((d.results / f"{fid}-{Path(name).stem}" / "result.json").read_text())
        assert res["status"] == "failed" and res["error"] == frames[name]["error"]
    # the daemon carries on
    write_frame(d.incoming / "after.fits", "after")
    d.wait(lambda: any(f["name"] == "after.fits" and f["state"] == "done" for f in d.frames()), 20, "after.fits")
    assert d.stop() == 0


def test_sighup_with_a_broken_config_keeps_the_old_one(daemon):
    d = daemon().start()
    good = d.config.read_text()
    d.config.write_text(good.replace("workers = 2", "workers = \"two\"").replace("[pool]", "[pool]\nbogus = 1"))
    d.send(signal.SIGHUP)
    d.wait(lambda: "the running config stays" in d.log(), 10, "the reload to be refused")
    log = d.log()
    assert "pool.workers: expected an integer" in log and "pool.bogus: unknown key" in log
    write_frame(d.incoming / "a.fits", "a")
    d.wait(lambda: any(f["state"] == "done" for f in d.frames()), 20, "a frame with the old config")
    # a valid change is applied
    d.config.write_text(good.replace("workers = 2", "workers = 1"))
    d.send(signal.SIGHUP)
    d.wait(lambda: "reload: " in d.log() and " loaded" in d.log(), 10, "the reload")
    d.wait(lambda: d.status().get("pool", {}).get("workers") == 1, 10, "the new worker count")
    assert d.stop() == 0


def test_a_worker_killed_mid_stage_again_and_again_is_retried_and_finishes(daemon):
    d = daemon().start()
    write_frame(d.incoming / "victim.fits", "victim", T_SLEEP=1.5)
    killed = []
    for _ in range(2):
        def running_pid():
            f = d.frames()[0]
            runs = d.stage_runs(f["id"])
            if f["state"] == "running" and runs and runs[-1]["state"] == "running" and runs[-1]["pid"] not in killed:
                return runs[-1]["pid"]
        d.wait(running_pid, 20, "the frame's stage to run")
        pid = running_pid()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    (f,) = d.wait_terminal(1, timeout=30)
    assert f["state"] == "done" and f["attempts"] == 3
    runs = d.stage_runs(f["id"])
    aborted = [r for r in runs if r["state"] == "aborted"]
    assert len(aborted) == 2 and all("SIGKILL" in r["error"] for r in aborted)
    assert [r["stage"] for r in runs if r["state"] == "done"] == ["inspect", "photometry"]
    assert len(d.result_dirs()) == 1
    assert "retry 2/4" in d.log() and "retry 3/4" in d.log()
    assert d.stop() == 0


def test_daemon_killed_mid_run_then_restarted_gives_one_result_per_frame(daemon, tmp_path):
    d = daemon().start()
    n = 12
    for i in range(n):
        write_frame(d.incoming / f"k{i:02d}.fits", f"k{i}", T_SLEEP=0.4)
    d.wait(lambda: sum(f["state"] == "done" for f in d.frames()) >= 3
           and any(f["state"] == "running" for f in d.frames()), 60, "some frames done, some running")
    running_pids = [r["pid"] for f in d.frames() if f["state"] == "running"
                    for r in d.stage_runs(f["id"]) if r["state"] == "running"]
    d.kill()  # SIGKILL: no clean-up at all
    deadline = time.monotonic() + 5
    while any(alive(p) for p in running_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in running_pids), "frame processes outlived the killed daemon"
    d2 = daemon().start()
    frames = d2.wait_terminal(n, timeout=90)
    assert len(frames) == n and all(f["state"] == "done" for f in frames)
    dirs = d2.result_dirs()
    assert len(dirs) == n
    assert sorted(json.loads((p / "result.json").read_text())["frame_id"] for p in dirs) == sorted(
        f["id"] for f in frames)
    # a frame published just before the kill and run again keeps that first result as a version
    for v in d2.results.glob("*.versions"):
        assert (d2.results / v.name[:-len(".versions")]).is_dir() and (v / "run-1" / "result.json").is_file()
    assert not [p for p in d2.results.iterdir() if p.name.startswith(".")]
    assert "queued again, from a clean folder" in d2.log() or not running_pids
    assert d2.stop() == 0


def test_a_hanging_program_is_killed_at_the_timeout_with_its_children(daemon, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids_file = tmp_path / "pids"
    fake = bin_dir / "source-extractor"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        sleep 600 &
        echo $! >> "$PIDS_FILE"
        echo $$ >> "$PIDS_FILE"
        sleep 600
    """))
    fake.chmod(0o755)
    d = daemon(config_text(pool_extra="stage_timeouts = {inspect = 2.0}"),
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "PIDS_FILE": str(pids_file)}).start()
    write_frame(d.incoming / "hang.fits", "hang", T_EXEC="source-extractor")
    (f,) = d.wait_terminal(1, timeout=30)
    assert f["state"] == "failed" and "inspect timed out after 2 s" in f["error"]
    pids = [int(x) for x in pids_file.read_text().split()]
    assert len(pids) == 2
    time.sleep(0.3)
    assert not any(alive(p) for p in pids), "the hanging program or its child survived"
    res = json.loads((d.result_dirs()[0] / "result.json").read_text())
    assert res["status"] == "failed" and "timed out" in res["error"]
    assert d.stop() == 0


def test_sigterm_lets_the_stage_finish_then_requeues_and_exits_0(daemon):
    d = daemon().start()
    write_frame(d.incoming / "long.fits", "long", T_SLEEP=30)
    d.wait(lambda: any(f["state"] == "running" and f["stage"] for f in d.frames()), 20, "the stage to start")
    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0
    took = time.monotonic() - t0
    assert 2.5 < took < 10  # shutdown_grace 3 s, then the kill
    (f,) = d.frames()
    assert f["state"] == "queued" and f["attempts"] == 0
    assert "stopped cleanly" in "".join(e for e in [d.log()]) or "stopped" in d.log()


def test_a_crash_loop_pauses_intake_and_says_so(daemon):
    d = daemon(config_text(pool_extra="crash_loop_failures = 3\ncrash_loop_window_seconds = 60")
               .replace("max_attempts = 4", "max_attempts = 1")).start()
    for i in range(5):
        write_frame(d.incoming / f"crash{i}.fits", f"c{i}", T_CRASH="SIGSEGV")
    d.wait(lambda: d.status().get("state") == "paused", 30, "the pause")
    st = json.loads(d.cli("status", "--json").stdout)
    assert st["state"] == "paused" and "crash loop: 3 frame processes died" in st["paused_reason"]
    d.wait(lambda: not any(f["state"] == "running" for f in d.frames()), 10, "the running ones to end")
    before = [(f["id"], f["state"]) for f in d.frames()]
    time.sleep(1.0)
    frames = d.frames()
    assert [(f["id"], f["state"]) for f in frames] == before  # nothing more is started
    failed = sum(f["state"] == "failed" for f in frames)
    assert failed in (3, 4) and sum(f["state"] == "queued" for f in frames) == 5 - failed, d.log()
    assert all("SIGSEGV" in f["error"] for f in frames if f["state"] == "failed")
    assert "crash loop" in d.log()
    assert d.stop() == 0

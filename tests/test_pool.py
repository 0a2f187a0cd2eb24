"""The local pool with real processes: stages reported, timeouts, kills, cancel, shutdown,
and no process of a frame's group left behind. Stages are the test stages in pool_stages.py
(`pool.stage_functions`), driven by each frame's header."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pool_stages import write_frame
from stdd.pool import FrameJob, LocalPool, PoolEvent
from stdd.pool.procs import group_members

TESTS = Path(__file__).resolve().parent
FUNCS = {"inspect": "pool_stages:behave", "photometry": "pool_stages:quick"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fake_binary(bin_dir: Path, name: str = "source-extractor") -> Path:
    """A program that starts a child and sleeps; both write their pids to the file named by
    its argument (or $PIDS_FILE)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    p = bin_dir / name
    p.write_text(textwrap.dedent("""\
        #!/bin/sh
        out="${1:-$PIDS_FILE}"
        sleep 300 &
        echo $! >> "$out"
        echo $$ >> "$out"
        sleep 300
    """))
    p.chmod(0o755)
    return p


def wait_pids(path: Path, n: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= n:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"no {n} pids in {path}")


class Run:
    """Collects a pool's events per frame."""

    def __init__(self, pool: LocalPool):
        self.pool = pool
        self.events: list[PoolEvent] = []

    def until(self, cond, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.events.extend(self.pool.poll(0.1))
            if cond():
                return
        raise AssertionError(f"timed out; events: {[(e.kind, e.frame_id, e.stage, e.state) for e in self.events]}")

    def terminal(self, fid: int) -> PoolEvent | None:
        return next((e for e in self.events if e.frame_id == fid and e.kind in ("finished", "lost")), None)

    def started(self, fid: int, stage: str = "inspect") -> bool:
        return any(e.kind == "stage_start" and e.frame_id == fid and e.stage == stage for e in self.events)


def job(tmp_path: Path, fid: int, steps=("inspect", "photometry"), **cards) -> FrameJob:
    src = write_frame(tmp_path / "src" / f"f{fid}.fits", fid, **cards)
    return FrameJob(frame_id=fid, attempt=1, sha256="-", source=str(src), origin=str(src),
                    work_dir=str(tmp_path / "work" / str(fid)), result_dir=str(tmp_path / "results" / f"{fid}-f"),
                    steps=list(steps), stage_settings={"cache_dir": str(tmp_path / "cache")},
                    stage_functions=FUNCS, extra={"frame_id": fid})


def hang(tmp_path: Path) -> dict:
    """Header cards that make the test stage run the fake program (by absolute path: the fork
    server's environment is the one it started with)."""
    return {"T_EXEC": str(fake_binary(tmp_path / "bin")), "T_ARGS": str(tmp_path / "pids")}


@pytest.fixture
def pool(tmp_path):
    p = LocalPool(2, stage_timeout=30, kill_grace=1.0)
    p.start()
    yield p
    p.shutdown(0)


def test_chain_runs_in_its_own_process_group_and_publishes(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 1))
    run.until(lambda: run.terminal(1))
    kinds = [(e.kind, e.stage, e.state) for e in run.events]
    assert kinds == [("stage_start", "inspect", None), ("stage_end", "inspect", "done"),
                     ("stage_start", "photometry", None), ("stage_end", "photometry", "done"),
                     ("finished", None, "done")]
    assert run.events[0].pid != os.getpid()
    result = json.loads((tmp_path / "results" / "1-f" / "result.json").read_text())
    assert result["status"] == "done" and result["frame_id"] == 1 and result["zp"] == 20.5
    assert (tmp_path / "results" / "1-f" / "behave.txt").exists()
    assert run.events[-1].data["result"]["n_stars_calib"] == 3


def test_a_stage_failure_is_a_finished_failed_chain(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 2, T_FAIL="no stars found"))
    run.until(lambda: run.terminal(2))
    ev = run.terminal(2)
    assert (ev.kind, ev.state) == ("finished", "failed") and "no stars found" in ev.error
    assert not any(e.stage == "photometry" for e in run.events)  # the chain stopped


def test_hanging_program_is_killed_at_the_timeout_with_its_children(pool, tmp_path):
    pool.configure(stage_timeouts={"inspect": 1.5})
    run = Run(pool)
    t0 = time.monotonic()
    pool.submit(job(tmp_path, 3, **hang(tmp_path)))
    pids = wait_pids(tmp_path / "pids", 2)
    run.until(lambda: run.terminal(3), timeout=15)
    ev = run.terminal(3)
    took = time.monotonic() - t0
    assert (ev.kind, ev.state) == ("lost", "timeout") and "inspect timed out after 1.5 s" in ev.error
    assert 1.4 < took < 6
    time.sleep(0.2)
    assert not any(alive(p) for p in pids + [ev.pid]), "a process of the frame's group survived"
    assert group_members(ev.pid) == []


def test_frame_process_killed_is_reported_as_died(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 4, T_SLEEP=30))
    run.until(lambda: run.started(4))
    pid = run.events[-1].pid
    os.kill(pid, signal.SIGKILL)
    run.until(lambda: run.terminal(4))
    ev = run.terminal(4)
    assert (ev.kind, ev.state) == ("lost", "died") and "killed by SIGKILL" in ev.error and "inspect" in ev.error


def test_segfault_is_reported(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 5, T_CRASH="SIGSEGV"))
    run.until(lambda: run.terminal(5))
    ev = run.terminal(5)
    assert (ev.kind, ev.state) == ("lost", "died") and "SIGSEGV" in ev.error


def test_cancel_kills_the_group(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 6, **hang(tmp_path)))
    pids = wait_pids(tmp_path / "pids", 2)
    assert pool.cancel(6, "operator said so")
    run.until(lambda: run.terminal(6))
    ev = run.terminal(6)
    assert (ev.kind, ev.state, ev.error) == ("lost", "cancelled", "operator said so")
    time.sleep(0.2)
    assert not any(alive(p) for p in pids)
    assert pool.cancel(6) is False


def test_full_pool_refuses_and_frees_slots(pool, tmp_path):
    run = Run(pool)
    pool.submit(job(tmp_path, 7, T_SLEEP=1))
    pool.submit(job(tmp_path, 8, T_SLEEP=1))
    assert pool.free_slots() == 0
    run.until(lambda: run.terminal(7) and run.terminal(8))
    assert pool.free_slots() == 2
    assert {r["frame_id"] for r in pool.status()["running"]} == set()


def test_a_dead_frames_slot_stays_busy_until_its_end_is_recorded(pool, tmp_path):
    """The daemon's contract (hold_ends): a slot is free only once the caller confirms it has
    recorded the terminal event, never in the gap between poll() and that record."""
    pool.hold_ends = True
    run = Run(pool)
    pool.submit(job(tmp_path, 9, T_CRASH="SIGSEGV"))
    pool.submit(job(tmp_path, 10, T_SLEEP=30))
    run.until(lambda: run.terminal(9))
    assert pool.free_slots() == 0  # polled, not yet recorded
    pool.end_recorded()
    assert pool.free_slots() == 1
    assert pool.cancel(10)
    run.until(lambda: run.terminal(10))
    assert pool.free_slots() == 1
    pool.end_recorded()
    assert pool.free_slots() == 2


def test_shutdown_lets_the_current_stage_finish_then_stops(tmp_path):
    p = LocalPool(2, stage_timeout=30, kill_grace=0.5)
    p.start()
    run = Run(p)
    p.submit(job(tmp_path, 9, T_SLEEP=1.0))     # stage 1 ends within the grace: no stage 2
    p.submit(job(tmp_path, 10, T_SLEEP=30))     # still in stage 1 at the end of the grace: killed
    run.until(lambda: run.started(9) and run.started(10))
    t0 = time.monotonic()
    p.shutdown(2.0)
    took = time.monotonic() - t0
    run.events.extend(p.poll(0))
    e9, e10 = run.terminal(9), run.terminal(10)
    assert (e9.kind, e9.state) == ("lost", "interrupted")
    assert [e.stage for e in run.events if e.frame_id == 9 and e.kind == "stage_end"] == ["inspect"]
    assert (e10.kind, e10.state) == ("lost", "interrupted") and "shutdown" in e10.error
    assert 1.9 < took < 5
    assert not alive(e10.pid)


def test_frame_groups_die_with_a_killed_parent(tmp_path):
    """SIGKILL the process that owns the pool: the fork server and every frame group go too."""
    fake_binary(tmp_path / "bin")
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(f"""\
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from test_pool import job
        from stdd.pool import LocalPool
        from pathlib import Path
        if __name__ == "__main__":
            p = LocalPool(1)
            p.start()
            p.submit(job(Path({str(tmp_path)!r}), 11, T_EXEC="source-extractor", T_ARGS={str(tmp_path / "pids")!r}))
            time.sleep(300)
    """))
    env = {**os.environ, "PIDS_FILE": str(tmp_path / "pids"), "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    host = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        pids = wait_pids(tmp_path / "pids", 2, timeout=20)
        host.kill()
        host.wait()
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "the frame's programs outlived the killed daemon"
    finally:
        host.kill()


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid


def test_warm_fork_server_starts_with_the_first_frame_and_stops_when_idle(tmp_path):
    """warm_at_start off: no fork server until a frame comes; after `warm_idle` seconds with no
    frame the server process is gone (its memory freed), and the next frame starts it again."""
    from multiprocessing import forkserver

    if not hasattr(forkserver._forkserver, "_stop"):
        pytest.skip("this Python's fork server cannot be stopped")
    if _forkserver_pid() is not None:  # an earlier test's server: start from none
        forkserver._forkserver._stop()
    p = LocalPool(1, stage_timeout=30, kill_grace=0.5, warm_idle=1.5, warm_at_start=False)
    p.start()
    try:
        run = Run(p)
        time.sleep(0.5)
        assert p.status()["warm"] is False and _forkserver_pid() is None
        p.submit(job(tmp_path, 31))
        run.until(lambda: run.terminal(31))
        assert run.terminal(31).state == "done"
        first = _forkserver_pid()
        assert first is not None and alive(first)
        st = p.status()
        assert st["warm"] is True and st["warm_ups"] == 1
        run.until(lambda: not p.status()["warm"], timeout=15)  # idle spell over: stopped
        assert p.status()["warm_stops"] == 1 and _forkserver_pid() is None
        deadline = time.monotonic() + 5
        while alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first)
        p.prepare()  # a file appeared: warm up before the frame is queued
        run.until(lambda: p.status()["warm"], timeout=60)
        assert p.status()["warm_ups"] == 2
        p.submit(job(tmp_path, 32))
        run.until(lambda: run.terminal(32))
        assert run.terminal(32).state == "done" and p.status()["warm_ups"] == 2
    finally:
        p.shutdown(0)


def _frame_pids(run: Run) -> dict[int, int]:
    return {e.frame_id: e.pid for e in run.events if e.kind == "stage_start" and e.stage == "inspect"}


def test_a_clean_frame_process_takes_the_next_frame_up_to_its_limit(tmp_path):
    """frames_per_process = 3: three frames in a row run in one process, the fourth in a new one;
    a program a stage left running is killed before the next frame; every result is published."""
    p = LocalPool(1, stage_timeout=30, kill_grace=0.5, frames_per_process=3)
    p.start()
    try:
        run = Run(p)
        stray = tmp_path / "stray.pid"
        p.submit(job(tmp_path, 41, T_EXEC="/bin/sh", T_ARGS=f"-c 'sleep 300 & echo $! > {stray}'"))
        run.until(lambda: run.terminal(41))
        pid = int(stray.read_text())
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "a program the frame's stage left running outlived the frame"
        for fid in (42, 43, 44):
            p.submit(job(tmp_path, fid))
            run.until(lambda: run.terminal(fid))
        assert all(run.terminal(f).state == "done" for f in (41, 42, 43, 44))
        pids = _frame_pids(run)
        assert pids[41] == pids[42] == pids[43] != pids[44]
        for fid in (41, 42, 43, 44):
            result = json.loads((tmp_path / "results" / f"{fid}-f" / "result.json").read_text())
            assert result["frame_id"] == fid and result["test_id"] == str(fid)
        assert p.status()["idle_processes"] == 1
        first = pids[41]
        deadline = time.monotonic() + 5
        while alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first), "the process that reached its frame limit did not exit"
    finally:
        p.shutdown(0)
    assert not alive(pids[44]), "an idle frame process outlived the pool's shutdown"


def test_a_failed_or_killed_frame_is_not_followed_in_its_process(tmp_path):
    """A stage failure is a clean end (the process is reused); a timeout or a crash is not."""
    p = LocalPool(1, stage_timeout=30, kill_grace=0.5, frames_per_process=10)
    p.start()
    try:
        run = Run(p)
        p.submit(job(tmp_path, 51, T_FAIL="no stars"))
        run.until(lambda: run.terminal(51))
        p.submit(job(tmp_path, 52, T_CRASH="SIGKILL"))
        run.until(lambda: run.terminal(52))
        p.configure(stage_timeouts={"inspect": 1.0})
        p.submit(job(tmp_path, 53, T_SLEEP=30))
        run.until(lambda: run.terminal(53))
        p.configure(stage_timeouts={})
        p.submit(job(tmp_path, 54))
        run.until(lambda: run.terminal(54))
        states = {f: (run.terminal(f).kind, run.terminal(f).state) for f in (51, 52, 53, 54)}
        assert states == {51: ("finished", "failed"), 52: ("lost", "died"), 53: ("lost", "timeout"),
                          54: ("finished", "done")}
        pids = _frame_pids(run)
        assert pids[51] == pids[52]          # a failed stage ended cleanly: reused
        assert len({pids[52], pids[53], pids[54]}) == 3  # killed processes are never reused
        assert not alive(pids[52]) and not alive(pids[53])
    finally:
        p.shutdown(0)


def test_idle_frame_processes_leave_with_the_warm_server(tmp_path):
    from multiprocessing import forkserver

    if not hasattr(forkserver._forkserver, "_stop"):
        pytest.skip("this Python's fork server cannot be stopped")
    p = LocalPool(1, stage_timeout=30, kill_grace=0.5, frames_per_process=10, warm_idle=1.5, warm_at_start=False)
    p.start()
    try:
        run = Run(p)
        p.submit(job(tmp_path, 61))
        run.until(lambda: run.terminal(61))
        pid = _frame_pids(run)[61]
        assert alive(pid) and p.status()["idle_processes"] == 1
        run.until(lambda: not p.status()["warm"], timeout=15)
        assert p.status()["idle_processes"] == 0
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)
        p.submit(job(tmp_path, 62))
        run.until(lambda: run.terminal(62))
        assert run.terminal(62).state == "done" and _frame_pids(run)[62] != pid
    finally:
        p.shutdown(0)

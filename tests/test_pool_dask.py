"""The Dask executor against a real `distributed.LocalCluster` of worker processes.

The same jobs run on the local pool and on Dask must end the same way (states, stage events,
results); a cancel kills the stage's programs on the worker; a Dask worker process killed with
SIGKILL mid-stage loses the frame, which a retry (ours, not Dask's) then finishes — at the
executor and through a real `stdd run` daemon. Stages are the real ones on tiny synthetic
frames, or the header-driven test stages of pool_stages.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install stdd[dask])")

from pool_stages import write_frame  # noqa: E402
from stdd.config.settings import PoolSettings  # noqa: E402
from stdd.pool import FrameJob, LocalPool, make_executor  # noqa: E402
from stdd.pool.dask import DaskExecutor, PathMap, comparable_result, compare_local_vs_dask, run_jobs  # noqa: E402
from stdd.pool.procs import group_members  # noqa: E402

TEST_STAGES = {"inspect": "pool_stages:behave", "photometry": "pool_stages:quick"}


@pytest.fixture(scope="module")
def cluster():
    import dask

    # as the README sets the scheduler up: a frame waits on the scheduler (in priority order)
    # until a worker thread is free, rather than in one worker's own queue
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(c, set_as_default=False)
    yield c, client
    client.close()
    c.close()


@pytest.fixture
def dask_ex(cluster):
    c, client = cluster
    client.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test is back
    made = []

    def make(**kw) -> DaskExecutor:
        ex = DaskExecutor(c.scheduler_address, **{"kill_grace": 1.0, **kw})
        ex.start()
        made.append(ex)
        assert ex.connected and ex.free_slots() == 2, ex.status()
        return ex

    yield make
    for ex in made:
        ex.shutdown(2)


def job(root: Path, ident, attempt: int = 1, **cards) -> FrameJob:
    f = root / "in" / f"{ident}.fits"
    if not f.exists():
        write_frame(f, ident, **cards)
    return FrameJob(frame_id=int(ident), attempt=attempt, sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                    source=str(f), origin=str(f), work_dir=str(root / "work" / str(ident)),
                    result_dir=str(root / "results" / f"{ident}-{f.stem}"), steps=["inspect", "photometry"],
                    stage_settings={"cache_dir": str(root / "cache")}, stage_functions=dict(TEST_STAGES),
                    extra={"frame_id": int(ident)})


def wait_event(ex, pred, timeout: float = 30.0):
    """The first event (polled now or earlier, not yet returned) that matches `pred`."""
    buf = ex.__dict__.setdefault("_test_events", [])  # [event, taken]
    deadline = time.monotonic() + timeout
    while True:
        for item in buf:
            if not item[1] and pred(item[0]):
                item[1] = True
                return item[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no such event in {timeout} s; saw {[(e.kind, e.stage, e.state) for e, _ in buf]}")
        buf.extend([ev, False] for ev in ex.poll(0.2))


def untaken(ex, wait: float = 0.0) -> list:
    buf = ex.__dict__.setdefault("_test_events", [])
    buf.extend([ev, False] for ev in ex.poll(wait))
    return [e for e, taken in buf if not taken]


def live_group(pgid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return group_members(pgid)


def summary_of(events) -> list[tuple]:
    return [(e.kind, e.stage, e.state, e.error) for e in events]


# =========================================================================================
def test_states_events_and_results_are_the_local_pools(tmp_path, dask_ex):
    """Done, failed, crashed and timed-out frames: the same events, states, errors and
    published results from both executors."""
    cards = {1: {}, 2: {"T_FAIL": "no stars on this frame"}, 3: {"T_CRASH": "SIGKILL"},
             4: {"T_EXEC": "sleep", "T_ARGS": "30"}, 5: {"T_SLEEP": 0.5}}
    timeouts = {"inspect": 2.0}
    out = {}
    local = LocalPool(2, stage_timeouts=timeouts, kill_grace=1.0)
    local.start()
    try:
        out["local"] = run_jobs(local, [job(tmp_path / "local", i, **c) for i, c in cards.items()], 120)
    finally:
        local.shutdown(2)
    ex = dask_ex(stage_timeouts=timeouts)
    out["dask"] = run_jobs(ex, [job(tmp_path / "dask", i, **c) for i, c in cards.items()], 120)

    for i in cards:
        assert summary_of(out["dask"][i]) == summary_of(out["local"][i]), i
    terminal = {i: (out["dask"][i][-1].kind, out["dask"][i][-1].state) for i in cards}
    assert terminal == {1: ("finished", "done"), 2: ("finished", "failed"), 3: ("lost", "died"),
                        4: ("lost", "timeout"), 5: ("finished", "done")}
    assert "killed by SIGKILL" in out["dask"][3][-1].error
    assert "timed out after 2 s" in out["dask"][4][-1].error
    for i in (1, 2, 5):
        a, b = out["local"][i][-1], out["dask"][i][-1]
        assert comparable_result(b.data["result"]) == comparable_result(a.data["result"])
        assert b.data["worker"].startswith("tcp://") and b.pid is None  # no remote pid reaches the daemon
        published = {p.name for p in (tmp_path / "dask" / "results" / f"{i}-{i}").iterdir()}
        assert published == {p.name for p in (tmp_path / "local" / "results" / f"{i}-{i}").iterdir()}
    stage_ev = next(e for e in out["dask"][1] if e.kind == "stage_end")
    assert stage_ev.data["summary"]["test_id"] == "1"
    assert ex.running_ids() == [] and ex.status()["running"] == []


def test_cancel_kills_the_stage_programs_on_the_worker(tmp_path, dask_ex):
    ex = dask_ex()
    ex.submit(job(tmp_path, 11, T_EXEC="sleep", T_ARGS="60"))
    wait_event(ex, lambda e: e.kind == "stage_start")
    time.sleep(0.5)  # the stage's program is running
    (running,) = ex.status()["running"]
    assert running["stage"] == "inspect" and running["frame_pid"] and running["worker_pid"] != os.getpid()
    assert [p for p in group_members(running["frame_pid"]) if p != running["frame_pid"]], "no stage program?"
    t0 = time.monotonic()
    assert ex.cancel(11, "an operator said so")
    ev = wait_event(ex, lambda e: e.kind in ("lost", "finished"))
    assert (ev.kind, ev.state, ev.error, ev.stage) == ("lost", "cancelled", "an operator said so", "inspect")
    assert time.monotonic() - t0 < 10
    assert live_group(running["frame_pid"]) == []  # the frame process and `sleep` are gone
    assert ex.cancel(11) is False and ex.running_ids() == []
    # the worker is not harmed: the next frame runs there
    (ev,) = [e for e in run_jobs(ex, [job(tmp_path, 12)], 60)[12] if e.kind == "finished"]
    assert ev.state == "done"


def test_a_killed_worker_process_loses_the_frame_and_our_retry_finishes_it(tmp_path, dask_ex, cluster):
    ex = dask_ex()
    first = job(tmp_path, 21, T_EXEC="sleep", T_ARGS="3")
    ex.submit(first)
    wait_event(ex, lambda e: e.kind == "stage_start" and e.stage == "inspect")
    time.sleep(0.5)
    (running,) = ex.status()["running"]
    os.kill(running["worker_pid"], signal.SIGKILL)
    ev = wait_event(ex, lambda e: e.kind in ("lost", "finished"))
    assert (ev.kind, ev.state, ev.stage) == ("lost", "died", "inspect")
    assert running["worker"] in ev.error and "died" in ev.error
    assert live_group(running["frame_pid"]) == []  # nothing of the frame outlives its worker
    # Dask did not run it again by itself: no event for the frame while we wait
    assert [e for e in untaken(ex, 2.0) if e.frame_id == 21] == []
    # our retry (the daemon's next attempt) runs on a live worker and finishes
    events = run_jobs(ex, [dataclasses.replace(first, attempt=2)], 60)[21]
    assert (events[-1].kind, events[-1].state) == ("finished", "done")
    assert events[-1].attempt == 2 and events[-1].data["worker"] != running["worker"]
    assert json.loads((Path(first.result_dir) / "result.json").read_text())["status"] == "done"


def test_frame_priorities_are_the_dask_tasks_priorities(tmp_path, dask_ex, cluster):
    """The daemon claims frames by priority itself and submits only to free threads; on a
    cluster shared with others, or while workers come back, Dask orders what waits by this."""
    ex = dask_ex()
    for ident, prio in ((31, 0), (32, 10), (33, -3)):
        ex.submit(dataclasses.replace(job(tmp_path, ident, T_SLEEP=2), priority=prio))
    for _ in range(2):  # two run, one waits: all three are on the scheduler now
        wait_event(ex, lambda e: e.kind == "stage_start" and e.stage == "inspect")
    keys = {r["frame_id"]: r["key"] for r in ex.status()["running"]}
    _, client = cluster

    def priorities(dask_scheduler):
        return {k: list(dask_scheduler.tasks[k].priority) for k in keys.values() if k in dask_scheduler.tasks}

    # Client.submit is asynchronous: the waiting frame's task reaches the scheduler a moment later
    deadline = time.monotonic() + 10
    on_scheduler = client.run_on_scheduler(priorities)
    while len(on_scheduler) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.05)
        on_scheduler = client.run_on_scheduler(priorities)
    assert set(on_scheduler) == set(keys.values()), f"not on the scheduler after 10 s: {set(keys.values()) - set(on_scheduler)}"
    assert {fid: on_scheduler[k][0] for fid, k in keys.items()} == {31: 0, 32: -10, 33: 3}  # Dask: lower runs first
    for _ in range(3):
        wait_event(ex, lambda e: e.kind == "finished")
    assert ex.running_ids() == []


def test_shutdown_stops_frames_after_their_current_stage(tmp_path, dask_ex):
    """As with the local pool: the running stage may finish, the next one does not run (here
    it is stopped right as it starts), a frame still waiting for a worker does not start; all
    end `interrupted`, which the daemon requeues without counting an attempt."""
    ex = dask_ex()
    both_slow = {"inspect": "pool_stages:behave", "photometry": "pool_stages:behave"}
    for ident in (41, 42):
        ex.submit(dataclasses.replace(job(tmp_path, ident, T_SLEEP=1.5), stage_functions=both_slow))
    for _ in range(2):
        wait_event(ex, lambda e: e.kind == "stage_start" and e.stage == "inspect")
    ex.submit(job(tmp_path, 43))  # no free worker: it waits on the cluster
    t0 = time.monotonic()
    ex.shutdown(20)
    took = time.monotonic() - t0
    events = untaken(ex)
    terminal = {e.frame_id: (e.kind, e.state) for e in events if e.kind in ("lost", "finished")}
    assert terminal == {41: ("lost", "interrupted"), 42: ("lost", "interrupted"), 43: ("lost", "interrupted")}
    ended = [(e.frame_id, e.stage, e.state) for e in events if e.kind == "stage_end"]
    assert sorted(ended) == [(41, "inspect", "done"), (42, "inspect", "done")]  # let finish, and no more
    assert not [e for e in events if e.frame_id == 43 and e.kind != "lost"]
    assert took < 10
    assert not ex.alive and ex.free_slots() == 0


def test_path_map_rewrites_what_the_workers_see(tmp_path, dask_ex):
    """The daemon's view of the storage (`/…/daemon-view`, which the workers do not have) is
    mapped to the workers' (`/…/storage`) in the job, and back in what comes back."""
    storage, view = tmp_path / "storage", tmp_path / "daemon-view"
    j = job(storage, 51, T_FAIL=f"cannot read {storage}/in/51.fits.bak")
    as_daemon_sees = FrameJob(**PathMap({str(storage): str(view)}).to_worker(j.to_dict()))
    assert as_daemon_sees.source == str(view / "in" / "51.fits") and not view.exists()
    ex = dask_ex(path_map={str(view): str(storage)})
    (ev,) = [e for e in run_jobs(ex, [as_daemon_sees], 60)[51] if e.kind == "finished"]
    assert ev.state == "failed" and ev.error == f"cannot read {view}/in/51.fits.bak"
    assert (storage / "results" / "51-51" / "result.json").is_file() and not view.exists()


def test_path_map_matches_whole_path_components():
    m = PathMap({"/data": "/mnt/obs/data/"})
    assert m.to_worker({"a": "/data/x.fits", "b": ["/data", "/database/x", "local:/data/c.fits", "no /data/y",
                                                 "/x/data/z", "/data.old", "'/data'"]}) == \
        {"a": "/mnt/obs/data/x.fits", "b": ["/mnt/obs/data", "/database/x", "local:/mnt/obs/data/c.fits",
                                            "no /mnt/obs/data/y", "/x/data/z", "/data.old", "'/mnt/obs/data'"]}
    assert m.to_daemon("/mnt/obs/data/r/result.json") == "/data/r/result.json"
    assert m.to_worker(3) == 3 and not PathMap({}) and PathMap({"/a": "/a/"}).pairs == []
    with pytest.raises(ValueError, match="absolute"):
        PathMap({"data": "/mnt/data"})


def test_an_unreachable_scheduler_takes_no_frames_and_says_why(tmp_path):
    ex = make_executor(PoolSettings(executor="dask", dask_scheduler="tcp://127.0.0.1:9"))
    assert isinstance(ex, DaskExecutor)
    ex.connect_timeout = 1.0
    t0 = time.monotonic()
    ex.start()
    try:
        assert time.monotonic() - t0 < 10
        st = ex.status()
        assert ex.alive and ex.free_slots() == 0 and st["connected"] is False
        assert "tcp://127.0.0.1:9" in st["last_error"]
        with pytest.raises(RuntimeError, match="not connected"):
            ex.submit(job(tmp_path, 61))
    finally:
        ex.shutdown(1)



def test_a_dask_config_without_a_scheduler_is_an_error_that_says_so():
    from stdd.config.load import ConfigError, settings_from_dict

    with pytest.raises(ConfigError) as e:
        settings_from_dict({"pool": {"executor": "dask"}}, "stdd.toml")
    assert any("needs dask_scheduler" in line for line in e.value.errors)
    with pytest.raises(ConfigError) as e:
        settings_from_dict({"pool": {"executor": "dask", "dask_scheduler": "tcp://h:8786",
                                     "dask_path_map": {"srv/data": "/data"}}}, "stdd.toml")
    assert any("absolute paths only: srv/data -> /data" in line for line in e.value.errors)
    with pytest.raises(ValueError, match="dask_scheduler"):
        DaskExecutor("")


@pytest.mark.slow
def test_real_stages_on_dask_give_the_local_pools_results(tmp_path, cluster):
    """Inspect and photometry (SExtractor, SCAMP, the zero point) on two small synthetic
    frames: the local pool and a 2-worker cluster publish the same results."""
    from stdd.synth.field import make_field

    frames, catalog = [], None
    for seed in (1, 2):
        p = make_field(tmp_path / f"field{seed}", seed=seed, field_seed=7, width=256, height=256, n_stars=150,
                       n_cosmics=2, n_transients=0, template=False)
        frames.append(p.frame)
        catalog = catalog or p.catalog
    c, client = cluster
    client.wait_for_workers(2, timeout=60)
    out = compare_local_vs_dask(frames, work_root=tmp_path / "runs", steps=["inspect", "photometry"],
                                stage_settings={"catalog": {"files": [str(catalog)]},
                                                "cache_dir": str(tmp_path / "cache")},
                                scheduler=c.scheduler_address)
    assert out["states"] == {1: {"local": "finished:done", "dask": "finished:done"},
                             2: {"local": "finished:done", "dask": "finished:done"}}, out
    assert out["same_results"], out["differences"]
    assert out["local_seconds"] > 0 and out["dask_seconds"] > 0 and out["ratio"] > 0
    for kind in ("local", "dask"):
        r = json.loads((tmp_path / "runs" / kind / "results" / "1-frame" / "result.json").read_text())
        assert r["status"] == "done" and r["n_stars_calib"] > 5 and r["zp"] is not None


def test_the_daemon_on_dask_retries_a_frame_whose_worker_was_killed(tmp_path, cluster):
    """`stdd run` with `executor = "dask"`: a Dask worker process SIGKILLed mid-stage → the
    frame's attempt is lost, the daemon retries it (its own max_attempts and back-off) and it
    is done; the other frame is not disturbed."""
    from daemon_harness import DaemonProcess, config_text

    c, client = cluster
    client.wait_for_workers(2, timeout=60)
    d = DaemonProcess(tmp_path, config_text(pool_extra=f'executor = "dask"\ndask_scheduler = "{c.scheduler_address}"'))
    try:
        d.start()
        assert d.status()["pool"]["executor"] == "dask"
        write_frame(d.incoming / "victim.fits", "victim", T_SLEEP=2.5)
        write_frame(d.incoming / "bystander.fits", "bystander")

        def victim_worker():
            f = next((f for f in d.frames() if f["name"] == "victim.fits"), None)
            runs = d.stage_runs(f["id"]) if f else []
            if not (runs and runs[-1]["state"] == "running" and runs[-1]["stage"] == "inspect"):
                return None
            for addr, keys in client.processing().items():
                if any(str(k).startswith(f"stdd-frame-{f['id']}-1-") for k in keys):
                    return addr

        d.wait(victim_worker, 30, "the victim's first stage to run on a worker")
        addr = victim_worker()
        os.kill(client.run(os.getpid, workers=[addr])[addr], signal.SIGKILL)
        frames = {f["name"]: f for f in d.wait_terminal(2, timeout=60)}
        assert frames["victim.fits"]["state"] == "done" and frames["victim.fits"]["attempts"] == 2
        assert frames["bystander.fits"]["state"] == "done" and frames["bystander.fits"]["attempts"] == 1
        runs = d.stage_runs(frames["victim.fits"]["id"])
        lost = [r for r in runs if r["state"] not in ("done", "running")]
        assert len(lost) == 1 and lost[0]["stage"] == "inspect" and addr in lost[0]["error"], runs
        assert [r["stage"] for r in runs if r["state"] == "done"] == ["inspect", "photometry"]
        assert all(r["pid"] is None for r in runs)  # a worker's pid never reaches the daemon's recovery
        assert "retry 2/4" in d.log()
        assert len(d.result_dirs()) == 2
        for rd in d.result_dirs():
            assert json.loads((rd / "result.json").read_text())["status"] == "done"
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


def test_workers_setting_caps_frames_in_flight_and_zero_means_the_whole_cluster():
    ex = DaskExecutor("tcp://127.0.0.1:9", workers=0)
    ex.cluster_threads, ex.connected = 12, True  # as the scheduler would report them
    assert ex.free_slots() == 12
    ex.configure(workers=os.cpu_count() or 1)  # what a reload passes for `workers = 0`
    assert ex.free_slots() == 12 and ex.status()["workers"] == 12
    ex.configure(workers=3, stage_timeout=60, stage_timeouts={"photometry": 600.0}, kill_grace=2,
                 frames_per_process=5, process_max_rss_mb=1500)
    assert ex.free_slots() == 3 and ex.worker_settings() == {
        "stage_timeout": 60.0, "stage_timeouts": {"photometry": 600.0}, "kill_grace": 2.0,
        "frames_per_process": 5, "process_max_rss_mb": 1500.0}
    ex.cluster_threads = 2
    assert ex.free_slots() == 2
    ex.connected = False
    assert ex.free_slots() == 0


def test_a_slot_stays_busy_until_the_frames_end_is_polled(tmp_path, dask_ex):
    """As with the local pool: the daemon sees a loss (and may pause) before it can refill the slot."""
    ex = dask_ex()
    ex.submit(job(tmp_path, 71, T_CRASH="SIGKILL"))
    deadline = time.monotonic() + 30
    while ex.running_ids() and time.monotonic() < deadline:
        time.sleep(0.1)  # ended on the executor's side; nobody has polled yet
    assert ex.running_ids() == [] and ex.free_slots() == 1
    (ev,) = [e for e in ex.poll(1) if e.kind == "lost"]
    assert ev.state == "died" and ex.free_slots() == 2


def test_a_workers_frame_process_takes_the_next_frame(tmp_path, dask_ex):
    """As in the local pool: a frame process on a Dask worker that ended its frame cleanly runs
    the next one there (pool.frames_per_process); with 1, every frame gets a new process."""
    def pids(ex, ids):
        out = run_jobs(ex, [job(tmp_path / f"r{ex.frames_per_process}", i) for i in ids], 60)
        assert all(out[i][-1].kind == "finished" for i in ids), {i: summary_of(out[i]) for i in ids}
        return {i: next(e.data["frame_pid"] for e in out[i] if e.kind == "stage_end") for i in ids}

    reuse = pids(dask_ex(frames_per_process=20), range(11, 17))
    assert len(set(reuse.values())) <= 2  # 6 frames, 2 single-threaded workers: one process each
    fresh = pids(dask_ex(frames_per_process=1), range(21, 25))
    assert len(set(fresh.values())) == 4

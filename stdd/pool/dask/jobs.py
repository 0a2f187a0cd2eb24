"""The daemon side's book of frames on the Dask cluster, and what their events mean.

Design note: one `Job` per frame task, by token and by frame id. The executor's supervisor
thread feeds the book what comes from Dask (the task's events, its future ending, the clock),
and the book turns that into the frame's `PoolEvent`s, exactly one of them terminal (finished
or lost). A frame's slot stays busy until that terminal event is handed out by `poll()`: the
job leaves `jobs` and enters `unpolled` in one step under `lock`. `lock` is also the
executor's lock (`Executor._poll_queue` and `end_recorded` use it on `unpolled`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..executor import FrameJob, PoolEvent
from .wire import PathMap, plain

log = logging.getLogger("stdd.pool.dask")

#: after a cancel, how long (beyond kill_grace) to wait for the worker to confirm the kill
CONFIRM_SECONDS = 15.0
#: after cancelling a task that had not begun, how long to wait for a begin still on its way
NOT_BEGUN_SETTLE = 2.0


@dataclass
class Job:
    job: FrameJob
    token: str
    key: str
    future: Any
    submitted: float
    run: str | None = None              # the task's first run (a second one is Dask's doing)
    worker: str | None = None
    host: str | None = None
    worker_pid: int | None = None
    frame_pid: int | None = None
    phase: str = "queued on the cluster"
    phase_started: float = 0.0
    started: float | None = None        # monotonic time of the begin event
    seen: set = field(default_factory=set)
    outcome: tuple[str, str] | None = None  # (lost reason, message) decided here
    cancel_sent: bool = False
    confirm_by: float | None = None     # after a cancel: emit the lost event by then anyway
    released: bool = False              # its slot moved from the jobs to unpolled (see finish)


class JobBook:
    """The frames on the cluster. `kill_grace` may change (configure); `stop_by` is set when
    the daemon shuts down (see `begin_shutdown`)."""

    def __init__(self, *, scheduler: str, kill_grace: float, paths: PathMap):
        self.scheduler = scheduler
        self.kill_grace = float(kill_grace)
        self.paths = paths
        self.jobs: dict[str, Job] = {}          # by token
        self.by_frame: dict[int, str] = {}
        self.unpolled = 0  # ended, terminal event not yet handed out by poll(): still a busy slot (as LocalPool)
        self.lock = threading.RLock()
        self.events: "queue.Queue[PoolEvent]" = queue.Queue()
        self.stop_by: float | None = None

    def add(self, j: Job) -> None:
        with self.lock:
            if j.job.frame_id in self.by_frame:
                raise RuntimeError(f"frame {j.job.frame_id} is already running")
            self.jobs[j.token] = j
            self.by_frame[j.job.frame_id] = j.token

    def get(self, token: str) -> Job | None:
        with self.lock:
            return self.jobs.get(token)

    def of_frame(self, frame_id: int) -> Job | None:
        with self.lock:
            return self.jobs.get(self.by_frame.get(frame_id, ""))

    def all(self) -> list[Job]:
        with self.lock:
            return list(self.jobs.values())

    def busy(self) -> int:
        """Slots taken: frames on the cluster, and ended ones whose terminal event is not out yet."""
        with self.lock:
            return len(self.jobs) + self.unpolled

    def begin_shutdown(self, grace: float) -> None:
        """Frames not yet in a stage stop now; those in one at its end (see `on_event`); what
        still runs after `grace` seconds is cancelled (see `check_deadlines`)."""
        self.stop_by = time.monotonic() + grace
        for j in self.all():
            if j.run is None or j.phase in ("prepare", "between stages"):
                self.interrupt(j)

    def interrupt(self, j: Job) -> None:
        if j.outcome is None:
            j.outcome = ("interrupted", "stopped by the daemon's shutdown" if j.run is not None
                         else "not started before the daemon's shutdown")
        self.cancel_future(j)

    def cancel_future(self, j: Job) -> None:
        if j.cancel_sent:
            return
        j.cancel_sent = True
        wait = (self.kill_grace + CONFIRM_SECONDS) if j.run is not None else NOT_BEGUN_SETTLE
        j.confirm_by = time.monotonic() + wait
        try:
            if j.future is not None:
                j.future.cancel(reason="stdd", msg=j.outcome[1] if j.outcome else "cancelled by stdd")
        except Exception as e:
            log.warning("frame=%d cannot cancel its Dask task: %s", j.job.frame_id, e)

    def emit(self, kind: str, j: Job, **kw) -> None:
        if kind in ("finished", "lost") and not j.released:
            with self.lock:
                self.unpolled += 1
        self.events.put(PoolEvent(kind=kind, frame_id=j.job.frame_id, attempt=j.job.attempt, pid=None, **kw))

    def on_event(self, d: dict) -> None:
        if not isinstance(d, dict):
            return
        with self.lock:
            j = self.jobs.get(d.get("token"))
        if j is None or (d.get("run"), d.get("seq")) in j.seen:
            return
        j.seen.add((d.get("run"), d.get("seq")))
        d = self.paths.to_daemon(plain(d))  # Dask's event log hands lists back as tuples
        kind = d.get("kind")
        if kind == "begin":
            if j.run is None:
                j.run, j.worker, j.host, j.worker_pid = d["run"], d.get("worker"), d.get("host"), d.get("worker_pid")
                j.started = j.phase_started = time.monotonic()
                j.phase = "prepare"
                if j.cancel_sent:  # cancelled before it began, and it began after all: wait for the kill
                    j.confirm_by = time.monotonic() + self.kill_grace + CONFIRM_SECONDS
                elif j.outcome is not None:
                    self.cancel_future(j)
                elif self.stop_by is not None:
                    self.interrupt(j)
            elif d["run"] != j.run and j.outcome is None:
                j.outcome = ("died", f"the Dask worker {j.worker} was lost during {j.phase}, and Dask started "
                                     f"the frame again on {d.get('worker')}; stopped there, stdd retries it")
                log.warning("frame=%d %s", j.job.frame_id, j.outcome[1])
                self.cancel_future(j)
                j.confirm_by = time.monotonic() + self.kill_grace + CONFIRM_SECONDS
            return
        if d.get("run") != j.run:
            if kind in ("finished", "lost") and j.outcome is not None:
                self.finish(j, None)  # the second run is confirmed gone
            return
        info = {"worker": j.worker, "host": j.host, "frame_pid": d.get("pid")}
        if d.get("pid"):
            j.frame_pid = d.get("pid")
        data = d.get("data") or {}
        if kind == "stage_start":
            j.phase, j.phase_started = d.get("stage"), time.monotonic()
            self.emit("stage_start", j, stage=d.get("stage"), time=d.get("time") or time.time(), data=info)
        elif kind == "stage_end":
            self.emit("stage_end", j, stage=d.get("stage"), state=d.get("state"), error=d.get("error"),
                      seconds=d.get("seconds"), time=d.get("time") or time.time(), data={**data, **info})
            j.phase, j.phase_started = "between stages", time.monotonic()
            if self.stop_by is not None and not self._is_last_stage(j, d.get("stage")):
                self.interrupt(j)
        elif kind in ("finished", "lost"):
            self.finish(j, {**d, "data": data})

    @staticmethod
    def _is_last_stage(j: Job, stage: str | None) -> bool:
        from ...pipeline import select_steps

        try:
            steps = select_steps(j.job.steps)
        except ValueError:
            return False
        return bool(steps) and stage == steps[-1]

    def finish(self, j: Job, d: dict | None, cause: tuple[str, str] | None = None) -> None:
        """The job's one terminal event. `d`: the worker's own terminal event, if it came."""
        with self.lock:
            if self.jobs.pop(j.token, None) is None:
                return
            self.by_frame.pop(j.job.frame_id, None)
            self.unpolled += 1  # in the same step as the pop: the slot never looks free early
            j.released = True
        f, j.future = j.future, None
        if f is not None:  # the cluster forgets the task (and stops any run of it Dask still makes)
            try:
                f.release()
            except Exception:
                pass
        seconds = round(time.monotonic() - (j.started or j.submitted), 3)
        stage = j.phase if j.phase not in ("queued on the cluster",) else None
        where = {"worker": j.worker, "host": j.host}
        if d is not None and d.get("kind") == "finished":
            self.emit("finished", j, state=d.get("state") or "failed", error=d.get("error"),
                      data={**(d.get("data") or {}), **where}, seconds=d.get("seconds") or seconds)
        elif j.outcome is not None:
            self.emit("lost", j, state=j.outcome[0], error=j.outcome[1], stage=d.get("stage") if d else stage,
                      data=where)
        elif d is not None and d.get("state") == "cancelled":  # not by stdd: the cluster dropped the task
            self.emit("lost", j, state="died", error=f"the Dask task was cancelled on {j.worker} outside stdd "
                                                     f"during {d.get('stage') or stage}", stage=d.get("stage"),
                      data=where)
        elif d is not None:
            self.emit("lost", j, state=d.get("state") or "error", error=d.get("error"), stage=d.get("stage"),
                      data={**(d.get("data") or {}), **where})
        else:
            state, error = cause or ("error", "the Dask task ended without a result")
            self.emit("lost", j, state=state, error=error, stage=stage, data=where)

    def on_done(self, token: str) -> None:
        with self.lock:
            j = self.jobs.get(token)
        if j is None or j.future is None:
            return
        f = j.future
        status = f.status
        if status == "finished":
            try:
                events = f.result(timeout=60)
            except Exception as e:
                self.finish(j, None, ("error", f"cannot fetch the frame's result from Dask: {type(e).__name__}: {e}"))
                return
            for d in events or []:
                self.on_event(d)
            if token in self.jobs:
                self.finish(j, None, ("error", "the Dask task returned without a terminal event"))
            return
        if status == "error":
            try:
                exc = f.exception(timeout=30)
            except Exception as e:
                exc = e
            from distributed import KilledWorker

            if isinstance(exc, KilledWorker):
                self.finish(j, None, ("died", f"the Dask worker {j.worker or '(unknown)'} died during "
                                              f"{j.phase if j.run else 'the start'}"))
            else:
                self.finish(j, None, ("error", f"on the Dask worker {j.worker or '(unknown)'}: "
                                               f"{type(exc).__name__}: {exc}"))
            return
        # cancelled (or lost): by us → wait for the worker's confirmation; else the scheduler did
        if j.outcome is not None:
            if not j.cancel_sent:
                self.cancel_future(j)
            return
        j.outcome = ("died", f"the Dask scheduler dropped the frame's task ({status}: the connection to "
                             f"{self.scheduler} was lost?)")
        j.cancel_sent = True
        j.confirm_by = time.monotonic() + (self.kill_grace + CONFIRM_SECONDS if j.run else NOT_BEGUN_SETTLE)

    def check_deadlines(self) -> None:
        now = time.monotonic()
        with self.lock:
            jobs = list(self.jobs.values())
        for j in jobs:
            if self.stop_by is not None and now >= self.stop_by and not j.cancel_sent:
                self.interrupt(j)
            if j.confirm_by is not None and now >= j.confirm_by:
                if j.outcome and j.run is not None:
                    j.outcome = (j.outcome[0], f"{j.outcome[1]} (the worker {j.worker} did not confirm the kill)")
                self.finish(j, None)


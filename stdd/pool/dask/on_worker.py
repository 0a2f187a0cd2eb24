"""What runs in the Dask processes: the frame task on a worker, the worker's own frame pool
(one `LocalPool` per worker process), the plugin that warms it up, and the one call the
executor makes on the scheduler. Dask pickles these functions by reference, so workers import
this module: it holds nothing of the daemon side."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..executor import FrameJob
from .wire import plain

log = logging.getLogger("stdd.pool.dask")


class WorkerSide:
    """One per Dask worker process: a LocalPool and the thread that routes its events to the
    task threads waiting for them."""

    def __init__(self, settings: dict[str, Any]):
        from ..local import LocalPool

        # Dask starts worker processes as daemonic, and multiprocessing refuses to start a
        # child from a daemonic process. The flag only matters for that check here (the nanny
        # holds its own handle on this process), so it is lifted in this process.
        proc = mp.current_process()
        if proc.daemon:
            proc.daemon = False
        # Dask's threads bound how many frames run here; the pool itself takes them all
        self.pool = LocalPool(1 << 16, **settings)
        self.pool.start()
        self.queues: dict[int, queue.Queue] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        threading.Thread(target=self._route, name="stdd-dask-route", daemon=True).start()

    def _route(self) -> None:
        while self.pool.alive:
            for ev in self.pool.poll(0.5):
                with self.lock:
                    q = self.queues.get(ev.frame_id)
                if q is not None:
                    q.put(ev)

    def register(self) -> tuple[int, queue.Queue]:
        with self.lock:
            inner = next(self.ids)
            q = self.queues[inner] = queue.Queue()
        return inner, q

    def unregister(self, inner: int) -> None:
        with self.lock:
            self.queues.pop(inner, None)


_side: WorkerSide | None = None
_side_lock = threading.Lock()


def worker_side(settings: dict[str, Any]) -> WorkerSide:
    """This worker process's side: made on first use (or again if its pool died), else
    given the settings the daemon sent with this frame."""
    global _side
    with _side_lock:
        if _side is None or not _side.pool.alive:
            _side = WorkerSide(settings)
        else:
            _side.pool.configure(**settings)
        return _side


def warm_worker(settings: dict[str, Any] | None = None) -> int:
    """Start this worker's frame pool (its fork server imports the stages now, not when the
    first frame comes). Run on every worker with `client.run`. Returns the worker's pid."""
    worker_side(settings or {})
    return os.getpid()


class WarmPool(WorkerPlugin):
    """A Dask worker plugin: start the worker's frame pool when the worker starts (its fork
    server imports the stages then, not when the first frame comes)."""

    name = "stdd-warm-pool"

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def setup(self, worker) -> None:
        try:
            warm_worker(self.settings)
        except Exception as e:  # not fatal: the first frame starts the pool
            log.warning("stdd: cannot start the frame pool on %s: %s", worker.address, e)


_WORKER_GOING = {"closing", "closing_gracefully", "closed", "stopping", "stopped", "failed"}


def _task_cancelled(worker, key) -> bool:
    """The daemon cancelled the task, its client went away, or this worker is closing (it
    lost the scheduler, or is being stopped): the frame will not be reported from here."""
    if getattr(worker.status, "name", "running") in _WORKER_GOING:
        return True
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state == "cancelled"


def run_frame_task(job_data: dict[str, Any], topic: str, token: str, settings: dict[str, Any]) -> list[dict]:
    """The Dask task: run one frame in this worker's pool, relay its events on `topic`, and
    return them all. A cancel of the task (by the daemon, or because the daemon's client went
    away) kills the frame's process group."""
    from distributed import get_worker
    from distributed.worker import thread_state

    worker = get_worker()
    key = getattr(thread_state, "key", None)
    run = uuid.uuid4().hex[:12]
    events: list[dict] = []
    frame_id = job_data["frame_id"]

    def emit(d: dict) -> None:
        d = plain({**d, "frame_id": frame_id, "attempt": job_data["attempt"], "token": token, "run": run,
                    "seq": len(events)})
        events.append(d)
        try:
            worker.log_event(topic, d)
        except Exception as e:  # the task's result still carries it
            log.warning("frame=%s cannot send an event to the daemon: %s", frame_id, e)

    side = worker_side(settings)
    inner, q = side.register()
    try:
        emit({"kind": "begin", "time": time.time(), "worker": worker.address, "host": socket.gethostname(),
              "worker_pid": os.getpid()})
        side.pool.submit(FrameJob(**{**job_data, "frame_id": inner}))
        cancel_sent = False
        while True:
            try:
                ev = q.get(timeout=0.3)
            except queue.Empty:
                ev = None
            if ev is not None:
                emit(dataclasses.asdict(ev))
                if ev.kind in ("finished", "lost"):
                    return events
            if not cancel_sent and key is not None and _task_cancelled(worker, key):
                side.pool.cancel(inner, "the Dask task was cancelled")
                cancel_sent = True
    finally:
        side.unregister(inner)


def warm_and_wait(settings: dict[str, Any]) -> int:
    """Start this worker's frame pool and wait until its fork server has imported its preload
    list (run on every worker with `client.run` before timing). Returns the worker's pid."""
    worker_side(settings)
    ctx = mp.get_context("forkserver")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(120)
    return os.getpid()


def no_dask_retries_on_lost_workers(dask_scheduler=None) -> int:
    """Run on the scheduler: a task whose worker dies fails (KilledWorker) rather than being
    run again by Dask; the daemon decides about retries. Returns the previous value."""
    before = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = 0
    return before

"""`DaskExecutor`: the daemon side of running frames on a Dask cluster (see the package's
design note), and its connection to the scheduler.

Design note: one supervisor thread owns the connection (connect, reconnect every
`RECONNECT_SECONDS`, the cluster's size every `REFRESH_SECONDS`) and everything that comes
from Dask (events, futures ending, cancels, the shutdown), which it hands to the `JobBook`;
the Executor calls (submit, cancel, poll, status) come from the daemon's loop and only take
the book's lock briefly.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from typing import Any

from ..executor import Executor, FrameJob, PoolEvent
from .jobs import Job, JobBook
from .on_worker import WarmPool, no_dask_retries_on_lost_workers, run_frame_task
from .wire import PathMap

log = logging.getLogger("stdd.pool.dask")

#: how often the cluster's thread count is asked for, and a lost scheduler reconnected
REFRESH_SECONDS = 2.0
RECONNECT_SECONDS = 5.0


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, scheduler: str, *, workers: int = 0, stage_timeout: float = 1800.0,
                 stage_timeouts: dict[str, float] | None = None, kill_grace: float = 10.0,
                 path_map: dict[str, str] | None = None, connect_timeout: float = 10.0,
                 set_allowed_failures: bool = True, warm: bool = True, frames_per_process: int = 20,
                 process_max_rss_mb: float = 3000.0):
        if not scheduler:
            raise ValueError('pool.executor = "dask" needs pool.dask_scheduler (e.g. "tcp://head:8786")')
        self.scheduler = scheduler
        self.max_frames = max(0, int(workers))   # 0: as many as the cluster has threads
        self.stage_timeout = float(stage_timeout)
        self.stage_timeouts = dict(stage_timeouts or {})
        self.paths = PathMap(path_map)
        self.book = JobBook(scheduler=scheduler, kill_grace=kill_grace, paths=self.paths)
        # a worker's frame process that ended its frame cleanly takes the next (as in the local pool)
        self.frames_per_process = max(1, int(frames_per_process))
        self.process_max_rss_mb = float(process_max_rss_mb)
        self.connect_timeout = float(connect_timeout)
        self.set_allowed_failures = set_allowed_failures
        self.warm = warm
        self.topic = f"stdd-frames-{uuid.uuid4().hex[:12]}"
        self.client = None
        self.connected = False
        self.last_error: str | None = None
        self.cluster_threads = 0
        self.cluster_workers = 0
        self._cluster_logged: tuple[int, int] | None = None
        self._inbox: "queue.Queue[tuple]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next_refresh = 0.0
        self._next_connect = 0.0
        self._connected_once = threading.Event()

    @classmethod
    def from_settings(cls, pool) -> "DaskExecutor":
        return cls(pool.dask_scheduler or "", workers=pool.workers, stage_timeout=pool.stage_timeout_seconds,
                   stage_timeouts=dict(pool.stage_timeouts), kill_grace=pool.kill_grace_seconds,
                   path_map=dict(pool.dask_path_map), frames_per_process=pool.frames_per_process,
                   process_max_rss_mb=pool.process_max_rss_mb)

    # -- state kept in the book ------------------------------------------------------------
    # (the base class's slot accounting, `_poll_queue` and `end_recorded`, works on these)
    @property
    def _lock(self) -> threading.RLock:
        return self.book.lock

    @property
    def _events(self) -> "queue.Queue[PoolEvent]":
        return self.book.events

    @property
    def _unpolled(self) -> int:
        return self.book.unpolled

    @_unpolled.setter
    def _unpolled(self, value: int) -> None:
        self.book.unpolled = value

    @property
    def kill_grace(self) -> float:
        return self.book.kill_grace

    @kill_grace.setter
    def kill_grace(self, value: float) -> None:
        self.book.kill_grace = float(value)

    # -- the Executor calls ----------------------------------------------------------------
    def start(self) -> None:
        """Connect (waiting up to `connect_timeout`); if the scheduler cannot be reached yet,
        the executor keeps trying in the background and takes no frames meanwhile."""
        self._thread = threading.Thread(target=self._supervise, name="stdd-dask", daemon=True)
        self._thread.start()
        if not self._connected_once.wait(self.connect_timeout + 1):
            log.error("pool: dask: cannot reach the scheduler at %s yet (%s); frames wait in the queue",
                      self.scheduler, self.last_error or "no answer")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def free_slots(self) -> int:
        if self._stopping or not self.connected:
            return 0
        with self._lock:
            cap = self.cluster_threads if not self.max_frames else min(self.max_frames, self.cluster_threads)
            return max(0, cap - self.book.busy())

    def submit(self, job: FrameJob) -> None:
        if self._stopping:
            raise RuntimeError("the pool is stopping")
        if not self.alive:
            raise RuntimeError("the Dask executor's supervisor is not running")
        client = self.client
        if client is None or not self.connected:
            raise RuntimeError(f"not connected to the Dask scheduler at {self.scheduler}")
        token = uuid.uuid4().hex
        key = f"stdd-frame-{job.frame_id}-{job.attempt}-{token[:8]}"
        settings = self.worker_settings()
        data = job.to_dict()
        if self.paths:
            data = self.paths.to_worker(data)
        with self._lock:
            if self.book.of_frame(job.frame_id) is not None:
                raise RuntimeError(f"frame {job.frame_id} is already running")
            future = client.submit(run_frame_task, data, self.topic, token, settings, key=key, pure=False,
                                   retries=0, priority=int(job.priority or 0))
            now = time.monotonic()
            self.book.add(Job(job=job, token=token, key=key, future=future, submitted=now, phase_started=now))
        future.add_done_callback(lambda f, t=token: self._inbox.put(("done", t)))

    def cancel(self, frame_id: int, reason: str = "cancelled by request") -> bool:
        with self._lock:
            j = self.book.of_frame(frame_id)
            if j is None:
                return False
            if j.outcome is None:
                j.outcome = ("cancelled", reason)
        self._inbox.put(("cancel", j.token))
        return True

    def poll(self, timeout: float = 0.0) -> list[PoolEvent]:
        """As the local pool's: a frame's slot stays busy until its terminal event is handed
        out here, so the daemon has seen a loss (and may pause) before the slot is refilled."""
        return self._poll_queue(timeout)

    def running_ids(self) -> list[int]:
        with self._lock:
            return list(self.book.by_frame)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            running = [
                {"frame_id": j.job.frame_id, "attempt": j.job.attempt, "pid": None, "stage": j.phase,
                 "seconds": round(now - (j.started or j.submitted), 1), "stage_seconds": round(now - j.phase_started, 1),
                 "worker": j.worker, "host": j.host, "worker_pid": j.worker_pid, "frame_pid": j.frame_pid,
                 "priority": j.job.priority, "key": j.key}
                for j in self.book.all()
            ]
        return {"executor": self.name, "workers": self.max_frames or self.cluster_threads, "running": running,
                "alive": self.alive, "scheduler": self.scheduler, "connected": self.connected,
                "cluster": {"workers": self.cluster_workers, "threads": self.cluster_threads},
                "last_error": self.last_error, "stage_timeout_seconds": self.stage_timeout,
                "stage_timeouts": self.stage_timeouts}

    def configure(self, *, workers: int | None = None, stage_timeout: float | None = None,
                  stage_timeouts: dict[str, float] | None = None, kill_grace: float | None = None,
                  frames_per_process: int | None = None, process_max_rss_mb: float | None = None) -> None:
        with self._lock:
            if frames_per_process is not None:  # sent with each frame: the workers' pools take it then
                self.frames_per_process = max(1, int(frames_per_process))
            if process_max_rss_mb is not None:
                self.process_max_rss_mb = float(process_max_rss_mb)
            # The daemon passes `pool.workers` resolved against this machine's cores when it is
            # 0; for a cluster, 0 means "as many frames as the cluster has threads": keep that.
            if workers is not None and not (self.max_frames == 0 and workers == (os.cpu_count() or 1)):
                self.max_frames = max(0, int(workers))
            if stage_timeout is not None:
                self.stage_timeout = float(stage_timeout)
            if stage_timeouts is not None:
                self.stage_timeouts = dict(stage_timeouts)
            if kill_grace is not None:
                self.kill_grace = float(kill_grace)

    def shutdown(self, grace: float) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._inbox.put(("shutdown", float(grace)))
        self._thread.join()
        self._thread = None

    # -- supervisor thread -----------------------------------------------------------------
    def _supervise(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if not self._stopping and now >= self._next_connect and not self._client_ok():
                    self._connect()
                if self.connected and now >= self._next_refresh:
                    self._refresh()
                try:
                    item = self._inbox.get(timeout=0.25)
                except queue.Empty:
                    item = None
                while item is not None:
                    self._handle(item)
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = None
                self.book.check_deadlines()
                idle = not self.book.all()
                if self._stopping and idle and self._inbox.empty():
                    break
        except Exception:
            log.exception("pool: dask: the supervisor failed; cancelling every frame task")
            for j in self.book.all():
                self.book.cancel_future(j)
            raise
        finally:
            self._close_client(deliberate=True)

    def _client_ok(self) -> bool:
        c = self.client
        return c is not None and c.status not in ("closed", "closing", "newly-created")

    def _connect(self) -> None:
        from distributed import Client

        self._next_connect = time.monotonic() + RECONNECT_SECONDS
        self._close_client()
        try:
            client = Client(self.scheduler, timeout=self.connect_timeout, set_as_default=False,
                            name=f"stdd-daemon-{socket.gethostname()}-{os.getpid()}")
        except Exception as e:
            self.connected = False
            self.last_error = f"cannot connect to {self.scheduler}: {type(e).__name__}: {e}"
            log.debug("pool: dask: %s", self.last_error)
            return
        self.client = client
        client.subscribe_topic(self.topic, lambda event: self._inbox.put(("event", event[1])))
        if self.set_allowed_failures:
            try:
                before = client.run_on_scheduler(no_dask_retries_on_lost_workers)
                if before:
                    log.info("pool: dask: set the scheduler's allowed-failures from %s to 0: stdd retries frames "
                             "itself", before)
            except Exception as e:
                log.warning("pool: dask: cannot set the scheduler's allowed-failures to 0 (%s); a frame on a "
                            "worker that dies may be run again by Dask before stdd retries it", e)
        if self.warm:
            try:  # every worker, and every worker that joins later, starts its frame pool now
                client.register_plugin(WarmPool(self.worker_settings()), name="stdd-warm-pool")
            except Exception as e:
                log.warning("pool: dask: cannot register the warm-up plugin (%s); first frames start cold", e)
        self.connected = True
        self.last_error = None
        log.info("pool: dask, connected to the scheduler at %s", self.scheduler)
        self._refresh()
        self._connected_once.set()

    def worker_settings(self) -> dict[str, Any]:
        """What every worker's frame pool is configured with (sent with each frame)."""
        return {"stage_timeout": self.stage_timeout, "stage_timeouts": self.stage_timeouts,
                "kill_grace": self.kill_grace, "frames_per_process": self.frames_per_process,
                "process_max_rss_mb": self.process_max_rss_mb}

    def _refresh(self) -> None:
        self._next_refresh = time.monotonic() + REFRESH_SECONDS
        try:
            threads = self.client.nthreads()
        except Exception as e:
            self.last_error = f"scheduler not answering: {type(e).__name__}: {e}"
            self._set_connected(self._client_ok() and self.client.status == "running")
            return
        with self._lock:
            self.cluster_workers = len(threads)
            self.cluster_threads = int(sum(threads.values()))
        if self._cluster_logged != (self.cluster_workers, self.cluster_threads):
            self._cluster_logged = (self.cluster_workers, self.cluster_threads)
            log.log(logging.WARNING if not self.cluster_threads else logging.INFO,
                    "pool: dask: the cluster has %d worker(s), %d thread(s)%s", self.cluster_workers,
                    self.cluster_threads, "; frames wait in the queue" if not self.cluster_threads else "")
        self._set_connected(self.client.status == "running")

    def _set_connected(self, value: bool) -> None:
        if self.connected and not value:
            log.warning("pool: dask: lost the scheduler at %s (%s); frames wait in the queue, reconnecting",
                        self.scheduler, self.last_error or "connection closed")
        self.connected = value

    def _close_client(self, deliberate: bool = False) -> None:
        c, self.client = self.client, None
        if deliberate:
            self.connected = False
        else:
            self._set_connected(False)
        if c is None:
            return
        try:
            c.unsubscribe_topic(self.topic)
        except Exception:
            pass
        try:
            c.close(timeout=5)
        except Exception:
            pass

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "event":
            self.book.on_event(item[1])
        elif kind == "done":
            self.book.on_done(item[1])
        elif kind == "cancel":
            j = self.book.get(item[1])
            if j is not None:
                self.book.cancel_future(j)
        elif kind == "shutdown":
            self.book.begin_shutdown(item[1])

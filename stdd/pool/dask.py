"""Running frame jobs on a Dask distributed cluster (`[pool] executor = "dask"`).

Design note: a frame is one Dask task, and on the worker that task runs the frame exactly as
the local pool does — each Dask worker process keeps one `LocalPool` of its own, and the task
hands it the frame and relays what it reports. So a frame on a Dask worker gets the same
process group (a cancel or a timeout kills SExtractor, SCAMP, HOTPANTS too), the same per-stage
timeouts, the same death detection and the same events as on the daemon's machine; nothing of
that is written twice. The Dask task only occupies one worker thread while its frame's process
works, so a worker's `--nthreads` is how many frames it runs at once.

Events flow back as Dask structured events (`Worker.log_event` on a topic private to this
executor, `Client.subscribe_topic` here), numbered per run so that the copy the task also
returns as its result fills any gap and duplicates are dropped. The daemon sees the same
`PoolEvent`s as from the local pool, except that `pid` is None (a pid on another machine must
never reach the daemon's crash recovery, which kills stale local process groups); the worker,
its host and the frame's pid there are in the events' `data` and in `status()`.

Retries are ours only: the scheduler's `allowed-failures` is set to 0 at start (a task whose
worker dies fails with KilledWorker instead of being run again somewhere), and tasks are
submitted with `retries=0`, so the daemon's `max_attempts` and back-off apply as with the local
pool. If Dask still starts a second run of a task (a worker that left politely), the executor
cancels it and reports the frame lost, and the daemon retries it. A cancel (and a timeout on the
worker) kills the frame's process group there; the lost event waits for the worker to confirm
it (or for `kill_grace` + `CONFIRM_SECONDS` if the worker is gone). At shutdown, a frame stops
after its current stage (the executor cancels it at its next stage end unless that was its last
stage), and whatever still runs after the grace period is cancelled.

Paths: workers must see the daemon's spool, work and results folders (shared storage); where a
worker mounts them elsewhere, `[pool] dask_path_map` maps daemon-side prefixes to worker-side
ones in the job, and back in what comes back.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError('pool.executor = "dask" needs Dask distributed: pip install "stdd[dask]"') from e

from .executor import Executor, FrameJob, PoolEvent

log = logging.getLogger("stdd.pool.dask")

#: after a cancel, how long (beyond kill_grace) to wait for the worker to confirm the kill
CONFIRM_SECONDS = 15.0
#: after cancelling a task that had not begun, how long to wait for a begin still on its way
NOT_BEGUN_SETTLE = 2.0
#: how often the cluster's thread count is asked for, and a lost scheduler reconnected
REFRESH_SECONDS = 2.0
RECONNECT_SECONDS = 5.0


# =========================================================================================
# paths as the daemon and the workers see them
# =========================================================================================
class PathMap:
    """Daemon-side path prefix → worker-side prefix, applied to every path in the strings of
    a job (and backwards to what comes back, error messages included). A prefix matches whole
    path components only."""

    def __init__(self, mapping: dict[str, str] | None = None):
        self.pairs = [(_norm(a), _norm(b)) for a, b in (mapping or {}).items() if _norm(a) != _norm(b)]
        for a, b in self.pairs:
            if not a.startswith("/") or not b.startswith("/"):
                raise ValueError(f"pool.dask_path_map: {a!r} -> {b!r}: both sides must be absolute paths")

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def to_worker(self, obj):
        return self._apply(obj, [(re.compile(_prefix_re(a)), b) for a, b in self.pairs])

    def to_daemon(self, obj):
        return self._apply(obj, [(re.compile(_prefix_re(b)), a) for a, b in self.pairs])

    def _apply(self, obj, rules):
        if not rules:
            return obj
        if isinstance(obj, str):
            for rx, repl in rules:
                obj = rx.sub(lambda m: repl, obj)
            return obj
        if isinstance(obj, dict):
            return {k: self._apply(v, rules) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._apply(v, rules) for v in obj)
        return obj


def _norm(p: str) -> str:
    p = str(p)
    return p.rstrip("/") or "/"


def _prefix_re(prefix: str) -> str:
    # the prefix as a path of its own: at the start, or after a space, quote, "local:"...
    # (paths also appear in messages), and not continued by more of a name ("/data2")
    return r"(?<![\w./~-])" + re.escape(prefix) + r"(?![\w.~-])"


# =========================================================================================
# the worker side: what runs in a Dask worker process
# =========================================================================================
class _WorkerSide:
    """One per Dask worker process: a LocalPool and the thread that routes its events to the
    task threads waiting for them."""

    def __init__(self, settings: dict[str, Any]):
        from .local import LocalPool

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


_side: _WorkerSide | None = None
_side_lock = threading.Lock()


def _worker_side(settings: dict[str, Any]) -> _WorkerSide:
    global _side
    with _side_lock:
        if _side is None or not _side.pool.alive:
            _side = _WorkerSide(settings)
        else:
            _side.pool.configure(**settings)
        return _side


def warm_worker(settings: dict[str, Any] | None = None) -> int:
    """Start this worker's frame pool (its fork server imports the stages now, not when the
    first frame comes). Run on every worker with `client.run`. Returns the worker's pid."""
    _worker_side(settings or {})
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
        d = _plain({**d, "frame_id": frame_id, "attempt": job_data["attempt"], "token": token, "run": run,
                    "seq": len(events)})
        events.append(d)
        try:
            worker.log_event(topic, d)
        except Exception as e:  # the task's result still carries it
            log.warning("frame=%s cannot send an event to the daemon: %s", frame_id, e)

    side = _worker_side(settings)
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


def _plain(obj):
    """JSON-like data (what Dask's event log can carry): numpy scalars, paths → plain values."""
    return json.loads(json.dumps(obj, default=_default))


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# =========================================================================================
# the daemon side
# =========================================================================================
@dataclass
class _Job:
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
    released: bool = False              # its slot moved from the jobs to unpolled (see _finish)


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
        self.kill_grace = float(kill_grace)
        # a worker's frame process that ended its frame cleanly takes the next (as in the local pool)
        self.frames_per_process = max(1, int(frames_per_process))
        self.process_max_rss_mb = float(process_max_rss_mb)
        self.paths = PathMap(path_map)
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
        self._jobs: dict[str, _Job] = {}          # by token
        self._by_frame: dict[int, str] = {}
        self._unpolled = 0  # ended, terminal event not yet handed out by poll(): still a busy slot (as LocalPool)
        self._lock = threading.RLock()
        self._inbox: "queue.Queue[tuple]" = queue.Queue()
        self._events: "queue.Queue[PoolEvent]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_by: float | None = None
        self._next_refresh = 0.0
        self._next_connect = 0.0
        self._connected_once = threading.Event()

    @classmethod
    def from_settings(cls, pool) -> "DaskExecutor":
        return cls(pool.dask_scheduler or "", workers=pool.workers, stage_timeout=pool.stage_timeout_seconds,
                   stage_timeouts=dict(pool.stage_timeouts), kill_grace=pool.kill_grace_seconds,
                   path_map=dict(pool.dask_path_map), frames_per_process=pool.frames_per_process,
                   process_max_rss_mb=pool.process_max_rss_mb)

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
            return max(0, cap - len(self._jobs) - self._unpolled)

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
        settings = self._worker_settings()
        data = job.to_dict()
        if self.paths:
            data = self.paths.to_worker(data)
        with self._lock:
            if job.frame_id in self._by_frame:
                raise RuntimeError(f"frame {job.frame_id} is already running")
            future = client.submit(run_frame_task, data, self.topic, token, settings, key=key, pure=False,
                                   retries=0, priority=int(job.priority or 0))
            now = time.monotonic()
            self._jobs[token] = _Job(job=job, token=token, key=key, future=future, submitted=now, phase_started=now)
            self._by_frame[job.frame_id] = token
        future.add_done_callback(lambda f, t=token: self._inbox.put(("done", t)))

    def cancel(self, frame_id: int, reason: str = "cancelled by request") -> bool:
        with self._lock:
            j = self._jobs.get(self._by_frame.get(frame_id, ""))
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
            return list(self._by_frame)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            running = [
                {"frame_id": j.job.frame_id, "attempt": j.job.attempt, "pid": None, "stage": j.phase,
                 "seconds": round(now - (j.started or j.submitted), 1), "stage_seconds": round(now - j.phase_started, 1),
                 "worker": j.worker, "host": j.host, "worker_pid": j.worker_pid, "frame_pid": j.frame_pid,
                 "priority": j.job.priority, "key": j.key}
                for j in self._jobs.values()
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
                self._check_deadlines()
                with self._lock:
                    idle = not self._jobs
                if self._stopping and idle and self._inbox.empty():
                    break
        except Exception:
            log.exception("pool: dask: the supervisor failed; cancelling every frame task")
            with self._lock:
                jobs = list(self._jobs.values())
            for j in jobs:
                self._cancel_future(j)
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
                before = client.run_on_scheduler(_no_dask_retries_on_lost_workers)
                if before:
                    log.info("pool: dask: set the scheduler's allowed-failures from %s to 0: stdd retries frames "
                             "itself", before)
            except Exception as e:
                log.warning("pool: dask: cannot set the scheduler's allowed-failures to 0 (%s); a frame on a "
                            "worker that dies may be run again by Dask before stdd retries it", e)
        if self.warm:
            try:  # every worker, and every worker that joins later, starts its frame pool now
                client.register_plugin(WarmPool(self._worker_settings()), name="stdd-warm-pool")
            except Exception as e:
                log.warning("pool: dask: cannot register the warm-up plugin (%s); first frames start cold", e)
        self.connected = True
        self.last_error = None
        log.info("pool: dask, connected to the scheduler at %s", self.scheduler)
        self._refresh()
        self._connected_once.set()

    def _worker_settings(self) -> dict[str, Any]:
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
            self._on_event(item[1])
        elif kind == "done":
            self._on_done(item[1])
        elif kind == "cancel":
            with self._lock:
                j = self._jobs.get(item[1])
            if j is not None:
                self._cancel_future(j)
        elif kind == "shutdown":
            self._stop_by = time.monotonic() + item[1]
            with self._lock:
                jobs = list(self._jobs.values())
            for j in jobs:  # not yet in a stage: stop now; in one: at its end (see _on_event)
                if j.run is None or j.phase in ("prepare", "between stages"):
                    self._interrupt(j)

    def _interrupt(self, j: _Job) -> None:
        if j.outcome is None:
            j.outcome = ("interrupted", "stopped by the daemon's shutdown" if j.run is not None
                         else "not started before the daemon's shutdown")
        self._cancel_future(j)

    def _cancel_future(self, j: _Job) -> None:
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

    def _emit(self, kind: str, j: _Job, **kw) -> None:
        if kind in ("finished", "lost") and not j.released:
            with self._lock:
                self._unpolled += 1
        self._events.put(PoolEvent(kind=kind, frame_id=j.job.frame_id, attempt=j.job.attempt, pid=None, **kw))

    def _on_event(self, d: dict) -> None:
        if not isinstance(d, dict):
            return
        with self._lock:
            j = self._jobs.get(d.get("token"))
        if j is None or (d.get("run"), d.get("seq")) in j.seen:
            return
        j.seen.add((d.get("run"), d.get("seq")))
        d = self.paths.to_daemon(_plain(d))  # Dask's event log hands lists back as tuples
        kind = d.get("kind")
        if kind == "begin":
            if j.run is None:
                j.run, j.worker, j.host, j.worker_pid = d["run"], d.get("worker"), d.get("host"), d.get("worker_pid")
                j.started = j.phase_started = time.monotonic()
                j.phase = "prepare"
                if j.cancel_sent:  # cancelled before it began, and it began after all: wait for the kill
                    j.confirm_by = time.monotonic() + self.kill_grace + CONFIRM_SECONDS
                elif j.outcome is not None:
                    self._cancel_future(j)
                elif self._stop_by is not None:
                    self._interrupt(j)
            elif d["run"] != j.run and j.outcome is None:
                j.outcome = ("died", f"the Dask worker {j.worker} was lost during {j.phase}, and Dask started "
                                     f"the frame again on {d.get('worker')}; stopped there, stdd retries it")
                log.warning("frame=%d %s", j.job.frame_id, j.outcome[1])
                self._cancel_future(j)
                j.confirm_by = time.monotonic() + self.kill_grace + CONFIRM_SECONDS
            return
        if d.get("run") != j.run:
            if kind in ("finished", "lost") and j.outcome is not None:
                self._finish(j, None)  # the second run is confirmed gone
            return
        info = {"worker": j.worker, "host": j.host, "frame_pid": d.get("pid")}
        if d.get("pid"):
            j.frame_pid = d.get("pid")
        data = d.get("data") or {}
        if kind == "stage_start":
            j.phase, j.phase_started = d.get("stage"), time.monotonic()
            self._emit("stage_start", j, stage=d.get("stage"), time=d.get("time") or time.time(), data=info)
        elif kind == "stage_end":
            self._emit("stage_end", j, stage=d.get("stage"), state=d.get("state"), error=d.get("error"),
                       seconds=d.get("seconds"), time=d.get("time") or time.time(), data={**data, **info})
            j.phase, j.phase_started = "between stages", time.monotonic()
            if self._stop_by is not None and not self._is_last_stage(j, d.get("stage")):
                self._interrupt(j)
        elif kind in ("finished", "lost"):
            self._finish(j, {**d, "data": data})

    @staticmethod
    def _is_last_stage(j: _Job, stage: str | None) -> bool:
        from ..pipeline import select_steps

        try:
            steps = select_steps(j.job.steps)
        except ValueError:
            return False
        return bool(steps) and stage == steps[-1]

    def _finish(self, j: _Job, d: dict | None, cause: tuple[str, str] | None = None) -> None:
        """The job's one terminal event. `d`: the worker's own terminal event, if it came."""
        with self._lock:
            if self._jobs.pop(j.token, None) is None:
                return
            self._by_frame.pop(j.job.frame_id, None)
            self._unpolled += 1  # in the same step as the pop: the slot never looks free early
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
            self._emit("finished", j, state=d.get("state") or "failed", error=d.get("error"),
                       data={**(d.get("data") or {}), **where}, seconds=d.get("seconds") or seconds)
        elif j.outcome is not None:
            self._emit("lost", j, state=j.outcome[0], error=j.outcome[1], stage=d.get("stage") if d else stage,
                       data=where)
        elif d is not None and d.get("state") == "cancelled":  # not by stdd: the cluster dropped the task
            self._emit("lost", j, state="died", error=f"the Dask task was cancelled on {j.worker} outside stdd "
                                                      f"during {d.get('stage') or stage}", stage=d.get("stage"),
                       data=where)
        elif d is not None:
            self._emit("lost", j, state=d.get("state") or "error", error=d.get("error"), stage=d.get("stage"),
                       data={**(d.get("data") or {}), **where})
        else:
            state, error = cause or ("error", "the Dask task ended without a result")
            self._emit("lost", j, state=state, error=error, stage=stage, data=where)

    def _on_done(self, token: str) -> None:
        with self._lock:
            j = self._jobs.get(token)
        if j is None or j.future is None:
            return
        f = j.future
        status = f.status
        if status == "finished":
            try:
                events = f.result(timeout=60)
            except Exception as e:
                self._finish(j, None, ("error", f"cannot fetch the frame's result from Dask: {type(e).__name__}: {e}"))
                return
            for d in events or []:
                self._on_event(d)
            if token in self._jobs:
                self._finish(j, None, ("error", "the Dask task returned without a terminal event"))
            return
        if status == "error":
            try:
                exc = f.exception(timeout=30)
            except Exception as e:
                exc = e
            from distributed import KilledWorker

            if isinstance(exc, KilledWorker):
                self._finish(j, None, ("died", f"the Dask worker {j.worker or '(unknown)'} died during "
                                               f"{j.phase if j.run else 'the start'}"))
            else:
                self._finish(j, None, ("error", f"on the Dask worker {j.worker or '(unknown)'}: "
                                                f"{type(exc).__name__}: {exc}"))
            return
        # cancelled (or lost): by us → wait for the worker's confirmation; else the scheduler did
        if j.outcome is not None:
            if not j.cancel_sent:
                self._cancel_future(j)
            return
        j.outcome = ("died", f"the Dask scheduler dropped the frame's task ({status}: the connection to "
                             f"{self.scheduler} was lost?)")
        j.cancel_sent = True
        j.confirm_by = time.monotonic() + (self.kill_grace + CONFIRM_SECONDS if j.run else NOT_BEGUN_SETTLE)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            if self._stop_by is not None and now >= self._stop_by and not j.cancel_sent:
                self._interrupt(j)
            if j.confirm_by is not None and now >= j.confirm_by:
                if j.outcome and j.run is not None:
                    j.outcome = (j.outcome[0], f"{j.outcome[1]} (the worker {j.worker} did not confirm the kill)")
                self._finish(j, None)


def _no_dask_retries_on_lost_workers(dask_scheduler=None) -> int:
    """Run on the scheduler: a task whose worker dies fails (KilledWorker) rather than being
    run again by Dask; the daemon decides about retries. Returns the previous value."""
    before = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = 0
    return before


# =========================================================================================
# running a set of jobs to the end (tests, `python -m bench`)
# =========================================================================================
def run_jobs(executor: Executor, jobs: Iterable[FrameJob], timeout: float = 600.0) -> dict[int, list[PoolEvent]]:
    """Submit jobs as the executor takes them and wait for every terminal event. Returns each
    frame's events in order (the last one terminal)."""
    pending = list(jobs)
    events: dict[int, list[PoolEvent]] = {j.frame_id: [] for j in pending}
    open_ids = set(events)
    deadline = time.monotonic() + timeout
    while open_ids:
        if time.monotonic() > deadline:
            raise TimeoutError(f"frames {sorted(open_ids)} did not finish in {timeout:g} s")
        while pending and executor.free_slots() > 0:
            executor.submit(pending.pop(0))
        for ev in executor.poll(0.2):
            if ev.frame_id in events:
                events[ev.frame_id].append(ev)
                if ev.kind in ("finished", "lost"):
                    open_ids.discard(ev.frame_id)
    return events


def comparable_result(result: dict) -> dict:
    """A result.json without what differs between two runs of the same frame (timings, the
    frame's own folders)."""
    out = {k: v for k, v in result.items() if k not in ("attempts",)}
    out["stages"] = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                     for k, v in (result.get("stages") or {}).items()}
    return _round_floats(out)


def _round_floats(o, digits: int = 9):
    if isinstance(o, float):
        return o if not math.isfinite(o) else float(f"{o:.{digits}g}")
    if isinstance(o, dict):
        return {k: _round_floats(v, digits) for k, v in o.items()}
    if isinstance(o, list):
        return [_round_floats(v, digits) for v in o]
    return o


def compare_local_vs_dask(frames: Iterable[str | os.PathLike], *, work_root: str | os.PathLike,
                          steps: list[str] | None = None, stage_settings: dict[str, Any] | None = None,
                          stage_functions: dict[str, str] | None = None, workers: int = 2,
                          scheduler: str | None = None, timeout: float = 1800.0,
                          frames_per_process: int = 20) -> dict[str, Any]:
    """Process the same frames with the local pool (`workers` processes) and on Dask (a
    `LocalCluster` of `workers` single-threaded worker processes, or the given scheduler), and
    compare. Wall times are from the first submit to the last result, both pools started and
    warmed first. Returns {'frames', 'local_seconds', 'dask_seconds', 'ratio' (dask / local),
    'same_results', 'differences', 'states'}."""
    from .local import LocalPool

    frames = [Path(f).absolute() for f in frames]
    root = Path(work_root).absolute()
    root.mkdir(parents=True, exist_ok=True)

    def jobs_for(kind: str) -> list[FrameJob]:
        out = []
        for i, f in enumerate(frames, 1):
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            out.append(FrameJob(frame_id=i, attempt=1, sha256=sha, source=str(f), origin=str(f),
                                work_dir=str(root / kind / "work" / str(i)),
                                result_dir=str(root / kind / "results" / f"{i}-{f.stem}"), steps=steps,
                                stage_settings=dict(stage_settings or {}),
                                stage_functions=dict(stage_functions or {}), extra={"frame_id": i}))
        return out

    def timed(executor: Executor, kind: str) -> tuple[float, dict[int, list[PoolEvent]]]:
        t0 = time.perf_counter()
        events = run_jobs(executor, jobs_for(kind), timeout)
        return time.perf_counter() - t0, events

    local = LocalPool(workers, frames_per_process=frames_per_process)
    local.start()
    try:
        _warm_local(local)
        local_s, local_events = timed(local, "local")
    finally:
        local.shutdown(5)

    cluster = None
    if scheduler is None:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster.scheduler_address
    dask_ex = DaskExecutor(scheduler, workers=workers, frames_per_process=frames_per_process)
    try:
        dask_ex.start()
        _warm_dask(dask_ex)
        dask_s, dask_events = timed(dask_ex, "dask")
    finally:
        dask_ex.shutdown(5)
        if cluster is not None:
            cluster.close()

    states, differences = {}, []
    for fid in sorted(local_events):
        a, b = local_events[fid][-1], dask_events[fid][-1]
        states[fid] = {"local": f"{a.kind}:{a.state}", "dask": f"{b.kind}:{b.state}"}
        ra = comparable_result((a.data or {}).get("result") or {}) if a.kind == "finished" else None
        rb = comparable_result((b.data or {}).get("result") or {}) if b.kind == "finished" else None
        if (a.kind, a.state) != (b.kind, b.state) or ra != rb:
            keys = sorted(k for k in set(ra or {}) | set(rb or {}) if (ra or {}).get(k) != (rb or {}).get(k))
            differences.append({"frame": str(frames[fid - 1]), "states": states[fid], "keys": keys})
    return {"frames": len(frames), "workers": workers, "local_seconds": round(local_s, 3),
            "dask_seconds": round(dask_s, 3), "ratio": round(dask_s / local_s, 3) if local_s > 0 else None,
            "same_results": not differences, "differences": differences, "states": states}


def _warm_local(pool) -> None:
    """Wait until the local pool's fork server has imported its preload list."""
    from multiprocessing import forkserver

    forkserver.ensure_running()
    ctx = mp.get_context("forkserver")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(120)


def _warm_dask(ex: DaskExecutor) -> None:
    """Wait until every worker's frame pool is started and its fork server has imported its
    preload list."""
    ex.client.run(_warm_and_wait, ex._worker_settings())


def _warm_and_wait(settings: dict[str, Any]) -> int:
    _worker_side(settings)
    ctx = mp.get_context("forkserver")
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join(120)
    return os.getpid()

"""The local supervised process pool.

Design note: each frame's chain runs in its own process, started from multiprocessing's
*forkserver* (a clean server process, forked once from the daemon before any thread of ours
runs, with stdd's pipeline, numpy and astropy — and stdpipe and the stages when installed —
already imported). A new frame process therefore costs a fork, not a Python start-up and a
minute of imports, and it inherits nothing of the daemon's threads, sockets or event loop.
`workers` is how many frame processes run at once.

The warm fork server holds the stage libraries (~300 MB), so it lives only while there is work:
it starts when a frame is on its way (the intake calls `prepare()` as soon as a file appears,
so the imports overlap the settle window) or at start-up with `warm_at_start`, and it stops
after `warm_idle` seconds with no frame (a night's frames keep it warm; the day does not pay
for it). Stopping uses the fork server's own stop call (private in Python 3.11, so guarded: if
it is missing the server simply stays up), and only ever when no frame process is alive, since
frame processes die with their fork server (parent-death signal).

A frame process that finished its frame cleanly stays, idle, for the next one (up to
`frames_per_process` frames and `process_max_rss_mb` of memory, then a new one): a process that
has run a frame runs the next ~10 % faster (its heap and its libraries' caches are warm), which
is most of what separated the daemon from a plain script. Isolation stays per frame where it
matters: a frame's programs are killed when its chain ends, and a frame that times out, is
cancelled or crashes takes its process with it.

One supervisor thread owns every process: it starts them, reads their pipes, applies the
per-stage timeout (SIGTERM to the process group, SIGKILL after `kill_grace`), notices deaths
(the process sentinel: SIGKILL, segfault, out of memory), and always SIGKILLs what is left of
a group when its leader ends, so no stage program outlives its frame. The daemon talks to it
through the `Executor` calls only; all of them return at once except `shutdown`.

Why this module is long: one supervisor thread owns every frame process, its pipes, its timers and
the fork server's life; the states a slot goes through (starting, running a stage, idle for reuse,
killed, reaped) are one state machine whose transitions must happen under one lock. Split across
modules, each transition would be half here and half there; the process helpers it can do without
(process groups, stale-group killing, the warm-up) are already in procs.py and warmup.py.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import worker
from .executor import Executor, FrameJob, PoolEvent
from .procs import describe_exit, signal_group

log = logging.getLogger("stdd.pool")

#: imported once in the fork server, so frame processes start warm; missing ones are skipped.
#: multiprocessing re-runs the main script (e.g. the `stdd` console script) in every child
#: (Python 3.11 does not pass it to the fork server), so what the main script imports is
#: preloaded too: the child's re-run then finds it all in sys.modules.
PRELOAD = [
    "stdd.cli", "stdd.daemon", "stdd.pool.worker", "stdd.pipeline", "stdd.stages.base", "numpy",
    "astropy.io.fits", "astropy.wcs", "astropy.table", "stdpipe", "stdd.stages.inspect",
    "stdd.stages.photometry", "stdd.stages.transients", "stdd.stages.subtraction",
]

#: what the stages import when they run (~2.5 s per frame on 2 cores, ~240 MB in the idle fork
#: server): preloaded too unless `pool.preload_stage_libraries = false`
PRELOAD_STAGE_LIBRARIES = [
    "stdpipe.photometry", "stdpipe.photometry_measure", "stdpipe.pipeline", "stdpipe.astrometry",
    "stdpipe.artefacts", "stdpipe.subtraction", "stdpipe.sfft", "stdpipe.cutouts", "stdpipe.plots",
    "stdpipe.templates", "stdpipe.reproject", "matplotlib.pyplot", "astroscrappy", "sep_x", "sklearn.ensemble",
    "scipy.ndimage", "scipy.optimize", "scipy.spatial", "stdd.sources.catalogs", "stdd.sources.templates",
]

#: always the last preload name: importing it warms the stage libraries and freezes the GC (see it)
PRELOAD_LAST = "stdd.pool.warmup"

#: frame processes run one per core: keep numerical libraries to one thread each
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class _Running:
    job: FrameJob
    proc: Any
    conn: Any
    started: float
    phase: str = "prepare"          # prepare | <stage name> | publish
    phase_started: float = 0.0
    deadline: float = 0.0           # monotonic time the current phase times out
    kill_at: float | None = None    # SIGKILL time once SIGTERM was sent
    outcome: tuple[str, str] | None = None  # (lost reason, message) decided by the supervisor
    reported: dict[str, Any] | None = None  # the child's last word: finished / interrupted / error
    stop_sent: bool = False
    pid: int | None = None
    frames: int = 1                 # frames this process has been given, this one included
    released: bool = False          # its slot moved from running to unpolled (see _release)


@dataclass
class _Idle:
    proc: Any
    conn: Any
    pid: int
    frames: int
    since: float


class LocalPool(Executor):
    name = "local"

    def __init__(self, workers: int, *, stage_timeout: float = 1800.0, stage_timeouts: dict[str, float] | None = None,
                 kill_grace: float = 10.0, preload: list[str] | None = None, warm_idle: float = 0.0,
                 warm_at_start: bool = True, frames_per_process: int = 1, process_max_rss_mb: float = 0.0):
        self.workers = max(1, int(workers))
        self.stage_timeout = float(stage_timeout)
        self.stage_timeouts = dict(stage_timeouts or {})
        self.kill_grace = float(kill_grace)
        self.preload = [m for m in (PRELOAD if preload is None else preload) if m != PRELOAD_LAST] + [PRELOAD_LAST]
        self.warm_idle = float(warm_idle)  # seconds without frames before the fork server stops; 0 = never
        self.warm_at_start = bool(warm_at_start)
        self.frames_per_process = max(1, int(frames_per_process))  # 1 = a new process for every frame
        self.process_max_rss_mb = float(process_max_rss_mb)       # 0 = no limit
        self._idle: list[_Idle] = []      # frame processes waiting for their next frame
        self._leaving: list[Any] = []     # processes told to exit, to be reaped
        self._server_up = False          # the fork server is running (supervisor thread's view)
        self._warm_requested = False     # a "warm" command is queued
        self._last_busy = time.monotonic()
        self.warm_ups = 0                # how many times the fork server was started
        self.warm_stops = 0              # how many times it was stopped after an idle spell
        self._ctx = mp.get_context("forkserver")
        self._running: dict[int, _Running] = {}
        self._commands: "queue.Queue[tuple]" = queue.Queue()
        self._events: "queue.Queue[PoolEvent]" = queue.Queue()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_by: float | None = None
        self._closed = threading.Event()
        self._pending = 0  # submitted, not yet started by the supervisor
        self._unpolled = 0  # ended, but the terminal event not yet handed out by poll(): still a busy slot

    @classmethod
    def from_settings(cls, pool) -> "LocalPool":
        preload = PRELOAD + (PRELOAD_STAGE_LIBRARIES if pool.preload_stage_libraries else [])
        return cls(pool.effective_workers, stage_timeout=pool.stage_timeout_seconds,
                   stage_timeouts=dict(pool.stage_timeouts), kill_grace=pool.kill_grace_seconds, preload=preload,
                   warm_idle=60.0 * pool.warm_idle_minutes, warm_at_start=pool.warm_at_start,
                   frames_per_process=pool.frames_per_process, process_max_rss_mb=pool.process_max_rss_mb)

    # -- the Executor calls ----------------------------------------------------------------
    def start(self) -> None:
        for var in SINGLE_THREAD_ENV:
            os.environ.setdefault(var, "1")
        self._ctx.set_forkserver_preload(self.preload)
        self._thread = threading.Thread(target=self._supervise, name="stdd-pool", daemon=True)
        self._thread.start()
        idle = f"stops after {self.warm_idle:g} s idle" if self.warm_idle > 0 else "stays up"
        log.info("pool: local, %d worker%s, stage timeout %.0f s; warm fork server %s, %s",
                 self.workers, "" if self.workers == 1 else "s", self.stage_timeout,
                 "started now" if self.warm_at_start else "started when a frame arrives", idle)
        if self.warm_at_start:
            self.prepare()

    def prepare(self) -> None:
        """A frame is on its way: start the warm fork server now if it is down (cheap to call
        often: it queues at most one request)."""
        if self._server_up or self._warm_requested or self._stopping or not self.alive:
            return
        self._warm_requested = True
        self._command("warm")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def free_slots(self) -> int:
        if self._stopping:
            return 0
        with self._lock:
            return max(0, self.workers - len(self._running) - self._pending - self._unpolled)

    def submit(self, job: FrameJob) -> None:
        if self._stopping:
            raise RuntimeError("the pool is stopping")
        if not self.alive:
            raise RuntimeError("the pool's supervisor is not running")
        with self._lock:
            if job.frame_id in self._running:
                raise RuntimeError(f"frame {job.frame_id} is already running")
            self._pending += 1
        self._command("submit", job)

    def cancel(self, frame_id: int, reason: str = "cancelled by request") -> bool:
        with self._lock:
            if frame_id not in self._running:
                return False
        self._command("cancel", frame_id, reason)
        return True

    def poll(self, timeout: float = 0.0) -> list[PoolEvent]:
        """A frame's slot stays busy until its terminal event is handed out here, so the
        caller has seen a death (and can pause) before it can fill the slot again."""
        return self._poll_queue(timeout)

    def running_ids(self) -> list[int]:
        with self._lock:
            return list(self._running)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            running = [
                {"frame_id": r.job.frame_id, "attempt": r.job.attempt, "pid": r.pid, "stage": r.phase,
                 "seconds": round(now - r.started, 1), "stage_seconds": round(now - r.phase_started, 1)}
                for r in self._running.values()
            ]
        return {"executor": self.name, "workers": self.workers, "running": running, "alive": self.alive,
                "stage_timeout_seconds": self.stage_timeout, "stage_timeouts": self.stage_timeouts,
                "warm": self._server_up, "warm_idle_seconds": self.warm_idle, "warm_ups": self.warm_ups,
                "warm_stops": self.warm_stops, "idle_processes": len(self._idle),
                "frames_per_process": self.frames_per_process}

    def configure(self, *, workers: int | None = None, stage_timeout: float | None = None,
                  stage_timeouts: dict[str, float] | None = None, kill_grace: float | None = None,
                  frames_per_process: int | None = None, process_max_rss_mb: float | None = None) -> None:
        with self._lock:
            if frames_per_process is not None:
                self.frames_per_process = max(1, int(frames_per_process))
            if process_max_rss_mb is not None:
                self.process_max_rss_mb = float(process_max_rss_mb)
            if workers is not None:
                self.workers = max(1, int(workers))
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
        self._command("shutdown", float(grace))
        self._thread.join()
        self._thread = None

    # -- supervisor thread -----------------------------------------------------------------
    def _command(self, *cmd) -> None:
        self._commands.put(cmd)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _release(self, r: _Running) -> None:
        """The frame's process is done with it: its slot moves from running to unpolled in one
        step, so free_slots() never shows it free before its terminal event is handed out."""
        with self._lock:
            if self._running.pop(r.job.frame_id, None) is not None:
                self._unpolled += 1
                r.released = True

    def _emit(self, kind: str, r: _Running, **kw) -> None:
        if kind in ("finished", "lost") and not r.released:
            with self._lock:
                self._unpolled += 1
        self._events.put(PoolEvent(kind=kind, frame_id=r.job.frame_id, attempt=r.job.attempt, pid=r.pid, **kw))

    def _timeout_for(self, phase: str) -> float:
        return float(self.stage_timeouts.get(phase, self.stage_timeout))

    def _warm_up(self) -> None:
        """Start the fork server and one empty process, so the server has imported its
        preload list before the frame arrives. Blocks the supervisor for the imports (a few
        seconds; no frame process is running then, since they all need the server)."""
        if self._server_up:
            return
        t0 = time.monotonic()
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
            p = self._ctx.Process(target=os.getpid, name="stdd-warm-up")
            p.start()
            p.join(120)
            self._server_up = True
            self.warm_ups += 1
            log.info("pool: warm fork server up in %.1f s", time.monotonic() - t0)
        except Exception as e:  # not fatal: the frame's own start will try again
            log.warning("pool: warm-up failed: %s", e)
        finally:
            self._warm_requested = False
            self._last_busy = time.monotonic()

    def _cool_down(self) -> None:
        """After `warm_idle` seconds with no frame: idle frame processes exit and the fork
        server stops (frees their memory)."""
        self._reap_leaving()
        if (not self._server_up or self.warm_idle <= 0 or self._running
                or time.monotonic() - self._last_busy < self.warm_idle):
            return
        with self._lock:
            if self._pending:
                return
        self._dismiss_idle()
        for proc in self._leaving:
            proc.join(timeout=5)
        self._reap_leaving()
        from multiprocessing import forkserver

        stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
        if stop is None:  # another Python: keep the server up rather than guess at its internals
            log.info("pool: this Python cannot stop the fork server; it stays up")
            self.warm_idle = 0.0
            return
        try:
            stop()
        except Exception as e:
            log.warning("pool: stopping the idle fork server failed: %s", e)
            self.warm_idle = 0.0
            return
        self._server_up = False
        self.warm_stops += 1
        log.info("pool: warm fork server stopped after %.0f s without frames; the next frame starts it again",
                 self.warm_idle)

    def _supervise(self) -> None:
        try:
            while True:
                self._handle_commands()
                self._cool_down()
                if self._stopping and not self._running and self._commands.empty():
                    self._dismiss_idle()
                    for proc in self._leaving:
                        proc.join(timeout=5)
                    self._reap_leaving()
                    break
                waitables = [self._wake_r]
                for r in self._running.values():
                    waitables.append(r.proc.sentinel)
                    if r.conn is not None:
                        waitables.append(r.conn)
                ready = mpc.wait(waitables, timeout=0.2)
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                for r in list(self._running.values()):
                    self._read_messages(r)
                    if r.job.frame_id in self._running and (r.proc.sentinel in ready or not r.proc.is_alive()):
                        self._reap(r)
                self._check_deadlines()
        except Exception:
            log.exception("pool: the supervisor failed; killing every frame process")
            for r in list(self._running.values()):
                signal_group(r.pid, signal.SIGKILL)
            raise
        finally:
            self._closed.set()

    def _handle_commands(self) -> None:
        while True:
            try:
                cmd, *args = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd == "submit":
                self._start(args[0])
            elif cmd == "warm":
                if not self._stopping:
                    self._warm_up()
                self._warm_requested = False
            elif cmd == "cancel":
                r = self._running.get(args[0])
                if r is not None and r.outcome is None:
                    r.outcome = ("cancelled", args[1])
                    self._terminate(r)
            elif cmd == "shutdown":
                grace = args[0]
                self._stop_by = time.monotonic() + grace
                for r in self._running.values():
                    self._ask_stop(r)

    def _start(self, job: FrameJob) -> None:
        self._last_busy = time.monotonic()
        if self._reuse(job):
            return
        self._warm_up()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=worker.main, args=(job.to_dict(), child_conn),
                                 name=f"stdd-frame-{job.frame_id}", daemon=False)
        now = time.monotonic()
        r = _Running(job=job, proc=proc, conn=parent_conn, started=now, phase_started=now,
                     deadline=now + self._timeout_for("prepare"))
        try:
            proc.start()
        except Exception as e:
            with self._lock:
                self._pending -= 1
            parent_conn.close()
            child_conn.close()
            with self._lock:
                self._unpolled += 1
            self._events.put(PoolEvent(kind="lost", frame_id=job.frame_id, attempt=job.attempt, state="error",
                                       error=f"could not start a frame process: {type(e).__name__}: {e}"))
            return
        child_conn.close()
        r.pid = proc.pid
        with self._lock:
            self._pending -= 1
            self._running[job.frame_id] = r
        if self._stopping:
            self._ask_stop(r)
        log.debug("pool: frame=%d started pid=%s", job.frame_id, proc.pid)

    def _reuse(self, job: FrameJob) -> bool:
        """Give the frame to an idle frame process, if one is alive."""
        while self._idle:
            w = self._idle.pop()
            if not w.proc.is_alive():
                self._retire(w.proc, w.conn)
                continue
            try:
                w.conn.send(job.to_dict())
            except OSError:
                self._retire(w.proc, w.conn)
                continue
            now = time.monotonic()
            r = _Running(job=job, proc=w.proc, conn=w.conn, started=now, phase_started=now,
                         deadline=now + self._timeout_for("prepare"), pid=w.pid, frames=w.frames + 1)
            with self._lock:
                self._pending -= 1
                self._running[job.frame_id] = r
            if self._stopping:
                self._ask_stop(r)
            log.debug("pool: frame=%d given to idle pid=%s (its frame %d)", job.frame_id, w.pid, r.frames)
            return True
        return False

    def _on_idle(self, r: _Running) -> None:
        """The process finished its frame cleanly and waits: keep or dismiss it, then report the
        frame (in that order, so whoever sees the frame's end sees the pool's new state)."""
        msg = r.reported or {}
        self._release(r)
        self._last_busy = time.monotonic()
        conn, r.conn = r.conn, None  # the process's pipe now belongs to the idle list (or is closed)
        rss = _rss_mb(r.pid)
        if (self._stopping or r.frames >= self.frames_per_process or r.outcome is not None
                or (self.process_max_rss_mb > 0 and rss is not None and rss > self.process_max_rss_mb)):
            self._retire(r.proc, conn, say_exit=True)
        else:
            self._idle.append(_Idle(proc=r.proc, conn=conn, pid=r.pid, frames=r.frames, since=time.monotonic()))
        self._emit("finished", r, state=msg.get("status") or "failed", error=msg.get("error"),
                   data={"result": msg.get("result") or {}}, seconds=round(time.monotonic() - r.started, 3))

    def _retire(self, proc, conn, say_exit: bool = False) -> None:
        if say_exit and conn is not None:
            try:
                conn.send("exit")
            except OSError:
                pass
        if conn is not None:
            conn.close()
        self._leaving.append(proc)

    def _dismiss_idle(self) -> None:
        while self._idle:
            w = self._idle.pop()
            self._retire(w.proc, w.conn, say_exit=True)

    def _reap_leaving(self) -> None:
        """Processes told to exit: reaped once gone; SIGKILLed with their group if they linger."""
        keep = []
        for proc in self._leaving:
            if proc.exitcode is None and proc.is_alive():
                keep.append(proc)
                continue
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.close()
            except Exception:
                pass
        self._leaving = keep

    def _read_messages(self, r: _Running) -> None:
        while r.conn is not None:
            try:
                if not r.conn.poll():
                    return
                msg = r.conn.recv()
            except (EOFError, OSError):
                r.conn.close()
                r.conn = None
                return
            self._on_message(r, msg)

    def _on_message(self, r: _Running, msg: dict) -> None:
        kind = msg.get("kind")
        now = time.monotonic()
        if kind == "stage_start":
            r.phase, r.phase_started = msg["stage"], now
            r.deadline = now + self._timeout_for(msg["stage"])
            self._emit("stage_start", r, stage=msg["stage"], time=msg["time"])
        elif kind == "stage_end":
            self._emit("stage_end", r, stage=msg["stage"], state=msg.get("state"), error=msg.get("error"),
                       seconds=msg.get("seconds"), data={"summary": msg.get("summary") or {}}, time=msg["time"])
            r.phase, r.phase_started = "between stages", now
            r.deadline = now + self._timeout_for("publish")
        elif kind == "publishing":
            r.phase, r.phase_started = "publish", now
            r.deadline = now + self._timeout_for("publish")
        elif kind in ("finished", "interrupted", "error"):
            r.reported = msg
        elif kind == "idle" and (r.reported or {}).get("kind") == "finished":
            self._on_idle(r)

    def _ask_stop(self, r: _Running) -> None:
        """At shutdown: the chain stops before its next stage (the current one may finish)."""
        if r.stop_sent or r.conn is None:
            return
        try:
            r.conn.send("stop")
            r.stop_sent = True
        except OSError:
            pass

    def _terminate(self, r: _Running) -> None:
        if r.kill_at is not None:
            return
        signal_group(r.pid, signal.SIGTERM)
        r.kill_at = time.monotonic() + self.kill_grace

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for r in list(self._running.values()):
            if r.kill_at is not None:
                if now >= r.kill_at:
                    signal_group(r.pid, signal.SIGKILL)
                continue
            if self._stop_by is not None and now >= self._stop_by:
                if r.outcome is None:
                    r.outcome = ("interrupted", "stopped by the daemon's shutdown")
                self._terminate(r)
            elif now >= r.deadline and r.outcome is None:
                limit = self._timeout_for(r.phase if r.phase not in ("between stages",) else "publish")
                r.outcome = ("timeout", f"{r.phase} timed out after {limit:g} s; its process group was killed")
                log.warning("pool: frame=%d %s", r.job.frame_id, r.outcome[1])
                self._terminate(r)

    def _reap(self, r: _Running) -> None:
        r.proc.join(timeout=1)
        if r.proc.exitcode is None:  # sentinel fired but not reaped yet: next round
            return
        self._read_messages(r)
        # the leader is gone: nothing of its group may outlive it
        signal_group(r.pid, signal.SIGKILL)
        if r.conn is not None:
            r.conn.close()
        self._release(r)
        self._last_busy = time.monotonic()
        exitcode = r.proc.exitcode
        try:
            r.proc.close()
        except Exception:
            pass
        msg = r.reported or {}
        kind = msg.get("kind")
        if kind == "finished":
            self._emit("finished", r, state=msg.get("status") or "failed", error=msg.get("error"),
                       data={"result": msg.get("result") or {}}, seconds=round(time.monotonic() - r.started, 3))
        elif r.outcome is not None:
            self._emit("lost", r, state=r.outcome[0], error=r.outcome[1], stage=r.phase)
        elif kind == "interrupted":
            self._emit("lost", r, state="interrupted", error="stopped between stages by the daemon's shutdown",
                       stage=msg.get("stage"))
        elif kind == "error":
            self._emit("lost", r, state="error", error=f"{r.phase}: {msg.get('error')}", stage=r.phase,
                       data={"trace": msg.get("trace")})
        else:
            where = r.phase if r.phase not in ("between stages",) else "between stages"
            self._emit("lost", r, state="died", error=f"frame process {describe_exit(exitcode)} during {where}",
                       stage=r.phase)


def _rss_mb(pid: int | None) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, TypeError):
        return None
    return None

"""The daemon: its API, its life cycle, and how it watches itself.

Design note: one asyncio event loop holds the service together and does no heavy work and no
SQLite I/O. Its parts, one module each:
- `intake.py`    the watcher's paths → hashed, checked, recorded frames (worker threads);
- `dispatch.py`  the queue → the executor, whenever a slot is free;
- `recording.py` the executor's events → stage runs, results, retries, failures;
- `outcomes.py`  files around a frame's end (source after success, outcome folders, recovery);
- `schedule.py`  scheduled jobs (rescan, retention, summary, status file, watchdog ping);
- `supervise.py` every loop kept running and watched (heartbeats, backoff, restarts);
- `dbgate.py`    every database call on one thread of its own, and what is wrong with the file.

The endpoint (and any other in-process client) uses the methods in the "API" section; they
are safe to call from the event loop's thread. Anything started with the daemon and stopped
with it (the HTTP endpoint, the GCN consumer) is a `Service`; one with a `health()` method is
part of `health()` and of the watchdog's judgement.
"""
from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..config import ConfigError, Settings, load_settings
from ..pipeline import ORIGINAL_PREFIX, STAGE_NAMES, select_steps
from ..pool import Executor, make_executor
from ..stages.profiles import ProfileSet, load_profiles
from ..store import Database, EventLog, FrameStore, TERMINAL
from ..watch.files import file_stat
from ..watch.fitscheck import check_fits
from ..watch.settle import Settled
from . import outcomes
from .dbgate import DbGate
from .dispatch import Dispatcher
from .hooks import NoRegions, RegionProvider, Service
from .intake import Intake, spool_path
from .logs import setup_logging
from .notify import SystemdNotifier
from .recording import Recorder
from .schedule import Scheduler
from .supervise import Supervisor

log = logging.getLogger("stdd.daemon")


class DaemonError(Exception):
    """The daemon cannot start (another instance holds the database, a folder is not writable...)."""


class SubmitError(Exception):
    """A submitted file cannot be taken; the message says why."""


class Daemon:
    def __init__(self, settings: Settings, *, config_path: Path | None = None,
                 region_provider: RegionProvider | None = None, executor: Executor | None = None,
                 services: Iterable[Service] = (), notifier: SystemdNotifier | None = None):
        self.settings = settings
        self.config_path = Path(config_path) if config_path else settings.source_file
        self.region_provider: RegionProvider = region_provider or NoRegions()
        self.services: list[Service] = list(services)
        self.notifier = notifier or SystemdNotifier()
        self.pool: Executor | None = executor
        # fixed at start: changing them needs a restart
        self.db_path = settings.paths.database
        self.spool = settings.paths.var / "spool"
        self.status_path = self.db_path.with_name(self.db_path.stem + ".daemon.json")
        self.db: Database | None = None
        self.frames: FrameStore | None = None
        self.events: EventLog | None = None
        self.gate = DbGate()
        self.supervisor = Supervisor(on_error=self._loop_error)
        self.intake = Intake(self)
        self.dispatcher = Dispatcher(self)
        self.recorder = Recorder(self)
        self.scheduler = Scheduler(self)
        self.state = "starting"
        self.paused_reason: str | None = None
        self.started_at: float | None = None
        self.profiles: ProfileSet | None = None
        self.events_lock: asyncio.Lock | None = None
        self.wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._lock_fh = None
        self._status_line_text = "starting"
        self._background: set[asyncio.Task] = set()

    # =====================================================================================
    # API (for the endpoint and other in-process callers; call on the event loop's thread)
    # =====================================================================================
    @property
    def store(self) -> FrameStore:
        return self.frames

    @property
    def finished_count(self) -> int:
        return self.recorder.finished_count

    def status(self) -> dict[str, Any]:
        """What `stdd status --json` shows: state, frames per state, pool, intake. It reads the
        database: call it from a thread (`refresh_status` does)."""
        s = self.settings
        return {
            "state": self.state,
            "paused_reason": self.paused_reason,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 1) if self.started_at else None,
            "config": str(self.config_path) if self.config_path else None,
            "database": str(self.db_path),
            "frames": self.frames.counts() if self.frames else {},
            "pool": self.pool.status() if self.pool else None,
            "intake": {
                "folders": [str(p) for p in s.paths.incoming],
                "mode": "polling" if s.watch.poll else "inotify",
                "watching": bool(self.intake.watcher and self.intake.watcher.alive),
                "settling": len(self.intake.tracker) if self.intake.tracker else 0,
                "taken": self.intake.taken,
            },
            "services": [getattr(x, "name", type(x).__name__) for x in self.services],
            "health": self.health(),
            "updated_at": time.time(),
        }

    def health(self) -> dict[str, dict]:
        """In-memory checks, safe from any thread, never blocking: the supervised loops, the
        database as the daemon's writes find it, and every service that reports its health."""
        loops = self.supervisor.snapshot()
        stalled = [n for n, x in loops.items() if x["stalled"]]
        failing = [f"{n} ({x['last_error']})" for n, x in loops.items() if x["failing_since"] is not None]
        if stalled:
            detail = "stalled: " + ", ".join(f"{n} (no iteration for {loops[n]['last_beat_age_seconds']:.0f} s)"
                                             for n in stalled)
        elif failing:
            detail = "failing and retrying: " + "; ".join(failing)
        else:
            detail = f"{len(loops)} loops iterating"
        checks = {"loops": {"ok": not stalled and not failing, "stalled": stalled, "detail": detail,
                            "loops": loops},
                  "database_writes": self.gate.health()}
        for svc in self.services:
            fn = getattr(svc, "health", None)
            if callable(fn):
                name = getattr(svc, "name", type(svc).__name__)
                try:
                    checks[f"service:{name}"] = dict(fn())
                except Exception as e:  # noqa: BLE001 — a broken health() is itself unhealthy
                    checks[f"service:{name}"] = {"ok": False, "detail": f"health() failed: {e}"}
        return checks

    def stall_problems(self) -> list[str]:
        """What should make systemd restart us: a hung loop or service, a dead pool or watcher.
        (A database that is locked or full is not: a restart would not help, and the writes are
        being retried.)"""
        out = [f"loop {n} stalled" for n in self.supervisor.stalled()]
        if self.pool is None or not self.pool.alive:
            out.append("the pool is not alive")
        for name, check in self.health().items():
            if name.startswith("service:") and check.get("stalled"):
                out.append(f"{name[8:]} stalled: {check.get('detail')}")
        return out

    def pause(self, reason: str = "paused by request") -> None:
        """Stop starting frames (running ones go on; the watcher keeps recording new ones)."""
        if self.state == "stopping":
            return
        self.paused_reason = reason
        self.state = "paused"
        log.warning("paused: %s", reason)
        self.record_event_soon("daemon.paused", reason, level="WARNING")
        self.notifier.status(f"paused: {reason}")

    def resume(self) -> None:
        if self.state != "paused":
            return
        self.state = "running"
        self.paused_reason = None
        self.recorder.cancel_auto_resume()
        log.info("resumed")
        self.record_event_soon("daemon.resumed", "resumed")
        self.wake_dispatcher()

    async def submit(self, path: str | os.PathLike, steps: list[str] | None = None, priority: int = 0) -> dict:
        """Queue a file given by path (anywhere readable; it must be a whole FITS file now).
        Returns the frame row; identical content already recorded returns that frame, with
        `duplicate: true`. Raises SubmitError with the reason otherwise."""
        path = Path(path).absolute()
        st = await asyncio.to_thread(file_stat, path)
        if st is None:
            raise SubmitError(f"{path}: no such file")
        if steps:
            try:
                steps = select_steps(steps)
            except ValueError as e:
                raise SubmitError(str(e)) from None
        check = await asyncio.to_thread(check_fits, path)
        if not check.ok:
            raise SubmitError(f"{path}: {check.reason}")
        out = await asyncio.to_thread(self.intake.examine, Settled(path, st), steps=steps, priority=priority,
                                      force=True)
        if out.kind == "queued":
            self.wake_dispatcher()
            return {**out.frame, "duplicate": False}
        if out.kind == "duplicate":
            return {**out.frame, "duplicate": True}
        raise SubmitError(f"{path}: {out.reason or out.kind}")

    async def cancel(self, frame_id: int, reason: str = "cancelled by request") -> dict:
        """Cancel a queued or running frame. Returns {'frame_id', 'state'} (the state after)."""
        frame = await self._frame_or_raise(frame_id)
        if frame["state"] == "queued" and await self.gate.run(self.frames.cancel_queued, frame_id, reason):
            log.info("frame=%d cancelled while queued", frame_id)
            await self.publish_outcome(frame_id, "cancelled", reason)
            return {"frame_id": frame_id, "state": "cancelled"}
        if self.pool is not None and self.pool.cancel(frame_id, reason):
            log.info("frame=%d cancel requested: killing its process group", frame_id)
            return {"frame_id": frame_id, "state": "cancelling"}
        return {"frame_id": frame_id, "state": (await self.gate.run(self.frames.get, frame_id))["state"]}

    async def retry(self, frame_id: int, from_stage: str | None = None) -> dict:
        """Queue a finished frame again, with a fresh attempt count. From a stage: earlier
        stages' products in its work folder are kept (when the folder is still there)."""
        frame = await self._frame_or_raise(frame_id)
        if frame["state"] not in TERMINAL:
            raise SubmitError(f"frame {frame_id} is {frame['state']}, not finished")
        steps = None
        options = dict(frame.get("options") or {})
        options.pop("keep_folder", None)
        if from_stage:
            if from_stage not in STAGE_NAMES:
                raise SubmitError(f"unknown stage {from_stage!r}; stages are {', '.join(STAGE_NAMES)}")
            configured = frame.get("steps") or list(self.settings.pipeline.steps)
            steps = [s for s in select_steps(configured) if STAGE_NAMES.index(s) >= STAGE_NAMES.index(from_stage)]
            if not steps:
                raise SubmitError(f"stage {from_stage} is not among this frame's steps ({', '.join(configured)})")
            work = Path(frame["work_dir"]) if frame.get("work_dir") else None
            kept = work is not None and await asyncio.to_thread(lambda: any(work.glob(f"{ORIGINAL_PREFIX}.*")))
            if kept and steps[0] != select_steps(configured)[0]:
                options["keep_folder"] = True
            else:
                steps = None if frame.get("steps") is None else configured
        frame = await self.gate.run(self._retry_tx, frame_id, options or None, steps)
        log.info("frame=%d retry requested%s", frame_id, f" from {from_stage}" if from_stage else "")
        self.wake_dispatcher()
        return frame

    def _retry_tx(self, frame_id: int, options: dict | None, steps: list[str] | None) -> dict:
        with self.db.write():
            self.frames.set_options(frame_id, options)
            self.frames.retry(frame_id, steps)
            return self.frames.get(frame_id)

    def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. An invalid file changes nothing and every error is logged."""
        if self.config_path is None:
            msg = "reload: the daemon was started without a config file; nothing to reload"
            log.error(msg)
            return False, [msg]
        self.notifier.reloading()
        try:
            new = load_settings(self.config_path)
            profiles = load_profiles(new)
        except ConfigError as e:
            for line in e.errors:
                log.error("reload: %s", line)
            log.error("reload: %d error(s) in %s; the running config stays", len(e.errors), self.config_path)
            self.record_event_soon("daemon.reload_failed", f"{len(e.errors)} error(s) in {self.config_path}",
                                   data={"errors": e.errors}, level="ERROR")
            self.notifier.notify(READY=1, STATUS="reload failed; running with the previous config")
            return False, list(e.errors)
        old, self.settings, self.profiles = self.settings, new, profiles
        self._apply(old, new)
        log.info("reload: %s loaded", self.config_path)
        self.record_event_soon("daemon.reloaded", f"config {self.config_path} reloaded")
        self.notifier.notify(READY=1, STATUS=self._status_line_text)
        return True, []

    async def reprioritize(self) -> int:
        """Ask the region provider again for every queued frame (call when alerts change).
        Returns how many frames changed priority."""
        changed = 0
        for frame in await self.gate.run(self.frames.queued):
            path = spool_path(self.spool, frame["sha256"], frame["name"])
            try:
                prio, alert_ids = await asyncio.to_thread(self.region_provider.frame_priority, path)
            except Exception as e:
                log.warning("frame=%d region provider failed: %s", frame["id"], e)
                continue
            if prio > (frame.get("priority") or 0) or alert_ids:
                for alert_id in alert_ids or [None]:
                    await self.gate.run(self.frames.set_priority, frame["id"], prio, alert_id)
                changed += 1
        if changed:
            log.info("reprioritized %d queued frame(s)", changed)
        return changed

    def add_service(self, service: Service) -> None:
        self.services.append(service)

    def request_stop(self) -> None:
        """Begin a clean stop (what SIGTERM does)."""
        if self._stop is not None and not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    def wake_dispatcher(self) -> None:
        if self.wake_event is not None:
            self.wake_event.set()

    def job_ids(self) -> list[str]:
        return self.scheduler.job_ids()

    async def run_job(self, job_id: str):
        """Run a scheduled job now (the endpoint's "run now", and tests)."""
        return await self.scheduler.run(job_id)

    # -- helpers for the daemon's parts -----------------------------------------------------
    async def record_event(self, kind: str, message: str, **kw) -> None:
        """An audit event, written off the loop; a database that refuses it is logged, not raised."""
        try:
            await self.gate.run(self.events.add, kind, message, **kw)
        except Exception as e:  # noqa: BLE001
            log.warning("event %s not recorded (%s): %s", kind, e, message)

    def record_event_soon(self, kind: str, message: str, **kw) -> None:
        """`record_event` from synchronous code on the loop (pause, resume, reload)."""
        if self._loop is None or self.events is None:
            return
        task = self._loop.create_task(self.record_event(kind, message, **kw))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def publish_outcome(self, frame_id: int, status: str, error: str) -> None:
        """The result folder of a frame that ran no whole chain, and its path in the queue."""
        frame = await self.gate.run(self.frames.get, frame_id)
        result_dir = await asyncio.to_thread(outcomes.write_outcome, self.settings, frame, status, error)
        if result_dir is not None and not frame.get("result_dir"):
            await self.gate.write_until_done(f"frame={frame_id} result folder", self.frames.set_dirs, frame_id,
                                             frame.get("work_dir"), str(result_dir))

    async def refresh_status(self) -> None:
        """The status file and systemd's STATUS line (database read and file write off the loop)."""
        text = await asyncio.to_thread(self._write_status)
        if text:
            self._status_line_text = text
            self.notifier.status(text)

    async def _loop_error(self, name: str, text: str, run: int) -> None:
        # the first error of a run, then every tenth: the log has them all
        if run == 1 or run % 10 == 0:
            await self.record_event("daemon.loop_error", f"{name}: {text}" + (f" ({run} in a row)" if run > 1 else ""),
                                    data={"loop": name, "consecutive": run}, level="ERROR")

    async def _frame_or_raise(self, frame_id: int) -> dict:
        frame = await self.gate.run(self.frames.get, int(frame_id))
        if frame is None:
            raise SubmitError(f"no frame {frame_id}")
        return frame

    # =====================================================================================
    # life cycle
    # =====================================================================================
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean stop)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.wake_event = asyncio.Event()
        self.events_lock = asyncio.Lock()
        self._install_signals()
        try:
            await self._start()
        except BaseException:
            if self.pool is not None and self.pool.alive:
                await asyncio.to_thread(self.pool.shutdown, 0)
            await self._close(startup_failed=True)
            raise
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()
        return 0

    async def _start(self) -> None:
        s = self.settings
        self.started_at = time.time()
        for folder in (s.paths.work, s.paths.results, s.paths.quarantine, self.spool, *s.paths.incoming):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DaemonError(f"cannot create {folder}: {e.strerror}") from None
        self._take_lock()
        self.db = await self.gate.run(Database, self.db_path,
                                      busy_timeout_ms=int(s.daemon.db_busy_timeout_seconds * 1000))
        self.frames = FrameStore(self.db)
        self.events = EventLog(self.db)
        self.profiles = load_profiles(s)
        await self.gate.run(outcomes.recover, self.frames, s, self.spool)
        if self.pool is None:
            self.pool = make_executor(s.pool)
        self.pool.hold_ends = True  # see recording.py
        await asyncio.to_thread(self.pool.start)
        await self.intake.start()
        self.scheduler.start()
        self.state = "running"
        stall = s.daemon.loop_stall_seconds
        self.supervisor.start("dispatch", self.dispatcher.iteration, stall)
        self.recorder.pumping = True
        self.supervisor.start("pump", self.recorder.pump_iteration, stall)
        self.supervisor.start("intake", self.intake.iteration, stall)
        self.supervisor.start("scheduler", self._scheduler_iteration, stall)
        for svc in self.services:
            await svc.start(self)
        await self.record_event("daemon.started", f"stdd {__version__} started (pid {os.getpid()})")
        await self.refresh_status()
        log.info("started: pid %d, %s, database %s", os.getpid(), self._status_line_text, self.db_path)
        self.notifier.ready(self._status_line_text)
        # everything imported at start-up lives as long as the daemon: out of the collector's
        # reach, a full collection no longer walks it (shorter pauses of the event loop)
        gc.collect()
        gc.freeze()
        self.wake_dispatcher()

    async def _scheduler_iteration(self) -> None:
        """The scheduler's supervision: APScheduler runs on the loop; its heartbeat is the
        status job (schedule.py). If it has stopped, start it again."""
        await asyncio.sleep(1.0)
        aps = self.scheduler.aps
        if aps is not None and not aps.running and self.state in ("running", "paused"):
            log.error("the scheduler stopped; starting it again")
            self.scheduler.aps = None
            self.scheduler.start()

    async def _shutdown(self) -> None:
        log.info("stopping: no new frames; running stages may finish within %.0f s",
                 self.settings.pool.shutdown_grace_seconds)
        self.state = "stopping"
        self.notifier.stopping("stopping: letting running stages finish")
        await self.supervisor.stop(["dispatch", "intake", "scheduler"])
        await self.intake.stop()
        self.scheduler.stop()
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("service %s failed to stop", getattr(svc, "name", svc))
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, self.settings.pool.shutdown_grace_seconds)
        await self.recorder.stop_pumping()
        await self.supervisor.stop()
        if self.pool is not None:
            for ev in self.pool.poll(0):
                await self.recorder.record(ev)
        await self._close()

    async def _close(self, startup_failed: bool = False) -> None:
        if self.frames is not None:
            try:
                await self.gate.run(self._requeue_leftovers, not startup_failed)
            except Exception as e:  # noqa: BLE001 — the next start recovers them
                log.error("stop: could not requeue running frames (%s); the next start will", e)
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)
        self.state = "stopped"
        if self._lock_fh is not None:  # never overwrite another daemon's status
            await asyncio.to_thread(self._write_status)
        if self.db is not None:
            await self.gate.run(self.db.close)
            self.db = None
        self.gate.close()
        self._release_lock()
        self.notifier.close()
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    self._loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        log.info("stopped")

    def _requeue_leftovers(self, clean: bool) -> None:
        for frame in self.frames.running():  # nothing should be left; if so, it goes back
            self.frames.close_open_stage_runs(frame["id"], "the daemon stopped")
            self.frames.requeue(frame["id"], "the daemon stopped", count_attempt=False)
        if clean:
            self.events.add("daemon.stopped", "stopped cleanly")

    def _take_lock(self) -> None:
        """One daemon per database: an exclusive lock on `<database>.lock`."""
        lock = self.db_path.with_name(self.db_path.name + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            raise DaemonError(f"another stdd daemon (pid {other}) is running on {self.db_path}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def _install_signals(self) -> None:
        loop = self._loop
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            pass

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        if self.events is not None:
            self.reload()

    def _apply(self, old: Settings, new: Settings) -> None:
        setup_logging(new.log_level)
        p = new.pool
        self.pool.configure(workers=p.effective_workers, stage_timeout=p.stage_timeout_seconds,
                            stage_timeouts=dict(p.stage_timeouts), kill_grace=p.kill_grace_seconds,
                            frames_per_process=p.frames_per_process, process_max_rss_mb=p.process_max_rss_mb)
        self.intake.reconfigure(old, new)
        if old.paths.database != new.paths.database or old.paths.var != new.paths.var:
            log.warning("reload: paths.database and paths.var take effect at the next start")
        if old.pool.executor != new.pool.executor:
            log.warning("reload: pool.executor takes effect at the next start")
        self.scheduler.schedule(replace=True)
        self.wake_dispatcher()

    def _write_status(self) -> str | None:
        """`<database>.daemon.json`: what `stdd status` shows about the daemon itself. Runs in
        a thread; returns the status line (None when the database could not be read)."""
        line = None
        try:
            data = self.status() if self.frames is not None and self.db is not None else {
                "state": self.state, "pid": os.getpid(), "updated_at": time.time()}
            line = self._status_line(data)
        except Exception as e:  # noqa: BLE001 — the database may be locked: say what we know
            data = {"state": self.state, "pid": os.getpid(), "updated_at": time.time(),
                    "health": self.health(), "error": f"{type(e).__name__}: {e}"}
        try:
            tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, default=str, indent=1))
            os.replace(tmp, self.status_path)
        except OSError as e:
            log.debug("cannot write %s: %s", self.status_path, e)
        return line

    def _status_line(self, data: dict) -> str:
        c = data.get("frames") or {}
        running = len(self.pool.running_ids()) if self.pool else 0
        text = (f"{self.state}; {c.get('queued', 0)} queued, {running} running, {c.get('done', 0)} done, "
                f"{c.get('failed', 0)} failed")
        if self.paused_reason:
            text += f"; paused: {self.paused_reason}"
        problem = self.gate.problem()
        if problem:
            text += f"; {problem}"
        return text


def run_daemon(settings: Settings, config_path: Path | None = None, services: Iterable[Service] = (),
               region_provider: RegionProvider | None = None) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit code."""
    daemon = Daemon(settings, config_path=config_path, services=services, region_provider=region_provider)
    return asyncio.run(daemon.run())

"""The daemon: its API, its life cycle, and how it watches itself.

Design note: one asyncio event loop holds the service together and does no heavy work and no
SQLite I/O. Its parts, one module each:
- `intake.py`    the watcher's paths → hashed, checked, recorded frames (worker threads);
- `dispatch.py`  the queue → the executor, whenever a slot is free;
- `recording.py` the executor's events → stage runs, results, retries, failures;
- `outcomes.py`  files around a frame's end (source after success, outcome folders, recovery);
- `schedule.py`  scheduled jobs (rescan, retention, summary, status file, watchdog ping);
- `supervise.py` every loop kept running and watched (heartbeats, backoff, restarts);
- `dbgate.py`    every database call on one thread of its own, and what is wrong with the file;
- `health.py`    what the daemon says about itself (health checks, status file and line);
- `control.py`   requests from outside (submit, cancel, retry, reload, re-rank the queue).

The endpoint (and any other in-process client) uses the methods in the "API" section; they
are safe to call from the event loop's thread. Anything started with the daemon and stopped
with it (the HTTP endpoint, the GCN consumer) is a `Service`; one with a `health()` method is
part of `health()` and of the watchdog's judgement.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..config import Settings
from ..pool import Executor, make_executor
from ..stages.profiles import ProfileSet, load_profiles
from ..store import Database, EventLog, FrameStore
from . import outcomes
from .control import Control
from .dbgate import DbGate
from .dispatch import Dispatcher
from .health import HealthReport
from .hooks import NoRegions, RegionProvider, Service
from .instance_lock import InstanceLock, InstanceLocked
from .intake import Intake
from ..store.ingest import StoreRecorder
from .notify import SystemdNotifier
from .recording import Recorder
from .schedule import Scheduler
from .supervise import Supervisor

log = logging.getLogger("stdd.daemon")


class DaemonError(Exception):
    """The daemon cannot start (another instance holds the database, a folder is not writable...)."""


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
        self.report = HealthReport(self)
        self.control = Control(self)
        self.state = "starting"
        self.paused_reason: str | None = None
        self.started_at: float | None = None
        self.profiles: ProfileSet | None = None
        self.events_lock: asyncio.Lock | None = None
        self.wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.instance_lock = InstanceLock(self.db_path)
        self.status_line_text = "starting"
        self._background: set[asyncio.Task] = set()
        #: callables `(frame, result)` run on the database thread inside the transaction that
        #: records a frame as done (recording.py): what must happen with the frame's end or not
        #: at all (the delivery outbox, stdd/delivery/)
        self.finish_hooks: list = [StoreRecorder(self).on_frame_done]  # measurements, candidate histories

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
        """What `stdd status --json` shows (reads the database: call it from a thread)."""
        return self.report.status()

    def health(self) -> dict[str, dict]:
        """In-memory checks, safe from any thread, never blocking (see health.py)."""
        return self.report.checks()

    def stall_problems(self) -> list[str]:
        return self.report.stall_problems()

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

    async def submit(self, path: str | os.PathLike, steps: list[str] | None = None, priority: int = 0,
                     options: dict | None = None) -> dict:
        """Queue a file given by path, maybe with its own settings (control.py)."""
        return await self.control.submit(path, steps, priority, options)

    async def cancel(self, frame_id: int, reason: str = "cancelled by request") -> dict:
        """Cancel a queued or running frame (control.py)."""
        return await self.control.cancel(frame_id, reason)

    async def retry(self, frame_id: int, from_stage: str | None = None, options: dict | None = None) -> dict:
        """Queue a finished frame again, maybe from a stage, maybe with changed settings (control.py)."""
        return await self.control.retry(frame_id, from_stage, options)

    def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file; an invalid one changes nothing (control.py)."""
        return self.control.reload()

    async def reprioritize(self) -> int:
        """Ask the region provider again for every queued frame (control.py)."""
        return await self.control.reprioritize()

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
        text = await asyncio.to_thread(self.report.write_status)
        if text:
            self.status_line_text = text
            self.notifier.status(text)

    async def _loop_error(self, name: str, text: str, run: int) -> None:
        # the first error of a run, then every tenth: the log has them all
        if run == 1 or run % 10 == 0:
            await self.record_event("daemon.loop_error", f"{name}: {text}" + (f" ({run} in a row)" if run > 1 else ""),
                                    data={"loop": name, "consecutive": run}, level="ERROR")

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
        try:
            self.instance_lock.take()
        except InstanceLocked as e:
            raise DaemonError(str(e)) from None
        self.db = await self.gate.run(Database, self.db_path,
                                      busy_timeout_ms=int(s.daemon.db_busy_timeout_seconds * 1000))
        self.frames = FrameStore(self.db)
        self.events = EventLog(self.db)
        self.profiles = load_profiles(s)
        for svc in self.services:  # before any frame can end: a service's finish hook sees them all
            attach = getattr(svc, "attach", None)
            if callable(attach):
                attach(self)
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
        log.info("started: pid %d, %s, database %s", os.getpid(), self.status_line_text, self.db_path)
        self.notifier.ready(self.status_line_text)
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
        try:  # the last events' records; a database that refuses them for long must not hang the stop
            await asyncio.wait_for(self._last_records(), 30.0)
        except asyncio.TimeoutError:
            log.error("stop: the last frames' records could not be written; the next start runs them again")
            await self.supervisor.stop()
        await self._close()

    async def _last_records(self) -> None:
        await self.recorder.stop_pumping()
        await self.supervisor.stop()
        if self.pool is not None:
            for ev in self.pool.poll(0):
                await self.recorder.record(ev)

    async def _close(self, startup_failed: bool = False) -> None:
        if self.frames is not None:
            try:
                await self.gate.run(self._requeue_leftovers, not startup_failed)
            except Exception as e:  # noqa: BLE001 — the next start recovers them
                log.error("stop: could not requeue running frames (%s); the next start will", e)
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)
        self.state = "stopped"
        if self.instance_lock.held:  # never overwrite another daemon's status
            await asyncio.to_thread(self.report.write_status)
        if self.db is not None:
            await self.gate.run(self.db.close)
            self.db = None
        self.gate.close()
        self.instance_lock.release()
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


def run_daemon(settings: Settings, config_path: Path | None = None, services: Iterable[Service] = (),
               region_provider: RegionProvider | None = None) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit code."""
    daemon = Daemon(settings, config_path=config_path, services=services, region_provider=region_provider)
    return asyncio.run(daemon.run())

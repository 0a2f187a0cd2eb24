"""The daemon: intake → queue → pool, scheduled jobs, signals, systemd notify, config reload.

Design note: one asyncio event loop holds the service together and does no heavy work. The
watcher's thread hands paths to the intake, which hashes, copies and checks files in worker
threads and records frames (SQLite is the durable queue: a frame is committed before any work
on it). A dispatcher claims the best queued frame (priority, then age) whenever the executor
has a free slot and submits it; a pump turns the executor's events into stage runs, results,
retries and failures. APScheduler jobs rescan the folders, wake the dispatcher when a retry's
time has come, clean old work folders, prune the cache, write the nightly summary and ping
systemd's watchdog.

The endpoint (and any other in-process client) uses the methods in the "API" section below;
they are safe to call from the event loop's thread. Anything started with the daemon and
stopped with it (the HTTP endpoint, the GCN consumer) is a `Service`, passed to the
constructor or added with `add_service()` before `run()`.
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import gc
import json
import logging
import os
import signal
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..config import ConfigError, Settings, load_settings
from ..pipeline import ORIGINAL_PREFIX, STAGE_NAMES, select_steps
from ..pool import Executor, FrameJob, PoolEvent, make_executor
from ..pool.procs import kill_stale_group
from ..stages.base import StageSettings
from ..stages.profiles import ProfileSet, load_profiles
from ..store import Database, EventLog, FrameStore, TERMINAL
from ..watch.files import file_stat
from ..watch.fitscheck import check_fits
from ..watch.settle import Settled
from . import jobs
from .hooks import NoRegions, RegionProvider, Service
from .intake import Intake, frame_extra, publish_outcome, result_dir_for, spool_path
from .logs import setup_logging
from .notify import SystemdNotifier

log = logging.getLogger("stdd.daemon")

MAX_BACKOFF = 3600.0


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
        self.intake = Intake(self)
        self.state = "starting"
        self.paused_reason: str | None = None
        self.started_at: float | None = None
        self._profiles = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._runs: dict[int, int] = {}
        self._crashes: collections.deque[float] = collections.deque()
        self._resume_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self._scheduler = None
        self._lock_fh = None
        self._pumping = False
        self.finished_count = 0

    # =====================================================================================
    # API (for the endpoint and other in-process callers; call on the event loop's thread)
    # =====================================================================================
    @property
    def store(self) -> FrameStore:
        return self.frames

    def status(self) -> dict[str, Any]:
        """What `stdd status --json` shows: state, frames per state, pool, intake."""
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
            "updated_at": time.time(),
        }

    def pause(self, reason: str = "paused by request") -> None:
        """Stop starting frames (running ones go on; the watcher keeps recording new ones)."""
        if self.state == "stopping":
            return
        self.paused_reason = reason
        self.state = "paused"
        log.warning("paused: %s", reason)
        self.events.add("daemon.paused", reason, level="WARNING")
        self.notifier.status(f"paused: {reason}")
        self._write_status()

    def resume(self) -> None:
        if self.state != "paused":
            return
        self.state = "running"
        self.paused_reason = None
        self._crashes.clear()
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        log.info("resumed")
        self.events.add("daemon.resumed", "resumed")
        self.wake_dispatcher()
        self._write_status()

    async def submit(self, path: str | os.PathLike, steps: list[str] | None = None, priority: int = 0) -> dict:
        """Queue a file given by path (anywhere readable; it must be a whole FITS file now).
        Returns the frame row; identical content already recorded returns that frame, with
        `duplicate: true`. Raises SubmitError with the reason otherwise."""
        path = Path(path).absolute()
        st = file_stat(path)
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
        frame = self._frame_or_raise(frame_id)
        if frame["state"] == "queued" and self.frames.cancel_queued(frame_id, reason):
            log.info("frame=%d cancelled while queued", frame_id)
            await asyncio.to_thread(self._publish_outcome, self.frames.get(frame_id), "cancelled", reason)
            return {"frame_id": frame_id, "state": "cancelled"}
        if self.pool is not None and self.pool.cancel(frame_id, reason):
            log.info("frame=%d cancel requested: killing its process group", frame_id)
            return {"frame_id": frame_id, "state": "cancelling"}
        return {"frame_id": frame_id, "state": self.frames.get(frame_id)["state"]}

    async def retry(self, frame_id: int, from_stage: str | None = None) -> dict:
        """Queue a finished frame again, with a fresh attempt count. From a stage: earlier
        stages' products in its work folder are kept (when the folder is still there)."""
        frame = self._frame_or_raise(frame_id)
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
            if work and any(work.glob(f"{ORIGINAL_PREFIX}.*")) and steps[0] != select_steps(configured)[0]:
                options["keep_folder"] = True
            else:
                steps = None if frame.get("steps") is None else configured
        self.frames.set_options(frame_id, options or None)
        self.frames.retry(frame_id, steps)
        log.info("frame=%d retry requested%s", frame_id, f" from {from_stage}" if from_stage else "")
        self.wake_dispatcher()
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
            profiles = self._load_profiles(new)
        except ConfigError as e:
            for line in e.errors:
                log.error("reload: %s", line)
            log.error("reload: %d error(s) in %s; the running config stays", len(e.errors), self.config_path)
            self.events.add("daemon.reload_failed", f"{len(e.errors)} error(s) in {self.config_path}",
                            data={"errors": e.errors}, level="ERROR")
            self.notifier.notify(READY=1, STATUS="reload failed; running with the previous config")
            return False, list(e.errors)
        old, self.settings, self._profiles = self.settings, new, profiles
        self._apply(old, new)
        log.info("reload: %s loaded", self.config_path)
        self.events.add("daemon.reloaded", f"config {self.config_path} reloaded")
        self._write_status()
        self.notifier.notify(READY=1, STATUS=self._status_line())
        return True, []

    async def reprioritize(self) -> int:
        """Ask the region provider again for every queued frame (call when alerts change).
        Returns how many frames changed priority."""
        changed = 0
        for frame in self.frames.queued():
            path = spool_path(self.spool, frame["sha256"], frame["name"])
            try:
                prio, alert_ids = await asyncio.to_thread(self.region_provider.frame_priority, path)
            except Exception as e:
                log.warning("frame=%d region provider failed: %s", frame["id"], e)
                continue
            if prio > (frame.get("priority") or 0) or alert_ids:
                for alert_id in alert_ids or [None]:
                    self.frames.set_priority(frame["id"], prio, alert_id)
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
        if self._wake is not None:
            self._wake.set()

    # =====================================================================================
    # life cycle
    # =====================================================================================
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean stop)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._events_lock = asyncio.Lock()
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
        self.db = Database(self.db_path)
        self.frames = FrameStore(self.db)
        self.events = EventLog(self.db)
        self._profiles = self._load_profiles(s)
        await asyncio.to_thread(self._recover)
        if self.pool is None:
            self.pool = make_executor(s.pool)
        self.pool.hold_ends = True  # see _record
        await asyncio.to_thread(self.pool.start)
        await self.intake.start()
        self._start_scheduler()
        self.state = "running"
        self._tasks = [asyncio.create_task(self._dispatch_loop(), name="dispatch"),
                       asyncio.create_task(self._pump_loop(), name="pump")]
        for svc in self.services:
            await svc.start(self)
        self.events.add("daemon.started", f"stdd {__version__} started (pid {os.getpid()})")
        log.info("started: pid %d, %s, database %s", os.getpid(), self._status_line(), self.db_path)
        self.notifier.ready(self._status_line())
        self._write_status()
        # everything imported at start-up lives as long as the daemon: out of the collector's
        # reach, a full collection no longer walks it (shorter pauses of the event loop)
        gc.collect()
        gc.freeze()
        self.wake_dispatcher()

    def _recover(self) -> None:
        """After an unclean stop: kill what is left of frame processes, requeue their frames,
        and remove half-written results and spool files."""
        for frame in self.frames.running():
            run = self.frames.last_stage_run(frame["id"])
            pid = (run or {}).get("pid") or frame.get("pid")
            if pid and frame.get("started_at"):
                until = (run or {}).get("started_at") or time.time()
                if kill_stale_group(int(pid), frame["started_at"], until):
                    log.warning("frame=%d killed the leftover process group %d of the previous daemon",
                                frame["id"], pid)
            self.frames.close_open_stage_runs(frame["id"], "the daemon stopped uncleanly")
        ids = self.frames.recover_running()
        for fid in ids:
            log.warning("frame=%d was running when the daemon stopped; queued again, from a clean folder", fid)
        n = jobs.clean_stale_publish(self.settings.paths.results)
        for tmp in self.spool.glob(".incoming-*"):
            tmp.unlink(missing_ok=True)
        if n:
            log.info("removed %d half-written result folder(s)", n)

    async def _shutdown(self) -> None:
        log.info("stopping: no new frames; running stages may finish within %.0f s",
                 self.settings.pool.shutdown_grace_seconds)
        self.state = "stopping"
        self.notifier.stopping("stopping: letting running stages finish")
        self._write_status()
        await self.intake.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("service %s failed to stop", getattr(svc, "name", svc))
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, self.settings.pool.shutdown_grace_seconds)
        # the pump ends by itself after its current poll (a cancelled poll would drop events)
        self._pumping = False
        for task in self._tasks:
            if task.get_name() != "pump":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            for ev in self.pool.poll(0):
                await self._record(ev)
        await self._close()

    async def _close(self, startup_failed: bool = False) -> None:
        if self.frames is not None:
            for frame in self.frames.running():  # nothing should be left; if so, it goes back
                self.frames.close_open_stage_runs(frame["id"], "the daemon stopped")
                self.frames.requeue(frame["id"], "the daemon stopped", count_attempt=False)
            if not startup_failed:
                self.events.add("daemon.stopped", "stopped cleanly")
        self.state = "stopped"
        if self._lock_fh is not None:  # never overwrite another daemon's status
            self._write_status()
        if self.db is not None:
            self.db.close()
            self.db = None
        self._release_lock()
        self.notifier.close()
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    self._loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        log.info("stopped")

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

    def _load_profiles(self, settings: Settings) -> ProfileSet:
        """Every instrument profile the config names (`watch.profiles`, `pipeline.instrument`) or may
        match by header, read and validated once per load; ConfigError names the bad key or file.
        `_job_for` picks by the frame's folder; the frame's process by its header (stages/profiles.py)."""
        return load_profiles(settings)

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
        self._schedule_jobs(replace=True)
        self.wake_dispatcher()

    def _status_line(self) -> str:
        c = self.frames.counts() if self.frames else {}
        running = len(self.pool.running_ids()) if self.pool else 0
        text = (f"{self.state}; {c.get('queued', 0)} queued, {running} running, {c.get('done', 0)} done, "
                f"{c.get('failed', 0)} failed")
        if self.paused_reason:
            text += f"; paused: {self.paused_reason}"
        return text

    def _write_status(self) -> None:
        """`<database>.daemon.json`: what `stdd status` shows about the daemon itself."""
        try:
            data = self.status() if self.frames is not None and self.db is not None else {
                "state": self.state, "pid": os.getpid(), "updated_at": time.time()}
            tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, default=str, indent=1))
            os.replace(tmp, self.status_path)
        except OSError as e:
            log.debug("cannot write %s: %s", self.status_path, e)

    # =====================================================================================
    # the queue → the pool
    # =====================================================================================
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._events_lock:  # never between the events of one batch (a crash may pause)
                await self._dispatch()

    async def _dispatch(self) -> None:
        while self.state == "running" and self.pool.free_slots() > 0:
            frame = self.frames.claim_next(self.pool.name)
            if frame is None:
                break
            try:
                job = self._job_for(frame)
            except Exception as e:  # e.g. per-frame pipeline options that do not validate
                reason = f"cannot be started: {type(e).__name__}: {e}"
                log.error("frame=%d %s", frame["id"], reason)
                self.frames.finish(frame["id"], "failed", reason)
                await asyncio.to_thread(self._publish_outcome, self.frames.get(frame["id"]), "failed", reason)
                continue
            try:
                self.pool.submit(job)
            except RuntimeError as e:  # the executor is stopping or broken: try again later
                log.error("frame=%d cannot be started: %s; queued again", frame["id"], e)
                self.frames.requeue(frame["id"], f"cannot be started: {e}", delay=5.0, count_attempt=False)
                break
            log.info("frame=%d started (attempt %d) %s", frame["id"], frame["attempts"], frame["name"])

    def _job_for(self, frame: dict) -> FrameJob:
        s = self.settings
        try:
            regions = list(self.region_provider.live_regions())
        except Exception as e:
            log.warning("region provider failed (%s); no regions for frame %d", e, frame["id"])
            regions = []
        options = frame.get("options") or {}
        overrides = options.get("pipeline") or {}
        profiles = self._profiles.choice_for(frame["path"])  # by folder; by header in the frame's process
        stage_settings = StageSettings.from_settings(s, regions=regions, profiles=profiles, **overrides)
        work_dir = s.paths.work / str(frame["id"])
        result_dir = result_dir_for(s.paths.results, frame["id"], frame["name"])
        self.frames.set_dirs(frame["id"], str(work_dir), str(result_dir))
        steps = frame.get("steps") or list(s.pipeline.steps)
        if frame.get("alert_ids") and not frame.get("steps"):
            # a frame covering a live alert is always searched, whatever the default steps
            steps = list(STAGE_NAMES)
        return FrameJob(
            frame_id=frame["id"], attempt=frame["attempts"], sha256=frame["sha256"],
            source=str(spool_path(self.spool, frame["sha256"], frame["name"])), origin=frame["path"],
            work_dir=str(work_dir), result_dir=str(result_dir), steps=steps,
            fresh=not options.get("keep_folder"), stage_settings=stage_settings.model_dump(mode="json"),
            stage_functions=dict(s.pool.stage_functions), extra=frame_extra(frame),
            priority=int(frame.get("priority") or 0),
            # Dask workers may have other cores than this machine: there only a set value limits
            threads=s.pool.effective_threads_per_frame if s.pool.executor == "local" else s.pool.threads_per_frame,
        )

    async def _pump_loop(self) -> None:
        self._pumping = True
        while self._pumping:
            events = await asyncio.to_thread(self.pool.poll, 0.25)
            if not events:
                continue
            async with self._events_lock:
                for ev in events:
                    await self._record(ev)

    async def _record(self, ev: PoolEvent) -> None:
        try:
            await self._on_event(ev)
        except Exception:
            log.exception("frame=%d error recording %s event", ev.frame_id, ev.kind)
        finally:
            if ev.kind in ("finished", "lost"):
                # only now may the dispatcher refill the slot (hold_ends): never before, say,
                # a crash loop has paused intake
                self.pool.end_recorded()
                self.wake_dispatcher()

    async def _on_event(self, ev: PoolEvent) -> None:
        fid = ev.frame_id
        if ev.kind == "stage_start":
            self._runs[fid] = self.frames.start_stage_run(fid, ev.stage, ev.attempt, ev.pid)
            log.info("frame=%d %s started (attempt %d, pid %s)", fid, ev.stage, ev.attempt, ev.pid)
        elif ev.kind == "stage_end":
            run_id = self._runs.pop(fid, None)
            summary = (ev.data or {}).get("summary") or {}
            if run_id is not None:
                self.frames.end_stage_run(run_id, ev.state or "done", ev.error, summary, ev.seconds)
            if ev.state == "failed":
                log.warning("frame=%d %s failed after %.1f s: %s", fid, ev.stage, ev.seconds or 0, ev.error)
            else:
                log.info("frame=%d %s %s in %.1f s", fid, ev.stage, ev.state, ev.seconds or 0)
            radius = summary.get("radius_deg", summary.get("radius"))
            if all(isinstance(v, (int, float)) for v in (summary.get("ra"), summary.get("dec"), radius)):
                self.frames.set_footprint(fid, summary["ra"], summary["dec"], radius, summary.get("footprint"))
        elif ev.kind == "finished":
            self._runs.pop(fid, None)
            result = (ev.data or {}).get("result") or {}
            state = "done" if ev.state == "done" else "failed"
            self.frames.finish(fid, state, ev.error if state == "failed" else None, result)
            self.finished_count += 1
            frame = self.frames.get(fid)
            if state == "done":
                log.info("frame=%d done in %.1f s → %s", fid, ev.seconds or 0, frame.get("result_dir"))
                await asyncio.to_thread(self._after_success, frame)
            else:
                log.warning("frame=%d failed: %s", fid, ev.error)
        elif ev.kind == "lost":
            await self._on_lost(ev)
        self.wake_dispatcher()

    async def _on_lost(self, ev: PoolEvent) -> None:
        fid = ev.frame_id
        reason = ev.error or ev.state or "lost"
        if ev.state in ("died", "error"):
            # before the slot is freed and before any await: a crash loop must pause
            # intake before the dispatcher can hand the freed slot to the next frame
            self._note_crash(reason)
        self._runs.pop(fid, None)
        self.frames.close_open_stage_runs(fid, reason)
        frame = self.frames.get(fid)
        await asyncio.to_thread(self._clean_partial_publish, frame)
        p = self.settings.pool
        if ev.state == "interrupted":
            self.frames.requeue(fid, reason, count_attempt=False)
            log.info("frame=%d interrupted by the shutdown; queued again", fid)
            return
        if ev.state == "cancelled":
            self.frames.finish(fid, "cancelled", reason)
            log.info("frame=%d cancelled: %s", fid, reason)
            await asyncio.to_thread(self._publish_outcome, self.frames.get(fid), "cancelled", reason)
            return
        retryable = ev.state in ("died", "error") or (ev.state == "timeout" and p.retry_timeouts)
        attempts = frame.get("attempts") or 1
        if retryable and attempts < p.max_attempts:
            delay = min(MAX_BACKOFF, p.retry_backoff_seconds * 2 ** (attempts - 1))
            self.frames.requeue(fid, reason, delay=delay)
            log.warning("frame=%d %s; retry %d/%d in %.1f s", fid, reason, attempts + 1, p.max_attempts, delay)
            return
        final = reason if not retryable else f"{reason} (gave up after {attempts} attempt{'s' * (attempts > 1)})"
        self.frames.finish(fid, "failed", final)
        log.error("frame=%d failed: %s", fid, final)
        await asyncio.to_thread(self._publish_outcome, self.frames.get(fid), "failed", final)

    def _note_crash(self, reason: str) -> None:
        p = self.settings.pool
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > p.crash_loop_window_seconds:
            self._crashes.popleft()
        if len(self._crashes) >= p.crash_loop_failures and self.state == "running":
            msg = (f"crash loop: {len(self._crashes)} frame processes died in {p.crash_loop_window_seconds:g} s "
                   f"(last: {reason}); intake paused")
            if p.crash_loop_pause_minutes > 0:
                msg += f" for {p.crash_loop_pause_minutes:g} min"
                self._resume_handle = self._loop.call_later(p.crash_loop_pause_minutes * 60, self._auto_resume)
            else:
                msg += " until resumed (stdd resume)"
            log.error(msg)
            self.pause(msg)

    def _auto_resume(self) -> None:
        self._resume_handle = None
        if self.state == "paused" and (self.paused_reason or "").startswith("crash loop"):
            log.info("crash-loop pause over; resuming")
            self.resume()

    # -- file handling after the fact (worker threads) ------------------------------------
    def _after_success(self, frame: dict) -> None:
        """The source file after a frame is done: leave, archive or delete (only if it is
        still the same file); the spool copy goes (the work folder keeps one)."""
        for p in self.spool.glob(f"{frame['sha256']}.*"):
            p.unlink(missing_ok=True)
        mode = self.settings.watch.after_success
        if mode == "leave":
            return
        src = Path(frame["path"])
        st = file_stat(src)
        if st is None or st.size != frame["size"] or st.mtime != frame["mtime"]:
            return  # gone, or a newer version is there now: not ours to touch
        try:
            if mode == "delete":
                src.unlink()
                log.info("frame=%d deleted the source %s", frame["id"], src)
            elif mode == "archive":
                dest = self._archive_path(src, frame["id"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), dest)
                log.info("frame=%d archived the source to %s", frame["id"], dest)
        except OSError as e:
            log.error("frame=%d cannot %s the source %s: %s", frame["id"], mode, src, e)

    def _archive_path(self, src: Path, frame_id: int) -> Path:
        archive = self.settings.paths.archive
        rel = Path(src.name)
        for root in self.settings.paths.incoming:
            if root in src.parents:
                rel = src.relative_to(root)
                break
        dest = archive / rel
        if dest.exists():
            dest = dest.with_name(f"{frame_id}-{dest.name}")
        return dest

    def _publish_outcome(self, frame: dict, status: str, error: str) -> None:
        result_dir = Path(frame.get("result_dir") or result_dir_for(self.settings.paths.results, frame["id"],
                                                                       frame["name"]))
        try:
            publish_outcome(result_dir, {**frame_extra(frame), "status": status, "error": error})
            if not frame.get("result_dir"):
                self.frames.set_dirs(frame["id"], frame.get("work_dir"), str(result_dir))
        except OSError as e:
            log.error("frame=%d cannot write its result folder: %s", frame["id"], e)

    def _clean_partial_publish(self, frame: dict) -> None:
        if frame and frame.get("result_dir"):
            rd = Path(frame["result_dir"])
            for tmp in rd.parent.glob(f".{rd.name}.*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _frame_or_raise(self, frame_id: int) -> dict:
        frame = self.frames.get(int(frame_id))
        if frame is None:
            raise SubmitError(f"no frame {frame_id}")
        return frame

    # =====================================================================================
    # scheduled jobs
    # =====================================================================================
    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(event_loop=self._loop, timezone="UTC",
                                           job_defaults={"coalesce": True, "max_instances": 1,
                                                         "misfire_grace_time": 3600})
        self._schedule_jobs()
        self._scheduler.start()

    def _schedule_jobs(self, replace: bool = False) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self._scheduler is None:
            return
        s = self.settings
        retry_every = min(5.0, max(0.2, s.pool.retry_backoff_seconds / 4))
        jobs_ = [
            ("rescan", self._job_rescan, IntervalTrigger(minutes=s.watch.rescan_minutes)),
            ("retry", self._job_retry, IntervalTrigger(seconds=retry_every)),
            ("retention", self._job_retention, IntervalTrigger(hours=1)),
            ("summary", self._job_summary, CronTrigger(hour=s.retention.summary_hour_utc, minute=0,
                                                       timezone="UTC")),
            ("cache", self._job_cache, IntervalTrigger(hours=24)),
            ("status", self._job_status, IntervalTrigger(seconds=5)),
        ]
        if s.template.own_build_hour_utc is not None:
            jobs_.append(("own_templates", self._job_own_templates,
                          CronTrigger(hour=s.template.own_build_hour_utc, minute=30, timezone="UTC")))
        elif replace and self._scheduler.get_job("own_templates"):
            self._scheduler.remove_job("own_templates")
        if self.notifier.watchdog_seconds:
            jobs_.append(("watchdog", self._job_watchdog,
                          IntervalTrigger(seconds=max(0.5, self.notifier.watchdog_seconds / 3))))
        for job_id, func, trigger in jobs_:
            self._scheduler.add_job(func, trigger, id=job_id, name=job_id, replace_existing=True)

    def job_ids(self) -> list[str]:
        return [j.id for j in self._scheduler.get_jobs()] if self._scheduler else []

    async def run_job(self, job_id: str):
        """Run a scheduled job now (the endpoint's "run now", and tests)."""
        func = {"rescan": self._job_rescan, "retry": self._job_retry, "retention": self._job_retention,
                "summary": self._job_summary, "cache": self._job_cache, "status": self._job_status,
                "watchdog": self._job_watchdog, "own_templates": self._job_own_templates}[job_id]
        return await func()

    async def _job_rescan(self):
        return await self.intake.rescan()

    async def _job_retry(self):
        t = self.frames.next_attempt_time()
        if t is not None and t <= time.time():
            self.wake_dispatcher()
        return t

    async def _job_retention(self):
        s = self.settings
        out = await asyncio.to_thread(jobs.clean_work, self.frames, s.paths.work, self.spool, s.retention.work_days)
        if out["removed"]:
            log.info("retention: removed %d work folder(s) older than %g days", out["removed"], s.retention.work_days)
        return out

    async def _job_summary(self):
        s = self.settings
        path, summary = await asyncio.to_thread(jobs.write_night_summary, self.frames, s.paths.results, s.site.lon)
        log.info("summary: %s (%s)", jobs.format_summary(summary), path)
        self.events.add("summary.night", jobs.format_summary(summary), data=summary)
        return summary

    async def _job_own_templates(self):
        """Templates from the telescope's own frames, built in a child process (numpy and SWarp
        work must not share the daemon's GIL)."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        s = self.settings
        if s.template.folder is None:
            log.warning("own templates: template.folder is not set; nothing built")
            return {"built": [], "skipped": ["template.folder is not set"]}
        folders = await asyncio.to_thread(jobs.template_source_folders, s.paths.results, s.paths.work)
        if not folders:
            return {"built": [], "skipped": ["no frame folders with images"]}
        loop = asyncio.get_running_loop()
        try:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                out = await loop.run_in_executor(ex, jobs.build_own_templates, [str(f) for f in folders],
                                                 str(s.template.folder), s.template.own_min_frames,
                                                 s.template.own_max_frames, s.template.own_max_fwhm_ratio)
        except Exception as e:  # the child died (memory, a signal) or could not start: say so, go on
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.error("own templates: the build failed: %s", why)
            self.events.add("templates.own", f"build failed: {why}", level="ERROR")
            return {"built": [], "skipped": [], "error": why}
        text = (f"{len(out['built'])} template(s) built from {len(folders)} frame folder(s); "
                f"{len(out['skipped'])} skipped")
        log.info("own templates: %s", text)
        for b in out["built"]:
            log.info("own templates: %s from %d frames", b["path"], len(b["frames"]))
        self.events.add("templates.own", text, data={"built": out["built"], "skipped": out["skipped"][:50]})
        return out

    async def _job_cache(self):
        s = self.settings
        out = await asyncio.to_thread(jobs.prune_cache, s.paths.cache, s.retention.cache_days)
        if out["removed"]:
            log.info("cache: removed %d file(s) unused for %g days (%.1f MB)", out["removed"],
                     s.retention.cache_days, out["bytes"] / 1e6)
        return out

    async def _job_status(self):
        self._write_status()
        self.notifier.status(self._status_line())

    async def _job_watchdog(self):
        healthy = self.pool is not None and self.pool.alive and self.intake.watcher is not None \
            and self.intake.watcher.alive
        if healthy:
            self.notifier.watchdog()
        else:
            log.error("watchdog: %s is not alive; not pinging systemd",
                      "the pool" if not (self.pool and self.pool.alive) else "the watcher")
        return healthy


def run_daemon(settings: Settings, config_path: Path | None = None, services: Iterable[Service] = (),
               region_provider: RegionProvider | None = None) -> int:
    """Run the daemon in this process until SIGTERM/SIGINT; returns the exit code."""
    daemon = Daemon(settings, config_path=config_path, services=services, region_provider=region_provider)
    return asyncio.run(daemon.run())

"""Scheduled jobs: rescans, retry wake-ups, retention, the cache, the nightly summary, own
templates, calibration masters, the status file and the systemd watchdog ping.

Design note: APScheduler (3.x, on the daemon's event loop) fires the jobs; each job's work
runs in a thread (disk, database) and every job is guarded: one that raises is logged and
recorded as a `job.failed` event, and the next run comes as scheduled. The scheduler is one of
the supervised loops: the status job, every 5 s, is its heartbeat, so a scheduler that stops
firing is seen as stalled. The watchdog ping is sent only while every supervised loop and
service is alive and iterating: a hung dispatcher stops the ping, and systemd restarts stdd.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from . import jobs

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")

STATUS_EVERY = 5.0


class Scheduler:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon
        self.aps = None
        self.last_ping: float | None = None
        self._calib_warned = False
        self.funcs: dict[str, Callable[[], Awaitable]] = {
            "rescan": self.rescan, "retry": self.retry, "retention": self.retention, "summary": self.summary,
            "cache": self.cache, "status": self.status, "watchdog": self.watchdog,
            "own_templates": self.own_templates, "calibration": self.calibration,
            "calibration_daily": self.calibration_daily, "stacks": self.stacks,
        }

    def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.aps = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone="UTC",
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 3600})
        self.schedule()
        self.aps.start()

    def stop(self) -> None:
        if self.aps is not None:
            self.aps.shutdown(wait=False)
            self.aps = None

    def schedule(self, replace: bool = False) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.aps is None:
            return
        s = self.d.settings
        retry_every = min(5.0, max(0.2, s.pool.retry_backoff_seconds / 4))
        jobs_ = [
            ("rescan", IntervalTrigger(minutes=s.watch.rescan_minutes)),
            ("retry", IntervalTrigger(seconds=retry_every)),
            ("retention", IntervalTrigger(hours=1)),
            ("summary", CronTrigger(hour=s.retention.summary_hour_utc, minute=0, timezone="UTC")),
            ("cache", IntervalTrigger(hours=24)),
            ("status", IntervalTrigger(seconds=STATUS_EVERY)),
        ]
        if s.template.own_build_hour_utc is not None:
            jobs_.append(("own_templates", CronTrigger(hour=s.template.own_build_hour_utc, minute=30,
                                                       timezone="UTC")))
        elif replace and self.aps.get_job("own_templates"):
            self.aps.remove_job("own_templates")
        c = s.calibration
        jobs_.append(("calibration", IntervalTrigger(seconds=min(60.0, max(2.0, c.set_close_minutes * 60 / 4)))))
        if c.build_hour_utc is not None:
            jobs_.append(("calibration_daily", CronTrigger(hour=c.build_hour_utc, minute=15, timezone="UTC")))
        elif replace and self.aps.get_job("calibration_daily"):
            self.aps.remove_job("calibration_daily")
        if s.stack.enabled:
            jobs_.append(("stacks", IntervalTrigger(seconds=min(60.0, max(5.0, s.stack.max_gap_minutes * 60 / 4)))))
        elif replace and self.aps.get_job("stacks"):
            self.aps.remove_job("stacks")
        if self.d.notifier.watchdog_seconds:
            jobs_.append(("watchdog", IntervalTrigger(seconds=max(0.2, self.d.notifier.watchdog_seconds / 3))))
        for job_id, trigger in jobs_:
            self.aps.add_job(self._guarded, trigger, args=[job_id], id=job_id, name=job_id, replace_existing=True)

    async def _guarded(self, job_id: str):
        try:
            return await self.funcs[job_id]()
        except Exception as e:  # noqa: BLE001 — a job that fails runs again at its next time
            text = f"{type(e).__name__}: {e}"
            log.error("job %s failed: %s", job_id, text, exc_info=True)
            await self.d.record_event("job.failed", f"{job_id}: {text}", level="ERROR")

    def job_ids(self) -> list[str]:
        return [j.id for j in self.aps.get_jobs()] if self.aps else []

    async def run(self, job_id: str):
        """Run a job now (the endpoint's "run now", and tests); errors are raised."""
        return await self.funcs[job_id]()

    # -- the jobs -------------------------------------------------------------------------
    async def rescan(self):
        return await self.d.intake.rescan()

    async def retry(self):
        t = await self.d.gate.run(self.d.frames.next_attempt_time)
        if t is not None and t <= time.time():
            self.d.wake_dispatcher()
        return t

    async def retention(self):
        d, s = self.d, self.d.settings
        out = await d.gate.run(jobs.clean_work, d.frames, s.paths.work, d.spool, s.retention.work_days)
        if out["removed"]:
            log.info("retention: removed %d work folder(s) older than %g days", out["removed"], s.retention.work_days)
        # the database's history, on a connection of its own (seconds of short batches: the
        # daemon's database thread stays free)
        out["database"] = await asyncio.to_thread(jobs.prune_database, s.paths.database, s.retention)
        log.info("retention: database: %s", out["database"]["text"])
        return out

    async def summary(self):
        d, s = self.d, self.d.settings
        path, summary = await d.gate.run(jobs.write_night_summary, d.frames, s.paths.results, s.site.lon)
        log.info("summary: %s (%s)", jobs.format_summary(summary), path)
        await d.record_event("summary.night", jobs.format_summary(summary), data=summary)
        return summary

    async def own_templates(self):
        """Templates from the telescope's own frames, built in a child process (numpy and SWarp
        work must not share the daemon's GIL)."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        d, s = self.d, self.d.settings
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
            await d.record_event("templates.own", f"build failed: {why}", level="ERROR")
            return {"built": [], "skipped": [], "error": why}
        text = (f"{len(out['built'])} template(s) built from {len(folders)} frame folder(s); "
                f"{len(out['skipped'])} skipped")
        log.info("own templates: %s", text)
        for b in out["built"]:
            log.info("own templates: %s from %d frames", b["path"], len(b["frames"]))
        await d.record_event("templates.own", text, data={"built": out["built"], "skipped": out["skipped"][:50]})
        return out

    async def calibration(self, force: bool = False):
        """Masters from the calibration frames recorded by intake, once their set has closed (no
        calibration frame for calibration.set_close_minutes), or all pending ones (`force`, the
        daily job). The build runs in a child process; the frames are marked with their master
        (or why none was built) and light frames held for the masters are released."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from .intake import spool_path

        d, s = self.d, self.d.settings
        pending = await d.gate.run(d.frames.pending_calibration)
        if not pending:
            return None
        c = s.calibration
        if c.library is None:
            if not self._calib_warned:
                log.warning("calibration: %d calibration frame(s) recorded, but calibration.library is not set: "
                            "no master is built", len(pending))
                self._calib_warned = True
            return None
        newest = max(f["created_at"] for f in pending)
        if not force and time.time() - newest < 60 * c.set_close_minutes:
            return None
        items = [(str(spool_path(d.spool, f["sha256"], f["name"])), f["path"]) for f in pending]
        loop = asyncio.get_running_loop()
        try:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                report = await loop.run_in_executor(ex, jobs.build_calibration, items, s.model_dump(mode="json"),
                                                    str(s.source_file) if s.source_file else None)
        except Exception as e:  # the child died or could not start: the frames stay pending for the next run
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.error("calibration: the build failed: %s", why)
            await d.record_event("calibration.masters", f"build failed: {why}", level="ERROR")
            return {"error": why}
        by_path = {copy: f["id"] for (copy, _), f in zip(items, pending)}
        outcome: dict[str, list[int]] = {}
        for m in report["masters"]:
            for src in m.get("sources") or []:
                outcome.setdefault(m["file"], []).append(by_path.get(src))
            for lo in m.get("left_out") or []:
                outcome.setdefault(f"left out of {m['file']}: {lo['reason']}", []).append(by_path.get(lo["file"]))
        for fl in report["failed"]:
            for src in fl["files"]:
                outcome.setdefault(f"not built: {fl['reason']}", []).append(by_path.get(src))
        for sk in report["skipped"]:
            outcome.setdefault(f"skipped: {sk['reason']}", []).append(by_path.get(sk["file"]))
        marked: set[int] = set()
        for text, ids in outcome.items():
            ids = [i for i in ids if i is not None]
            if ids:
                await d.gate.write_until_done("calibration frames' master", d.frames.set_master, ids, text)
                marked.update(ids)
        # a frame marked with its outcome is never built from again: its spool copy goes (once
        # the mark is on disk), or a season of calibration frames would fill var/spool
        done = [copy for (copy, _), f in zip(items, pending) if f["id"] in marked]
        await asyncio.to_thread(jobs.remove_files, done)
        released = await d.gate.write_until_done("held frames", d.frames.release_held)
        for line in report.get("log", []):
            log.info("%s", line)
        text = (f"{len(report['masters'])} master(s) from {len(pending)} calibration frame(s) in "
                f"{report['seconds']:.1f} s; {len(report['failed'])} set(s) not built; {released} frame(s) released")
        log.info("calibration: %s", text)
        await d.record_event("calibration.masters", text, data={k: report[k] for k in ("masters", "failed", "skipped")},
                             level="WARNING" if report["failed"] else "INFO")
        d.wake_dispatcher()
        return report

    async def stacks(self):
        """Closed sequences of done frames stacked and queued (stdd/daemon/stacking.py)."""
        from .stacking import Stacker

        return await Stacker(self.d).run()

    async def calibration_daily(self):
        return await self.calibration(force=True)

    async def cache(self):
        s = self.d.settings
        out = await asyncio.to_thread(jobs.prune_cache, s.paths.cache, s.retention.cache_days)
        if out["removed"]:
            log.info("cache: removed %d file(s) unused for %g days (%.1f MB)", out["removed"],
                     s.retention.cache_days, out["bytes"] / 1e6)
        return out

    async def status(self):
        """The status file and systemd's STATUS line; also the scheduler's heartbeat."""
        d = self.d
        d.supervisor.beat("scheduler")
        await d.refresh_status()

    async def watchdog(self):
        """Ping systemd's watchdog only while everything that must run is alive and iterating."""
        d = self.d
        d.supervisor.beat("scheduler")
        problems = d.stall_problems()
        if problems:
            log.error("watchdog: %s; not pinging systemd", "; ".join(problems))
            return False
        d.notifier.watchdog()
        self.last_ping = time.time()
        return True

"""Queue dispatch: the best queued frame → a job for the executor, whenever a slot is free.

Design note: SQLite is the queue. One iteration of the dispatch loop waits to be woken (a frame
queued, a slot freed, a retry due) or for a second to pass, then claims frames — one atomic
UPDATE each, through the database gate — and submits them while the executor has free slots.
A frame claimed but not handed to the executor (its job could not be built because the
database refused a write, the executor is stopping) goes back to the queue at once, and that
write is retried until it is on disk: a claimed frame is never left `running` with nothing
running it. An iteration that raises is the supervisor's to log, record and retry.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..faults import fault_point
from ..pipeline import select_steps
from ..pool import FrameJob
from ..stages.base import StageSettings
from ..stages.profiles import load_profile
from .dbgate import database_problem
from .intake import frame_extra, result_dir_for, spool_path

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")

IDLE_WAKE_SECONDS = 1.0


class Dispatcher:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    async def iteration(self) -> None:
        d = self.d
        # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancel that
        # arrives as its inner wait completes, and the loop would not stop
        try:
            async with asyncio.timeout(IDLE_WAKE_SECONDS):
                await d.wake_event.wait()
        except TimeoutError:
            return
        d.wake_event.clear()
        # never between the events of one batch (a crash may pause); the pump may hold the
        # lock for long while the database refuses its writes: wait beating, not stalled
        while True:
            try:
                async with asyncio.timeout(IDLE_WAKE_SECONDS):
                    await d.events_lock.acquire()
                break
            except TimeoutError:
                self._beat()
        try:
            await self.dispatch()
        finally:
            d.events_lock.release()

    def _claim(self) -> dict | None:
        fault_point("daemon.dispatch")
        return self.d.frames.claim_next(self.d.pool.name)

    async def dispatch(self) -> None:
        d = self.d
        while d.state == "running" and d.pool.free_slots() > 0:
            frame = await d.gate.run(self._claim)
            if frame is None:
                break
            d.gate.note_success()  # a claim is a write that went through
            fid = frame["id"]
            try:
                job = await d.gate.run(self.job_for, frame)
            except Exception as e:
                if database_problem(e) is not None:
                    await self._back_to_queue(fid, f"cannot be started now: {e}", delay=0.0)
                    raise  # the supervisor backs off and tries again
                reason = f"cannot be started: {type(e).__name__}: {e}"  # e.g. per-frame options that do not validate
                log.error("frame=%d %s", fid, reason)
                await d.gate.write_until_done(f"frame={fid} end", d.frames.finish, fid, "failed", reason,
                                              beat=self._beat)
                await d.publish_outcome(fid, "failed", reason)
                continue
            try:
                d.pool.submit(job)
            except RuntimeError as e:  # the executor is stopping or broken: try again later
                log.error("frame=%d cannot be started: %s; queued again", fid, e)
                await self._back_to_queue(fid, f"cannot be started: {e}", delay=5.0)
                break
            log.info("frame=%d started (attempt %d) %s", fid, frame["attempts"], frame["name"])

    def _beat(self) -> None:
        self.d.supervisor.beat("dispatch")

    async def _back_to_queue(self, fid: int, reason: str, delay: float) -> None:
        await self.d.gate.write_until_done(f"frame={fid} requeue", self.d.frames.requeue, fid, reason,
                                           delay=delay, count_attempt=False, beat=self._beat)

    def job_for(self, frame: dict) -> FrameJob:
        """The executor's job for a claimed frame (runs on the database thread: it records the
        frame's folders)."""
        d = self.d
        s = d.settings
        try:
            regions = list(d.region_provider.live_regions())
        except Exception as e:
            log.warning("region provider failed (%s); no regions for frame %d", e, frame["id"])
            regions = []
        options = frame.get("options") or {}
        # the frame's own settings (stdd.config.frame_options), checked when they were given
        frame_options = {k: v for k, v in options.items() if k != "keep_folder"}
        explicit = load_profile(s, frame_options["profile"], "profile") if frame_options.get("profile") else None
        profiles = d.profiles.choice_for(frame["path"], explicit)  # else by folder; by header in the frame's process
        stage_settings = StageSettings.from_settings(s, regions=regions, profiles=profiles,
                                                     frame_options=frame_options)
        work_dir = s.paths.work / str(frame["id"])
        result_dir = result_dir_for(s.paths.results, frame["id"], frame["name"])
        d.frames.set_dirs(frame["id"], str(work_dir), str(result_dir))
        steps = frame.get("steps") or list(s.pipeline.steps)
        if frame.get("alert_ids") and not frame.get("steps"):
            # a frame covering a live alert is always searched, whatever the default steps
            steps = select_steps(None)
        return FrameJob(
            frame_id=frame["id"], attempt=frame["attempts"], sha256=frame["sha256"],
            source=str(spool_path(d.spool, frame["sha256"], frame["name"])), origin=frame["path"],
            work_dir=str(work_dir), result_dir=str(Path(result_dir)), steps=steps,
            fresh=not options.get("keep_folder"), stage_settings=stage_settings.model_dump(mode="json"),
            stage_functions=dict(s.pool.stage_functions), extra=frame_extra(frame),
            priority=int(frame.get("priority") or 0),
            # Dask workers may have other cores than this machine: there only a set value limits
            threads=s.pool.effective_threads_per_frame if s.pool.executor == "local" else s.pool.threads_per_frame,
        )

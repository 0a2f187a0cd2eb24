"""Result recording: the executor's events → stage runs, results, retries and failures.

Design note: a frame's end is recorded before anything else may happen to its slot. The pump
loop polls the executor (in a thread) and records each event through the database gate; a
write the database refuses for now (locked, disk full) is retried until it is on disk, so a
finished frame is never left `running` and never run twice because of it. Only then is the
executor told (`end_recorded`) that the slot may take the next frame (`hold_ends`). Each
event's writes are one transaction. A crash loop (frame processes dying again and again)
pauses intake before the freed slot can be refilled.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from ..pool import PoolEvent
from . import outcomes
from .dbgate import database_problem

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")

MAX_BACKOFF = 3600.0


class Recorder:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon
        self.runs: dict[int, int] = {}
        self.crashes: collections.deque[float] = collections.deque()
        self.resume_handle: asyncio.TimerHandle | None = None
        self.pumping = False
        self.active = False
        self.finished_count = 0

    # -- the pump loop (one iteration) ----------------------------------------------------
    async def pump_iteration(self) -> None:
        d = self.d
        if not self.pumping:  # stopping: the last events are read by the shutdown itself
            await asyncio.sleep(0.05)
            return
        self.active = True
        try:
            events = await asyncio.to_thread(d.pool.poll, 0.25)
            if not events:
                return
            async with d.events_lock:
                for ev in events:
                    await self.record(ev)
        finally:
            self.active = False

    async def stop_pumping(self) -> None:
        """End the pump after its current poll and its events are recorded (a cancelled poll
        would drop events)."""
        self.pumping = False
        while self.active:
            await asyncio.sleep(0.02)

    async def record(self, ev: PoolEvent) -> None:
        try:
            await self.on_event(ev)
        except Exception:
            log.exception("frame=%d error recording %s event", ev.frame_id, ev.kind)
        finally:
            if ev.kind in ("finished", "lost"):
                # only now may the dispatcher refill the slot (hold_ends): never before, say,
                # a crash loop has paused intake
                self.d.pool.end_recorded()
                self.d.wake_dispatcher()

    async def _write(self, what: str, fn, *args, **kwargs):
        """A write that must not be lost: retried until the database takes it."""
        return await self.d.gate.write_until_done(what, fn, *args, beat=self._beat, **kwargs)

    def _beat(self) -> None:
        self.d.supervisor.beat("pump")

    async def on_event(self, ev: PoolEvent) -> None:
        d, fid = self.d, ev.frame_id
        frames = d.frames
        if ev.kind == "stage_start":
            self.runs[fid] = await self._write(f"frame={fid} {ev.stage} start", frames.start_stage_run, fid,
                                               ev.stage, ev.attempt, ev.pid)
            log.info("frame=%d %s started (attempt %d, pid %s)", fid, ev.stage, ev.attempt, ev.pid)
        elif ev.kind == "stage_end":
            run_id = self.runs.pop(fid, None)
            summary = (ev.data or {}).get("summary") or {}
            await self._write(f"frame={fid} {ev.stage} end", self._stage_end_tx, fid, run_id, ev, summary)
            if ev.state == "failed":
                log.warning("frame=%d %s failed after %.1f s: %s", fid, ev.stage, ev.seconds or 0, ev.error)
            else:
                log.info("frame=%d %s %s in %.1f s", fid, ev.stage, ev.state, ev.seconds or 0)
        elif ev.kind == "finished":
            self.runs.pop(fid, None)
            result = (ev.data or {}).get("result") or {}
            state = "done" if ev.state == "done" else "failed"
            frame = await self._write(f"frame={fid} end", self._finish_tx, fid, state,
                                      ev.error if state == "failed" else None, result)
            self.finished_count += 1
            if state == "done":
                log.info("frame=%d done in %.1f s → %s", fid, ev.seconds or 0, frame.get("result_dir"))
                await asyncio.to_thread(outcomes.after_success, d.settings, d.spool, frame)
            else:
                log.warning("frame=%d failed: %s", fid, ev.error)
        elif ev.kind == "lost":
            await self.on_lost(ev)
        d.wake_dispatcher()

    def _stage_end_tx(self, fid: int, run_id: int | None, ev: PoolEvent, summary: dict) -> None:
        frames = self.d.frames
        with frames.db.write():
            if run_id is not None:
                frames.end_stage_run(run_id, ev.state or "done", ev.error, summary, ev.seconds)
            radius = summary.get("radius_deg", summary.get("radius"))
            if all(isinstance(v, (int, float)) for v in (summary.get("ra"), summary.get("dec"), radius)):
                frames.set_footprint(fid, summary["ra"], summary["dec"], radius, summary.get("footprint"))

    def _finish_tx(self, fid: int, state: str, error: str | None, result: dict) -> dict:
        frames = self.d.frames
        with frames.db.write() as conn:
            frames.finish(fid, state, error, result)
            frame = frames.get(fid)
            if state == "done":
                for hook in list(self.d.finish_hooks):
                    self._run_finish_hook(conn, hook, frame, result)
            return frame

    @staticmethod
    def _run_finish_hook(conn, hook, frame: dict, result: dict) -> None:
        """A hook's writes join the frame's end; a hook that fails (a bug, bad data) is undone
        alone and logged: the frame's end is still recorded. A database problem (locked, disk
        full) undoes the whole transaction, which `write_until_done` retries."""
        conn.execute("SAVEPOINT finish_hook")
        try:
            hook(frame, result)
        except Exception as e:
            conn.execute("ROLLBACK TO finish_hook")
            conn.execute("RELEASE finish_hook")
            if database_problem(e) is not None:
                raise
            log.exception("frame=%d: finish hook %s failed; the frame's end is recorded without it",
                          frame["id"], getattr(hook, "__qualname__", hook))
            return
        conn.execute("RELEASE finish_hook")

    async def on_lost(self, ev: PoolEvent) -> None:
        d, fid = self.d, ev.frame_id
        reason = ev.error or ev.state or "lost"
        if ev.state in ("died", "error"):
            # before the slot is freed and before any await: a crash loop must pause
            # intake before the dispatcher can hand the freed slot to the next frame
            self.note_crash(reason)
        self.runs.pop(fid, None)
        frames = d.frames
        frame = await self._write(f"frame={fid} lost", self._close_runs_tx, fid, reason)
        await asyncio.to_thread(outcomes.clean_partial_publish, frame)
        p = d.settings.pool
        if ev.state == "interrupted":
            await self._write(f"frame={fid} requeue", frames.requeue, fid, reason, count_attempt=False)
            log.info("frame=%d interrupted by the shutdown; queued again", fid)
            return
        if ev.state == "cancelled":
            await self._write(f"frame={fid} cancel", frames.finish, fid, "cancelled", reason)
            log.info("frame=%d cancelled: %s", fid, reason)
            await d.publish_outcome(fid, "cancelled", reason)
            return
        retryable = ev.state in ("died", "error") or (ev.state == "timeout" and p.retry_timeouts)
        attempts = frame.get("attempts") or 1
        if retryable and attempts < p.max_attempts:
            delay = min(MAX_BACKOFF, p.retry_backoff_seconds * 2 ** (attempts - 1))
            await self._write(f"frame={fid} requeue", frames.requeue, fid, reason, delay=delay)
            log.warning("frame=%d %s; retry %d/%d in %.1f s", fid, reason, attempts + 1, p.max_attempts, delay)
            return
        final = reason if not retryable else f"{reason} (gave up after {attempts} attempt{'s' * (attempts > 1)})"
        await self._write(f"frame={fid} end", frames.finish, fid, "failed", final)
        log.error("frame=%d failed: %s", fid, final)
        await d.publish_outcome(fid, "failed", final)

    def _close_runs_tx(self, fid: int, reason: str) -> dict:
        frames = self.d.frames
        with frames.db.write():
            frames.close_open_stage_runs(fid, reason)
            return frames.get(fid)

    # -- crash loops ----------------------------------------------------------------------
    def note_crash(self, reason: str) -> None:
        d = self.d
        p = d.settings.pool
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > p.crash_loop_window_seconds:
            self.crashes.popleft()
        if len(self.crashes) >= p.crash_loop_failures and d.state == "running":
            msg = (f"crash loop: {len(self.crashes)} frame processes died in {p.crash_loop_window_seconds:g} s "
                   f"(last: {reason}); intake paused")
            if p.crash_loop_pause_minutes > 0:
                msg += f" for {p.crash_loop_pause_minutes:g} min"
                self.resume_handle = asyncio.get_running_loop().call_later(p.crash_loop_pause_minutes * 60,
                                                                           self._auto_resume)
            else:
                msg += " until resumed (stdd resume)"
            log.error(msg)
            d.pause(msg)

    def cancel_auto_resume(self) -> None:
        self.crashes.clear()
        if self.resume_handle is not None:
            self.resume_handle.cancel()
            self.resume_handle = None

    def _auto_resume(self) -> None:
        self.resume_handle = None
        d = self.d
        if d.state == "paused" and (d.paused_reason or "").startswith("crash loop"):
            log.info("crash-loop pause over; resuming")
            d.resume()

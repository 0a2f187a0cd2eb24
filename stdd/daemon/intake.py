"""Intake: from a path the watcher saw to a frame recorded in the queue (or rejected).

For each settled file, in a worker thread (never on the event loop):
1. a file already recorded with the same size and mtime is known: skipped without hashing
   (a restart, or a rescan, of a folder the daemon has seen);
2. it is copied into the spool while hashed (`copy_and_hash`); a file that changed meanwhile
   goes back to the settle tracker;
3. content already recorded (same SHA-256, any name) is a duplicate: logged, not processed;
4. the spool copy is checked as a whole FITS file: ok → recorded as queued (its priority
   from the region provider); still incomplete → held until it changes, its writer closes it
   or `incomplete_seconds` pass; bad (or incomplete for good) → recorded as failed with the
   reason, moved to the quarantine with a `.reason.txt`, and given a result folder.

A file that cannot be recorded because the database refuses a write (locked by another
process past the busy timeout, disk full) is not dropped: it goes back to the settle tracker
and is tried again after `daemon.intake_retry_seconds` (doubling, up to 20 s) — not at the
next rescan. The files known to be recorded (path → size, mtime) are remembered in a bounded
LRU (`daemon.known_files_max`); one forgotten is found in the database when seen again.
Rescans (a stat of every file in the folders) run in a thread.
"""
from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..faults import fault_point
from ..pipeline import publish
from ..watch.files import FileStat, SourceChanged, copy_and_hash, file_stat, fits_suffix, frame_stem
from ..watch.fitscheck import check_fits
from ..watch.settle import Settled, SettleTracker
from ..watch.watcher import FolderWatcher
from .dbgate import database_problem

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.intake")

RETRY_MAX_SECONDS = 20.0


@dataclass
class Outcome:
    kind: str  # queued | calibration | duplicate | known | rejected | incomplete | changed | gone | error
    path: Path
    frame: dict | None = None
    reason: str | None = None
    stat: FileStat | None = None


def spool_path(spool: Path, sha256: str, name: str) -> Path:
    return spool / f"{sha256}{fits_suffix(name)}"


def result_dir_for(results: Path, frame_id: int, name: str) -> Path:
    return results / f"{frame_id}-{frame_stem(name)}"


def publish_outcome(result_dir: Path, extra: dict) -> None:
    """A result folder for a frame that ran no chain (rejected, cancelled, timed out, gave up):
    result.json is `extra` alone, published as any result (stdd.pipeline.publish)."""
    publish(None, result_dir, extra)


def frame_extra(frame: dict) -> dict:
    return {"frame_id": frame["id"], "source": frame["path"], "sha256": frame["sha256"],
            "version": frame.get("version"), "attempts": frame.get("attempts")}


class Intake:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon
        self._lock = threading.Lock()
        self._known: collections.OrderedDict[Path, FileStat] = collections.OrderedDict()
        self.tracker: SettleTracker | None = None
        self.watcher: FolderWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[Path] = set()
        self._retry_delay: dict[Path, float] = {}
        self._retry_handles: dict[Path, asyncio.TimerHandle] = {}
        self._sem = asyncio.Semaphore(2)
        self._tasks: set[asyncio.Task] = set()
        self.taken = 0

    # -- life cycle -----------------------------------------------------------------------
    def _settings(self):
        return self.d.settings

    def excluded(self) -> list[Path]:
        p = self._settings().paths
        return [p.work, p.results, p.quarantine, p.archive, p.cache, self.d.spool]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        w = self._settings().watch
        self.tracker = SettleTracker(w.settle_seconds, w.incomplete_seconds)
        self._start_watcher()
        # the FITS check parses headers with astropy: import it now, not on the first file
        await asyncio.to_thread(importlib.import_module, "astropy.io.fits")
        await self.rescan()

    def _start_watcher(self) -> None:
        s = self._settings()
        self.watcher = FolderWatcher(s.paths.incoming, s.watch.patterns, s.watch.ignore, self.notice,
                                     poll=s.watch.poll, poll_interval=s.watch.poll_interval,
                                     recursive=s.watch.recursive, exclude=self.excluded())
        self.watcher.start()

    def reconfigure(self, old, new) -> None:
        """Apply a reloaded config: settle times at once; the watcher restarts if its folders changed."""
        with self._lock:
            self.tracker.settle_seconds = new.watch.settle_seconds
            self.tracker.incomplete_seconds = new.watch.incomplete_seconds
        keys = ("patterns", "ignore", "poll", "poll_interval", "recursive")
        if (old.paths.incoming != new.paths.incoming
                or any(getattr(old.watch, k) != getattr(new.watch, k) for k in keys)):
            log.info("watch: folders or patterns changed; restarting the watcher")
            self.watcher.stop()
            self._start_watcher()
            asyncio.get_running_loop().create_task(self.rescan())

    async def stop(self) -> None:
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)
        for h in self._retry_handles.values():
            h.cancel()
        self._retry_handles.clear()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- input ----------------------------------------------------------------------------
    def notice(self, path: Path, closed: bool = False) -> None:
        """From the watcher's thread: something happened at `path`."""
        with self._lock:
            if self.tracker is not None:
                self.tracker.note(path, closed)
        self._frame_coming()

    def _frame_coming(self) -> None:
        """A frame may be on its way: the pool gets ready (warms up) while the file settles."""
        pool = self.d.pool
        if pool is not None:
            pool.prepare()

    async def rescan(self) -> int:
        """Note every matching file not known with its current size and mtime (in a thread:
        it lists the folders and stats every file)."""
        if self.watcher is None:
            return 0
        n = await asyncio.to_thread(self._rescan)
        if n:
            log.info("rescan: %d file%s to look at", n, "" if n == 1 else "s")
            self._frame_coming()
        return n

    def _rescan(self) -> int:
        paths = self.watcher.rescan()
        present = set(paths)
        with self._lock:
            for gone in [p for p in self._known if p not in present]:  # archived, deleted, quarantined
                del self._known[gone]
        n = 0
        for path in paths:
            st = file_stat(path)
            with self._lock:
                if st is None or st.same(self._known.get(path)):
                    continue
                if path in self.tracker or path in self._inflight or path in self._retry_handles:
                    continue
                self.tracker.note(path)
            n += 1
        return n

    def _remember(self, path: Path, st: FileStat) -> None:
        with self._lock:
            self._known[path] = st
            self._known.move_to_end(path)
            limit = self._settings().daemon.known_files_max
            while len(self._known) > limit:
                self._known.popitem(last=False)

    # -- settling -------------------------------------------------------------------------
    async def iteration(self) -> None:
        """One turn of the intake loop (supervised): take the files that have settled; bring a
        dead watcher back."""
        settle = self.tracker.settle_seconds
        await asyncio.sleep(min(0.5, max(0.05, settle / 4)))
        if self.watcher is not None and not self.watcher.alive and self.d.state in ("running", "paused"):
            log.error("watch: the folder watcher died; starting it again")
            await asyncio.to_thread(self.watcher.stop)
            self._start_watcher()
            asyncio.get_running_loop().create_task(self.rescan())
        with self._lock:
            empty = len(self.tracker) == 0
        if empty:
            return
        due = await asyncio.to_thread(self._due)
        for item in due:
            self._inflight.add(item.path)
            task = asyncio.create_task(self._take(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _due(self) -> list[Settled]:
        with self._lock:
            return [s for s in self.tracker.due() if s.path not in self._inflight]

    async def _take(self, item: Settled) -> None:
        try:
            async with self._sem:
                out = await asyncio.to_thread(self.examine, item)
        except Exception as e:  # the database refused, a bug, an odd filesystem: try again soon
            problem = database_problem(e)
            if problem:
                self.d.gate.note_failure(e)
            reason = f"{problem}: {type(e).__name__}: {e}" if problem else f"{type(e).__name__}: {e}"
            log.error("intake: %s: %s", item.path, reason, exc_info=problem is None)
            out = Outcome("error", item.path, reason=reason)
        finally:
            self._inflight.discard(item.path)
        self._after(item, out)

    def _after(self, item: Settled, out: Outcome) -> None:
        if out.kind in ("queued", "calibration", "duplicate", "known", "rejected"):
            self._retry_delay.pop(item.path, None)
            if out.stat is not None:
                self._remember(item.path, out.stat)
        if out.kind == "queued":
            self.d.gate.note_success()
            self.taken += 1
            self.d.wake_dispatcher()
        elif out.kind == "calibration":
            self.d.gate.note_success()
            self.taken += 1
        elif out.kind == "incomplete":
            with self._lock:
                self.tracker.hold(item.path, out.stat, out.reason)
            log.info("intake: %s is not a whole FITS file yet (%s); waiting", item.path, out.reason)
        elif out.kind == "changed":
            with self._lock:
                self.tracker.note(item.path)
        elif out.kind == "error":
            self._retry_later(item.path, out.reason)

    def _retry_later(self, path: Path, reason: str | None) -> None:
        """A file that could not be taken now (database locked, disk full, a bug) is tried again
        soon, with a growing delay; never left for the next rescan."""
        first = self._settings().daemon.intake_retry_seconds
        delay = min(RETRY_MAX_SECONDS, self._retry_delay.get(path, first / 2) * 2)
        self._retry_delay[path] = delay
        log.warning("intake: %s could not be recorded (%s); trying again in %.0f s", path, reason, delay)
        old = self._retry_handles.pop(path, None)
        if old is not None:
            old.cancel()
        self._retry_handles[path] = asyncio.get_running_loop().call_later(delay, self._renote, path)

    def _renote(self, path: Path) -> None:
        self._retry_handles.pop(path, None)
        with self._lock:
            if self.tracker is not None and path not in self._inflight:
                self.tracker.note(path)

    # -- the work, in a thread ------------------------------------------------------------
    def examine(self, item: Settled, *, steps: list[str] | None = None, priority: int = 0,
                force: bool = False, options: dict | None = None) -> Outcome:
        """Take one settled file (see the module docstring). Runs in a worker thread."""
        path, st = item.path, item.stat
        frames = self.d.frames
        if not force:
            row = frames.latest_for_path(str(path))
            if row is not None and row["size"] == st.size and row["mtime"] == st.mtime:
                return Outcome("known", path, row, stat=st)
        spool = self.d.spool
        spool.mkdir(parents=True, exist_ok=True)
        tmp = spool / f".incoming-{uuid.uuid4().hex}"
        try:
            sha, st0 = copy_and_hash(path, tmp)
        except SourceChanged:
            return Outcome("changed", path)
        except FileNotFoundError:
            return Outcome("gone", path)
        try:
            existing = frames.get_by_sha(sha)
            if existing is not None:
                return self._duplicate(path, st0, existing)
            check = check_fits(tmp)
            if check.state == "incomplete" and not (item.closed or item.expired or force):
                return Outcome("incomplete", path, reason=check.reason, stat=st0)
            if not check.ok:
                reason = check.reason
                if check.state == "incomplete":
                    reason += "; the file stopped changing and is still incomplete"
                return self._reject(path, st0, sha, reason)
            final = spool_path(spool, sha, path.name)
            os.replace(tmp, final)
            prio, alert_ids = priority, []
            try:
                p2, alert_ids = self.d.region_provider.frame_priority(final)
                prio = max(prio, int(p2))
            except Exception as e:
                log.warning("intake: %s: the region provider failed (%s); normal priority", path, e)
            kind, imagetyp, group = self.frame_type(path, final)
            if kind in ("bias", "dark", "flat"):
                fault_point("intake.record")
                frame, created = frames.add_calibration(str(path), sha, st0.size, st0.mtime, kind=kind,
                                                        imagetyp=imagetyp, group=group)
                if not created:
                    return self._duplicate(path, st0, frame)
                log.info("frame=%d calibration %s: a %s frame (%s); set: %s", frame["id"], path, kind, imagetyp,
                         group)
                return Outcome("calibration", path, frame, stat=st0)
            fault_point("intake.record")
            frame, created = frames.add(str(path), sha, st0.size, st0.mtime, priority=prio, steps=steps,
                                        options=options, kind=kind, imagetyp=imagetyp)
            if not created:  # the same content arrived twice at once: the other one won
                return self._duplicate(path, st0, frame)
            for alert_id in alert_ids:
                frames.set_priority(frame["id"], prio, alert_id)
            self._hold_for_masters(frame)
            log.info("frame=%d queued %s (sha256 %s, %d bytes, version %d%s)", frame["id"], path, sha[:12],
                     st0.size, frame["version"], f", priority {prio}" if prio else "")
            return Outcome("queued", path, frame, stat=st0)
        finally:
            if tmp.exists():
                tmp.unlink()

    def frame_type(self, path: Path, copy: Path) -> tuple[str | None, str | None, str | None]:
        """(kind, header image type, calibration set) of a frame, by its instrument profile
        (stdd.calib.frametypes); (None, None, None) when the header says nothing usable."""
        from ..calib.frametypes import read_info
        from ..calib.grouping import group_label
        from ..stages.profiles import choose, read_header

        try:
            choice = self.d.profiles.choice_for(path)
            header = read_header(copy) if choice.fixed is None and choice.by_header else None
            profile, _ = choose(choice, header)
            info = read_info(copy, profile)
        except Exception as e:  # an odd header: the frame goes on as science, the stages say what is wrong
            log.warning("intake: %s: frame type not read (%s: %s); taken as a light frame", path,
                        type(e).__name__, e)
            return None, None, None
        return info.kind, info.imagetyp, group_label(info, self._settings().calibration.temperature_band)

    def _hold_for_masters(self, frame: dict) -> None:
        """A light frame arriving while calibration frames wait for their masters waits for them
        (at most calibration.hold_lights_minutes); the calibration job releases it."""
        c = self._settings().calibration
        if c.library is None or c.hold_lights_minutes <= 0 or not self.d.frames.pending_calibration():
            return
        self.d.frames.hold(frame["id"], time.time() + 60 * c.hold_lights_minutes)
        log.info("frame=%d held: calibration frames wait for their masters (at most %g min)", frame["id"],
                 c.hold_lights_minutes)

    def _duplicate(self, path: Path, st: FileStat, existing: dict) -> Outcome:
        if existing["state"] == "failed" and existing.get("attempts") == 0 and existing.get("work_dir") is None \
                and existing["path"] != str(path):
            # the same bytes as a rejected file: it goes to the quarantine too
            dest = self._quarantine(path, f"same content as rejected frame {existing['id']}: {existing['error']}",
                                    f"dup{existing['id']}")
            self.d.events.add("frame.duplicate", f"{path} has the content of rejected frame {existing['id']};"
                              f" moved to {dest}", frame_id=existing["id"], level="WARNING")
            log.warning("frame=%d duplicate %s (rejected content) moved to the quarantine", existing["id"], path)
        elif existing["path"] != str(path):
            self.d.events.add("frame.duplicate", f"{path} has the content of frame {existing['id']}; not processed"
                              " again", frame_id=existing["id"], data={"path": str(path)})
            log.info("frame=%d duplicate %s: same content as %s; not processed again", existing["id"], path,
                     existing["path"])
        return Outcome("duplicate", path, existing, stat=st)

    def _reject(self, path: Path, st: FileStat, sha: str, reason: str) -> Outcome:
        frames = self.d.frames
        frame, created = frames.add_rejected(str(path), sha, st.size, st.mtime, reason)
        if not created:
            return self._duplicate(path, st, frame)
        dest = self._quarantine(path, reason, str(frame["id"]))
        log.error("frame=%d rejected %s: %s; moved to %s", frame["id"], path, reason, dest)
        result_dir = result_dir_for(self._settings().paths.results, frame["id"], path.name)
        try:
            publish_outcome(result_dir, {**frame_extra(frame), "status": "failed", "error": reason,
                                         "quarantined": str(dest) if dest else None})
            frames.set_dirs(frame["id"], None, str(result_dir))
        except OSError as e:
            log.error("frame=%d cannot write its result folder: %s", frame["id"], e)
        return Outcome("rejected", path, frame, reason=reason, stat=st)

    def _quarantine(self, path: Path, reason: str, tag: str) -> Path | None:
        q = self._settings().paths.quarantine
        q.mkdir(parents=True, exist_ok=True)
        dest = q / f"{tag}-{path.name}"
        n = 1
        while dest.exists() or dest.with_name(dest.name + ".reason.txt").exists():
            n += 1
            dest = q / f"{tag}.{n}-{path.name}"
        try:
            shutil.move(str(path), dest)
        except OSError as e:
            log.error("quarantine: cannot move %s to %s: %s; left in place", path, dest, e)
            return None
        try:
            dest.with_name(dest.name + ".reason.txt").write_text(f"{path}\n{reason}\n")
        except OSError:
            pass
        return dest

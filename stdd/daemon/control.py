"""Requests from outside the daemon: submit a file, cancel, retry (from a stage), reload the
config, re-rank the queue when alerts change.

Each runs on the event loop's thread and does its database work through the gate and its
file work in threads; a request that cannot be done raises `SubmitError` with the reason.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError, Settings, load_settings
from ..config.frame_options import FrameOptionError, merge, normalize, validate
from ..pipeline import ORIGINAL_PREFIX, STAGE_NAMES, select_steps
from ..stages.profiles import load_profile, load_profiles
from ..store import TERMINAL
from ..watch.files import file_stat
from ..watch.fitscheck import check_fits
from ..watch.settle import Settled
from .intake import spool_path
from .logs import setup_logging
from .notify import STATE_WAIT

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("stdd.daemon")


class SubmitError(Exception):
    """A submitted file cannot be taken; the message says why."""


class Control:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    async def submit(self, path: str | os.PathLike, steps: list[str] | None = None, priority: int = 0,
                     options: dict | None = None) -> dict:
        """Queue a file given by path (anywhere readable; it must be a whole FITS file now), with
        its own settings `options` (stdd.config.frame_options: `-c` keys, `profile`). Returns the
        frame row; identical content already recorded returns that frame, with `duplicate: true`
        — and, when options are given, that frame queued again with them (its previous result
        kept as a version). Raises SubmitError with the reason otherwise (a bad option named)."""
        path = Path(path).absolute()
        options = self.frame_options(options)
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
        out = await asyncio.to_thread(self.d.intake.examine, Settled(path, st), steps=steps, priority=priority,
                                      force=True, options=options or None)
        if out.kind == "queued":
            self.d.wake_dispatcher()
            return {**out.frame, "duplicate": False}
        if out.kind == "duplicate":
            if options and out.frame.get("kind") not in ("bias", "dark", "flat"):
                frame = await self._requeue_with(out.frame, options, steps)
                return {**frame, "duplicate": True}
            return {**out.frame, "duplicate": True}
        if out.kind == "calibration":  # recorded with its type; it goes into a master, not the queue
            return {**out.frame, "duplicate": False}
        raise SubmitError(f"{path}: {out.reason or out.kind}")

    async def cancel(self, frame_id: int, reason: str = "cancelled by request") -> dict:
        """Cancel a queued or running frame. Returns {'frame_id', 'state'} (the state after)."""
        frame = await self._frame_or_raise(frame_id)
        if frame["state"] == "queued" and await self.d.gate.run(self.d.frames.cancel_queued, frame_id, reason):
            log.info("frame=%d cancelled while queued", frame_id)
            await self.d.publish_outcome(frame_id, "cancelled", reason)
            return {"frame_id": frame_id, "state": "cancelled"}
        if self.d.pool is not None and self.d.pool.cancel(frame_id, reason):
            log.info("frame=%d cancel requested: killing its process group", frame_id)
            return {"frame_id": frame_id, "state": "cancelling"}
        return {"frame_id": frame_id, "state": (await self.d.gate.run(self.d.frames.get, frame_id))["state"]}

    def frame_options(self, options: dict | None) -> dict:
        """Per-frame options checked against the running settings; SubmitError names a bad key."""
        if not options:
            return {}
        try:
            options = normalize(options, self.d.settings)
            if options.get("profile"):
                load_profile(self.d.settings, options["profile"], "profile")
        except FrameOptionError as e:
            raise SubmitError(f"option {e}") from None
        except ConfigError as e:
            raise SubmitError("; ".join(e.errors)) from None
        return options

    async def _requeue_with(self, frame: dict, options: dict, steps: list[str] | None) -> dict:
        """A file submitted again with its own settings: queued again with them when it is
        finished (a rerun from the start), or its options replaced while it still waits."""
        if frame["state"] in TERMINAL:
            return await self.retry(frame["id"], options=options, replace_options=True)
        if frame["state"] == "queued":
            def tx():
                with self.d.db.write():
                    self.d.frames.set_options(frame["id"], options)
                    return self.d.frames.get(frame["id"])
            return await self.d.gate.run(tx)
        raise SubmitError(f"frame {frame['id']} (the same file) is {frame['state']}; retry it with its new "
                          f"settings when it has finished (stdd retry {frame['id']} -c ...)")

    async def retry(self, frame_id: int, from_stage: str | None = None, options: dict | None = None,
                    replace_options: bool = False) -> dict:
        """Queue a finished frame again, with a fresh attempt count. From a stage: earlier
        stages' products in its work folder are kept (when the folder is still there). `options`
        (the frame's own settings, `-c`) are merged over the frame's earlier ones (replace them
        with `replace_options`); the previous result is kept as a version when it is replaced."""
        frame = await self._frame_or_raise(frame_id)
        if frame["state"] not in TERMINAL:
            raise SubmitError(f"frame {frame_id} is {frame['state']}, not finished")
        new = self.frame_options(options)
        steps = None
        options = dict(frame.get("options") or {})
        options.pop("keep_folder", None)
        options = new if replace_options else merge(options, new)
        if new:
            try:
                validate(options, self.d.settings)
            except FrameOptionError as e:
                raise SubmitError(f"option {e} (with the frame's earlier options)") from None
        if from_stage:
            if from_stage not in STAGE_NAMES:
                raise SubmitError(f"unknown stage {from_stage!r}; stages are {', '.join(STAGE_NAMES)}")
            configured = frame.get("steps") or list(self.d.settings.pipeline.steps)
            steps = [s for s in select_steps(configured) if STAGE_NAMES.index(s) >= STAGE_NAMES.index(from_stage)]
            if not steps:
                raise SubmitError(f"stage {from_stage} is not among this frame's steps ({', '.join(configured)})")
            work = Path(frame["work_dir"]) if frame.get("work_dir") else None
            kept = work is not None and await asyncio.to_thread(lambda: any(work.glob(f"{ORIGINAL_PREFIX}.*")))
            if kept and steps[0] != select_steps(configured)[0]:
                options["keep_folder"] = True
            else:
                steps = None if frame.get("steps") is None else configured
        frame = await self.d.gate.run(self._retry_tx, frame_id, options or None, steps)
        log.info("frame=%d retry requested%s", frame_id, f" from {from_stage}" if from_stage else "")
        self.d.wake_dispatcher()
        return frame

    def _retry_tx(self, frame_id: int, options: dict | None, steps: list[str] | None) -> dict:
        with self.d.db.write():
            self.d.frames.set_options(frame_id, options)
            self.d.frames.retry(frame_id, steps)
            return self.d.frames.get(frame_id)

    def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. An invalid file changes nothing and every error is logged."""
        if self.d.config_path is None:
            msg = "reload: the daemon was started without a config file; nothing to reload"
            log.error(msg)
            return False, [msg]
        self.d.notifier.reloading()
        try:
            new = load_settings(self.d.config_path)
            profiles = load_profiles(new)
        except ConfigError as e:
            for line in e.errors:
                log.error("reload: %s", line)
            log.error("reload: %d error(s) in %s; the running config stays", len(e.errors), self.d.config_path)
            self.d.record_event_soon("daemon.reload_failed", f"{len(e.errors)} error(s) in {self.d.config_path}",
                                   data={"errors": e.errors}, level="ERROR")
            self.d.notifier.notify(READY=1, STATUS="reload failed; running with the previous config", wait=STATE_WAIT)
            return False, list(e.errors)
        old, self.d.settings, self.d.profiles = self.d.settings, new, profiles
        self._apply(old, new)
        log.info("reload: %s loaded", self.d.config_path)
        self.d.record_event_soon("daemon.reloaded", f"config {self.d.config_path} reloaded")
        self.d.notifier.notify(READY=1, STATUS=self.d.status_line_text, wait=STATE_WAIT)
        return True, []

    async def reprioritize(self) -> int:
        """Ask the region provider again for every queued frame (call when alerts change).
        Returns how many frames changed priority."""
        changed = 0
        for frame in await self.d.gate.run(self.d.frames.queued):
            path = spool_path(self.d.spool, frame["sha256"], frame["name"])
            try:
                prio, alert_ids = await asyncio.to_thread(self.d.region_provider.frame_priority, path)
            except Exception as e:
                log.warning("frame=%d region provider failed: %s", frame["id"], e)
                continue
            if prio > (frame.get("priority") or 0) or alert_ids:
                for alert_id in alert_ids or [None]:
                    await self.d.gate.run(self.d.frames.set_priority, frame["id"], prio, alert_id)
                changed += 1
        if changed:
            log.info("reprioritized %d queued frame(s)", changed)
        return changed


    async def _frame_or_raise(self, frame_id: int) -> dict:
        frame = await self.d.gate.run(self.d.frames.get, int(frame_id))
        if frame is None:
            raise SubmitError(f"no frame {frame_id}")
        return frame


    def _apply(self, old: Settings, new: Settings) -> None:
        setup_logging(new.log_level)
        p = new.pool
        self.d.pool.configure(workers=p.effective_workers, stage_timeout=p.stage_timeout_seconds,
                            stage_timeouts=dict(p.stage_timeouts), kill_grace=p.kill_grace_seconds,
                            frames_per_process=p.frames_per_process, process_max_rss_mb=p.process_max_rss_mb)
        self.d.intake.reconfigure(old, new)
        if old.paths.database != new.paths.database or old.paths.var != new.paths.var:
            log.warning("reload: paths.database and paths.var take effect at the next start")
        if old.pool.executor != new.pool.executor:
            log.warning("reload: pool.executor takes effect at the next start")
        self.d.scheduler.schedule(replace=True)
        self.d.wake_dispatcher()

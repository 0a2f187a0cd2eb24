"""Files around a frame's end: its source after success, result folders of frames that ran no
chain, half-written publishes, and what an unclean stop left behind.

Plain functions run in worker threads (they touch the disk, some the database); the daemon
calls them, they know nothing of its loops.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ..config import Settings
from ..pool.procs import kill_stale_group
from ..store import FrameStore
from ..watch.files import file_stat
from . import jobs
from .intake import frame_extra, publish_outcome, result_dir_for

log = logging.getLogger("stdd.daemon")


def after_success(settings: Settings, spool: Path, frame: dict) -> None:
    """The source file after a frame is done: leave, archive or delete (only if it is still the
    same file); the spool copy goes (the work folder keeps one)."""
    for p in spool.glob(f"{frame['sha256']}.*"):
        p.unlink(missing_ok=True)
    mode = settings.watch.after_success
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
            dest = archive_path(settings, src, frame["id"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), dest)
            log.info("frame=%d archived the source to %s", frame["id"], dest)
    except OSError as e:
        log.error("frame=%d cannot %s the source %s: %s", frame["id"], mode, src, e)


def archive_path(settings: Settings, src: Path, frame_id: int) -> Path:
    archive = settings.paths.archive
    rel = Path(src.name)
    for root in settings.paths.incoming:
        if root in src.parents:
            rel = src.relative_to(root)
            break
    dest = archive / rel
    if dest.exists():
        dest = dest.with_name(f"{frame_id}-{dest.name}")
    return dest


def write_outcome(settings: Settings, frame: dict, status: str, error: str) -> Path | None:
    """A result folder saying how a frame that ran no (whole) chain ended. Returns the folder
    (for the caller to record when the frame had none), None when it cannot be written."""
    result_dir = Path(frame.get("result_dir") or result_dir_for(settings.paths.results, frame["id"], frame["name"]))
    try:
        publish_outcome(result_dir, {**frame_extra(frame), "status": status, "error": error})
    except OSError as e:
        log.error("frame=%d cannot write its result folder: %s", frame["id"], e)
        return None
    return result_dir


def clean_partial_publish(frame: dict | None) -> None:
    """Temporary folders of a publish that a killed frame process left beside its result."""
    if frame and frame.get("result_dir"):
        jobs.clean_partial_publish(Path(frame["result_dir"]))


def recover(frames: FrameStore, settings: Settings, spool: Path) -> list[int]:
    """After an unclean stop: kill what is left of frame processes, requeue their frames, and
    remove half-written results and spool files. Returns the requeued frames' ids."""
    for frame in frames.running():
        run = frames.last_stage_run(frame["id"])
        pid = (run or {}).get("pid") or frame.get("pid")
        if pid and frame.get("started_at"):
            until = (run or {}).get("started_at") or time.time()
            if kill_stale_group(int(pid), frame["started_at"], until):
                log.warning("frame=%d killed the leftover process group %d of the previous daemon",
                            frame["id"], pid)
        frames.close_open_stage_runs(frame["id"], "the daemon stopped uncleanly")
    ids = frames.recover_running()
    for fid in ids:
        log.warning("frame=%d was running when the daemon stopped; queued again, from a clean folder", fid)
    n = jobs.clean_stale_publish(settings.paths.results)
    jobs.prepare_database(frames.db)
    for tmp in spool.glob(".incoming-*"):
        tmp.unlink(missing_ok=True)
    if n:
        log.info("recovered %d half-written result folder(s)", n)
    return ids

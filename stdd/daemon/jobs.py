"""The scheduled housekeeping: retention of work folders and of the database's history, cache
pruning, the nightly summary, the folders that templates from the telescope's own frames are built
from, and settling the result folders of publishes a crash interrupted (at start and after a lost
frame).

Plain functions, run by the daemon's APScheduler jobs in a worker thread (they touch the disk
and the database, never the event loop). Each returns what it did, for the log.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..pipeline import parse_publish_temp, write_json_atomic
from ..store import Database, FrameStore

if TYPE_CHECKING:
    from ..config.settings import RetentionSettings

log = logging.getLogger("stdd.jobs")
DAY = 86400.0


def clean_work(frames: FrameStore, work: Path, spool: Path, days: float, now: float | None = None) -> dict:
    """Remove the work folders (and spool copies) of frames finished more than `days` ago.
    `days` = 0 keeps them forever. Folders under `work` with no frame behind them go too."""
    if days <= 0:
        return {"removed": 0}
    now = now or time.time()
    cutoff = now - days * DAY
    removed = 0
    for row in frames.finished_before(cutoff):
        if row.get("work_dir"):
            shutil.rmtree(row["work_dir"], ignore_errors=True)
        for p in spool.glob(f"{row['sha256']}.*"):
            p.unlink(missing_ok=True)
        frames.clear_work_dir(row["id"])
        removed += 1
    if work.is_dir():
        known = frames.known_ids()
        for entry in work.iterdir():
            if entry.is_dir() and entry.name.isdigit() and int(entry.name) not in known \
                    and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return {"removed": removed}


def remove_files(paths: list[str]) -> int:
    """Remove these files (spool copies no longer needed); missing ones are not an error."""
    n = 0
    for p in paths:
        try:
            Path(p).unlink()
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", p, e)
    return n


def prune_cache(cache: Path, days: float, now: float | None = None) -> dict:
    """Delete cache files not used (accessed or modified) for `days`; 0 keeps everything."""
    if days <= 0 or not cache.is_dir():
        return {"removed": 0, "bytes": 0}
    cutoff = (now or time.time()) - days * DAY
    removed = freed = 0
    for root, dirs, files in os.walk(cache, topdown=False):
        for name in files:
            p = Path(root) / name
            try:
                st = p.stat()
                if max(st.st_atime, st.st_mtime) < cutoff:
                    p.unlink()
                    removed += 1
                    freed += st.st_size
            except OSError:
                pass
        if Path(root) != cache:
            try:
                os.rmdir(root)  # only if empty
            except OSError:
                pass
    return {"removed": removed, "bytes": freed}


def prune_database(database: Path, retention: "RetentionSettings", now: float | None = None) -> dict:
    """The hourly pruning of the state file's history (stdd.store.retention.prune) with the
    `[retention]` settings, on a connection of its own (run it in a worker thread: the daemon's
    own connection stays free for the event loop). Returns the report as a dict, with `text`
    for the log."""
    from ..store import Database
    from ..store.retention import prune

    db = Database(database, migrate=False)
    try:
        rep = prune(db, events_days=retention.events_days, stage_runs_days=retention.stage_runs_days,
                    notices_days=retention.notices_days, now=now)
    finally:
        db.close()
    return {**rep.to_dict(), "text": rep.text()}


#: a file made before incremental vacuum is converted at start only while it holds at most this
#: much (the VACUUM rewrites it, ~100 MB/s: a few seconds, well inside systemd's start timeout)
CONVERT_MAX_MB = 512.0


def prepare_database(db: Database, convert_max_mb: float = CONVERT_MAX_MB) -> dict:
    """At start, before anything else writes: the indexes the pruning needs, and a file made
    before incremental vacuum converted to it (one VACUUM, logged with its duration). A file
    holding more than `convert_max_mb` is left for a later start: the hourly pruning frees its
    old rows meanwhile (their pages are reused), so what a VACUUM must copy shrinks."""
    from ..store.retention import ensure_indexes

    t0 = time.monotonic()
    ensure_indexes(db)
    before = db.path.stat().st_size if db.path.exists() else 0
    content_mb = db.content_bytes() / 2**20
    out = {"converted": False, "auto_vacuum": db.auto_vacuum_mode(), "content_mb": round(content_mb, 1)}
    if out["auto_vacuum"] != "incremental" and content_mb > convert_max_mb:
        log.warning("database: %.0f MB to rewrite to hand freed pages back to the file system (incremental "
                    "vacuum); more than %.0f MB, so not at this start: the hourly pruning frees old rows for reuse "
                    "meanwhile, and a later start converts it", content_mb, convert_max_mb)
    elif db.enable_incremental_vacuum():
        db.truncate_wal()  # the VACUUM went through the log: do not leave it the size of the file
        out.update(converted=True, auto_vacuum=db.auto_vacuum_mode())
        log.info("database: converted to incremental vacuum in %.1f s (%.1f → %.1f MB)", time.monotonic() - t0,
                 before / 2**20, db.path.stat().st_size / 2**20)
    out.update(seconds=round(time.monotonic() - t0, 2), mb_before=round(before / 2**20, 1),
               mb_after=round(db.path.stat().st_size / 2**20, 1))
    return out


def night_of(t: float, lon_deg: float) -> date:
    """The observing night a time belongs to: the local solar date of the evening it started
    (local solar time = UTC + longitude/15 h; a night runs from local noon to local noon)."""
    local = datetime.fromtimestamp(t, timezone.utc) + timedelta(hours=lon_deg / 15.0)
    return (local - timedelta(hours=12)).date()


def frame_time(row: dict) -> float:
    """When the frame was taken (its mid-exposure time if known), else when it was recorded."""
    tm = row.get("time_mid")
    if tm:
        try:
            dt = datetime.fromisoformat(str(tm).replace("Z", "+00:00"))
            return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
        except ValueError:
            pass
    return row["created_at"]


def _median(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def night_summary(frames: FrameStore, night: date, lon_deg: float) -> dict:
    """Frames, failures, median zero point, FWHM and limit of one night (by filter too)."""
    noon = datetime(night.year, night.month, night.day, 12, tzinfo=timezone.utc) - timedelta(hours=lon_deg / 15.0)
    t0 = noon.timestamp() - DAY  # frames may be recorded a while after they were taken
    rows = [r for r in frames.finished_between(t0, t0 + 3 * DAY) if night_of(frame_time(r), lon_deg) == night]

    def block(rs):
        done = [r for r in rs if r["state"] == "done"]
        return {
            "frames": len(rs), "done": len(done),
            "failed": sum(r["state"] == "failed" for r in rs),
            "cancelled": sum(r["state"] == "cancelled" for r in rs),
            "median_zp": _median(r.get("zp") for r in done),
            "median_fwhm_arcsec": _median(r.get("fwhm_arcsec") for r in done),
            "median_mag_limit": _median(r.get("mag_limit") for r in done),
            "candidates": sum(r.get("n_candidates") or 0 for r in done),
        }

    out = {"night": night.isoformat(), **block(rows), "by_filter": {}}
    for flt in sorted({r.get("filter") for r in rows if r.get("filter")}):
        out["by_filter"][flt] = block([r for r in rows if r.get("filter") == flt])
    reasons: dict[str, int] = {}
    for r in rows:
        if r["state"] == "failed" and r.get("error"):
            key = r["error"].split(":", 1)[0][:80]
            reasons[key] = reasons.get(key, 0) + 1
    out["failure_reasons"] = reasons
    return out


def write_night_summary(frames: FrameStore, results: Path, lon_deg: float, night: date | None = None,
                        now: float | None = None) -> tuple[Path, dict]:
    """Write results/summary/night-<date>.json for `night` (default: the night that just ended)."""
    if night is None:
        night = night_of((now or time.time()) - DAY / 2, lon_deg)
    summary = night_summary(frames, night, lon_deg)
    folder = results / "summary"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"night-{night.isoformat()}.json"
    write_json_atomic(path, summary)
    return path, summary


def format_summary(s: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return (f"night {s['night']}: {s['frames']} frames, {s['done']} done, {s['failed']} failed; median zp "
            f"{f(s['median_zp'], '.2f')}, FWHM {f(s['median_fwhm_arcsec'], '.2f')}\", limit "
            f"{f(s['median_mag_limit'], '.2f')}")


def settle_publish(parent: Path, name: str | None = None) -> dict:
    """Finish what interrupted publishes left in `parent` (the results folder), for every result
    folder or only `name`. Only folders publish names (`.stdd-tmp-…`, `.stdd-old-…`, and the
    unambiguous names of earlier versions: stdd.pipeline.parse_publish_temp) are touched:
    a temporary folder is removed (never a complete result); an old one (the previous complete
    result, renamed aside) is restored when its result folder is missing — the crash came between
    the two renames — and removed when the new result is in place. Returns the names removed and
    restored."""
    removed: list[str] = []
    restored: list[str] = []
    parent = Path(parent)
    if not parent.is_dir():
        return {"removed": removed, "restored": restored}
    olds: list[tuple[float, Path, str]] = []
    for entry in parent.iterdir():
        found = parse_publish_temp(entry.name)
        if found is None or (name is not None and found[1] != name):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink():
                continue
            if found[0] == "tmp":
                shutil.rmtree(entry)
                removed.append(entry.name)
            else:
                olds.append((entry.stat().st_ctime, entry, found[1]))
        except OSError as e:
            log.error("results: cannot clean %s: %s", entry, e)
    for _, entry, result_name in sorted(olds, key=lambda o: -o[0]):  # the latest first
        target = parent / result_name
        try:
            if target.exists() or target.is_symlink():
                shutil.rmtree(entry)
                removed.append(entry.name)
            else:
                os.replace(entry, target)
                restored.append(result_name)
                log.warning("results: %s restored from %s: a publish was interrupted between its two renames;"
                            " this is the previous complete result", target, entry.name)
        except OSError as e:
            log.error("results: cannot settle %s: %s", entry, e)
    return {"removed": removed, "restored": restored}


def clean_stale_publish(results: Path) -> int:
    """At start (recovery): settle every interrupted publish under `results` (settle_publish);
    a user's own folders there (`.git`, `.Trash-1000`, anything else) are left alone. Returns how
    many folders were removed or restored."""
    out = settle_publish(results)
    return len(out["removed"]) + len(out["restored"])


def clean_partial_publish(result_dir: Path) -> dict:
    """After a frame's process was lost: settle the interrupted publish of this one result folder
    (settle_publish with its name) — its temporary folder removed, its previous result restored if
    the process died between the two renames."""
    result_dir = Path(result_dir)
    return settle_publish(result_dir.parent, result_dir.name)


def dump(obj) -> str:
    return json.dumps(obj, default=str)


def template_source_folders(results: Path, work: Path) -> list[Path]:
    """Every frame folder that still holds its images: result folders (`<id>-<name>`, with
    `pipeline.publish_images = true`) first, then the work folders (`<id>`) of frames not found
    there. What `stdd templates build` reads by default."""
    import re

    seen: set[str] = set()
    out: list[Path] = []
    for root, pattern in ((Path(results), r"^(\d+)-"), (Path(work), r"^(\d+)$")):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            m = re.match(pattern, d.name)
            if not m or m.group(1) in seen or not (d / "result.json").is_file() or not (d / "image.fits").is_file():
                continue
            seen.add(m.group(1))
            out.append(d)
    return out


def build_own_templates(folders: list[str], out_dir: str, min_frames: int, max_frames: int,
                        max_fwhm_ratio: float) -> dict:
    """Run in a child process by the daemon's job (numpy and SWarp work, kept off its loop and
    its GIL): what was built and what was skipped, as plain data."""
    from ..sources.own_templates import build_all

    lines: list[str] = []
    built, skipped = build_all([Path(f) for f in folders], Path(out_dir), min_frames=min_frames,
                               max_frames=max_frames, max_fwhm_ratio=max_fwhm_ratio, log=lines.append)
    return {"built": [b.to_dict() for b in built], "skipped": skipped, "log": lines}


def build_calibration(items: list[tuple[str, str]], settings_data: dict, config_file: str | None = None) -> dict:
    """Run in a child process by the daemon's calibration job: masters from the calibration frames
    `items` = [(spool copy, the path it arrived at)] into calibration.library. Each frame's profile
    is chosen as for a light frame (folder of its arrival path, else its header, else the default).
    Returns the build report (stdd.calib.build.build) as plain data."""
    from ..calib.build import build
    from ..config.settings import Settings
    from ..stages.profiles import choose, load_profiles, read_header

    settings = Settings.model_validate(settings_data)
    if config_file:  # watch.profiles folders are relative to the config file
        settings._source_file = Path(config_file)
    profiles = load_profiles(settings)
    pairs = []
    for copy, origin in items:
        choice = profiles.choice_for(origin)
        header = read_header(Path(copy)) if choice.fixed is None and choice.by_header else None
        pairs.append((Path(copy), choose(choice, header)[0]))
    lines: list[str] = []
    report = build(pairs, settings.calibration.library, settings.calibration, log=lines.append)
    report["log"] = lines
    return report

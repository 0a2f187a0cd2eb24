"""Retention of the state file's history: old audit events, stage runs and raw notices go, and
the pages they held go back to the file system.

What is kept for ever: the frames table (one row per frame: state, error, result columns) and
the alerts and actions tables (one row per notice and per action) — the summaries. What ages out
(`[retention]`, 0 = never):
* events older than `events_days` (the audit log), except those of frames still queued or running;
* stage runs older than `stage_runs_days` (by start), never those of a frame still queued or running;
* the raw bytes of alert messages older than `notices_days`: the row stays with its topic,
  partition, offset, state, alert id (and any content hash), so a redelivered or repeated notice
  is still recognised; `raw` becomes an empty blob (the column is NOT NULL). A message not yet
  parsed (state `received`) keeps its bytes whatever its age.

Design note: the daemon writes on its own connection while this runs (in a worker thread, on a
connection of its own). So nothing here holds the write lock for long: rows go in batches of a
few thousand per transaction, each batch followed by a pause at least as long as it held the
lock (the daemon's writers wait in a busy handler and get their turn), and the freed pages are
returned with `PRAGMA incremental_vacuum(N)` in steps of `VACUUM_PAGES`. A file made before
incremental vacuum must be converted once (Database.enable_incremental_vacuum, a full VACUUM:
at start); until then the freed pages are reused by new rows, so the file stops growing but does
not shrink. A run stops after `budget_seconds` and the next one goes on where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .database import Database

DAY = 86400.0
#: rows per transaction (events and stage runs are ~200 bytes: ~10 ms a batch)
BATCH_ROWS = 2000
#: alert messages per transaction (a notice with a sky map can weigh a megabyte)
NOTICE_BATCH_ROWS = 100
#: pages handed back per incremental-vacuum step (4 MiB at SQLite's default page size)
VACUUM_PAGES = 1000
#: shortest pause between two batches, seconds
MIN_PAUSE = 0.005

#: indexes the pruning queries need, made on first use (IF NOT EXISTS: no migration)
INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_stage_runs_started_at ON stage_runs (started_at)",
    "CREATE INDEX IF NOT EXISTS idx_alert_messages_received_at ON alert_messages (received_at)",
)

_ACTIVE_FRAMES = "SELECT id FROM frames WHERE state IN ('queued', 'running')"

PRUNE_EVENTS = (
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ?"
    f" AND (frame_id IS NULL OR frame_id NOT IN ({_ACTIVE_FRAMES})) ORDER BY time LIMIT ?)")
PRUNE_STAGE_RUNS = (
    "DELETE FROM stage_runs WHERE id IN (SELECT id FROM stage_runs WHERE started_at < ?"
    f" AND frame_id NOT IN ({_ACTIVE_FRAMES}) ORDER BY started_at LIMIT ?)")
PRUNE_NOTICES = (
    "UPDATE alert_messages SET raw = x'' WHERE id IN (SELECT id FROM alert_messages WHERE received_at < ?"
    " AND state != 'received' AND length(raw) > 0 ORDER BY received_at LIMIT ?)")


@dataclass
class PruneReport:
    events: int = 0                 # rows deleted
    stage_runs: int = 0             # rows deleted
    notices: int = 0                # alert messages whose raw bytes were dropped
    pages_freed: int = 0            # pages handed back to the file system
    batches: int = 0                # write transactions
    longest_lock_ms: float = 0.0    # the longest of them
    seconds: float = 0.0
    complete: bool = True           # False: the time budget ran out; the next run goes on
    auto_vacuum: str = ""           # the file's mode ("none": freed pages are reused, the file does not shrink)
    file_bytes_before: int = 0
    file_bytes_after: int = 0
    wal_truncated: bool = False
    cutoffs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        parts = [f"{self.events} event(s), {self.stage_runs} stage run(s) deleted, "
                 f"{self.notices} notice(s) emptied"]
        parts.append(f"{self.pages_freed} page(s) freed, file {self.file_bytes_before / 2**20:.1f} → "
                     f"{self.file_bytes_after / 2**20:.1f} MB")
        parts.append(f"{self.batches} transaction(s), the longest {self.longest_lock_ms:.0f} ms, "
                     f"{self.seconds:.1f} s in all")
        if self.auto_vacuum != "incremental":
            parts.append(f"auto_vacuum is {self.auto_vacuum!r}: freed pages are reused, the file does not shrink")
        if not self.complete:
            parts.append("time budget spent: the next run goes on")
        return "; ".join(parts)


def ensure_indexes(db: Database) -> None:
    with db.write() as conn:
        for sql in INDEXES:
            conn.execute(sql)


def prune(db: Database, *, events_days: float, stage_runs_days: float, notices_days: float,
          now: float | None = None, batch_rows: int = BATCH_ROWS, notice_batch_rows: int = NOTICE_BATCH_ROWS,
          vacuum_pages: int = VACUUM_PAGES, budget_seconds: float = 600.0, truncate_wal: bool = True) -> PruneReport:
    """Delete what is older than its retention (see the module docstring), then hand the freed
    pages back. Runs on `db`'s thread; every write is a short transaction of its own."""
    now = time.time() if now is None else now
    t0 = time.monotonic()
    deadline = t0 + budget_seconds
    rep = PruneReport(auto_vacuum=db.auto_vacuum_mode(), file_bytes_before=_file_bytes(db))
    ensure_indexes(db)
    work = (("events", PRUNE_EVENTS, events_days, batch_rows),
            ("stage_runs", PRUNE_STAGE_RUNS, stage_runs_days, batch_rows),
            ("notices", PRUNE_NOTICES, notices_days, notice_batch_rows))
    for name, sql, days, rows in work:
        if days <= 0:
            continue
        cutoff = now - days * DAY
        rep.cutoffs[name] = cutoff
        done, finished = _in_batches(db, sql, cutoff, rows, deadline, rep)
        setattr(rep, name, done)
        if not finished:
            rep.complete = False
            break
    while rep.complete and rep.auto_vacuum == "incremental" and db.free_pages() > 0:
        if time.monotonic() > deadline:
            rep.complete = False
            break
        t1 = time.monotonic()
        freed = db.incremental_vacuum(vacuum_pages)
        held = time.monotonic() - t1
        _note_lock(rep, held)
        rep.pages_freed += freed
        if freed <= 0:
            break
        time.sleep(max(MIN_PAUSE, held))
    if truncate_wal and (rep.events or rep.stage_runs or rep.notices or rep.pages_freed):
        rep.wal_truncated = db.truncate_wal()
    rep.file_bytes_after = _file_bytes(db)
    rep.seconds = round(time.monotonic() - t0, 3)
    rep.longest_lock_ms = round(rep.longest_lock_ms, 1)
    return rep


def _in_batches(db: Database, sql: str, cutoff: float, rows: int, deadline: float,
                rep: PruneReport) -> tuple[int, bool]:
    """Run one pruning statement until it touches fewer than `rows` rows; (total, finished)."""
    total = 0
    while True:
        if time.monotonic() > deadline:
            return total, False
        t1 = time.monotonic()
        with db.write() as conn:
            n = conn.execute(sql, (cutoff, rows)).rowcount
        held = time.monotonic() - t1
        _note_lock(rep, held)
        total += max(n, 0)
        if n < rows:
            return total, True
        time.sleep(max(MIN_PAUSE, held))  # the daemon's writers get the lock at least as long as we held it


def _note_lock(rep: PruneReport, held: float) -> None:
    rep.batches += 1
    rep.longest_lock_ms = max(rep.longest_lock_ms, held * 1000)


def _file_bytes(db: Database) -> int:
    try:
        return db.path.stat().st_size
    except OSError:
        return 0

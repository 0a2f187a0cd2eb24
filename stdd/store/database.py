"""The SQLite file: connection settings, schema and forward migrations.

Design note: SQLite in WAL mode is the queue, the audit log and the alert store. It needs no
server, survives a crash of any process (a committed row is on disk), and lets the daemon, its
workers and the CLI read while one of them writes. Every write goes through `Database.write()`,
a `BEGIN IMMEDIATE` transaction, so two writers wait for each other (busy timeout) instead of
failing or interleaving. The SQL lives in the `stdd.store` package only: this module owns the
schema, `frames.py` the frame queue, `alerts.py` alerts and actions, `events.py` the audit log.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

BUSY_TIMEOUT_MS = 30_000


def _v1(db: "sqlite_utils.Database") -> None:
    db["frames"].create(
        {
            "id": int, "path": str, "name": str, "sha256": str, "size": int, "mtime": float,
            "version": int, "state": str, "stage": str, "priority": int, "attempts": int,
            "next_attempt_at": float, "error": str, "steps": str, "options": str,
            "work_dir": str, "result_dir": str, "worker": str, "pid": int,
            "ra": float, "dec": float, "radius": float, "footprint": str,
            "filter": str, "time_mid": str, "exptime": float,
            "zp": float, "zp_err": float, "color_term": float, "fwhm_arcsec": float,
            "mag_limit": float, "n_stars_calib": int, "wcs_rms_arcsec": float,
            "n_candidates": int, "alert_ids": str,
            "created_at": float, "queued_at": float, "started_at": float, "finished_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"path", "sha256", "state", "created_at"},
        defaults={"state": "queued", "priority": 0, "attempts": 0, "version": 1},
    )
    db["frames"].create_index(["sha256"], unique=True)
    db["frames"].create_index(["state", "priority", "queued_at"])
    db["frames"].create_index(["path"])
    db["stage_runs"].create(
        {
            "id": int, "frame_id": int, "stage": str, "attempt": int, "state": str,
            "started_at": float, "finished_at": float, "seconds": float, "pid": int,
            "error": str, "summary": str,
        },
        pk="id",
        foreign_keys=[("frame_id", "frames", "id")],
        not_null={"frame_id", "stage", "state"},
    )
    db["stage_runs"].create_index(["frame_id", "stage"])
    db["alert_messages"].create(
        {
            "id": int, "topic": str, "partition": int, "offset": int, "received_at": float,
            "raw": bytes, "alert_id": str, "state": str, "error": str,
        },
        pk="id",
        not_null={"raw", "received_at", "state"},
    )
    db["alert_messages"].create_index(["topic", "partition", "offset"], unique=True)
    db["alerts"].create(
        {
            "id": str, "ivorn": str, "event_id": str, "mission": str, "instrument": str,
            "notice_type": str, "role": str, "time": str, "ra": float, "dec": float,
            "error_radius_deg": float, "region": str, "skymap": str, "retraction": int,
            "retracts": str, "actionable": int, "ignore_reason": str, "priority": int,
            "state": str, "decision": str, "live_until": float, "received_at": float,
            "message_id": int, "parsed": str,
        },
        pk="id",
        not_null={"received_at"},
    )
    db["alerts"].create_index(["event_id"])
    db["alerts"].create_index(["live_until"])
    db["actions"].create(
        {
            "id": int, "alert_id": str, "name": str, "kind": str, "purpose": str, "state": str,
            "attempts": int, "started_at": float, "finished_at": float, "exit_code": int,
            "http_status": int, "output": str, "error": str, "request": str,
        },
        pk="id",
        foreign_keys=[("alert_id", "alerts", "id")],
        not_null={"alert_id", "name", "kind", "state"},
    )
    db["actions"].create_index(["alert_id", "name", "purpose"], unique=True)
    db["events"].create(
        {
            "id": int, "time": float, "level": str, "kind": str, "frame_id": int,
            "alert_id": str, "message": str, "data": str,
        },
        pk="id",
        not_null={"time", "kind"},
    )
    db["events"].create_index(["frame_id"])
    db["events"].create_index(["time"])


def _v2(db: "sqlite_utils.Database") -> None:
    """Alert delivery: notices without a Kafka offset (drop folder, HTTP POST) are de-duplicated by
    the SHA-256 of their bytes; a message counts its deliveries and processing attempts; an action
    counts its runs (a run interrupted by a crash is run again, see docs/alerts-delivery.md).

    Rows written before v2 get their hash; a later row repeating an earlier row's bytes without a
    Kafka offset (made by the drop folder retrying a file before v2) keeps `sha256` NULL, so the
    unique index holds the first copy only."""
    import hashlib

    conn = db.conn
    conn.execute("ALTER TABLE alert_messages ADD COLUMN sha256 TEXT")
    conn.execute("ALTER TABLE alert_messages ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE alert_messages ADD COLUMN last_received_at FLOAT")
    conn.execute("ALTER TABLE alert_messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE actions ADD COLUMN runs INTEGER NOT NULL DEFAULT 0")
    seen: set[str] = set()
    ids = [r[0] for r in conn.execute("SELECT id FROM alert_messages ORDER BY id").fetchall()]
    for mid in ids:  # one row at a time: LVK notices are ~1 MB each
        raw, offset = conn.execute('SELECT raw, "offset" FROM alert_messages WHERE id = ?', (mid,)).fetchone()
        digest = hashlib.sha256(bytes(raw)).hexdigest()
        if offset is None:
            if digest in seen:
                continue
            seen.add(digest)
        conn.execute("UPDATE alert_messages SET sha256 = ? WHERE id = ?", (digest, mid))
    conn.execute('CREATE UNIQUE INDEX idx_alert_messages_sha256_no_offset ON alert_messages (sha256)'
                 ' WHERE "offset" IS NULL')
    conn.execute("CREATE INDEX idx_alert_messages_state ON alert_messages (state)")
    conn.execute("CREATE INDEX idx_actions_state ON actions (state)")


def _v3(db: "sqlite_utils.Database") -> None:
    """Calibration frames (issue 16): a frame's type from its header (`kind`: light, bias, dark,
    flat; `imagetyp`: the header value), the set it belongs to (`calib_group`) and what became of
    it (`master`: the master file it went into, or why none was built)."""
    for column in ("kind", "imagetyp", "calib_group", "master"):
        if column not in db["frames"].columns_dict:
            db["frames"].add_column(column, str)
    db["frames"].create_index(["state", "master"], if_not_exists=True)


def _v4(db: "sqlite_utils.Database") -> None:
    """Delivery outbox (issue 17, part 5): one row per thing to send to SkyPortal, a TOM or a
    notification channel, written in the transaction of the event that causes it, sent and
    retried by the daemon's delivery loop (see docs/delivery.md)."""
    db["deliveries"].create(
        {
            "id": int, "target": str, "kind": str, "key": str, "payload": str, "state": str,
            "attempts": int, "next_try": float, "created_at": float, "updated_at": float,
            "sent_at": float, "http_status": int, "error": str, "response": str,
            "frame_id": int, "alert_id": str,
        },
        pk="id",
        not_null={"target", "kind", "key", "payload", "state", "created_at"},
        defaults={"state": "pending", "attempts": 0},
    )
    db["deliveries"].create_index(["target", "key"], unique=True)
    db["deliveries"].create_index(["state", "next_try"])
    db["deliveries"].create_index(["target", "state", "sent_at"])


def _v5(db: "sqlite_utils.Database") -> None:
    """The measurement store (issue 17): every frame's calibrated objects, target measurements and
    candidates by sky position (`hpx`: HEALPix nested index at order 14, ~13″ cells), candidate
    histories across frames, and the vetting marks of the web interface (stdd/store/measurements.py,
    stdd/candidates/)."""
    db["measurements"].create(
        {"id": int, "frame_id": int, "kind": str, "name": str, "ra": float, "dec": float, "hpx": int,
         "mjd": float, "filter": str, "mag": float, "mag_err": float, "lim": float, "snr": float, "flags": int,
         "zp": float, "zp_err": float},
        pk="id", not_null={"frame_id", "kind", "ra", "dec", "hpx"})
    db["measurements"].create_index(["hpx"])
    db["measurements"].create_index(["frame_id"])
    db["measurements"].create_index(["kind", "name"])
    db["candidates"].create(
        {"id": int, "ra": float, "dec": float, "hpx": int, "state": str, "first_mjd": float, "last_mjd": float,
         "n_det": int, "filters": str, "matches": str, "motion": str, "created_at": float, "updated_at": float},
        pk="id", not_null={"ra", "dec", "hpx", "state"})
    db["candidates"].create_index(["hpx"])
    db["candidates"].create_index(["state", "last_mjd"])
    db["candidate_detections"].create(
        {"id": int, "candidate_id": int, "frame_id": int, "cand_key": str, "kind": str, "ra": float, "dec": float,
         "hpx": int, "mjd": float, "filter": str, "mag": float, "mag_err": float, "snr": float, "cutout": str},
        pk="id", not_null={"candidate_id", "frame_id", "cand_key", "ra", "dec"})
    db["candidate_detections"].create_index(["candidate_id"])
    db["candidate_detections"].create_index(["frame_id", "cand_key"], unique=True)
    db["candidate_detections"].create_index(["hpx"])
    db["vetting"].create(
        {"id": int, "frame_id": int, "cand_key": str, "candidate_id": int, "mark": str, "who": str, "at": float,
         "note": str},
        pk="id", not_null={"frame_id", "cand_key", "mark", "at"})
    db["vetting"].create_index(["frame_id", "cand_key"], unique=True)


def _v6(db: "sqlite_utils.Database") -> None:
    """Stacks made by the daemon (stdd/daemon/stacking.py): one row per stacked sequence, keyed by its
    inputs, with the frame the stack was queued as."""
    db["stacks"].create({"id": int, "key": str, "frame_id": int, "inputs": str, "path": str, "created_at": float},
                        pk="id", not_null={"key", "inputs", "created_at"})
    db["stacks"].create_index(["key"], unique=True)


#: Forward migrations, in order. Append; never edit a released one.
MIGRATIONS: list[Callable[["sqlite_utils.Database"], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    pass


class Database:
    """One connection to the state file, for one thread of one process."""

    def __init__(self, path: str | Path, *, migrate: bool = True, readonly: bool = False,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"no database at {self.path}")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not readonly:
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # a new file hands freed pages back to the file system on request
                # (stdd.store.retention). Only on a new file: on an existing one the pragma takes
                # the write lock (and waits for it) to change nothing until a VACUUM
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self._sqlite_utils_db = None
        self._lock = threading.RLock()
        self._depth = 0
        if migrate and not readonly:
            self.migrate()

    # -- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self._begin_immediate()
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self._rollback()
                raise
            self._depth = 0
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                # a COMMIT that fails (disk full, I/O error) must not leave the transaction
                # open: the next BEGIN would fail for good
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR); a second ROLLBACK
        # would raise and hide the error that matters
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _begin_immediate(self) -> None:
        # busy_timeout covers most waits; a retry loop covers the rare SQLITE_BUSY on BEGIN
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"database {self.path} stayed locked for {self.busy_timeout_ms / 1000:.0f} s") from e
                time.sleep(0.05)

    def query(self, sql: str, params=()) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def query_one(self, sql: str, params=()) -> dict | None:
        with self._lock:
            row = self.conn.execute(sql, params).fetchone()
            return dict(row) if row is not None else None

    @property
    def db(self):
        """sqlite-utils' view of the connection, made on first use: importing sqlite-utils
        imports pandas when it is installed (~70 MB, ~0.4 s), which a daemon, a worker or a
        CLI call that only runs queries should not pay."""
        if self._sqlite_utils_db is None:
            import sqlite_utils

            self._sqlite_utils_db = sqlite_utils.Database(self.conn)
        return self._sqlite_utils_db

    def _has_table(self, name: str) -> bool:
        return self.query_one("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None

    # -- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        if not self._has_table("meta"):
            return 0
        row = self.query_one("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(row["value"]) if row else 0

    def migrate(self) -> int:
        """Apply every migration newer than the file's version; idempotent; returns the version."""
        if self.schema_version() == SCHEMA_VERSION:
            return SCHEMA_VERSION  # up to date: nothing to import or lock
        with self.write():
            if not self._has_table("meta"):
                self.db["meta"].create({"key": str, "value": str}, pk="key")
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this stdd knows "
                    f"({SCHEMA_VERSION}); upgrade stdd"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](self.db)
                self.db["meta"].upsert({"key": "schema_version", "value": str(version)}, pk="key")
        return self.schema_version()

    # -- space --------------------------------------------------------------------------
    def auto_vacuum_mode(self) -> str:
        """How the file hands freed pages back: "none" (kept for reuse), "full" or "incremental"."""
        row = self.query_one("PRAGMA auto_vacuum")
        return {0: "none", 1: "full", 2: "incremental"}.get(int(next(iter(row.values()))), "none")

    def enable_incremental_vacuum(self) -> bool:
        """Make a file created before incremental vacuum use it: one VACUUM, which rewrites the
        whole file and holds the write lock meanwhile (run it when nothing else writes: at start).
        False when the file uses it already."""
        if self.auto_vacuum_mode() == "incremental":
            return False
        with self._lock:
            self._outside_transaction("VACUUM")
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.conn.execute("VACUUM")
        return True

    def incremental_vacuum(self, pages: int) -> int:
        """Hand up to `pages` free pages back to the file system (one short write transaction);
        returns how many were freed. Nothing happens unless the file uses incremental vacuum."""
        with self._lock:
            self._outside_transaction("incremental vacuum")
            before = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            # the pragma frees one page per step of its statement: executescript steps it to the end
            self.conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            return before - self.conn.execute("PRAGMA freelist_count").fetchone()[0]

    def _outside_transaction(self, what: str) -> None:
        if self._depth:
            raise StoreError(f"{what} cannot run inside a write transaction")

    def free_pages(self) -> int:
        """Pages of the file that hold nothing (reused by new rows, or handed back by a vacuum)."""
        with self._lock:
            return int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])

    def content_bytes(self) -> int:
        """Bytes of the pages that hold something: what a VACUUM would copy."""
        with self._lock:
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def truncate_wal(self, wait_ms: int = 200) -> bool:
        """Checkpoint the write-ahead log and cut it to zero bytes, waiting at most `wait_ms` for
        readers and writers (a checkpoint that must wait holds up new writers). False when busy."""
        with self._lock:
            self.conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            try:
                busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError:
                busy = 1
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            return not busy

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

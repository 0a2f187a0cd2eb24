"""/health's database check: can the state file be read, and could a writer start now?

Design note: the check must answer within half a second whatever holds the file, so it never
uses the daemon's connection (whose writers wait up to 30 s for a lock while holding its
Python lock), nor the endpoint's reader pool (whose threads and connections wait as long), nor
`stdd.store.Database` (which waits 30 s and sets the journal mode when it connects). It opens
its own plain SQLite connection, on a thread of its own (`offloop.OffLoop`), with a busy
wait of `BUSY_WAIT_SECONDS`, and runs no query on stdd's tables: a read of SQLite's own
catalogue, then `BEGIN IMMEDIATE` and `ROLLBACK`, which takes the write lock and writes
nothing. In WAL mode readers never wait, so the write lock is what shows a file another process
holds (`BEGIN EXCLUSIVE`, a long transaction): the check then says "database locked". Before
that it looks at the filesystem: mounted read-only, the file or its folder not writable
(SQLite makes its -wal and -shm files there), or less than `MIN_FREE_BYTES` free.

Problems, as the check's `problem` and the start of its `detail`: "database locked", "disk
full", "read-only", "database missing", "cannot open", "database corrupt", "I/O error",
"not answering" (the check itself did not end in time), else "error". `since` is when the
current problem was first seen.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .offloop import OffLoop, Overdue

TIMEOUT_SECONDS = 0.5       # what /health waits for this check
BUSY_WAIT_SECONDS = 0.25    # what the check waits for a lock another connection holds
MIN_FREE_BYTES = 1 << 20    # below this the filesystem counts as full

# SQLite's primary result codes (the low byte of an extended code)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_error(e: BaseException, busy_wait: float = BUSY_WAIT_SECONDS) -> tuple[str, str]:
    """(problem, detail) for an error from SQLite or the filesystem."""
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    err = getattr(e, "errno", None)
    text = str(e).lower()
    if primary in (_BUSY, _LOCKED) or "locked" in text or "busy" in text:
        return "database locked", (f"database locked: another connection holds it (no lock within "
                                   f"{busy_wait:g} s): {e}")
    if primary == _FULL or err in (errno.ENOSPC, errno.EDQUOT) or "is full" in text:
        return "disk full", f"disk full: {e}"
    if primary == _READONLY or err in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text:
        return "read-only", f"read-only: {e}"
    if primary == _CANTOPEN:
        return "cannot open", f"cannot open the database: {e}"
    if primary in (_CORRUPT, _NOTADB):
        return "database corrupt", f"database corrupt: {e}"
    if primary == _IOERR or isinstance(e, OSError):
        return "I/O error", f"I/O error: {e}"
    return "error", f"{type(e).__name__}: {e}"


def probe(path: str | Path, busy_wait: float = BUSY_WAIT_SECONDS) -> dict[str, Any]:
    """The check, run on a thread: {'ok', 'detail', 'ms', 'free_bytes', ...} (never raises)."""
    t0 = time.monotonic()
    path = Path(path)
    folder = path.parent

    def failed(problem: str, detail: str, **extra: Any) -> dict[str, Any]:
        return {"ok": False, "problem": problem, "detail": detail, "path": str(path), **extra,
                "ms": round((time.monotonic() - t0) * 1000, 2)}

    try:
        fs = os.statvfs(folder)
    except OSError as e:
        return failed(*describe_error(e, busy_wait), error=f"{type(e).__name__}: {e}")
    free = fs.f_bavail * fs.f_frsize
    if fs.f_flag & os.ST_RDONLY:
        return failed("read-only", f"read-only: the filesystem holding {folder} is mounted read-only",
                      free_bytes=free)
    if not path.is_file():
        return failed("database missing", f"database missing: no file at {path}", free_bytes=free)
    for p in (path, folder):
        if not os.access(p, os.W_OK):
            return failed("read-only", f"read-only: {p} is not writable by the daemon's user", free_bytes=free)
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=rw", uri=True, timeout=busy_wait,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_wait * 1000)}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("BEGIN IMMEDIATE")  # the write lock, free now? (nothing is written)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as e:
        return failed(*describe_error(e, busy_wait), error=f"{type(e).__name__}: {e}", free_bytes=free)
    if free < MIN_FREE_BYTES:
        return failed("disk full", f"disk full: {free} bytes free on the filesystem holding {folder}",
                      free_bytes=free)
    ms = round((time.monotonic() - t0) * 1000, 2)
    return {"ok": True, "detail": f"readable, write lock free ({ms:g} ms), {free / 2**30:.1f} GiB free",
            "path": str(path), "ms": ms, "free_bytes": free}


class DatabaseCheck:
    """The check as /health runs it: `probe` off the loop within `timeout` seconds, and since
    when the current problem has been seen."""

    def __init__(self, path: str | Path, *, timeout: float = TIMEOUT_SECONDS, busy_wait: float = BUSY_WAIT_SECONDS):
        self.path = Path(path)
        self.timeout = timeout
        self.busy_wait = busy_wait
        self._offloop = OffLoop("database-check")
        self._problem: tuple[str, float] | None = None  # (problem, first seen)

    async def run(self) -> dict[str, Any]:
        try:
            # a copy: a probe still in flight is shared by the requests that come meanwhile
            check = dict(await self._offloop.call(lambda: probe(self.path, self.busy_wait), self.timeout))
        except Overdue as e:
            check = {"ok": False, "problem": "not answering", "path": str(self.path),
                     "detail": f"not answering: the database check has run for {e.running_seconds:.1f} s "
                               f"without an answer (the disk stalled?)"}
        except Exception as e:  # noqa: BLE001 — a bug in the check is a failed check, not a 500
            check = {"ok": False, "problem": "error", "path": str(self.path),
                     "detail": f"the database check failed: {type(e).__name__}: {e}"}
        if check["ok"]:
            self._problem = None
        else:
            if self._problem is None or self._problem[0] != check["problem"]:
                self._problem = (check["problem"], time.time())
            check["since"] = iso(self._problem[1])
        return check

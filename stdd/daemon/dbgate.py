"""The daemon's way to its SQLite file: one thread of its own, and what is wrong with it.

Design note: the event loop never waits on SQLite. Every read and write the daemon's loops make
goes through `DbGate`, which runs it on a single dedicated thread (the connection is one per
process and serialised anyway) and awaits the result. When the file is unavailable — another
process holds it locked past the busy timeout, the disk is full, the file became read-only —
the gate notes the problem with the time it began (`health()`: "database locked since …"),
clears it at the next success, and:

- `run()` raises, for callers that can simply try again later (the dispatcher's next
  iteration, an API call answered with an error);
- `write_until_done()` retries with a capped backoff until the write is on disk, for writes
  that must never be lost (a finished frame's record): the caller's loop beats between
  attempts, so the supervisor sees it waiting, not hung.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..store import StoreError

log = logging.getLogger("stdd.db")

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
#: a call that only reads (or writes nothing) proves little about a full disk: it clears a
#: problem only when no write has failed for this long
QUIET_CLEARS = 2 * RETRY_MAX


def database_problem(exc: BaseException) -> str | None:
    """What an exception says about the database file, or None when it is not about the file
    (a bug, a constraint: retrying would not help)."""
    if isinstance(exc, StoreError):
        return "database locked" if "locked" in str(exc) else f"database unavailable: {exc}"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return "database locked"
        if "full" in text:
            return "disk full"
        if "readonly" in text or "read-only" in text:
            return "database read-only"
        if "disk i/o" in text or "unable to open" in text:
            return f"database unavailable: {exc}"
        return None
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "disk full"
        if exc.errno == errno.EROFS:
            return "database read-only"
        if exc.errno in (errno.EIO, errno.EACCES):
            return f"database unavailable: {exc}"
    return None


class DbGate:
    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stdd-db")
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._since: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._last_failure = 0.0
        self._waiting = 0
        self._call_started: float | None = None

    # -- calls ----------------------------------------------------------------------------
    def _call(self, fn: Callable, args, kwargs, wrote: bool = False):
        with self._lock:
            self._call_started = time.monotonic()
        try:
            out = fn(*args, **kwargs)
        except BaseException as e:
            self._note(e)
            raise
        finally:
            with self._lock:
                self._call_started = None
        self.note_success(wrote)
        return out

    async def run(self, fn: Callable, *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn, args, kwargs)

    async def _run_write(self, fn: Callable, *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn, args, kwargs, True)

    async def write_until_done(self, what: str, fn: Callable, *args, beat: Callable[[], None] | None = None,
                               **kwargs) -> Any:
        """Like `run`, but a failure that is about the database file (locked, full, read-only) is
        retried until it succeeds; `what` names the write in the log. Other errors raise."""
        delay = RETRY_FIRST
        first_failure: float | None = None
        last_log = 0.0
        with self._lock:
            self._waiting += 1
        try:
            while True:
                if beat is not None:
                    beat()
                try:
                    out = await self._run_write(fn, *args, **kwargs)
                except Exception as e:
                    problem = database_problem(e)
                    if problem is None:
                        raise
                    now = time.monotonic()
                    if first_failure is None:
                        first_failure = now
                    if now - last_log > 60:
                        log.error("%s: %s (%s); retrying until it is written", what, problem, e)
                        last_log = now
                    end = now + delay
                    while time.monotonic() < end:
                        if beat is not None:
                            beat()
                        await asyncio.sleep(min(1.0, end - time.monotonic()))
                    delay = min(RETRY_MAX, delay * 2)
                    continue
                if first_failure is not None:
                    log.warning("%s: written after %.1f s of retries", what, time.monotonic() - first_failure)
                return out
        finally:
            with self._lock:
                self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- state ----------------------------------------------------------------------------
    def _note(self, e: BaseException) -> None:
        self.note_failure(e)

    def note_failure(self, e: BaseException) -> None:
        """A database call (here or in another thread of the daemon) failed; if it is about the
        file, it is the current problem."""
        problem = database_problem(e)
        if problem is None:
            return
        with self._lock:
            if self._problem != problem:
                self._problem = problem
                self._since = time.time()
            self._last_error = f"{type(e).__name__}: {e}"
            self._last_failure = time.monotonic()
            self._failures += 1

    def note_success(self, wrote: bool = True) -> None:
        """A call succeeded; one that wrote (or any, long after the last failure) ends the problem."""
        with self._lock:
            if self._problem is None:
                return
            if not wrote and time.monotonic() - self._last_failure < QUIET_CLEARS:
                return
            if self._problem is not None:
                log.info("database: %s is over (it began %.1f s ago)", self._problem, time.time() - self._since)
            self._problem = None
            self._since = None
            self._failures = 0

    def problem(self) -> str | None:
        """A sentence naming what is wrong ("database locked since 2026-…Z"), or None."""
        with self._lock:
            if self._problem is None:
                return None
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
            return f"{self._problem} since {since}"

    def health(self) -> dict:
        with self._lock:
            busy = time.monotonic() - self._call_started if self._call_started is not None else None
            problem, since, err = self._problem, self._since, self._last_error
            failures, waiting = self._failures, self._waiting
        detail = self.problem() or "writes go through"
        if problem and waiting:
            detail += f"; {waiting} write(s) waiting to be retried"
        return {"ok": problem is None, "detail": detail, "problem": problem, "since": since,
                "error": err, "failures": failures, "writes_waiting": waiting,
                "current_call_seconds": round(busy, 3) if busy is not None else None}

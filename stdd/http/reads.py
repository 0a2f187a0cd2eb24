"""Reads for the endpoint, off the event loop, on the endpoint's own SQLite connections.

Design note: every query and file read a request needs runs in a small thread pool owned by
the endpoint (not the loop's default executor, which the daemon may fill with hashing or
publishing), and each of those threads has its own connection to the state file. In WAL mode
readers never wait for the daemon's writers nor for each other, so a burst of /status calls
does not queue behind a worker committing a stage run, and the loop itself only awaits.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..store import Database

T = TypeVar("T")


class ReadPool:
    def __init__(self, database: str | Path, threads: int = 2):
        self.database = Path(database)
        self._local = threading.local()
        self._all: list[Database] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stdd-http-read")

    def db(self) -> Database:
        """This thread's connection (made on first use; the schema is the daemon's to migrate)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = Database(self.database, migrate=False)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a reader thread (fn may call `self.db()`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(db, *args, **kwargs)` with this thread's connection."""
        return await self.run(lambda: fn(self.db(), *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for db in self._all:
                try:
                    db.close()
                except Exception:
                    pass
            self._all.clear()

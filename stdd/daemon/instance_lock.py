"""One daemon per database: an exclusive `flock` on `<database>.lock`, holding the owner's pid."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class InstanceLocked(Exception):
    """Another process holds the lock; the message names its pid."""


class InstanceLock:
    def __init__(self, db_path: Path):
        self.path = db_path.with_name(db_path.name + ".lock")
        self.db_path = db_path
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def take(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "?"
            fh.close()
            raise InstanceLocked(f"another stdd daemon (pid {other}) is running on {self.db_path}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

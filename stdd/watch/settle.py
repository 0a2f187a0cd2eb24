"""When has a file stopped changing? Pure bookkeeping, driven by the caller's clock.

A path is *noted* whenever the watcher sees it (created, modified, moved in, closed) or a
rescan finds it. On each `due()` the tracker stats its paths: a file whose size, mtime and
inode have not moved for `settle_seconds` is handed out once; a vanished file is forgotten;
a file that changes again starts its wait over. A file handed out but found incomplete can be
`hold()`-en: it comes back only when it changes again, or when it has been unchanged for
`incomplete_seconds` (then it is handed out with `expired=True`, meaning "give up on it"), or
right after the writer closed it (inotify's close-after-write) and it settled again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .files import FileStat, file_stat


@dataclass
class _Entry:
    stat: FileStat | None
    changed_at: float
    closed: bool = False
    held_since: float | None = None
    held_reason: str | None = None


@dataclass(frozen=True)
class Settled:
    path: Path
    stat: FileStat
    expired: bool = False  # held as incomplete for incomplete_seconds, or closed by its writer since
    reason: str | None = None
    closed: bool = False  # its writer closed it (inotify) before it settled


@dataclass
class SettleTracker:
    settle_seconds: float
    incomplete_seconds: float = 20.0
    stat: Callable[[Path], FileStat | None] = file_stat
    clock: Callable[[], float] = time.monotonic
    _entries: dict[Path, _Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path) -> bool:
        return Path(path) in self._entries

    def note(self, path: Path, closed: bool = False) -> None:
        """The watcher saw activity on `path` (closed=True: a writer closed it)."""
        path = Path(path)
        entry = self._entries.get(path)
        now = self.clock()
        if entry is None:
            self._entries[path] = _Entry(stat=None, changed_at=now, closed=closed)
            return
        if closed:
            entry.closed = True
            entry.changed_at = now  # settle again after the close

    def hold(self, path: Path, stat: FileStat, reason: str) -> None:
        """Keep an incomplete file until it changes or its time is up."""
        path = Path(path)
        now = self.clock()
        entry = self._entries.get(path)
        if entry is None or entry.held_since is None:
            self._entries[path] = _Entry(stat=stat, changed_at=now, closed=False, held_since=now,
                                         held_reason=reason)
        else:
            entry.held_reason = reason

    def forget(self, path: Path) -> None:
        self._entries.pop(Path(path), None)

    def paths(self) -> list[Path]:
        return list(self._entries)

    def due(self) -> list[Settled]:
        """Stat every tracked path; return (and stop tracking) the ones that settled."""
        out: list[Settled] = []
        now = self.clock()
        for path, entry in list(self._entries.items()):
            st = self.stat(path)
            if st is None:
                del self._entries[path]
                continue
            if not st.same(entry.stat):
                if entry.held_since is not None and entry.stat is not None:
                    entry.held_since = None  # it changed: a fresh chance
                    entry.held_reason = None
                    entry.closed = False
                entry.stat = st
                entry.changed_at = now
                continue
            quiet = now - entry.changed_at
            if quiet < self.settle_seconds:
                continue
            if entry.held_since is None:
                del self._entries[path]
                out.append(Settled(path, st, closed=entry.closed))
            elif entry.closed or now - entry.held_since >= self.incomplete_seconds:
                del self._entries[path]
                out.append(Settled(path, st, expired=True, reason=entry.held_reason, closed=entry.closed))
        return out

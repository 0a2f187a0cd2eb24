"""watchdog on the incoming folders: inotify, or polling for network filesystems.

The watcher only says "something happened at this path" (and whether a writer just closed
it); deciding when the file is complete is `SettleTracker`'s and the intake's job. Events
arrive on watchdog's thread: the callback must be thread-safe (the daemon hands them to its
event loop with `call_soon_threadsafe`). Temporary names are filtered here, so an rsync
`.name.XXXXXX` or a `*.part` is seen only when it is renamed to its final name.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .files import matches, scan

log = logging.getLogger("stdd.watch")

PathCallback = Callable[[Path, bool], None]


def _fs(p) -> str:
    return os.fsdecode(p)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "FolderWatcher"):
        self.w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.w._dispatch(event)
        except Exception:  # never let one odd event kill watchdog's thread
            log.exception("watch: error handling %r", event)


class FolderWatcher:
    def __init__(self, folders: Iterable[Path], patterns: Iterable[str], ignore: Iterable[str],
                 callback: PathCallback, *, poll: bool = False, poll_interval: float = 1.0,
                 recursive: bool = True, exclude: Iterable[Path] = ()):
        self.folders = [Path(f) for f in folders]
        self.patterns = list(patterns)
        self.ignore = list(ignore)
        self.callback = callback
        self.poll = poll
        self.poll_interval = poll_interval
        self.recursive = recursive
        self.exclude = [Path(e) for e in exclude]
        self._observer = None

    # -- filtering ------------------------------------------------------------------------
    def wanted(self, path: Path) -> bool:
        if not matches(path.name, self.patterns, self.ignore):
            return False
        for ex in self.exclude:
            if path == ex or ex in path.parents:
                return False
        for folder in self.folders:
            if folder in path.parents:
                rel = path.relative_to(folder)
                if not self.recursive and len(rel.parts) > 1:
                    return False
                # files inside hidden folders (e.g. rsync's partial dirs) are temporary too
                return not any(part.startswith(".") for part in rel.parts[:-1])
        return False

    def _dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirMovedEvent, DirCreatedEvent)):
            folder = Path(_fs(event.dest_path if isinstance(event, DirMovedEvent) else event.src_path))
            for path in scan([folder], self.patterns, self.ignore, self.recursive, self.exclude):
                if self.wanted(path):
                    self.callback(path, False)
            return
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            path, closed = Path(_fs(event.dest_path)), False
        elif isinstance(event, FileClosedEvent):
            path, closed = Path(_fs(event.src_path)), True
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
            path, closed = Path(_fs(event.src_path)), False
        else:
            return
        if self.wanted(path):
            self.callback(path, closed)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        observer = PollingObserver(timeout=self.poll_interval) if self.poll else Observer()
        handler = _Handler(self)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            observer.schedule(handler, str(folder), recursive=self.recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watch: %s on %s (patterns %s)", "polling" if self.poll else "inotify",
                 ", ".join(map(str, self.folders)), " ".join(self.patterns))

    def stop(self, timeout: float = 5.0) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    @property
    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def rescan(self) -> list[Path]:
        """Every matching file now in the folders (the daemon calls this at start and periodically)."""
        return [p for p in scan(self.folders, self.patterns, self.ignore, self.recursive, self.exclude)
                if self.wanted(p)]

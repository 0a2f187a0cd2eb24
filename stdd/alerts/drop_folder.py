"""DropFolderIntake: notice files dropped into `paths.alert_drop` are read like Kafka messages.

Design note: the folder is polled (every `alerts.drop_poll_seconds`), not watched with
inotify: it receives a handful of files a day, polling also works on network mounts, and a
file is taken only once its size and mtime have not changed for `drop_settle_seconds`, so a
notice still being written is never read half-way. Hidden files and *.part/*.tmp are
ignored (write elsewhere and rename in, as the request_file action does). A handled file
moves to `done/`; one that is not a readable notice to `failed/` with a `.error` note beside it.
The file name is the parser's hint for notices that do not name themselves (e.g. a classic
JSON notice saved as SWIFT_BAT_GRB_POS_ACK.json).

A file is moved only after `on_message` returned, i.e. once its message is on disk; a crash
before the move leaves the file, and the next scan hands it over again: the service knows its
bytes (SHA-256) and answers "duplicate" without acting twice. Like the Kafka intake, the loop
beats a `LoopMonitor` each scan, so `health()` tells a stuck watcher (`stalled`) from a healthy one.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..faults import fault_point
from .service import IntakeMessage
from .supervision import EventCallback, LoopMonitor

log = logging.getLogger("stdd.alerts.drop")
IGNORE = (".*", "*.part", "*.tmp", "*~")
#: the watcher is stuck after this long without a scan, beyond its poll interval's three times
STALL_MARGIN_S = 30.0


class DropFolderIntake:
    def __init__(self, settings, on_message: Callable[[IntakeMessage], Any], folder: Path | None = None, *,
                 on_event: EventCallback | None = None, stall_after: float | None = None):
        self.folder = Path(folder or settings.paths.alert_drop)
        self.poll = settings.alerts.drop_poll_seconds
        self.settle = settings.alerts.drop_settle_seconds
        self.on_message = on_message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running = False
        self._seen: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen unchanged)
        self.monitor = LoopMonitor("drop folder", stall_after if stall_after is not None
                                   else 3 * self.poll + STALL_MARGIN_S, on_event=on_event)
        self._status: dict[str, Any] = {"folder": str(self.folder), "files": 0, "failed": 0, "duplicates": 0,
                                        "thread_restarts": 0}

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._thread and self._thread.is_alive():
                return
            self._stop.clear()
            self._running = True
            self._thread = threading.Thread(target=self._run, name="stdd-alert-drop", daemon=True)
            self._thread.start()

    def ensure_running(self) -> bool:
        """Start a new watcher thread if the one started has ended; True when one was started."""
        with self._lock:
            dead = self._running and not self._stop.is_set() and not (self._thread and self._thread.is_alive())
            if dead:
                self._status["thread_restarts"] += 1
        if dead:
            self.monitor.error("the watcher thread had ended: started again", level="ERROR")
            self.start()
        return dead

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._running = False

    def status(self) -> dict[str, Any]:
        return {**self._status, **self.monitor.snapshot(), "alive": bool(self._thread and self._thread.is_alive())}

    def health(self) -> dict[str, Any]:
        with self._lock:
            running = self._running and not self._stop.is_set()
        h = self.monitor.health(running=running, alive=bool(self._thread and self._thread.is_alive()))
        h.update(folder=str(self.folder), files=self._status["files"])
        return h

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.monitor.beat()
                try:
                    self.scan()
                except Exception as e:  # keep watching whatever happened
                    self.monitor.error(f"scan of {self.folder} failed: {type(e).__name__}: {e}", exc_info=True)
                self._stop.wait(self.poll)
        except BaseException as e:  # the thread ends: say so; ensure_running() starts another
            self.monitor.error(f"the watcher thread ended: {type(e).__name__}: {e}", level="ERROR", exc_info=True)
            # the thread ends here (logged above with its traceback)

    def scan(self, now: float | None = None) -> list[Path]:
        """Handle every settled notice file once; returns the files handled."""
        now = time.time() if now is None else now
        handled = []
        try:
            entries = sorted(p for p in self.folder.iterdir() if p.is_file())
        except FileNotFoundError:
            self.folder.mkdir(parents=True, exist_ok=True)
            return handled
        present = set()
        for path in entries:
            if any(fnmatch.fnmatch(path.name, pat) for pat in IGNORE):
                continue
            present.add(path)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime)
            prev = self._seen.get(path)
            if prev is None or prev[:2] != key:
                self._seen[path] = (*key, now)
                if self.settle > 0 and now - st.st_mtime < self.settle:
                    continue
            elif now - prev[2] < self.settle and now - st.st_mtime < self.settle:
                continue
            self._handle(path)
            handled.append(path)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        return handled

    def _handle(self, path: Path) -> None:
        raw = path.read_bytes()
        try:
            outcome = self.on_message(IntakeMessage(value=raw, topic=None, hint=path.name,
                                                    timestamp=path.stat().st_mtime))
        except Exception as e:
            # not recorded: leave the file for the next scan
            self.monitor.error(f"handling {path.name} failed (the file stays for the next scan): "
                               f"{type(e).__name__}: {e}", exc_info=True)
            return
        fault_point("alert.drop_done")
        self._seen.pop(path, None)
        self._status["files"] += 1
        state = getattr(outcome, "state", None)
        if state == "duplicate":
            self._status["duplicates"] += 1
        target = self.folder / ("failed" if state == "error" else "done")
        target.mkdir(exist_ok=True)
        dest = target / path.name
        if dest.exists():
            dest = target / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
        shutil.move(str(path), str(dest))
        if state == "error":
            self._status["failed"] += 1
            with open(str(dest) + ".error", "w") as fh:
                fh.write((getattr(outcome, "error", None) or "unreadable") + os.linesep)

"""What an intake loop reports about itself: heartbeat, connection state, errors — and its health.

Design note: each intake (the Kafka consumer, the drop-folder watcher) runs a loop on its own
thread and owns one `LoopMonitor`. The loop calls `beat()` at every iteration (also while it
waits out a backoff), `connection(...)` when it learns it is connected or not, and `error(...)`
for whatever went wrong in an iteration. The monitor logs, records an `events` row through
the `on_event` callback (a connection change always; the same error text at most once a
minute, so a broker that stays away does not flood the audit log), and answers `health()`:

- `stalled` — our own loop is stuck: no iteration for longer than `stall_after` seconds, or its
  thread is gone. This is what the daemon stops the systemd watchdog for.
- `ok` false but not stalled — the loop runs but the outside is not there (e.g. the broker
  is unreachable): `detail` says "not connected to … since …".
"""
from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("stdd.alerts")

#: the same error text (numbers aside) is recorded as an event at most this often (it is always logged)
EVENT_REPEAT_SECONDS = 60.0

EventCallback = Callable[[str, str, str, dict], None]  # (kind, message, level, data)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LoopMonitor:
    def __init__(self, name: str, stall_after: float, *, target: str | None = None,
                 on_event: EventCallback | None = None, clock: Callable[[], float] = time.time):
        self.name = name
        self.target = target
        self.stall_after = stall_after
        self.on_event = on_event
        self.clock = clock
        self._lock = threading.Lock()
        self.last_beat: float | None = None
        self.iterations = 0
        self.connected: bool = not target  # a loop with a target starts not connected
        self.connection_since: float = clock()
        self.connection_reason: str | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.errors = 0
        self._recorded: dict[str, float] = {}

    # -- what the loop reports ------------------------------------------------------------
    def beat(self) -> None:
        with self._lock:
            self.last_beat = self.clock()
            self.iterations += 1

    def connection(self, connected: bool, reason: str | None = None) -> None:
        """The loop learnt whether it is connected to its target; an event when that changes."""
        with self._lock:
            changed = connected != self.connected
            if changed:
                self.connected = connected
                self.connection_since = self.clock()
            if not connected and reason:
                self.connection_reason = reason
            since = self.connection_since
        if not changed:
            return
        if connected:
            log.info("%s: connected to %s", self.name, self.target)
            self._event(f"{self.name}: connected to {self.target}", "INFO", {"connected": True})
        else:
            text = f"{self.name}: not connected to {self.target} since {iso(since)}" + (f" ({reason})" if reason else "")
            log.warning(text)
            self._event(text, "WARNING", {"connected": False, "reason": reason})

    def error(self, text: str, *, level: str = "WARNING", exc_info: bool = False) -> None:
        """Something went wrong in one iteration: logged always, an event at most once a minute per text."""
        now = self.clock()
        with self._lock:
            self.last_error, self.last_error_at = text, now
            self.errors += 1
            key = re.sub(r"\d+", "#", text)  # "... (after 5005ms ...)": the same error, other numbers
            last = self._recorded.get(key)
            record = last is None or now - last >= EVENT_REPEAT_SECONDS
            if record:
                self._recorded[key] = now
                if len(self._recorded) > 200:
                    self._recorded = {k: v for k, v in self._recorded.items() if now - v < EVENT_REPEAT_SECONDS}
        log.log(logging.ERROR if level == "ERROR" else logging.WARNING, "%s: %s", self.name, text, exc_info=exc_info)
        if record:
            self._event(f"{self.name}: {text}", level, {"error": text})

    def _event(self, message: str, level: str, data: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event("alert.intake", message, level, data)
        except Exception as e:  # the audit log failing must not stop the loop; the log line stays
            log.warning("%s: could not record an event (%s): %s", self.name, e, message)

    # -- what it says ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            return {
                "last_poll_at": self.last_beat,
                "last_poll_age_seconds": round(now - self.last_beat, 3) if self.last_beat else None,
                "iterations": self.iterations, "connected": self.connected,
                "connection_since": self.connection_since, "connection_reason": self.connection_reason,
                "errors": self.errors, "last_error": self.last_error, "last_error_at": self.last_error_at,
                "stall_after_seconds": self.stall_after,
            }

    def health(self, *, running: bool, alive: bool) -> dict[str, Any]:
        """{"ok", "stalled", "detail", ...}; `running`: started and not stopped; `alive`: its thread runs."""
        snap = self.snapshot()
        age = snap["last_poll_age_seconds"]
        if not running:
            ok, stalled, detail = False, False, f"{self.name} is not running"
        elif not alive:
            ok, stalled, detail = False, True, f"{self.name}: its thread has died"
        elif age is not None and age > self.stall_after:
            ok, stalled, detail = False, True, (f"{self.name}: stuck, no loop iteration for {age:.0f} s "
                                                f"(more than {self.stall_after:g} s)")
        elif self.target and not snap["connected"]:
            reason = snap["connection_reason"] or snap["last_error"]
            ok, stalled = False, False
            detail = (f"{self.name}: not connected to {self.target} since {iso(snap['connection_since'])}"
                      + (f" ({reason})" if reason else ""))
        else:
            ok, stalled = True, False
            detail = f"{self.name}: running" + (f", connected to {self.target}" if self.target else "") + \
                (f", last loop iteration {age:.1f} s ago" if age is not None else "")
        return {"ok": ok, "stalled": stalled, "detail": detail, **snap}

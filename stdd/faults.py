"""Fault points: named places where a test can make a real process fail on purpose.

Design note: the failure paths between components (a crash between two writes, a loop that
raises or hangs) are tested on the real daemon, not on mocks. A test starts the daemon with
`STDD_FAULTS="name=action,..."` in its environment; `fault_point(name)` then does the action
when the code passes that point. Actions:

- `exit`  — end the process at once with `os._exit(FAULT_EXIT_CODE)`: no cleanup, no flush, as a
  power cut or SIGKILL would (what is committed to SQLite stays, nothing else);
- `raise` — raise `FaultInjected` (an ordinary exception the code must survive);
- `hang`  — block the calling thread for good (a stuck call); `hang:SECONDS` blocks that long;
- `once:ACTION` — do ACTION the first time only (per process).

Unset (every production run), a fault point is one dictionary lookup. The names in use are
listed in `docs/faults.md`.
"""
from __future__ import annotations

import os
import threading
import time

FAULT_EXIT_CODE = 86
ENV = "STDD_FAULTS"


class FaultInjected(RuntimeError):
    """Raised at a fault point set to `raise`."""


def _parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, action = part.partition("=")
        out[name.strip()] = (action or "exit").strip()
    return out


_points = _parse(os.environ.get(ENV, ""))
_fired: set[str] = set()
_lock = threading.Lock()


def reload_from_env() -> None:
    """Read `STDD_FAULTS` again (tests that set it in-process)."""
    global _points
    with _lock:
        _points = _parse(os.environ.get(ENV, ""))
        _fired.clear()


def armed(name: str) -> bool:
    return name in _points


def fault_point(name: str) -> None:
    """Do what `STDD_FAULTS` asks at this point, if anything."""
    action = _points.get(name)
    if action is None:
        return
    if action.startswith("once:"):
        with _lock:
            if name in _fired:
                return
            _fired.add(name)
        action = action[5:]
    if action == "exit":
        os._exit(FAULT_EXIT_CODE)
    if action == "raise":
        raise FaultInjected(f"fault injected at {name}")
    if action.startswith("hang"):
        _, _, secs = action.partition(":")
        if secs:
            time.sleep(float(secs))
            return
        threading.Event().wait()
    raise ValueError(f"{ENV}: unknown action {action!r} at {name}")

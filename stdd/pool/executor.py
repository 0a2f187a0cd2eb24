"""The executor interface: what the daemon needs from whatever runs frame jobs.

Design note: the daemon owns the queue and the database; an executor only runs jobs and
reports what happened as `PoolEvent`s, which the daemon records. So an executor never touches
SQLite, and another engine (Dask) can replace the local pool by implementing these few calls:

    start() · free_slots() · submit(job) · cancel(frame_id) · poll(timeout) → [events]
    · status() · configure(...) · shutdown(grace)

Every submitted job ends with exactly one terminal event: `finished` (the chain ran; its
status is done or failed) or `lost` (the job did not complete: died, timeout, cancelled,
interrupted by shutdown, error outside the stages). Before that, `stage_start` / `stage_end`
events describe the stages as they run.
"""
from __future__ import annotations

import abc
import queue
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventKind = Literal["stage_start", "stage_end", "finished", "lost"]
LostReason = Literal["died", "timeout", "cancelled", "interrupted", "error"]


@dataclass
class FrameJob:
    """Everything a worker needs to run one frame's chain; plain data (JSON-able)."""

    frame_id: int
    attempt: int
    sha256: str
    source: str              # the spool copy (exact bytes of this frame version)
    origin: str              # the original path in the incoming folder (last resort, verified by sha256)
    work_dir: str
    result_dir: str
    steps: list[str] | None = None
    fresh: bool = True        # start from a clean work folder
    stage_settings: dict[str, Any] = field(default_factory=dict)
    stage_functions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # added to result.json
    priority: int = 0         # the frame's queue priority (the Dask executor passes it on to Dask)
    threads: int = 0          # threads the frame may keep busy (run_chain); 0 = not limited

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PoolEvent:
    kind: EventKind
    frame_id: int
    attempt: int
    time: float = field(default_factory=time.time)
    stage: str | None = None
    pid: int | None = None
    state: str | None = None   # stage_end: done|failed|skipped; finished: done|failed; lost: a LostReason
    error: str | None = None
    seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Executor(abc.ABC):
    name = "executor"

    # Executors that queue their events (both do) set `_events` (a queue.Queue of PoolEvent),
    # `_lock` and `_unpolled` (jobs ended whose terminal event is not yet handed out by poll(),
    # or, with `hold_ends`, not yet confirmed by end_recorded(): their slots stay busy, so the
    # caller sees a death, and may pause, before a slot refills).
    hold_ends = False  # the caller confirms each terminal event with end_recorded()

    def end_recorded(self) -> None:
        """With `hold_ends`: the caller has recorded one terminal event; its slot is free."""
        with self._lock:
            self._unpolled = max(0, self._unpolled - 1)

    def _poll_queue(self, timeout: float) -> list[PoolEvent]:
        out: list[PoolEvent] = []
        try:
            out.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        ended = sum(e.kind in ("finished", "lost") for e in out)
        if ended and not self.hold_ends:
            with self._lock:
                self._unpolled = max(0, self._unpolled - ended)
        return out

    @abc.abstractmethod
    def start(self) -> None: ...

    def prepare(self) -> None:
        """A frame is on its way (a file appeared): get ready to start it fast. Optional."""

    @abc.abstractmethod
    def free_slots(self) -> int:
        """How many more jobs it takes now."""

    @abc.abstractmethod
    def submit(self, job: FrameJob) -> None:
        """Start a job (non-blocking). Raises RuntimeError when full or stopped."""

    @abc.abstractmethod
    def cancel(self, frame_id: int, reason: str = "cancelled by request") -> bool:
        """Kill a running job; its `lost`/cancelled event follows. False if not running here."""

    @abc.abstractmethod
    def poll(self, timeout: float = 0.0) -> list[PoolEvent]:
        """Events since the last poll, waiting up to `timeout` seconds for the first one."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """{'executor', 'workers', 'running': [{frame_id, attempt, pid, stage, seconds}], ...}"""

    @abc.abstractmethod
    def running_ids(self) -> list[int]: ...

    @abc.abstractmethod
    def configure(self, **settings: Any) -> None:
        """Apply new settings (workers, timeouts) to jobs started from now on."""

    @abc.abstractmethod
    def shutdown(self, grace: float) -> None:
        """Stop: running chains stop after their current stage; whatever still runs after
        `grace` seconds is killed. Blocks until every job has its terminal event."""

    @property
    def alive(self) -> bool:
        return True

"""Supervised loops: every long-running loop of the daemon, kept alive and watched.

Design note: a daemon left alone for weeks must not die quietly in one of its loops. Each loop
(intake, dispatch, event pump, scheduler, a service's consumer) is written as one *iteration*,
a coroutine the supervisor calls again and again. The supervisor:

- records a heartbeat before every iteration (`beat`), so a loop that stops iterating — stuck
  in an await that never ends — is seen as *stalled* once its last beat is older than its
  `stall_seconds`;
- catches what an iteration raises, logs it, records it (an `on_error` callback: the daemon
  writes a `daemon.loop_error` event when the database lets it), and waits with an
  exponential backoff (capped) before the next iteration; one success resets the backoff;
- restarts the loop's task if it ends for any other reason than a stop.

`snapshot()` and `stalled()` read plain attributes under a lock, so `/health` (from a thread)
and the systemd watchdog job may call them at any time without touching the event loop. A
loop may also beat from inside a long iteration (e.g. while it retries a database write),
which tells the supervisor it is alive, only waiting.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger("stdd.supervise")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


@dataclass
class LoopState:
    name: str
    stall_seconds: float
    last_beat: float = field(default_factory=time.monotonic)
    iterations: int = 0
    errors: int = 0
    consecutive: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock
    failing_since: float | None = None  # wall clock of the first of the current run of errors
    running: bool = False


class Supervisor:
    def __init__(self, on_error: Callable[[str, str, int], Awaitable[None] | None] | None = None):
        """`on_error(loop_name, error_text, consecutive_errors)` is awaited after a failed iteration."""
        self.on_error = on_error
        self._loops: dict[str, LoopState] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._iterate: dict[str, Callable[[], Awaitable[None]]] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._stopped: set[str] = set()

    # -- the loops ------------------------------------------------------------------------
    def start(self, name: str, iterate: Callable[[], Awaitable[None]], stall_seconds: float) -> None:
        """Run `iterate()` again and again, on the running event loop, until `stop()`."""
        with self._lock:
            self._loops[name] = LoopState(name, stall_seconds)
        self._stopped.discard(name)
        self._iterate[name] = iterate
        self._spawn(name)

    def _spawn(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(name), name=f"loop:{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t, n=name: self._ended(n, t))

    async def _run(self, name: str) -> None:
        state = self._loops[name]
        iterate = self._iterate[name]
        backoff = BACKOFF_FIRST
        state.running = True
        while not self._stopping and name not in self._stopped:
            self.beat(name)
            try:
                await iterate()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — any failure of one iteration is survived
                text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                with self._lock:
                    state.errors += 1
                    state.consecutive += 1
                    state.last_error = text
                    state.last_error_at = time.time()
                    if state.failing_since is None:
                        state.failing_since = state.last_error_at
                    run = state.consecutive
                log.error("loop %s: iteration failed (%s); again in %.1f s", name, text, backoff,
                          exc_info=run == 1 or log.isEnabledFor(logging.DEBUG))
                await self._report(name, text, run)
                await self._sleep_beating(name, backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            with self._lock:
                state.iterations += 1
                if state.failing_since is not None:
                    log.info("loop %s: working again", name)
                state.failing_since = None
                state.consecutive = 0
            backoff = BACKOFF_FIRST

    async def _sleep_beating(self, name: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            self.beat(name)
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))

    async def _report(self, name: str, text: str, run: int) -> None:
        if self.on_error is None:
            return
        try:
            out = self.on_error(name, text, run)
            if asyncio.iscoroutine(out):
                await out
        except Exception as e:  # noqa: BLE001 — recording the error must not kill the loop
            log.warning("loop %s: could not record its error: %s", name, e)

    def _ended(self, name: str, task: asyncio.Task) -> None:
        state = self._loops.get(name)
        if state is not None:
            state.running = False
        if self._stopping or name in self._stopped or task.cancelled():
            return
        exc = task.exception()
        with self._lock:
            state.restarts += 1
            state.last_error = f"loop ended: {type(exc).__name__}: {exc}" if exc else "loop ended"
            state.last_error_at = time.time()
        log.error("loop %s ended (%s); restarting it", name, state.last_error)
        try:
            self._spawn(name)
        except RuntimeError:  # the event loop is closing
            pass

    def beat(self, name: str) -> None:
        state = self._loops.get(name)
        if state is not None:
            state.last_beat = time.monotonic()

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the loops (all, or those named) and wait for them to end."""
        if names is None:
            self._stopping = True
        else:
            self._stopped.update(names)
        tasks = [t for n, t in self._tasks.items() if names is None or n in names]
        # a cancel can be lost (Python 3.11's wait_for swallows one that arrives as its inner
        # wait completes): the stop flags end the loop after its iteration, and the cancel is
        # repeated until every task has ended
        while tasks:
            for t in tasks:
                t.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)

    # -- what they look like (any thread) -------------------------------------------------
    def snapshot(self) -> dict[str, dict]:
        now = time.monotonic()
        out = {}
        with self._lock:
            for name, s in self._loops.items():
                age = now - s.last_beat
                out[name] = {
                    "running": s.running, "last_beat_age_seconds": round(age, 3),
                    "stall_seconds": s.stall_seconds, "stalled": age > s.stall_seconds,
                    "iterations": s.iterations, "errors": s.errors, "restarts": s.restarts,
                    "last_error": s.last_error, "last_error_at": s.last_error_at,
                    "failing_since": s.failing_since,
                }
        return out

    def stalled(self) -> list[str]:
        """Names of loops that have not beaten within their stall time (a hung loop)."""
        return [n for n, s in self.snapshot().items() if s["stalled"]]

    def failing(self) -> list[str]:
        return [n for n, s in self.snapshot().items() if s["failing_since"] is not None]

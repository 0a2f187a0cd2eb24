"""A blocking call made off the event loop on a thread of its own, awaited with a deadline.

Design note: /health must answer within a second whatever the database, the disk or the
daemon's own threads are doing, so what it asks that could block (a query on the state file,
the daemon's `health()`) runs on a fresh daemon thread, not in the loop's default executor nor
in the reader pool, either of which may be full or stuck. At most one such call per `OffLoop`
is in flight: a request that comes while one still runs waits for that same call (up to its
own deadline) instead of starting another, so a stuck disk costs one thread, not one per
request. A call that misses the deadline raises `Overdue`, which says since when it runs.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, Callable


class Overdue(Exception):
    """The call did not end within the deadline; `started` is its wall-clock start time."""

    def __init__(self, what: str, timeout: float, started: float):
        self.what = what
        self.timeout = timeout
        self.started = started
        self.running_seconds = max(0.0, time.time() - started)
        super().__init__(f"{what} did not answer within {timeout:g} s "
                         f"(running for {self.running_seconds:.1f} s)")


class OffLoop:
    def __init__(self, what: str):
        self.what = what
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future | None = None
        self._started = 0.0

    @property
    def busy(self) -> bool:
        """A call is still running (it may be stuck)."""
        with self._lock:
            return self._future is not None and not self._future.done()

    async def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """`fn()` on a thread of its own (or the call still in flight), awaited at most `timeout`
        seconds. Raises what `fn` raised, or `Overdue`."""
        with self._lock:
            if self._future is None or self._future.done():
                future: concurrent.futures.Future = concurrent.futures.Future()
                self._future, self._started = future, time.time()
                threading.Thread(target=_run, args=(fn, future), name=f"stdd-http-{self.what}",
                                 daemon=True).start()
            future, started = self._future, self._started
        waited = asyncio.wrap_future(future)
        waited.add_done_callback(_retrieve)  # an error after the deadline is nobody's to log
        try:
            return await asyncio.wait_for(asyncio.shield(waited), timeout)
        except asyncio.TimeoutError:
            raise Overdue(self.what, timeout, started) from None


def _run(fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except BaseException as e:  # noqa: BLE001 — handed to whoever awaits it
        future.set_exception(e)
    else:
        future.set_result(result)


def _retrieve(f: asyncio.Future) -> None:
    if not f.cancelled():
        f.exception()

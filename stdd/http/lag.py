"""Event-loop lag: how late the loop runs a callback it was asked to run on time.

Design note: a periodic task sleeps `interval` seconds and records how much later than asked
it woke up. Anything that blocks the loop (a slow query or file read done in the loop instead of
a thread) shows up as lag. Samples are kept for `window` seconds so "the worst lag in the last
minute" and "the worst since time t" are cheap; the worst since start is kept too. The
endpoint exports them as metrics and the load check reads them.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time


class LagMonitor:
    def __init__(self, interval: float = 0.05, window: float = 600.0):
        self.interval = interval
        self.window = window
        self.samples: collections.deque[tuple[float, float]] = collections.deque()
        self.last = 0.0
        self.max_total = 0.0
        self.count = 0
        self._task: asyncio.Task | None = None
        self._observers: list = []

    def observe(self, callback) -> None:
        """Call `callback(lag_seconds)` on every sample (the metrics histogram uses this)."""
        self._observers.append(callback)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stdd-lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval)
            self.record(max(0.0, loop.time() - t0 - self.interval))

    def record(self, lag: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.last = lag
        self.count += 1
        self.max_total = max(self.max_total, lag)
        self.samples.append((now, lag))
        cutoff = now - self.window
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
        for cb in self._observers:
            cb(lag)

    def max_since(self, since: float) -> float:
        """The worst lag sampled at or after wall time `since` (within the kept window)."""
        return max((lag for t, lag in self.samples if t >= since), default=0.0)

    def max_recent(self, seconds: float = 60.0) -> float:
        return self.max_since(time.time() - seconds)

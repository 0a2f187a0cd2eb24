"""The supervisor on a real event loop: an iteration that raises is retried with backoff, a loop
whose task dies is restarted, a loop that stops iterating is reported stalled."""
from __future__ import annotations

import asyncio

from stdd.daemon import supervise
from stdd.daemon.supervise import Supervisor


async def test_errors_are_survived_recorded_and_a_dead_loop_restarted(monkeypatch):
    monkeypatch.setattr(supervise, "BACKOFF_FIRST", 0.01)
    reported = []
    sup = Supervisor(on_error=lambda name, text, run: reported.append((name, text, run)))
    calls = {"n": 0}

    async def flaky():
        calls["n"] += 1
        await asyncio.sleep(0.001)
        if calls["n"] in (2, 3):
            raise OSError("disk full")

    sup.start("flaky", flaky, stall_seconds=5)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if calls["n"] > 6:
            break
    snap = sup.snapshot()["flaky"]
    assert calls["n"] > 6 and snap["errors"] == 2 and snap["failing_since"] is None
    assert reported == [("flaky", "OSError: disk full", 1), ("flaky", "OSError: disk full", 2)]

    # a task that ends for another reason (a BaseException that is not a cancel) is restarted
    class Boom(BaseException):
        pass

    state = {"boomed": False, "after": 0}

    async def dies_once():
        await asyncio.sleep(0.001)
        if not state["boomed"]:
            state["boomed"] = True
            raise Boom()
        state["after"] += 1

    sup.start("dies", dies_once, stall_seconds=5)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if state["after"] > 3:
            break
    assert state["after"] > 3 and sup.snapshot()["dies"]["restarts"] == 1
    await sup.stop()


async def test_a_loop_stuck_in_an_await_is_stalled():
    sup = Supervisor()
    never = asyncio.Event()

    async def stuck():
        await never.wait()

    sup.start("stuck", stuck, stall_seconds=0.2)
    await asyncio.sleep(0.05)
    assert sup.stalled() == []
    await asyncio.sleep(0.3)
    assert sup.stalled() == ["stuck"] and sup.snapshot()["stuck"]["stalled"]
    await sup.stop()


async def test_a_stop_ends_a_loop_even_when_its_cancel_is_lost():
    """A loop whose iteration swallows a cancel (as Python 3.11's wait_for can) still stops."""
    sup = Supervisor()
    ticks = {"n": 0}

    async def swallows():
        ticks["n"] += 1
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # the cancel is lost here

    sup.start("stubborn", swallows, stall_seconds=5)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(sup.stop(["stubborn"]), 5)
    n = ticks["n"]
    await asyncio.sleep(0.2)
    assert ticks["n"] == n and not sup.snapshot()["stubborn"]["running"]

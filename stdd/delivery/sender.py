"""The daemon's delivery service: sends the outbox, retries, records, and watches for trouble.

Design note: a `Service` of the daemon with two supervised loops. `delivery` takes the due
items (database gate), sends each in a thread (network I/O never on the event loop, never on
the database thread), and records the outcome with `write_until_done` (a finished attempt is
never forgotten: an item sent but not recorded would be sent again, which the idempotency keys
make harmless). A failed attempt is retried after `backoff_seconds`, doubling up to
`backoff_max_seconds`; after `max_attempts` it is `failed` (kept; `stdd delivery retry`).
`delivery-trouble` turns the daemon's health (stalled or failing loops, database problems such
as a full disk, a crash-loop pause) into `daemon_trouble` notifications, once per problem; when
the database cannot take the notification (disk full), it is sent directly instead.

The service also registers `on_frame_done` with the daemon: run inside the transaction that
records a frame as done, it writes the frame's deliveries (stdd/delivery/enqueue.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..faults import fault_point
from ..store import Outbox
from . import channels as notify_mod
from .common import DeliveryError, Outcome
from .enqueue import enqueue_frame, notify

if TYPE_CHECKING:
    from ..daemon.service import Daemon

log = logging.getLogger("stdd.delivery")

#: seconds between two prunings of old sent items (`keep_days`)
PRUNE_EVERY = 3600.0


def backoff(settings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones."""
    d = settings.delivery
    return min(d.backoff_max_seconds, d.backoff_seconds * 2 ** max(0, attempts - 1))


def send_item(settings, item: dict) -> Outcome:
    """One attempt at one SkyPortal or TOM item (blocking: run it in a thread)."""
    import requests

    target, kind, payload = item["target"], item["kind"], item["payload"]
    try:
        if target == "skyportal":
            from .skyportal import SkyPortalClient

            response = SkyPortalClient(settings.delivery.skyportal).send(kind, payload)
        elif target == "tom":
            from .tom import TomClient

            response = TomClient(settings.delivery.tom).send(kind, payload, item["key"])
        else:
            return Outcome(False, retryable=False, error=f"unknown delivery target {target!r}")
    except DeliveryError as e:
        return Outcome(False, retryable=e.retryable, http_status=e.http_status, error=str(e))
    except requests.RequestException as e:  # refused, reset, timed out: the receiver is down
        return Outcome(False, retryable=True, error=f"{type(e).__name__}: {e}")
    return Outcome(True, response=response)


def send_message(settings, target: str, items: list[dict]) -> Outcome:
    """One notification message (one item or a summary of several) to channel `target`."""
    name = target.split(":", 1)[1]
    channel = settings.delivery.notify.get(name)
    if channel is None:
        return Outcome(False, retryable=False, error=f"channel {name!r} is no longer configured")
    title, body = notify_mod.summary(items)
    try:
        notify_mod.send(name, channel.urls, title, body)
    except DeliveryError as e:
        return Outcome(False, retryable=e.retryable, error=str(e))
    except Exception as e:  # noqa: BLE001 — a plugin's failure is this attempt's failure
        return Outcome(False, retryable=True, error=f"{type(e).__name__}: {e}")
    return Outcome(True, response={"summarised": len(items)} if len(items) > 1 else None,
                   held=[it["id"] for it in items[1:]])


class DeliveryService:
    name = "delivery"

    def __init__(self):
        self.d: "Daemon | None" = None
        self.outbox: Outbox | None = None
        self._counts: dict[str, int] = {}
        self._last_error: str | None = None
        self._trouble: set[str] = set()
        self._direct_sent: dict[str, float] = {}
        self.sent = 0
        self._pruned_at = -PRUNE_EVERY

    # -- life cycle ----------------------------------------------------------------------
    def attach(self, daemon: "Daemon") -> None:
        """Called by the daemon once its database is open, before any frame can end."""
        self.d = daemon
        self.outbox = Outbox(daemon.db)
        if self.on_frame_done not in daemon.finish_hooks:
            daemon.finish_hooks.append(self.on_frame_done)

    async def start(self, daemon: "Daemon") -> None:
        self.attach(daemon)
        stall = max(daemon.settings.daemon.loop_stall_seconds, 3 * self._settings().delivery.poll_seconds)
        daemon.supervisor.start("delivery", self.iteration, stall)
        daemon.supervisor.start("delivery-trouble", self.trouble_iteration,
                                max(stall, 3 * self._settings().delivery.trouble_check_seconds))

    async def stop(self) -> None:
        if self.d is None:
            return
        # the finish hook stays: frames that end during the shutdown grace still queue their
        # deliveries (sent at the next start)
        await self.d.supervisor.stop(["delivery", "delivery-trouble"])

    def _settings(self):
        return self.d.settings

    def health(self) -> dict:
        c = self._counts
        detail = f"{c.get('pending', 0)} pending, {c.get('failed', 0)} failed, {self.sent} sent since start"
        if self._last_error:
            detail += f"; last error: {self._last_error}"
        return {"ok": True, "detail": detail, "counts": dict(c)}

    # -- the frame-done hook (database thread, inside the frame's end transaction) -----------
    def on_frame_done(self, frame: dict, result: dict) -> None:
        settings = self._settings()
        if settings.delivery.skyportal.url or settings.delivery.tom.url:
            enqueue_frame(self.outbox, settings, frame, result)

    # -- the sending loop ------------------------------------------------------------------
    async def iteration(self) -> None:
        d, settings = self.d, self._settings()
        due = await d.gate.run(self.outbox.due)
        if due:
            await self._send(due, settings)
        self._counts = await d.gate.run(self.outbox.counts)
        keep = settings.delivery.keep_days
        if keep > 0 and time.monotonic() - self._pruned_at > PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            n = await d.gate.run(self.outbox.prune, time.time() - keep * 86400.0)
            if n:
                log.info("outbox: %d sent item(s) older than %g days deleted", n, keep)
        if not due:
            await self._wait(settings.delivery.poll_seconds)

    async def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.d.supervisor.beat("delivery")
            await asyncio.sleep(min(1.0, end - time.monotonic()))

    async def _send(self, due: list[dict], settings) -> None:
        channels: dict[str, list[dict]] = {}
        down: dict[str, tuple[float, str]] = {}  # target → (when its failed item is tried again, why)
        for item in due:
            target = item["target"]
            if target.startswith("notify:"):
                channels.setdefault(target, []).append(item)
                continue
            if target in down:
                # the receiver just failed: its other items wait with it, no attempt counted
                # (a host that times out must not hold the loop for every item in turn)
                await self.d.gate.write_until_done(f"{target} postpone", self.outbox.postpone, [item["id"]],
                                                   down[target][0], f"waiting: {down[target][1]}", beat=self._beat)
                continue
            outcome = await self._in_thread(send_item, settings, item)
            next_try = await self._record(item, outcome, settings)
            if not outcome.ok and outcome.retryable and next_try is not None:
                down[target] = (next_try, f"{target} failed on item {item['id']}: {outcome.error}")
        for target, items in channels.items():
            await self._send_channel(target, items, settings)

    async def _in_thread(self, fn, *args):
        """`fn(*args)` in a worker thread, beating while it runs (a slow receiver is waiting, not a hang)."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            self._beat()
            if done:
                return task.result()

    async def _send_channel(self, target: str, items: list[dict], settings) -> None:
        gate = self.d.gate
        channel = settings.delivery.notify.get(target.split(":", 1)[1])
        if channel is None:
            for it in items:
                await self._record(it, Outcome(False, retryable=False, error="channel no longer configured"), settings)
            return
        window = channel.window_minutes * 60
        since = time.time() - window
        sent = await gate.run(self.outbox.sent_since, target, since)
        messages = notify_mod.plan(items, sent, channel.max_per_window)
        if not messages:
            oldest = await gate.run(self.outbox.oldest_sent_since, target, since)
            later = (oldest or time.time()) + window + 0.5
            log.info("channel %s: rate limit reached; %d notification(s) wait until %s", target, len(items),
                     time.strftime("%H:%M:%S", time.localtime(later)))
            await gate.write_until_done(f"{target} postpone", self.outbox.postpone, [it["id"] for it in items],
                                        later, beat=self._beat)
            return
        for group in messages:
            outcome = await self._in_thread(send_message, settings, target, group)
            await self._record(group[0], outcome, settings)

    async def _record(self, item: dict, outcome: Outcome, settings) -> float | None:
        """Record one attempt's outcome; returns when the item is tried again (None: not)."""
        if outcome.ok:
            fault_point("delivery.sent")  # sent, not yet recorded: the next start sends it again
        attempts = (item.get("attempts") or 0) + 1
        if outcome.ok:
            result, next_try = "sent", None
            self.sent += 1 + len(outcome.held)
            log.info("delivery %d: %s to %s sent", item["id"], item["kind"], item["target"])
        elif outcome.retryable and attempts < settings.delivery.max_attempts:
            result, next_try = "retry", time.time() + backoff(settings, attempts)
            self._last_error = outcome.error
            log.warning("delivery %d: %s to %s failed (%s); retry %d in %.0f s", item["id"], item["kind"],
                        item["target"], outcome.error, attempts + 1, next_try - time.time())
        else:
            result, next_try = "failed", None
            self._last_error = outcome.error
            log.error("delivery %d: %s to %s gave up: %s", item["id"], item["kind"], item["target"], outcome.error)
        await self.d.gate.write_until_done(
            f"delivery {item['id']} outcome", self.outbox.record, item["id"], result,
            http_status=outcome.http_status, error=outcome.error, response=outcome.response, next_try=next_try,
            held_ids=outcome.held if outcome.ok else (), beat=self._beat)
        return next_try

    def _beat(self) -> None:
        self.d.supervisor.beat("delivery")

    # -- daemon trouble --------------------------------------------------------------------
    def problems(self) -> dict[str, str]:
        """What is wrong with the daemon now, by check name (in-memory reads only)."""
        d = self.d
        out = {}
        for name, check in d.health().items():
            if name == f"service:{self.name}" or check.get("ok", True):
                continue
            out[name] = str(check.get("detail") or check.get("problem") or "not ok")
        if d.state == "paused" and (d.paused_reason or "").startswith("crash loop"):
            out["crash_loop"] = d.paused_reason
        return out

    async def trouble_iteration(self) -> None:
        settings = self._settings()
        await asyncio.sleep(min(settings.delivery.trouble_check_seconds, 1.0))
        now_problems = self.problems()
        for name in list(self._trouble):
            if name not in now_problems:
                self._trouble.discard(name)
                log.info("daemon trouble over: %s", name)
        new = {n: detail for n, detail in now_problems.items() if n not in self._trouble}
        db_problem = self.d.gate.problem()
        if new and db_problem is not None:
            # the database is in trouble (full, locked, read-only): the outbox may take the row
            # but its sender could not record the outcome; tell directly, all in one message
            log.error("daemon trouble (%s) while the database has a problem (%s); notifying directly",
                      ", ".join(new), db_problem)
            title = "stdd trouble: " + ", ".join(new)
            body = "\n".join(f"{n}: {detail}" for n, detail in new.items()) + f"\n(daemon state: {self.d.state})"
            if await asyncio.to_thread(self._notify_directly, settings, title, body):
                self._trouble.update(new)  # else: told at a later check, when the limit allows
        else:
            for name, detail in new.items():
                title = f"stdd trouble: {name}"
                body = f"{detail}\n(daemon state: {self.d.state})"
                try:
                    await self.d.gate.run(self._enqueue_trouble, title, body, f"trouble:{name}:{int(time.time())}",
                                          name)
                except Exception as e:  # noqa: BLE001 — the database is the trouble: tell directly
                    log.error("daemon trouble %s not queued (%s); notifying directly", name, e)
                    if not await asyncio.to_thread(self._notify_directly, settings, title, body):
                        continue
                self._trouble.add(name)
        await asyncio.sleep(max(0.0, settings.delivery.trouble_check_seconds - 1.0))

    def _enqueue_trouble(self, title: str, body: str, key: str, name: str) -> None:
        with self.outbox.db.write():
            notify(self.outbox, self._settings(), "daemon_trouble", title, body, key, data={"check": name})

    def _notify_directly(self, settings, title: str, body: str) -> bool:
        """Send without the outbox (the database cannot be relied on); True when every listening
        channel took it. Rate limit in memory: one message per channel per window ÷ max_per_window."""
        told = True
        for name, channel in settings.delivery.notify.items():
            if "daemon_trouble" not in channel.events or not channel.urls:
                continue
            last = self._direct_sent.get(name)
            if last is not None and time.time() - last < channel.window_minutes * 60 / channel.max_per_window:
                told = False
                continue
            try:
                notify_mod.send(name, channel.urls, title, body)
                self._direct_sent[name] = time.time()
            except Exception as e:  # noqa: BLE001
                told = False
                log.error("channel %s: direct notification failed: %s", name, e)
        return told

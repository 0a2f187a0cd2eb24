"""Notifications through Apprise (e-mail, Slack, Matrix, ... — any Apprise URL), with rate limits.

Rate limit, per channel: at most `max_per_window` messages per `window_minutes`. When the window
is full, due notifications wait until it has room; when more are due than it has room for, they
go out as ONE summary message (the first item carries it, the others are marked `held` with a
pointer to it). Nothing is dropped: a message the channel refused is retried like any item.

URLs may hold `${ENV}` references, expanded at send time, so passwords and webhook tokens stay
out of the config file; URLs are never logged (they carry secrets), only the channel's name.
"""
from __future__ import annotations

import os

from .common import DeliveryError


def expand(url: str) -> str:
    return os.path.expandvars(url)


def send(name: str, urls: list[str], title: str, body: str) -> None:
    """One message to every URL of channel `name`; DeliveryError when any refused it."""
    import apprise

    ap = apprise.Apprise()
    for i, url in enumerate(urls):
        if not ap.add(expand(url)):
            raise DeliveryError(f"channel {name}: URL #{i + 1} is not a valid Apprise URL", retryable=False)
    if not ap.notify(title=title, body=body):
        raise DeliveryError(f"channel {name}: Apprise could not deliver the message")


def summary(items: list[dict]) -> tuple[str, str]:
    """One message standing for several notifications (the rate limit's excess)."""
    if len(items) == 1:
        p = items[0]["payload"]
        return p.get("title", "stdd"), p.get("body", "")
    title = f"stdd: {len(items)} notifications (rate limit: summarised)"
    parts = []
    for it in items:
        p = it["payload"]
        parts.append(f"* {p.get('title', it['kind'])}\n{p.get('body', '')}".rstrip())
    return title, "\n\n".join(parts)


def plan(items: list[dict], sent_in_window: int, max_per_window: int) -> list[list[dict]]:
    """How the due items of one channel go out now: a list of messages, each a list of items
    (one item, or several summarised into one). Empty when the window is full."""
    room = max_per_window - sent_in_window
    if room <= 0 or not items:
        return []
    if len(items) <= room:
        return [[it] for it in items]
    # the room minus one as they are, the rest summarised into the last message
    return [[it] for it in items[:room - 1]] + [items[room - 1:]]

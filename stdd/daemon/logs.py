"""Logging: one line per event, with the frame id, readable in journald and on a terminal.

Under systemd ($JOURNAL_STREAM set) lines carry a `<N>` syslog-priority prefix, which journald
turns into the entry's priority (so `journalctl -p warning` works), and no timestamp (journald
adds its own). On a terminal or in a file, lines start with an ISO time and the level.
Messages that concern a frame are written `frame=<id> ...` so `journalctl | grep frame=12`
follows one frame.
"""
from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str = "INFO", stream=None) -> logging.Handler:
    """Configure the `stdd` logger (idempotent: replaces the handler it installed before)."""
    logger = logging.getLogger("stdd")
    for h in list(logger.handlers):
        if getattr(h, "_stdd", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._stdd = True  # type: ignore[attr-defined]
    if under_journald():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler

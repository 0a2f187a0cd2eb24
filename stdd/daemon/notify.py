"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A datagram to the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract namespace). Written
here because it is a dozen lines; with no $NOTIFY_SOCKET (not run by systemd) every call is a
no-op. The watchdog interval comes from $WATCHDOG_USEC (only if $WATCHDOG_PID is unset or ours).
"""
from __future__ import annotations

import os
import socket

#: how long a state change (READY, RELOADING, STOPPING) may wait for room in systemd's queue
STATE_WAIT = 1.0


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET") or None
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]
        self.address = addr
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_seconds: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *, wait: float = 0.0, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") — returns False if not under systemd or sending failed.
        A watchdog ping or a status line never blocks (a reader that does not keep up loses it;
        the next one follows); a state change (READY, RELOADING, STOPPING) waits up to `wait`
        seconds for room in the reader's queue."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(wait if wait > 0 else 0.0)
            self._sock.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status, MAINPID=os.getpid(), wait=STATE_WAIT)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        import time

        return self.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6), wait=STATE_WAIT)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status, wait=STATE_WAIT)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

A datagram to the AF_UNIX socket named by $NOTIFY_SOCKET ('@' = abstract namespace). Written
here because it is a dozen lines; with no $NOTIFY_SOCKET (not run by systemd) every call is a
no-op. The watchdog interval comes from $WATCHDOG_USEC (only if $WATCHDOG_PID is unset or ours).
"""
from __future__ import annotations

import os
import socket


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

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") — returns False if not under systemd or sending failed."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # never block the event loop on a reader that does not keep up (a full queue
                # drops this message; the next ping or status follows)
                self._sock.setblocking(False)
            self._sock.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        import time

        return self.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6))

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

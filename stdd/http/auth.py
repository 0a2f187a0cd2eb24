"""The bearer token that guards the endpoint's writes.

Design note: one shared secret, not users. The token comes from the environment variable named
by `http.token_env` when that is set and non-empty; otherwise from `http.token_file`, which is
created at the daemon's first start (O_EXCL, mode 0600, 32 random bytes as URL-safe text) and
read by the CLI client. Every POST needs `Authorization: Bearer <token>`; GETs are open to
loopback peers (and the unix socket) while `http.open_reads` is true, and need the token
otherwise. Tokens are compared in constant time.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path

from ..config.settings import HttpSettings

log = logging.getLogger(__name__)


class TokenError(Exception):
    """No usable token: the message says where it was looked for and what was wrong."""


def token_from_env(http: HttpSettings) -> str | None:
    value = os.environ.get(http.token_env, "").strip() if http.token_env else ""
    return value or None


def read_token(http: HttpSettings) -> str:
    """The token for a client: the environment variable, else the token file (never created here)."""
    env = token_from_env(http)
    if env:
        return env
    path = Path(http.token_file)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"no token: ${http.token_env} is not set and {path} does not exist "
                         "(the daemon creates it at its first start)") from None
    except OSError as e:
        raise TokenError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not text:
        raise TokenError(f"the token file {path} is empty")
    return text


def ensure_token(http: HttpSettings) -> str:
    """The daemon's token: the environment variable, else the token file, made now if missing."""
    env = token_from_env(http)
    if env:
        return env
    path = Path(http.token_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("token file %s had mode %o; tightened to 600", path, mode)
            os.chmod(path, 0o600)
        return read_token(http)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)  # whatever the umask was
    log.info("made a new HTTP token in %s (mode 600)", path)
    return token


def bearer(header: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_loopback(peer: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and a unix-socket peer (which has no address)."""
    if peer is None or peer == "":
        return True
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback

"""What every sender shares: the outcome of one attempt, secrets, HTTP error classes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    """One attempt: sent, or not (`retryable`: try again later; else give up at once)."""

    ok: bool
    retryable: bool = True
    http_status: int | None = None
    error: str | None = None
    response: Any = None
    held: list[int] = field(default_factory=list)


class DeliveryError(Exception):
    def __init__(self, message: str, *, http_status: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.http_status = http_status
        self.retryable = retryable


def secret(file: Path | None, env: str | None) -> str | None:
    """A token or password from its file (first line) or else its environment variable."""
    if file is not None:
        try:
            return Path(file).read_text().strip() or None
        except OSError as e:
            raise DeliveryError(f"cannot read secret file {file}: {e.strerror}") from None
    if env:
        return os.environ.get(env) or None
    return None


def retryable_status(status: int) -> bool:
    """HTTP statuses worth another try: the receiver is down, busy or rate-limiting us."""
    return status in (408, 425, 429) or status >= 500


def check(resp, what: str):
    """The JSON of a successful response; else a DeliveryError saying whether to retry."""
    if resp.status_code >= 400:
        text = resp.text[:300].replace("\n", " ")
        raise DeliveryError(f"{what}: HTTP {resp.status_code}: {text}", http_status=resp.status_code,
                            retryable=retryable_status(resp.status_code))
    try:
        return resp.json()
    except ValueError:
        return {"text": resp.text[:300]}

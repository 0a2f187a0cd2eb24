"""Where reference data comes from: catalogues (catalogs.py) and templates (templates.py), cached on disk.

Every source either returns data or raises `SourceError` naming itself and what went wrong; with
`offline = true` an online source raises `OfflineError` before any network call is attempted. The
stages turn these into recorded outcomes (a failed stage or a note) — never a silent skip.
"""
from __future__ import annotations


class SourceError(Exception):
    """A catalogue or template source could not deliver. `source` names it (e.g. "vizier:ps1")."""

    def __init__(self, source: str, message: str):
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


class OfflineError(SourceError):
    """An online source was asked for while `offline = true`; no network call was made."""

    def __init__(self, source: str):
        super().__init__(source, "offline = true, so this online source was not contacted")


__all__ = ["SourceError", "OfflineError"]

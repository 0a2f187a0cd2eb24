"""The daemon's plug-in points: alert regions, and services started and stopped with it.

Design note: the daemon knows nothing of the sky. Which frames matter more (they cover a live
alert's region) and which regions the stages should look at are answered by a
`RegionProvider`, which the alerts subsystem implements (its `live_regions()` and overlap
tests). Until one is plugged in, `NoRegions` answers "none". A `Service` is anything that
runs beside the daemon in its event loop (the HTTP endpoint, the GCN consumer): started after
the daemon is ready, stopped before it closes the database. A service may also have
`attach(daemon)`, called once the database is open and before any loop starts (to register a
`Daemon.finish_hooks` entry that must see every frame's end).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..stages.base import Region

if TYPE_CHECKING:
    from .service import Daemon


@runtime_checkable
class RegionProvider(Protocol):
    def live_regions(self) -> list[Region]:
        """Regions handed to every frame's stages (e.g. live alerts' error circles)."""

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        """Priority of the frame in file `path` (called in a thread at intake, and again by
        `Daemon.reprioritize()`), and the ids of the alerts whose regions it covers."""


class NoRegions:
    def live_regions(self) -> list[Region]:
        return []

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        return 0, []


@runtime_checkable
class Service(Protocol):
    name: str

    async def start(self, daemon: "Daemon") -> None: ...

    async def stop(self) -> None: ...

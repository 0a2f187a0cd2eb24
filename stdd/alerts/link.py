"""The alerts side of the daemon: intakes started with it, and the sky regions it steers by.

Design note: the daemon knows nothing of the sky, so this module plugs the alerts into its two
hooks (`stdd.daemon.hooks`): as a `Service` it starts the Kafka consumer and the drop-folder
intake with the daemon and stops them before the database closes; as a `RegionProvider` it
tells the daemon which frames cover a live alert (from the frame header's WCS footprint) and
hands the live regions to the stages, which flag candidates inside them and measure the
position of small error circles. When an alert becomes live, queued frames are re-prioritised
at once. The service has its own database connection: its intakes write from their threads.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from ..stages.base import Region
from ..store import Database
from .drop_folder import DropFolderIntake
from .intake import KafkaIntake
from .service import AlertService, IntakeMessage, Outcome

log = logging.getLogger("stdd.alerts")

EXPIRE_EVERY_SECONDS = 60.0


def frame_footprint(path: str | Path) -> dict | None:
    """{'corners': [[ra, dec] x4], 'ra', 'dec'} from a FITS file's celestial WCS, or None."""
    import warnings

    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2 and hdu.data is not None:
                        header = hdu.header
                        wcs = WCS(header, naxis=2)
                        if not wcs.has_celestial:
                            return None
                        corners = wcs.calc_footprint(axes=(header["NAXIS1"], header["NAXIS2"]))
                        if not np.all(np.isfinite(corners)):
                            return None
                        centre = wcs.all_pix2world([[header["NAXIS1"] / 2, header["NAXIS2"] / 2]], 0)[0]
                        return {"corners": corners.tolist(), "ra": float(centre[0]), "dec": float(centre[1])}
    except Exception as e:  # an unreadable header means "no footprint", the stages report the reason
        log.debug("no footprint for %s: %s", path, e)
    return None


class AlertLink:
    """A daemon `Service` and `RegionProvider` backed by an `AlertService`."""

    name = "alerts"

    def __init__(self, settings):
        self.settings = settings
        self.db: Database | None = None
        self.service: AlertService | None = None
        self.kafka: KafkaIntake | None = None
        self.drop: DropFolderIntake | None = None
        self._daemon = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expire_task: asyncio.Task | None = None
        self._regions_cache: tuple[float, list] = (0.0, [])

    # -- Service ------------------------------------------------------------------------
    async def start(self, daemon) -> None:
        self._daemon = daemon
        self._loop = asyncio.get_running_loop()
        cfg = self.settings.alerts
        self.db = await asyncio.to_thread(Database, self.settings.paths.database)
        self.service = AlertService(self.db, self.settings)
        await asyncio.to_thread(self.service.recover)
        self.drop = DropFolderIntake(self.settings, self._on_message)
        self.drop.start()
        if cfg.kafka.enabled:
            self.kafka = KafkaIntake(self.settings, self._on_message)
            self.kafka.start()
        self._expire_task = asyncio.create_task(self._expire_loop())
        log.info("alerts: drop folder %s%s", self.settings.paths.alert_drop,
                 f", Kafka topics {len(cfg.kafka.topics)}" if self.kafka else ", Kafka off")

    async def stop(self) -> None:
        if self._expire_task:
            self._expire_task.cancel()
        for intake in (self.kafka, self.drop):
            if intake is not None:
                await asyncio.to_thread(intake.stop)
        if self.service is not None:
            await asyncio.to_thread(self.service.close)
        if self.db is not None:
            self.db.close()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": True}
        if self.service is not None:
            out.update(self.service.status())
        if self.kafka is not None:
            out["kafka"] = self.kafka.status()
        if self.drop is not None:
            out["drop_folder"] = self.drop.status()
        return out

    def handle(self, raw: bytes, hint: str | None = None) -> Outcome:
        """A notice handed over directly (POST /alerts): handled like one from Kafka."""
        return self._on_message(IntakeMessage(value=raw, topic=f"http:{hint}" if hint else "http", hint=hint))

    # called on an intake thread
    def _on_message(self, msg: IntakeMessage) -> Outcome:
        outcome = self.service.handle(msg)
        self._regions_cache = (0.0, [])
        if outcome.decision is not None and outcome.decision.act and self._loop and self._daemon:
            # an alert became live (or was retracted): queued frames change priority now
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._daemon.reprioritize()))
        return outcome

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_SECONDS)
            try:
                if await asyncio.to_thread(self.service.expire):
                    self._regions_cache = (0.0, [])
            except Exception as e:
                log.error("alerts: expiring old alerts failed: %s", e)

    # -- RegionProvider -----------------------------------------------------------------
    def _live(self):
        stamp, regions = self._regions_cache
        if time.monotonic() - stamp > 5.0:
            regions = self.service.live_regions() if self.service else []
            self._regions_cache = (time.monotonic(), regions)
        return regions

    def live_regions(self) -> list[Region]:
        return [Region(**r.stage_region()) for r in self._live()]

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        regions = self._live()
        if not regions:
            return 0, []
        footprint = frame_footprint(path)
        if footprint is None:
            return 0, []
        hits = [r for r in regions if r.overlaps_footprint(footprint)]
        if not hits:
            return 0, []
        return max(r.priority for r in hits), [r.alert_id for r in hits]

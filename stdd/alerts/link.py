"""The alerts side of the daemon: intakes started with it, and the sky regions it steers by.

Design note: the daemon knows nothing of the sky, so this module plugs the alerts into its two
hooks (`stdd.daemon.hooks`): as a `Service` it starts the Kafka consumer and the drop-folder
intake with the daemon and stops them before the database closes; as a `RegionProvider` it
tells the daemon which frames cover a live alert (from the frame header's WCS footprint) and
hands the live regions to the stages, which flag candidates inside them and measure the
position of small error circles. When an alert becomes live, queued frames are re-prioritised
at once. The service has its own database connection: its intakes write from their threads.

Supervision: every SUPERVISE_EVERY_SECONDS the link starts again an intake whose thread has
ended, and `health()` (which the daemon puts in /health, and for which it stops the systemd
watchdog when `stalled`) sums up the intakes: `ok` when each runs (and Kafka, when enabled, is
connected), `stalled` only when one of our own loops is stuck. Intake errors and connection
changes are recorded as `alert.intake` events.
"""
from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

from ..stages.base import Region
from ..store import Database
from .drop_folder import DropFolderIntake
from .intake import KafkaIntake
from .service import AlertService, IntakeMessage, Outcome

log = logging.getLogger("stdd.alerts")

EXPIRE_EVERY_SECONDS = 60.0
SUPERVISE_EVERY_SECONDS = 5.0


def header_footprint(path: Path) -> dict | None:
    """{'ra', 'dec', 'radius', 'corners'} of a FITS file from its header WCS, or None."""
    from astropy.wcs import WCS

    from ..stages.header import FrameError, load_first_image
    from ..stages.inspect import frame_geometry

    try:
        _, header, _ = load_first_image(Path(path), header_only=True)
    except FrameError:
        return None
    try:
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            ra, dec, radius, _, corners = frame_geometry(wcs.celestial, shape)
    except Exception:  # a header WCS that cannot be evaluated: no footprint, normal priority
        return None
    return {"ra": ra, "dec": dec, "radius": radius, "corners": corners}


class AlertRegionProvider:
    """`RegionProvider` on an `stdd.alerts.AlertService`."""

    def __init__(self, service):
        self.service = service

    def live_regions(self) -> list[Region]:
        out = []
        for r in self.service.live_regions():
            try:
                out.append(Region(**r.stage_region()))
            except Exception as e:
                log.warning("alert %s: region not usable by the stages: %s", getattr(r, "alert_id", "?"), e)
        return out

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        fp = header_footprint(path)
        if fp is None:
            return 0, []
        hits = self.service.regions_for_footprint({"ra": fp["ra"], "dec": fp["dec"], "radius": fp["radius"]})
        if not hits:
            return 0, []
        return max(int(r.priority or 0) for r in hits), [r.alert_id for r in hits]


class AlertLink(AlertRegionProvider):
    """A daemon `Service` (intakes started and stopped with it) and its `RegionProvider`."""

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
        self._last_expire = 0.0

    # -- Service ------------------------------------------------------------------------
    async def start(self, daemon) -> None:
        self._daemon = daemon
        self._loop = asyncio.get_running_loop()
        cfg = self.settings.alerts
        self.db = await asyncio.to_thread(Database, self.settings.paths.database)
        self.service = AlertService(self.db, self.settings)
        await asyncio.to_thread(self.service.recover)
        self.drop = DropFolderIntake(self.settings, self._on_message, on_event=self._intake_event)
        self.drop.start()
        if cfg.kafka.enabled:
            self.kafka = KafkaIntake(self.settings, self._on_message, on_event=self._intake_event)
            self.kafka.start()
        supervisor = getattr(daemon, "supervisor", None)
        if supervisor is not None:  # the daemon keeps the loop running and watches it
            supervisor.start("alerts", self._supervise_iteration, daemon.settings.daemon.loop_stall_seconds)
        else:
            self._expire_task = asyncio.create_task(self._supervise_loop())
        log.info("alerts: drop folder %s%s", self.settings.paths.alert_drop,
                 f", Kafka topics {len(cfg.kafka.topics)}" if self.kafka else ", Kafka off")

    async def stop(self) -> None:
        if self._expire_task:
            self._expire_task.cancel()
        supervisor = getattr(self._daemon, "supervisor", None)
        if supervisor is not None:
            await supervisor.stop(["alerts"])
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

    def health(self) -> dict[str, Any]:
        """{"ok", "stalled", "detail", "drop_folder": {...}, "kafka": {...} | None}.

        `stalled` is true only when one of our own intake loops is stuck (the daemon then stops
        the systemd watchdog); a broker that cannot be reached is `ok: false, stalled: false`."""
        if self.service is None or self.drop is None:
            return {"ok": False, "stalled": False, "detail": "alert handling has not started", "drop_folder": None,
                    "kafka": None}
        parts = [self.drop.health()]
        if self.kafka is not None:
            parts.append(self.kafka.health())
        bad = [p for p in parts if not p["ok"]]
        return {
            "ok": not bad, "stalled": any(p["stalled"] for p in parts),
            "detail": "; ".join(p["detail"] for p in (bad or parts)),
            "drop_folder": parts[0], "kafka": parts[1] if self.kafka is not None else None,
        }

    def handle(self, raw: bytes, hint: str | None = None) -> Outcome:
        """A notice handed over directly (POST /alerts): handled like one from Kafka."""
        return self._on_message(IntakeMessage(value=raw, topic=f"http:{hint}" if hint else "http", hint=hint))

    # called on an intake thread
    def _on_message(self, msg: IntakeMessage) -> Outcome:
        outcome = self.service.handle(msg)
        if outcome.decision is not None and outcome.decision.act and self._loop and self._daemon:
            # an alert became live (or was retracted): queued frames change priority now
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._daemon.reprioritize()))
        return outcome

    def _intake_event(self, kind: str, message: str, level: str, data: dict) -> None:
        if self.service is not None:
            self.service.events.add(kind, message, level=level, data=data)

    async def _supervise_loop(self) -> None:
        """The same iterations without a daemon supervisor (tests that run the link alone)."""
        while True:
            try:
                await self._supervise_iteration()
            except Exception as e:  # noqa: BLE001
                log.error("alerts: supervision failed: %s", e)

    async def _supervise_iteration(self) -> None:
        """Every few seconds: intake threads that ended are started again; old alerts expire."""
        await asyncio.sleep(SUPERVISE_EVERY_SECONDS)
        for intake in (self.drop, self.kafka):
            if intake is not None:
                intake.ensure_running()
        if self._loop.time() - self._last_expire < EXPIRE_EVERY_SECONDS:
            return
        self._last_expire = self._loop.time()
        try:
            await asyncio.to_thread(self.service.expire)
        except Exception as e:
            log.error("alerts: expiring old alerts failed: %s", e)

    # -- RegionProvider: answers "none" until the service has started -------------------
    def live_regions(self) -> list[Region]:
        return super().live_regions() if self.service is not None else []

    def frame_priority(self, path: Path) -> tuple[int, list[str]]:
        return super().frame_priority(path) if self.service is not None else (0, [])

"""GCN alerts: intake (Kafka, drop folder), parsing, regions, policy and actions.

The API the daemon calls
------------------------
Parsing (pure, no I/O)::

    alert = parse_notice(raw: bytes, topic: str | None = None, hint=None)  # -> Alert; NoticeError on garbage
    actionable, reason = screen(alert)          # the default policy, ignoring visibility
    alert.to_dict(actionable=..., ignore_reason=...)   # the JSON of `stdd alert parse --json`

Handling messages end to end (store → parse → dedupe → decide → act → record)::

    service = AlertService(db: stdd.store.Database, settings: Settings)   # its connection: fsync'd commits
    service.recover()                       # at start-up: pending/interrupted actions, live alerts without
                                            # claims, unprocessed messages (docs/alerts-delivery.md)
    outcome = service.handle(IntakeMessage(value=raw, topic=..., partition=..., offset=...))
    # when handle returns the message, its alert and its action claims are on disk (one transaction)
    outcome.state       # parsed | duplicate | control | error | already-processed
    outcome.decision    # Decision(act, kind=observe|cancel|ignore, reason, priority, actions, visibility)
    # actions run on the service's own thread pool after the commit; a retraction runs "cancel"
    # through the same actions
    service.live_regions(now) -> list[LiveRegion]   # highest priority first
    service.regions_for_footprint({'ra':..,'dec':..,'radius':..} | corners, now) -> overlapping LiveRegions
    service.alerts_at(ra, dec, now) -> alert ids containing each position (candidate flags)
    service.expire(now); service.status(); service.close()

A LiveRegion (one live alert's 90 % region; skymaps as their credible-area MOC)::

    region.overlaps(ra, dec, radius_deg)     # a circular frame footprint
    region.overlaps_polygon(corners)         # a frame footprint given by its corners
    region.overlaps_footprint(fp)            # {'ra','dec','radius'} | {'corners': [...]} | [corners]
    region.contains(ra, dec)                 # scalar or arrays -> candidate flags
    region.forced_position                   # (ra, dec) for small circles, else None
    region.alert_id, .priority, .radius_deg, .kind, .live_until
    region.stage_region()                    # dict for stdd.stages.base.Region(**...)

Intakes, each on its own supervised thread, calling `on_message(IntakeMessage)` (use `service.handle`)::

    kafka = KafkaIntake(settings, service.handle, on_event=cb); kafka.start(); kafka.status(); kafka.stop()
        # status: connected, last_heartbeat (+ age), last_poll_at, messages_received/stored, last_error, ...
        # each message is stored by on_message BEFORE its offset is committed
    drop = DropFolderIntake(settings, service.handle, on_event=cb); drop.start(); drop.stop()  # paths.alert_drop
    intake.health()  -> {"ok", "stalled", "detail", ...}   # stalled: our own loop is stuck
    intake.ensure_running()                                 # start a new thread if it has ended
        # cb(kind, message, level, data): errors and connection changes, for the events table

The daemon's side (`link.AlertLink`): a daemon Service and RegionProvider; `health()` sums up its
intakes for /health and the systemd watchdog (stalled → stop pinging).

Which positions count as a localisation (error radius 0 or none, placeholders): `localisation.py`.

Benchmark: `stdd.alerts.latency.measure_latency(bootstrap, workdir, n)` → p50/p99 of
notice-produced → action-started against a broker.
"""
from .drop_folder import DropFolderIntake
from .intake import IntakeConfigError, KafkaIntake, consumer_config
from .notice import ROLES, Alert, NoticeError
from .parse import HEARTBEAT_TOPIC, parse_notice
from .policy import Decision, Policy, screen, site_visibility
from .live_region import LiveRegion
from .region import Circle, Ellipse, Polygon, RegionError, Skymap, scale_containment
from .service import AlertService, IntakeMessage, Outcome

__all__ = [
    "Alert", "AlertService", "Circle", "Decision", "DropFolderIntake", "Ellipse", "HEARTBEAT_TOPIC",
    "IntakeConfigError", "IntakeMessage", "KafkaIntake", "LiveRegion", "NoticeError", "Outcome", "Policy",
    "Polygon", "ROLES", "RegionError", "Skymap", "consumer_config", "parse_notice", "scale_containment", "screen",
    "site_visibility",
]

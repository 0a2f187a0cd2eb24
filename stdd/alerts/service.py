"""AlertService: one message, end to end — store, parse, de-duplicate, decide, act, record.

Design note: the service is synchronous and cheap (parsing, a policy decision, a few
SQLite writes; a 1 MB LVK skymap decodes in ~0.1 s). It is called from the intake threads
(Kafka, drop folder, HTTP), never from the daemon's event loop; the slow part, running
actions, goes to the ActionRunner's pool. Processing is serialised by a lock, so "is this
notice new?" and "record it" cannot interleave between two intakes.

Two commits per message, each fsync'd (`AlertStore(durable=True)`): the raw message first
(so a notice that crashes the parser is kept, and given up after MAX_ATTEMPTS), then ONE
transaction holding the alert row, the message's new state, the audit event and the action
claims (for a retraction: the retracted alerts' new state and the cancel claims). Actions are
submitted only after that commit, so a crash anywhere leaves either no trace of the alert
(the message is processed again at the next start) or the alert with its claims (which
`recover` runs). See docs/alerts-delivery.md.

De-duplication has three keys: the message's (topic, partition, offset) — a Kafka redelivery
after a crash; the SHA-256 of a message without an offset (drop folder, HTTP) — the same file
or POST again; and the notice id (IVORN, LVK superevent+type+time, or a key built from a JSON
notice) — the same notice sent twice or through two routes. Either way, no action runs twice.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..faults import fault_point
from ..store.alerts import AlertStore
from ..store.events import EventLog
from .actions import ActionRunner, Claim
from .notice import Alert, NoticeError
from .parse import parse_notice
from .policy import Decision, Policy, screen
from .recovery import claim_missing_actions, resume_actions
from .live_region import LiveRegion
from .region import RegionError

log = logging.getLogger("stdd.alerts")

#: processing attempts of a stored message before it is given up (each one ended with stdd stopping)
MAX_ATTEMPTS = 3


@dataclass
class IntakeMessage:
    """One message as an intake hands it over."""

    value: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp: float | None = None  # producer / broker time, seconds
    hint: str | None = None  # e.g. the file name for dropped notices


@dataclass
class Outcome:
    message_id: int
    state: str  # parsed | duplicate | control | error | already-processed
    alert_id: str | None = None
    decision: Decision | None = None
    error: str | None = None
    action_ids: list[int] = field(default_factory=list)
    futures: list[Any] = field(default_factory=list, repr=False)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the actions this message started (tests, benchmarks)."""
        for f in self.futures:
            f.result(timeout=timeout)

    def to_dict(self) -> dict:
        return {"message_id": self.message_id, "state": self.state, "alert_id": self.alert_id,
                "decision": self.decision.to_dict() if self.decision else None, "error": self.error,
                "action_ids": self.action_ids}


class AlertService:
    def __init__(self, db, settings, *, clock=time.time, runner: ActionRunner | None = None, durable: bool = True):
        """`durable=False` (benchmarks only) leaves the connection's commits un-fsync'd."""
        self.db = db
        self.settings = settings
        self.cfg = settings.alerts
        self.clock = clock
        self.store = AlertStore(db, durable=durable)
        self.events = EventLog(db)
        self.policy = Policy(settings.alerts, settings.site)
        self.runner = runner or ActionRunner(self.store, settings, on_event=self._action_event)
        self._lock = threading.RLock()
        self.resumed: list = []  # futures of the actions `recover` ran again
        self.counts = {"messages": 0, "alerts": 0, "duplicates": 0, "errors": 0, "control": 0, "acted": 0}

    # -- intake entry points -------------------------------------------------------------
    def store_message(self, msg: IntakeMessage) -> tuple[int, bool]:
        """Record the raw message (committed) — call before committing its Kafka offset."""
        return self.store.add_message(msg.value, msg.topic if msg.topic else _file_topic(msg.hint),
                                      msg.partition, msg.offset, self.clock())

    def handle(self, msg: IntakeMessage) -> Outcome:
        """Store, then process. Usable directly as the `on_message` of KafkaIntake or DropFolderIntake.

        When it returns, what the message carries is on disk (fsync'd): the intake may acknowledge it."""
        fault_point("alert.received")
        message_id, created = self.store_message(msg)
        fault_point("alert.stored")
        if not created and msg.offset is None:
            row = self.store.get_message(message_id)
            if row is not None and row["state"] != "received":
                return self._same_bytes(row)
        return self.process_message(message_id, hint=msg.hint)

    def handle_message(self, raw: bytes, topic: str | None = None, partition: int | None = None,
                       offset: int | None = None, hint: str | None = None) -> Outcome:
        return self.handle(IntakeMessage(raw, topic, partition, offset, hint=hint))

    __call__ = handle

    # -- processing ----------------------------------------------------------------------
    def process_message(self, message_id: int, hint: str | None = None) -> Outcome:
        with self._lock:
            msg = self.store.get_message(message_id)
            if msg is None:
                raise KeyError(f"no alert message {message_id}")
            if msg["state"] != "received":
                return Outcome(message_id, "already-processed", msg.get("alert_id"))
            self.counts["messages"] += 1
            topic = msg["topic"] if msg["topic"] and not msg["topic"].startswith("file:") else None
            if hint is None and msg["topic"] and msg["topic"].startswith("file:"):
                hint = msg["topic"][5:]
            try:
                alert = parse_notice(msg["raw"], topic, hint=hint, credible_level=self.cfg.credible_level)
            except Exception as e:  # unreadable; a parser bug too: recorded once, not retried forever
                why = str(e) if isinstance(e, NoticeError) else f"the parser failed: {type(e).__name__}: {e}"
                if not isinstance(e, NoticeError):
                    log.exception("message %s on %s: %s", message_id, msg["topic"], why)
                self.counts["errors"] += 1
                with self.db.write():
                    self.store.set_message(message_id, "error", error=why)
                    self.events.add("alert.error", f"unreadable notice on {msg['topic']}: {why}", level="WARNING",
                                    data={"message_id": message_id})
                return Outcome(message_id, "error", error=why)
            fault_point("alert.parsed")
            if alert.role == "control":
                self.counts["control"] += 1
                self.store.set_message(message_id, "control", alert.id)
                return Outcome(message_id, "control", alert.id)
            if self.store.get_alert(alert.id) is not None:
                return self._duplicate(message_id, alert)
            now = self.clock()
            actionable, screen_reason = screen(alert)
            decision = self.policy.decide(alert, now)
            row = self._alert_row(alert, message_id, now, actionable, screen_reason, decision)
            outcome = Outcome(message_id, "parsed", alert.id, decision)
            to_submit: list[tuple[list[Claim], dict]] = []
            with self.db.write():  # ONE transaction: alert, message state, event, claims
                if not self.store.add_alert(row):
                    return self._duplicate(message_id, alert)
                self.store.set_message(message_id, "parsed", alert.id)
                self.events.add("alert.received", _summary(alert, decision), alert_id=alert.id,
                                data={"decision": decision.to_dict(), "message_id": message_id})
                if decision.kind == "cancel":
                    to_submit = self._retract(alert, now)
                elif decision.act:
                    self._supersede(alert, now)
                    to_submit = [(self.runner.claim(alert.id, decision.actions, "observe", decision.to_dict()),
                                  row["parsed"])]
                fault_point("alert.claimed")
            fault_point("alert.committed")
            self.counts["alerts"] += 1
            self.counts["acted"] += int(decision.act)
            for claims, alert_dict in to_submit:
                outcome.action_ids += [c.action_id for c in claims]
                outcome.futures += [f for _, f in self.runner.submit(claims, alert_dict)]
            return outcome

    def _duplicate(self, message_id: int, alert: Alert) -> Outcome:
        self.counts["duplicates"] += 1
        self.store.set_message(message_id, "duplicate", alert.id)
        log.info("duplicate notice %s (message %s): no action", alert.id, message_id)
        return Outcome(message_id, "duplicate", alert.id)

    def _same_bytes(self, row: dict) -> Outcome:
        """A message without an offset whose bytes were handled before (a file dropped again, a POST repeated)."""
        self.counts["duplicates"] += 1
        log.info("message %s: the same bytes as before (%s deliveries, %s): no action", row["id"],
                 row.get("deliveries"), row["state"])
        if row["state"] == "error":
            return Outcome(row["id"], "error", row.get("alert_id"), error=row.get("error"))
        return Outcome(row["id"], "duplicate", row.get("alert_id"))

    def _alert_row(self, alert: Alert, message_id: int, now: float, actionable: bool, screen_reason: str | None,
                   decision: Decision) -> dict:
        try:
            region = alert.region_dict()
        except (RegionError, ValueError) as e:
            region = None
            alert.flags.append(f"region_unusable: {e}")
        parsed = alert.to_dict(actionable=actionable, ignore_reason=screen_reason)
        state = "live" if decision.act else ("cancel" if decision.kind == "cancel" else "ignored")
        return {
            "id": alert.id, "ivorn": alert.ivorn, "event_id": alert.event_id, "mission": alert.mission,
            "instrument": alert.instrument, "notice_type": alert.notice_type, "role": alert.role,
            "time": alert.time, "ra": alert.ra, "dec": alert.dec, "error_radius_deg": alert.error_radius_deg,
            "region": region, "skymap": ({"url": alert.skymap_url, **(parsed["skymap"] or {})}
                                         if alert.skymap is not None or alert.skymap_url else None),
            "retraction": int(alert.retraction), "retracts": alert.retracts, "actionable": int(actionable),
            "ignore_reason": screen_reason or decision.reason, "priority": decision.priority, "state": state,
            "decision": decision.to_dict(),
            "live_until": now + self.cfg.live_hours * 3600 if decision.act else None,
            "received_at": now, "message_id": message_id, "parsed": parsed,
        }

    def _supersede(self, alert: Alert, now: float) -> None:
        """A newer actionable notice of the same event replaces the older live region."""
        if not alert.event_id:
            return
        for prior in self.store.alerts_for_event(alert.mission, alert.event_id, exclude=alert.id):
            if prior["state"] == "live":
                self.store.update_alert(prior["id"], state="superseded", live_until=now)

    def _retract(self, alert: Alert, now: float) -> list[tuple[list[Claim], dict]]:
        """Inside the alert's transaction: retract the earlier notices of the event, claim their cancels."""
        if not alert.retracts:
            return []
        out = []
        for prior in self.store.alerts_for_event(alert.mission, alert.retracts, exclude=alert.id):
            if prior.get("retraction"):
                continue
            if prior["state"] in ("live", "superseded", "ignored", "expired"):
                self.store.update_alert(prior["id"], state="retracted", live_until=min(now, prior["live_until"] or now))
            done = [a["name"] for a in self.store.actions_for_alert(prior["id"], "observe")]
            if done:
                out.append((self.runner.claim(prior["id"], done, "cancel", {"kind": "cancel", "retraction": alert.id}),
                            prior["parsed"]))
            self.events.add("alert.retracted", f"{prior['id']} retracted by {alert.id}", alert_id=prior["id"],
                            data={"retraction": alert.id, "cancelled_actions": done})
        return out

    def _action_event(self, action_id, alert_id, name, purpose, row) -> None:
        state = row.get("state") if row else "?"
        level = "INFO" if state == "done" else "WARNING"
        self.events.add("alert.action", f"{name} ({purpose}) for {alert_id}: {state}", alert_id=alert_id,
                        level=level, data={"action_id": action_id, "exit_code": row.get("exit_code") if row else None,
                                           "http_status": row.get("http_status") if row else None,
                                           "error": row.get("error") if row else None,
                                           "run": row.get("runs") if row else None})
        if self.settings.delivery.notify:  # in this same transaction: the action's notification
            from ..delivery import notify
            from ..store.outbox import Outbox

            body = f"Alert {alert_id}: action {name} ({purpose}) {state}"
            if row and row.get("error"):
                body += f"\nerror: {row['error']}"
            notify(Outbox(self.db), self.settings, "alert_acted", f"stdd: alert {alert_id} acted on ({name})", body,
                   f"action:{action_id}:{row.get('runs') if row else 0}", alert_id=alert_id,
                   data={"action_id": action_id, "name": name, "purpose": purpose, "state": state})

    # -- recovery and queries ------------------------------------------------------------
    def recover(self) -> list[Outcome]:
        """At start-up, before the intakes start: finish what a stop or crash left half-done.

        1. claimed actions left pending or running are run (again) — see `resume_actions`;
        2. live alerts that should have acted but have no claim (left by an stdd older than the
           one-transaction path) get their claims and run;
        3. stored messages never processed are processed, unless MAX_ATTEMPTS attempts each
           ended with stdd stopping (a notice that crashes stdd): then they are marked error.
        Returns the outcomes of step 3.
        """
        with self._lock:
            self.resumed = resume_actions(self) + claim_missing_actions(self)
            outcomes = []
            for m in self.store.unprocessed_messages():
                if (m.get("attempts") or 0) >= MAX_ATTEMPTS:
                    why = f"given up: {m['attempts']} processing attempts each ended with stdd stopping"
                    with self.db.write():
                        self.store.set_message(m["id"], "error", error=why)
                        self.events.add("alert.error", f"message {m['id']} on {m['topic']}: {why}", level="ERROR",
                                        data={"message_id": m["id"]})
                    outcomes.append(Outcome(m["id"], "error", error=why))
                    continue
                self.store.count_attempt(m["id"])
                outcomes.append(self.process_message(m["id"]))
            return outcomes

    def live_regions(self, now: float | None = None) -> list[LiveRegion]:
        """Regions of live alerts (highest priority first), for frame priority and candidate flags."""
        now = self.clock() if now is None else now
        out = []
        for row in self.store.live_alerts(now):
            try:
                out.append(LiveRegion(row["id"], row["region"], event_id=row["event_id"], mission=row["mission"],
                                      priority=row["priority"] or 0, live_until=row["live_until"],
                                      forced_max_radius_deg=self.cfg.forced_photometry_max_radius_deg))
            except (RegionError, KeyError, ValueError) as e:
                log.warning("alert %s: stored region unusable: %s", row["id"], e)
        return out

    def regions_for_footprint(self, footprint, now: float | None = None,
                              regions: list[LiveRegion] | None = None) -> list[LiveRegion]:
        """Live regions a frame footprint overlaps ({'ra','dec','radius'} or corners), highest priority first."""
        regions = self.live_regions(now) if regions is None else regions
        return [r for r in regions if r.overlaps_footprint(footprint)]

    def alerts_at(self, ra, dec, now: float | None = None, regions: list[LiveRegion] | None = None):
        """For each (ra, dec) — scalars or arrays — the ids of the live alerts whose region contains it."""
        import numpy as np

        regions = self.live_regions(now) if regions is None else regions
        scalar = np.ndim(ra) == 0
        ra_a, dec_a = np.atleast_1d(np.asarray(ra, dtype=float)), np.atleast_1d(np.asarray(dec, dtype=float))
        out: list[list[str]] = [[] for _ in range(ra_a.size)]
        for r in regions:
            inside = np.atleast_1d(r.contains(ra_a, dec_a))
            for i in np.flatnonzero(inside):
                out[i].append(r.alert_id)
        return out[0] if scalar else out

    def expire(self, now: float | None = None) -> int:
        return self.store.expire(self.clock() if now is None else now)

    def status(self) -> dict:
        return {"counts": dict(self.counts), "messages": self.store.message_counts(),
                "live": len(self.store.live_alerts(self.clock()))}

    def close(self, wait: bool = True) -> None:
        self.runner.close(wait=wait)


def _file_topic(hint: str | None) -> str | None:
    return f"file:{hint}" if hint else None


def _summary(alert: Alert, decision: Decision) -> str:
    what = f"{alert.mission or '?'} {alert.notice_type or ''} {alert.event_id or ''}".strip()
    if decision.act:
        return f"{what}: act (priority {decision.priority}, actions {', '.join(decision.actions) or 'none'})"
    return f"{what}: {decision.kind} ({decision.reason})"

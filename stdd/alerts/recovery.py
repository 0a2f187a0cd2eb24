"""Putting right at start-up what a stop or crash left half-done in the alert path.

Called by `AlertService.recover()` (before the intakes start), with the service passed in:
- `resume_actions`: claimed actions left pending (never started) or running (cut short) are
  run again — a running one only when its action allows it (`rerun_interrupted`, the default:
  at-least-once; false: at-most-once, it is marked failed). An "observe" action whose alert was
  retracted or whose live time ended meanwhile is not run (and says why).
- `claim_missing_actions`: a live alert whose decision names actions, none of them claimed —
  what a crash between the alert row and its claims left before they were one transaction —
  gets its claims now.
Both record an `alert.recovered` event per action, so the audit log shows what ran again.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future

log = logging.getLogger("stdd.alerts")


def _why_not_again(row: dict, alert: dict | None, cfg, now: float) -> str | None:
    if alert is None:
        return "not run: its alert is not recorded"
    if cfg is None:
        return f"not run: action {row['name']!r} is no longer configured"
    if row["state"] == "running" and not cfg.rerun_interrupted:
        return "interrupted: stdd stopped while it ran; not run again (rerun_interrupted = false)"
    if row["purpose"] == "observe":
        if alert.get("state") == "retracted":
            return "not run: the alert was retracted before stdd restarted"
        live_until = alert.get("live_until")
        if live_until is not None and live_until <= now:
            return "not run: the alert's live time ended before stdd restarted"
    return None


def resume_actions(service) -> list[Future]:
    """Run again the claimed actions a stop or crash left pending or running."""
    now = service.clock()
    futures = []
    for row in service.store.unfinished_actions():
        alert = service.store.get_alert(row["alert_id"])
        why = _why_not_again(row, alert, service.cfg.actions.get(row["name"]), now)
        what = f"{row['name']} ({row['purpose']}) for {row['alert_id']}"
        if why:
            log.warning("alerts: action %s: %s", what, why)
            with service.db.write():
                service.store.finish_action(row["id"], "failed", error=why)
                service.events.add("alert.action", f"{what}: failed ({why})", alert_id=row["alert_id"],
                                   level="WARNING", data={"action_id": row["id"], "error": why})
            continue
        again = "run again (it was running when stdd stopped)" if row["state"] == "running" else \
            "started (it was claimed but not started when stdd stopped)"
        log.warning("alerts: action %s %s", what, again)
        service.events.add("alert.recovered", f"{what}: {again}", alert_id=row["alert_id"], level="WARNING",
                           data={"action_id": row["id"], "state_found": row["state"], "runs": row.get("runs")})
        fut = service.runner.resume(row, alert["parsed"])
        if fut is not None:
            futures.append(fut)
    return futures


def claim_missing_actions(service) -> list[Future]:
    """Claim and run the actions of live alerts that decided to act but claimed nothing."""
    futures = []
    for alert in service.store.live_alerts_without_actions(service.clock()):
        decision = alert.get("decision") or {}
        with service.db.write():
            claims = service.runner.claim(alert["id"], list(decision.get("actions") or []), "observe", decision)
            if claims:
                names = ", ".join(c.name for c in claims)
                service.events.add("alert.recovered", f"{alert['id']}: actions {names} claimed at start"
                                   " (the alert was recorded without them)", alert_id=alert["id"], level="WARNING",
                                   data={"action_ids": [c.action_id for c in claims]})
        if claims:
            log.warning("alerts: %s had no action claimed; claimed now: %s", alert["id"],
                        ", ".join(c.name for c in claims))
        futures += [f for _, f in service.runner.submit(claims, alert["parsed"])]
    return futures

"""Actions taken on an alert: run a command, POST a webhook, or write a request file.

Design note: every action is first *claimed* — a row in the actions table, unique per
(alert, action name, purpose) — in the same transaction that records its alert (see
service.py), and only submitted to the runner's small thread pool once that transaction has
committed, never run on the caller's thread. The unique claim is what makes "never act twice"
hold across duplicate deliveries, restarts and races; the row then records the run (state
running, `runs` + 1) before the action starts, and its outcome (exit code, HTTP status,
output, error, attempts) after. A claim left pending or running by a crash is run again at the
next start (`resume`); a run cut short after its effect but before its outcome was recorded
therefore repeats that effect: exec and webhook are at-least-once, and each run carries the same
idempotency key so the receiver can drop the repeat (docs/alerts-delivery.md). A retraction
runs the same actions again with purpose "cancel"; the payload says which.

Payload (stdin for exec, body for webhook, file content for request_file):
    {"purpose": "observe" | "cancel", "action": NAME, "alert": {...Alert.to_dict()...},
     "decision": {...}, "site": {...}, "sent_at": ISO time,
     "action_id": N, "run": 1 (2, ... when run again after a crash), "idempotency_key": "..."}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..faults import fault_point
from ..store.alerts import AlertStore

log = logging.getLogger("stdd.alerts.actions")
OUTPUT_LIMIT = 4000


def _tail(text: str | bytes | None, limit: int = OUTPUT_LIMIT) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-limit:]


def safe_name(text: str) -> str:
    """A file-name-safe version of an alert id (IVORNs contain / # : ...)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[:150] or "alert"


def idempotency_key(alert_id: str, name: str, purpose: str) -> str:
    """The same for every run of one claimed action, on any stdd: a receiver drops repeats by it."""
    return hashlib.sha256(f"{alert_id}\n{name}\n{purpose}".encode()).hexdigest()[:32]


def run_exec(cfg, payload: bytes, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(env_extra or {})
    try:
        proc = subprocess.run(list(cfg.command), input=payload, capture_output=True, timeout=cfg.timeout_seconds,
                              env=env)
    except subprocess.TimeoutExpired as e:
        return {"state": "failed", "attempts": 1, "error": f"timed out after {cfg.timeout_seconds:g} s",
                "output": _tail((e.stdout or b"") + (e.stderr or b""))}
    except OSError as e:
        return {"state": "failed", "attempts": 1, "error": f"cannot run {cfg.command[0]!r}: {e}"}
    out = _tail(proc.stdout + (b"\n" + proc.stderr if proc.stderr else b""))
    state = "done" if proc.returncode == 0 else "failed"
    return {"state": state, "attempts": 1, "exit_code": proc.returncode, "output": out,
            "error": None if state == "done" else f"exit code {proc.returncode}"}


def run_webhook(cfg, payload: bytes, stop: threading.Event | None = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    attempts, status, error, body = 0, None, None, ""
    for attempt in range(cfg.retries + 1):
        attempts = attempt + 1
        req = urllib.request.Request(cfg.url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "stdd",
                                              **(headers or {}), **cfg.headers})
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_seconds) as resp:
                status, body = resp.status, _tail(resp.read())
            if 200 <= status < 300:
                return {"state": "done", "attempts": attempts, "http_status": status, "output": body}
            error = f"HTTP {status}"
        except urllib.error.HTTPError as e:
            status, body, error = e.code, _tail(e.read() if e.fp else b""), f"HTTP {e.code}"
            if 400 <= e.code < 500 and e.code not in (408, 425, 429):
                break  # the request itself is wrong: retrying will not help
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            status, error = None, f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt < cfg.retries:
            delay = cfg.retry_backoff_seconds * (2 ** attempt)
            if stop is not None and stop.wait(delay):
                break
            elif stop is None:
                time.sleep(delay)
    return {"state": "failed", "attempts": attempts, "http_status": status, "output": body, "error": error}


def write_request_file(cfg, filename: str, payload: bytes) -> dict[str, Any]:
    """Write the file under a temporary name, fsync it, rename it into place and fsync the folder:
    a watcher sees the whole file or none, and once this returns the name survives a power cut."""
    folder = Path(cfg.folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / filename)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        return {"state": "failed", "attempts": 1, "error": f"cannot write request into {folder}: {e}"}
    return {"state": "done", "attempts": 1, "output": str(folder / filename)}


@dataclass
class Claim:
    """An action claimed in the store (committed with its alert), not yet submitted."""

    action_id: int
    alert_id: str
    name: str
    purpose: str
    decision: dict | None


class ActionRunner:
    """Claims actions in the store and runs them on a thread pool."""

    def __init__(self, store: AlertStore, settings, workers: int | None = None, on_event=None):
        self.store = store
        self.settings = settings
        self.actions = settings.alerts.actions
        self._pool = ThreadPoolExecutor(max_workers=workers or settings.alerts.action_workers,
                                        thread_name_prefix="stdd-action")
        self._stop = threading.Event()
        self._on_event = on_event
        self._closed = False
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()

    def payload(self, name: str, purpose: str, alert: dict, decision: dict | None, *, action_id: int | None = None,
                run: int = 1) -> bytes:
        site = self.settings.site
        return json.dumps({
            "purpose": purpose, "action": name, "alert": alert, "decision": decision,
            "site": {"name": site.name, "lat": site.lat, "lon": site.lon, "elevation": site.elevation},
            "sent_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action_id": action_id, "run": run,
            "idempotency_key": idempotency_key(str(alert.get("id")), name, purpose),
        }, default=str).encode()

    # -- claim, then submit ----------------------------------------------------------------
    def claim(self, alert_id: str, names: list[str], purpose: str, decision: dict | None = None) -> list[Claim]:
        """Claim each named action in the store. Call inside the transaction that records the alert;
        submit the claims only after it has committed. Already-claimed ones are skipped."""
        claims = []
        for name in names:
            cfg = self.actions.get(name)
            if cfg is None:
                log.error("alert %s: action %r is not configured", alert_id, name)
                continue
            action_id = self.store.claim_action(alert_id, name, cfg.kind, purpose,
                                                {"purpose": purpose, "decision": decision})
            if action_id is None:
                log.info("alert %s: action %s/%s already taken, not again", alert_id, name, purpose)
                continue
            claims.append(Claim(action_id, alert_id, name, purpose, decision))
        return claims

    def submit(self, claims: list[Claim], alert: dict) -> list[tuple[int, Future]]:
        """Start committed claims on the pool."""
        started = []
        for c in claims:
            fut = self._submit(c, alert)
            if fut is not None:
                started.append((c.action_id, fut))
        return started

    def dispatch(self, alert_id: str, names: list[str], purpose: str, alert: dict,
                 decision: dict | None = None) -> list[tuple[int, Future]]:
        """Claim (committed now) and start: for callers outside an alert's transaction."""
        with self.store.db.write():
            claims = self.claim(alert_id, names, purpose, decision)
        return self.submit(claims, alert)

    def resume(self, row: dict, alert: dict) -> Future | None:
        """Run again a claimed action that a stop or crash left pending or running."""
        if self.actions.get(row["name"]) is None:
            self.store.finish_action(row["id"], "failed", error=f"action {row['name']!r} is no longer configured")
            return None
        request = row.get("request") if isinstance(row.get("request"), dict) else {}
        return self._submit(Claim(row["id"], row["alert_id"], row["name"], row["purpose"], request.get("decision")),
                            alert)

    def _submit(self, claim: Claim, alert: dict) -> Future | None:
        with self._lock:
            if claim.action_id in self._in_flight:
                return None  # already running in this process
            if self._closed:  # stdd is stopping: the claim stays pending, `recover` runs it at the next start
                log.warning("action %s (%s) for %s not started: stdd is stopping; it runs at the next start",
                            claim.name, claim.purpose, claim.alert_id)
                return None
            self._in_flight.add(claim.action_id)
            return self._pool.submit(self._run, claim, alert)

    # -- running ---------------------------------------------------------------------------
    def _run(self, claim: Claim, alert: dict) -> dict:
        try:
            return self._run_claim(claim, alert)
        finally:
            with self._lock:
                self._in_flight.discard(claim.action_id)

    def _run_claim(self, c: Claim, alert: dict) -> dict:
        cfg = self.actions[c.name]
        run = self.store.start_action(c.action_id)
        fault_point("alert.action_started")
        body = self.payload(c.name, c.purpose, alert, c.decision, action_id=c.action_id, run=run)
        key = idempotency_key(c.alert_id, c.name, c.purpose)
        try:
            if cfg.kind == "exec":
                result = run_exec(cfg, body, {"STDD_ALERT_ID": c.alert_id, "STDD_ACTION_PURPOSE": c.purpose,
                                              "STDD_ACTION_NAME": c.name, "STDD_ACTION_ID": str(c.action_id),
                                              "STDD_ACTION_RUN": str(run), "STDD_IDEMPOTENCY_KEY": key})
            elif cfg.kind == "webhook":
                result = run_webhook(cfg, body, self._stop, {"Idempotency-Key": key, "X-Stdd-Action-Run": str(run)})
            else:
                result = write_request_file(cfg, f"{safe_name(c.alert_id)}.{safe_name(c.name)}.{c.purpose}.json",
                                            body)
        except Exception as e:  # an action must never take the runner down; record why
            log.exception("action %s for %s failed", c.name, c.alert_id)
            result = {"state": "failed", "attempts": 1, "error": f"{type(e).__name__}: {e}"}
        fault_point("alert.action_ran")
        with self.store.db.write():  # the outcome and its audit event together
            self.store.finish_action(c.action_id, result.pop("state"), **result)
            row = self.store.get_action(c.action_id)
            if self._on_event is not None:
                try:
                    self._on_event(c.action_id, c.alert_id, c.name, c.purpose, row)
                except Exception:
                    log.exception("action event hook failed")
        fault_point("alert.action_finished")
        return row

    def close(self, wait: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not wait:
            self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

"""Actions taken on an alert: run a command, POST a webhook, or write a request file.

Design note: every action is first *claimed* — a row in the actions table, unique per
(alert, action name, purpose), committed before anything runs — and then run on a small
thread pool, never on the caller's thread. The unique claim is what makes "never act twice"
hold across duplicate deliveries, restarts and races; the row then records the outcome
(exit code, HTTP status, output, error, attempts). A retraction runs the same actions again
with purpose "cancel"; the payload says which.

Payload (stdin for exec, body for webhook, file content for request_file):
    {"purpose": "observe" | "cancel", "action": NAME, "alert": {...Alert.to_dict()...},
     "decision": {...}, "site": {...}, "sent_at": ISO time}
"""
from __future__ import annotations

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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


def run_webhook(cfg, payload: bytes, stop: threading.Event | None = None) -> dict[str, Any]:
    attempts, status, error, body = 0, None, None, ""
    for attempt in range(cfg.retries + 1):
        attempts = attempt + 1
        req = urllib.request.Request(cfg.url, data=payload, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "stdd",
                                              **cfg.headers})
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
    folder = Path(cfg.folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / filename)  # atomic: the watcher sees the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        return {"state": "failed", "attempts": 1, "error": f"cannot write request into {folder}: {e}"}
    return {"state": "done", "attempts": 1, "output": str(folder / filename)}


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

    def payload(self, name: str, purpose: str, alert: dict, decision: dict | None) -> bytes:
        site = self.settings.site
        return json.dumps({
            "purpose": purpose, "action": name, "alert": alert, "decision": decision,
            "site": {"name": site.name, "lat": site.lat, "lon": site.lon, "elevation": site.elevation},
            "sent_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }, default=str).encode()

    def dispatch(self, alert_id: str, names: list[str], purpose: str, alert: dict,
                 decision: dict | None = None) -> list[tuple[int, Future]]:
        """Claim each named action (committed now) and start it on the pool. Already-claimed ones are skipped."""
        started = []
        for name in names:
            cfg = self.actions.get(name)
            if cfg is None:
                log.error("alert %s: action %r is not configured", alert_id, name)
                continue
            body = self.payload(name, purpose, alert, decision)
            action_id = self.store.claim_action(alert_id, name, cfg.kind, purpose,
                                                {"purpose": purpose, "bytes": len(body)})
            if action_id is None:
                log.info("alert %s: action %s/%s already taken, not again", alert_id, name, purpose)
                continue
            started.append((action_id, self._submit(action_id, alert_id, name, purpose, cfg, body)))
        return started

    def resume(self, row: dict, alert: dict, decision: dict | None) -> Future | None:
        """Run a claimed action that never started (e.g. the daemon stopped between claim and run)."""
        cfg = self.actions.get(row["name"])
        if cfg is None:
            self.store.finish_action(row["id"], "failed", error=f"action {row['name']!r} is no longer configured")
            return None
        body = self.payload(row["name"], row["purpose"], alert, decision)
        return self._submit(row["id"], row["alert_id"], row["name"], row["purpose"], cfg, body)

    def _submit(self, action_id, alert_id, name, purpose, cfg, body) -> Future:
        return self._pool.submit(self._run, action_id, alert_id, name, purpose, cfg, body)

    def _run(self, action_id: int, alert_id: str, name: str, purpose: str, cfg, body: bytes) -> dict:
        self.store.start_action(action_id)
        try:
            if cfg.kind == "exec":
                result = run_exec(cfg, body, {"STDD_ALERT_ID": alert_id, "STDD_ACTION_PURPOSE": purpose,
                                              "STDD_ACTION_NAME": name})
            elif cfg.kind == "webhook":
                result = run_webhook(cfg, body, self._stop)
            else:
                result = write_request_file(cfg, f"{safe_name(alert_id)}.{safe_name(name)}.{purpose}.json", body)
        except Exception as e:  # an action must never take the runner down; record why
            log.exception("action %s for %s failed", name, alert_id)
            result = {"state": "failed", "attempts": 1, "error": f"{type(e).__name__}: {e}"}
        self.store.finish_action(action_id, result.pop("state"), **result)
        if self._on_event is not None:
            try:
                self._on_event(action_id, alert_id, name, purpose, self.store.get_action(action_id))
            except Exception:
                log.exception("action event hook failed")
        return self.store.get_action(action_id)

    def close(self, wait: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if not wait:
            self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

"""Alert messages, parsed alerts and the actions taken on them.

Three tables (schema in database.py `_v1`, `_v2`):
- alert_messages: every message as received (raw bytes, topic, partition, offset, SHA-256),
  written before its Kafka offset is committed. (topic, partition, offset) is unique, so a
  message redelivered after a crash is recognised; a message without an offset (drop folder,
  HTTP) is unique by its SHA-256, so the same bytes twice are one row (`deliveries` counts them).
  States: received → parsed | duplicate | control | error.
- alerts: one row per distinct notice (primary key: the notice id / IVORN), so the same
  notice arriving twice is one row. States: live | ignored | retracted | superseded | expired | cancel.
- actions: one row per (alert, action name, purpose) — unique, so an action is claimed at most
  once; the claim is committed together with its alert (one transaction, see
  stdd/alerts/service.py) before the action starts. States: pending → running → done | failed;
  `runs` counts the times it was started.

Durability: `AlertStore(db, durable=True)` switches its connection to `synchronous = FULL`, so
every commit on it is fsync'd (in WAL mode with NORMAL a commit survives a crash of the process
but not of the machine). The alert service uses it: a Kafka offset is committed, and a dropped
file moved away, only after the transaction recording the message is on disk.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterable

from .database import Database

_JSON_COLUMNS = ("region", "skymap", "decision", "parsed")


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    for key in _JSON_COLUMNS + ("request",):
        if row.get(key):
            try:
                row[key] = json.loads(row[key])
            except (TypeError, ValueError):
                pass
    return row


def _enc(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return value


class AlertStore:
    def __init__(self, db: Database, *, durable: bool = False):
        self.db = db
        if durable:
            db.query("PRAGMA synchronous = FULL")

    # -- messages ------------------------------------------------------------------------
    def add_message(self, raw: bytes, topic: str | None, partition: int | None = None, offset: int | None = None,
                    received_at: float | None = None) -> tuple[int, bool]:
        """Record a message; returns (id, created).

        A known (topic, partition, offset), or for a message without an offset known bytes, is not
        added again: its delivery is counted and the existing row's id returned. Either way the
        row's processing attempts go up by one (the caller processes it next)."""
        raw = bytes(raw)
        digest = hashlib.sha256(raw).hexdigest()
        now = received_at or time.time()
        with self.db.write() as conn:
            if offset is not None:
                row = conn.execute('SELECT id FROM alert_messages WHERE topic IS ? AND partition IS ? AND "offset" = ?',
                                   (topic, partition, offset)).fetchone()
            else:
                row = conn.execute('SELECT id FROM alert_messages WHERE sha256 = ? AND "offset" IS NULL',
                                   (digest,)).fetchone()
            if row is not None:
                conn.execute("UPDATE alert_messages SET deliveries = deliveries + 1, last_received_at = ?,"
                             " attempts = attempts + (state = 'received') WHERE id = ?", (now, row[0]))
                return int(row[0]), False
            cur = conn.execute(
                'INSERT INTO alert_messages (topic, partition, "offset", received_at, raw, state, sha256,'
                " deliveries, last_received_at, attempts) VALUES (?, ?, ?, ?, ?, 'received', ?, 1, ?, 1)",
                (topic, partition, offset, now, raw, digest, now))
            return int(cur.lastrowid), True

    def get_message(self, message_id: int) -> dict | None:
        return self.db.query_one("SELECT * FROM alert_messages WHERE id = ?", (message_id,))

    def set_message(self, message_id: int, state: str, alert_id: str | None = None, error: str | None = None) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE alert_messages SET state = ?, alert_id = COALESCE(?, alert_id), error = ? WHERE id = ?",
                         (state, alert_id, error, message_id))

    def count_attempt(self, message_id: int) -> int:
        """One more processing attempt of a stored message (recovery); returns the count."""
        with self.db.write() as conn:
            conn.execute("UPDATE alert_messages SET attempts = attempts + 1 WHERE id = ?", (message_id,))
            row = conn.execute("SELECT attempts FROM alert_messages WHERE id = ?", (message_id,)).fetchone()
            return int(row[0]) if row else 0

    def unprocessed_messages(self, limit: int = 1000) -> list[dict]:
        return self.db.query("SELECT * FROM alert_messages WHERE state = 'received' ORDER BY id LIMIT ?", (limit,))

    def message_counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM alert_messages GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    def messages(self, limit: int = 100) -> list[dict]:
        return self.db.query('SELECT id, topic, partition, "offset", received_at, alert_id, state, error,'
                             " length(raw) AS size, sha256, deliveries, last_received_at, attempts"
                             " FROM alert_messages ORDER BY id DESC LIMIT ?", (limit,))

    # -- alerts --------------------------------------------------------------------------
    def add_alert(self, row: dict[str, Any]) -> bool:
        """Insert an alert; False when an alert with this id is already stored (a duplicate)."""
        cols = list(row)
        with self.db.write() as conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [_enc(row[c]) for c in cols])
            return cur.rowcount == 1

    def get_alert(self, alert_id: str) -> dict | None:
        return _decode(self.db.query_one("SELECT * FROM alerts WHERE id = ?", (alert_id,)))

    def update_alert(self, alert_id: str, **fields: Any) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db.write() as conn:
            conn.execute(f"UPDATE alerts SET {sets} WHERE id = ?", [*(_enc(v) for v in fields.values()), alert_id])

    def alerts_for_event(self, mission: str | None, event_id: str, exclude: str | None = None) -> list[dict]:
        rows = self.db.query(
            "SELECT * FROM alerts WHERE event_id = ? AND (mission IS ? OR ? IS NULL) AND id IS NOT ?"
            " ORDER BY received_at", (event_id, mission, mission, exclude))
        return [_decode(r) for r in rows]

    def live_alerts(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        rows = self.db.query("SELECT * FROM alerts WHERE state = 'live' AND live_until > ? AND region IS NOT NULL"
                             " ORDER BY priority DESC, received_at DESC", (now,))
        return [_decode(r) for r in rows]

    def expire(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.db.write() as conn:
            return conn.execute("UPDATE alerts SET state = 'expired' WHERE state = 'live' AND live_until <= ?",
                                (now,)).rowcount

    def list_alerts(self, limit: int = 100, since: float | None = None, state: str | None = None,
                    actionable: bool | None = None) -> list[dict]:
        where, params = [], []
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        if state:
            where.append("state = ?")
            params.append(state)
        if actionable is not None:
            where.append("actionable = ?")
            params.append(int(actionable))
        sql = ("SELECT id, ivorn, event_id, mission, instrument, notice_type, role, time, ra, dec, error_radius_deg,"
               " retraction, retracts, actionable, ignore_reason, priority, state, decision, live_until, received_at,"
               " message_id FROM alerts" + (" WHERE " + " AND ".join(where) if where else ""))
        return [_decode(r) for r in self.db.query(sql + " ORDER BY received_at DESC LIMIT ?", (*params, limit))]

    # -- actions -------------------------------------------------------------------------
    def claim_action(self, alert_id: str, name: str, kind: str, purpose: str, request: dict | None = None) -> int | None:
        """Record that an action is about to run; None when it was already claimed (it never runs twice)."""
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO actions (alert_id, name, kind, purpose, state, attempts, request)"
                " VALUES (?, ?, ?, ?, 'pending', 0, ?)", (alert_id, name, kind, purpose, _enc(request)))
            return int(cur.lastrowid) if cur.rowcount == 1 else None

    def start_action(self, action_id: int) -> int:
        """Mark an action running (committed); returns its run number (1 the first time)."""
        with self.db.write() as conn:
            conn.execute("UPDATE actions SET state = 'running', started_at = ?, runs = runs + 1 WHERE id = ?",
                         (time.time(), action_id))
            row = conn.execute("SELECT runs FROM actions WHERE id = ?", (action_id,)).fetchone()
            return int(row[0]) if row else 1

    def finish_action(self, action_id: int, state: str, *, attempts: int | None = None, exit_code: int | None = None,
                      http_status: int | None = None, output: str | None = None, error: str | None = None) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE actions SET state = ?, finished_at = ?, attempts = COALESCE(?, attempts),"
                " exit_code = ?, http_status = ?, output = ?, error = ? WHERE id = ?",
                (state, time.time(), attempts, exit_code, http_status, output, error, action_id))

    def get_action(self, action_id: int) -> dict | None:
        return _decode(self.db.query_one("SELECT * FROM actions WHERE id = ?", (action_id,)))

    def actions_for_alert(self, alert_id: str, purpose: str | None = None) -> list[dict]:
        if purpose:
            rows = self.db.query("SELECT * FROM actions WHERE alert_id = ? AND purpose = ? ORDER BY id",
                                 (alert_id, purpose))
        else:
            rows = self.db.query("SELECT * FROM actions WHERE alert_id = ? ORDER BY id", (alert_id,))
        return [_decode(r) for r in rows]

    def unfinished_actions(self) -> list[dict]:
        return [_decode(r) for r in self.db.query("SELECT * FROM actions WHERE state IN ('pending', 'running')"
                                                  " ORDER BY id")]

    def live_alerts_without_actions(self, now: float | None = None) -> list[dict]:
        """Live alerts whose decision names actions of which none was claimed (left by a crash of an
        stdd older than the one-transaction alert path)."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM alerts a WHERE state = 'live' AND live_until > ? AND json_extract(decision, '$.act')"
            " AND json_array_length(json_extract(decision, '$.actions')) > 0"
            " AND NOT EXISTS (SELECT 1 FROM actions c WHERE c.alert_id = a.id AND c.purpose = 'observe')"
            " ORDER BY received_at", (now,))
        return [_decode(r) for r in rows]

    def list_actions(self, limit: int = 100, alert_ids: Iterable[str] | None = None) -> list[dict]:
        if alert_ids is not None:
            ids = list(alert_ids)
            if not ids:
                return []
            rows = self.db.query(f"SELECT * FROM actions WHERE alert_id IN ({', '.join('?' for _ in ids)})"
                                 " ORDER BY id DESC LIMIT ?", (*ids, limit))
        else:
            rows = self.db.query("SELECT * FROM actions ORDER BY id DESC LIMIT ?", (limit,))
        return [_decode(r) for r in rows]

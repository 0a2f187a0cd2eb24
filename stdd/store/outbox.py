"""The delivery outbox: what is to be sent to SkyPortal, a TOM or a notification channel.

Design note: an item is a row written in the same transaction as the event that causes it (a
frame's end, an action's outcome), so nothing is sent that did not happen and nothing that
happened is forgotten across a crash. `(target, key)` is unique: the key is the idempotency key
the sender passes on where the receiving API accepts one, and enqueueing the same thing twice is
a no-op. Every attempt's outcome is recorded on the row and in the audit log (`delivery.*`
events) in one transaction.

States: `pending` (waiting for `next_try`), `sent`, `failed` (gave up after the configured
attempts; `stdd delivery retry` puts it back), `held` (a notification folded into a later summary
message: sent with it, see stdd/delivery/channels.py).
"""
from __future__ import annotations

import json
import time

from .database import Database

STATES = ("pending", "sent", "failed", "held")


def _decode(row: dict) -> dict:
    for k in ("payload", "response"):
        if isinstance(row.get(k), str) and row[k][:1] in ("{", "["):
            try:
                row[k] = json.loads(row[k])
            except ValueError:
                pass
    return row


class Outbox:
    def __init__(self, db: Database):
        self.db = db

    # -- enqueue (inside the caller's transaction) ------------------------------------------
    def enqueue(self, target: str, kind: str, key: str, payload: dict, *, frame_id: int | None = None,
                alert_id: str | None = None, not_before: float | None = None) -> int | None:
        """Add one item; None when `(target, key)` is already there. Joins an open transaction."""
        now = time.time()
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO deliveries (target, kind, key, payload, state, attempts, next_try,"
                " created_at, updated_at, frame_id, alert_id) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                (target, kind, key, json.dumps(payload, default=str), not_before or now, now, now,
                 frame_id, alert_id))
            return cur.lastrowid if cur.rowcount else None

    # -- the sender's side ----------------------------------------------------------------
    def due(self, now: float | None = None, limit: int = 50) -> list[dict]:
        """Pending items whose time has come, oldest first."""
        now = time.time() if now is None else now
        return [_decode(r) for r in self.db.query(
            "SELECT * FROM deliveries WHERE state = 'pending' AND next_try <= ? ORDER BY next_try, id LIMIT ?",
            (now, limit))]

    def next_due_at(self) -> float | None:
        row = self.db.query_one("SELECT MIN(next_try) AS t FROM deliveries WHERE state = 'pending'")
        return row["t"] if row else None

    def sent_since(self, target: str, since: float) -> int:
        """Messages sent to `target` since `since` (held items went inside one of them)."""
        row = self.db.query_one("SELECT COUNT(*) AS n FROM deliveries WHERE target = ? AND state = 'sent'"
                                " AND sent_at >= ?", (target, since))
        return int(row["n"])

    def oldest_sent_since(self, target: str, since: float) -> float | None:
        row = self.db.query_one("SELECT MIN(sent_at) AS t FROM deliveries WHERE target = ? AND state = 'sent'"
                                " AND sent_at >= ?", (target, since))
        return row["t"] if row else None

    def record(self, item_id: int, outcome: str, *, http_status: int | None = None, error: str | None = None,
               response=None, next_try: float | None = None, held_ids: list[int] = ()) -> None:
        """One attempt's outcome: `sent`, `retry` (pending again at `next_try`) or `failed`; the row
        and its audit event in one transaction. `held_ids`: items folded into this message."""
        now = time.time()
        state = {"sent": "sent", "retry": "pending", "failed": "failed"}[outcome]
        with self.db.write() as conn:
            row = conn.execute("SELECT target, kind, key, attempts, frame_id, alert_id FROM deliveries WHERE id = ?",
                               (item_id,)).fetchone()
            if row is None:
                return
            attempts = int(row["attempts"] or 0) + 1
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_try = ?, updated_at = ?, http_status = ?,"
                " error = ?, response = ?, sent_at = ? WHERE id = ?",
                (state, attempts, next_try if next_try is not None else now, now, http_status, error,
                 json.dumps(response, default=str) if response is not None else None,
                 now if state == "sent" else None, item_id))
            for hid in held_ids:
                conn.execute("UPDATE deliveries SET state = 'held', updated_at = ?, response = ? WHERE id = ?",
                             (now, json.dumps({"summarised_in": item_id}), hid))
            level = {"sent": "INFO", "pending": "WARNING", "failed": "ERROR"}[state]
            what = {"sent": "sent", "pending": "not sent, retried later", "failed": "gave up"}[state]
            detail = f" ({http_status})" if http_status else ""
            detail += f": {error}" if error else ""
            conn.execute(
                "INSERT INTO events (time, level, kind, frame_id, alert_id, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, level, f"delivery.{outcome}", row["frame_id"], row["alert_id"],
                 f"{row['kind']} to {row['target']} {what} (attempt {attempts}){detail}",
                 json.dumps({"delivery_id": item_id, "target": row["target"], "key": row["key"],
                             "attempts": attempts, "http_status": http_status, "held": list(held_ids),
                             "next_try": next_try if state == "pending" else None})))

    def postpone(self, ids: list[int], next_try: float, why: str | None = None) -> None:
        """Items waiting (for a channel's rate limit, or with another item of a receiver that just
        failed): due again at `next_try`, no attempt counted; `why` goes in their error column."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self.db.write() as conn:
            conn.execute(f"UPDATE deliveries SET next_try = ?, updated_at = ?, error = COALESCE(?, error)"
                         f" WHERE state = 'pending' AND id IN ({marks})", (next_try, time.time(), why, *ids))

    # -- people -----------------------------------------------------------------------------
    def list(self, state: str | None = None, target: str | None = None, limit: int = 100) -> list[dict]:
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if target:
            where.append("target LIKE ?")
            params.append(target.replace("*", "%"))
        sql = "SELECT * FROM deliveries" + (" WHERE " + " AND ".join(where) if where else "")
        return [_decode(r) for r in self.db.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))]

    def get(self, item_id: int) -> dict | None:
        row = self.db.query_one("SELECT * FROM deliveries WHERE id = ?", (item_id,))
        return _decode(row) if row else None

    def retry(self, ids: list[int] | None = None) -> int:
        """Failed items (all, or those given) back to pending, due now, with a fresh attempt count."""
        now = time.time()
        with self.db.write() as conn:
            if ids:
                marks = ",".join("?" * len(ids))
                cur = conn.execute(f"UPDATE deliveries SET state = 'pending', attempts = 0, next_try = ?,"
                                   f" updated_at = ? WHERE state IN ('failed', 'pending') AND id IN ({marks})",
                                   (now, now, *ids))
            else:
                cur = conn.execute("UPDATE deliveries SET state = 'pending', attempts = 0, next_try = ?,"
                                   " updated_at = ? WHERE state = 'failed'", (now, now))
            n = cur.rowcount
            conn.execute("INSERT INTO events (time, level, kind, message, data) VALUES (?, 'INFO', 'delivery.requeued', ?, ?)",
                         (now, f"{n} delivery item(s) queued again", json.dumps({"ids": ids})))
            return n

    def prune(self, before: float, limit: int = 2000) -> int:
        """Delete up to `limit` sent or held items last changed before `before` (one short
        transaction); pending and failed items stay whatever their age. Returns how many."""
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state IN"
                               " ('sent', 'held') AND updated_at < ? ORDER BY updated_at LIMIT ?)", (before, limit))
            return cur.rowcount

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")}

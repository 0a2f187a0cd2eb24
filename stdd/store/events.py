"""The audit log: one row per thing that happened, for people and for /frames/{id}."""
from __future__ import annotations

import json
import time

from .database import Database


class EventLog:
    def __init__(self, db: Database):
        self.db = db

    def add(self, kind: str, message: str, *, frame_id: int | None = None, alert_id: str | None = None,
            data: dict | None = None, level: str = "INFO") -> int:
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT INTO events (time, level, kind, frame_id, alert_id, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), level, kind, frame_id, alert_id, message,
                 json.dumps(data, default=str) if data else None),
            )
            return cur.lastrowid

    def recent(self, limit: int = 100, frame_id: int | None = None, alert_id: str | None = None,
               kind_prefix: str | None = None) -> list[dict]:
        where, params = [], []
        if frame_id is not None:
            where.append("frame_id = ?")
            params.append(frame_id)
        if alert_id is not None:
            where.append("alert_id = ?")
            params.append(alert_id)
        if kind_prefix:
            where.append("kind LIKE ?")
            params.append(kind_prefix + "%")
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.query(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        for r in rows:
            if r.get("data"):
                r["data"] = json.loads(r["data"])
        return rows

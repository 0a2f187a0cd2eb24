"""Read-only aggregates for the endpoint's /metrics and /health: counts and duration buckets.

Kept apart from the queue (frames.py) and the alert store (alerts.py) because nothing here
writes: every query is a count or a sum over a table, safe to run on a reader connection.
"""
from __future__ import annotations

import json
from typing import Sequence

from .database import Database
from .frames import frame_filters


class Stats:
    def __init__(self, db: Database):
        self.db = db

    def ping(self) -> int:
        """A trivial read that proves the file can be opened and read; returns the schema version."""
        return self.db.schema_version()

    def queue_due(self, now: float) -> int:
        """Queued frames whose retry time has come (what the pool would take next)."""
        row = self.db.query_one(
            "SELECT COUNT(*) AS n FROM frames WHERE state = 'queued'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)", (now,))
        return int(row["n"]) if row else 0

    def stage_duration_buckets(self, buckets: Sequence[float]) -> dict[str, dict]:
        """Per stage: cumulative counts of finished runs at or below each bound, the total count
        and the sum of seconds — exactly what a Prometheus histogram holds."""
        bounds = [float(b) for b in buckets]
        cases = ", ".join(f"SUM(CASE WHEN seconds <= ? THEN 1 ELSE 0 END) AS b{i}" for i in range(len(bounds)))
        sql = (f"SELECT stage, COUNT(*) AS n, COALESCE(SUM(seconds), 0) AS total{', ' + cases if cases else ''}"
               " FROM stage_runs WHERE seconds IS NOT NULL AND state != 'running' GROUP BY stage")
        out = {}
        for row in self.db.query(sql, bounds):
            out[row["stage"]] = {
                "count": int(row["n"]), "sum": float(row["total"]),
                "buckets": [int(row[f"b{i}"] or 0) for i in range(len(bounds))],
            }
        return out

    def stage_run_counts(self) -> list[dict]:
        """Finished stage runs by stage and outcome."""
        return self.db.query("SELECT stage, state, COUNT(*) AS n FROM stage_runs GROUP BY stage, state")

    def alert_counts(self) -> list[dict]:
        """Alerts by whether they were actionable, and how many are live now."""
        return self.db.query(
            "SELECT COALESCE(actionable, 0) AS actionable, COUNT(*) AS n FROM alerts GROUP BY COALESCE(actionable, 0)")

    def live_alerts(self, now: float) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM alerts WHERE live_until >= ?"
                                " AND COALESCE(retraction, 0) = 0", (now,))
        return int(row["n"]) if row else 0

    def action_counts(self) -> list[dict]:
        return self.db.query("SELECT kind, state, COUNT(*) AS n FROM actions GROUP BY kind, state")

    def frames_total(self, state: str | None = None, since: float | None = None,
                     alert_id: str | None = None) -> int:
        """How many frames match the same filters as FrameStore.list (for paging)."""
        where, params = frame_filters(state, since, alert_id)
        sql = "SELECT COUNT(*) AS n FROM frames" + where
        row = self.db.query_one(sql, params)
        return int(row["n"]) if row else 0

    def alerts_total(self, state: str | None = None, since: float | None = None,
                     live_at: float | None = None) -> int:
        """How many alerts match the filters of GET /alerts (for paging)."""
        where, params = [], []
        if state:
            where.append("state = ?")
            params.append(state)
        if since is not None:
            where.append("received_at >= ?")
            params.append(since)
        if live_at is not None:
            where.append("state = 'live' AND live_until > ? AND region IS NOT NULL")
            params.append(live_at)
        sql = "SELECT COUNT(*) AS n FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        row = self.db.query_one(sql, params)
        return int(row["n"]) if row else 0

    def frames_with_position(self, t0: float, t1: float, limit: int = 5000) -> list[dict]:
        """Frames with a sky position recorded, created in [t0, t1] (newest first): the
        candidates for "frames covering an alert's region"."""
        rows = self.db.query(
            "SELECT * FROM frames WHERE ra IS NOT NULL AND dec IS NOT NULL AND created_at BETWEEN ? AND ?"
            " ORDER BY id DESC LIMIT ?", (t0, t1, limit))
        for row in rows:
            for key in ("footprint", "alert_ids", "steps", "options"):
                if row.get(key):
                    try:
                        row[key] = json.loads(row[key])
                    except (TypeError, ValueError):
                        pass
        return rows

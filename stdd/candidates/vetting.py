"""Vetting marks: what an observer decided a candidate is (real, bogus, variable, asteroid), who
and when — kept for good and exported as a labelled set (each mark with the detection's cutout
and numbers) for a real/bogus model later. A mark is on a candidate (its id in the candidate
history) and on the detection that was shown (frame id, candidate key); marking again replaces
the detection's mark, and every mark is also an audit event."""
from __future__ import annotations

import json
import time

MARKS = ("real", "bogus", "variable", "asteroid")


class Vetting:
    def __init__(self, db):
        self.db = db

    def mark(self, candidate_id: int, mark: str, who: str, note: str | None = None) -> dict:
        """Mark the candidate through its latest detection (inside the caller's transaction)."""
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {', '.join(MARKS)}, got {mark!r}")
        det = self.db.query_one("SELECT * FROM candidate_detections WHERE candidate_id = ? ORDER BY mjd DESC, id DESC"
                                " LIMIT 1", (candidate_id,))
        if det is None:
            raise LookupError(f"no candidate {candidate_id}")
        now = time.time()
        self.db.conn.execute(
            "INSERT INTO vetting (frame_id, cand_key, candidate_id, mark, who, at, note) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(frame_id, cand_key) DO UPDATE SET mark = excluded.mark, who = excluded.who,"
            " at = excluded.at, note = excluded.note, candidate_id = excluded.candidate_id",
            (det["frame_id"], det["cand_key"], candidate_id, mark, who, now, note))
        self.db.conn.execute(
            "INSERT INTO events (time, kind, frame_id, message, data, level) VALUES (?, 'candidate.vetted', ?, ?, ?,"
            " 'INFO')", (now, det["frame_id"], f"candidate {candidate_id} marked {mark} by {who}",
                         json.dumps({"candidate_id": candidate_id, "cand_key": det["cand_key"], "mark": mark})))
        return {"candidate_id": candidate_id, "frame_id": det["frame_id"], "cand_key": det["cand_key"],
                "mark": mark, "who": who, "at": now}

    def marks_of(self, candidate_ids) -> dict[int, dict]:
        ids = list(candidate_ids)
        if not ids:
            return {}
        rows = self.db.query(f"SELECT * FROM vetting WHERE candidate_id IN ({', '.join('?' * len(ids))})"
                             " ORDER BY at", ids)
        return {r["candidate_id"]: r for r in rows}

    def unvetted(self, order: str = "newest", limit: int = 50) -> list[int]:
        by = "c.last_mjd DESC, c.id DESC" if order == "newest" else "best_snr DESC, c.id DESC"
        rows = self.db.query(
            "SELECT c.id, MAX(d.snr) AS best_snr FROM candidates c JOIN candidate_detections d ON d.candidate_id = c.id"
            " WHERE NOT EXISTS (SELECT 1 FROM vetting v WHERE v.candidate_id = c.id)"
            f" GROUP BY c.id ORDER BY {by} LIMIT ?", (limit,))
        return [r["id"] for r in rows]

    def export(self) -> list[dict]:
        """The labelled set: one row per marked detection, with what a model needs to find its pixels."""
        return self.db.query(
            "SELECT v.candidate_id, v.frame_id, v.cand_key, v.mark, v.who, v.at, v.note, d.kind, d.ra, d.dec, d.mjd,"
            " d.filter, d.mag, d.mag_err, d.snr, d.cutout, f.result_dir FROM vetting v"
            " LEFT JOIN candidate_detections d ON d.frame_id = v.frame_id AND d.cand_key = v.cand_key"
            " LEFT JOIN frames f ON f.id = v.frame_id ORDER BY v.at")

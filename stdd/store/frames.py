"""The frame queue: recording frames, claiming them for work, and their stage runs.

States: queued → running → done | failed | cancelled. A frame is recorded (and committed)
before any work on it; claiming is one atomic UPDATE, so two workers never take the same
frame. Order: highest priority first, then oldest.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

from .database import Database

STATES = ("queued", "running", "done", "failed", "cancelled", "calibration")
TERMINAL = ("done", "failed", "cancelled")
#: the reason a light frame waits in the queue while calibration frames wait for their masters
HOLD_FOR_MASTERS = "waiting for the calibration masters being built"

#: result.json keys copied into the frames table for queries and the nightly summary
RESULT_COLUMNS = (
    "filter", "time_mid", "exptime", "ra", "dec", "zp", "zp_err", "color_term",
    "fwhm_arcsec", "mag_limit", "n_stars_calib", "wcs_rms_arcsec",
)


def _now() -> float:
    return time.time()


def _decode(row: dict | None) -> dict | None:
    if row is None:
        return None
    for key in ("steps", "options", "footprint", "alert_ids"):
        if row.get(key):
            try:
                row[key] = json.loads(row[key])
            except (TypeError, ValueError):
                pass
    return row


def frame_filters(state: str | None = None, since: float | None = None,
                  alert_id: str | None = None) -> tuple[str, list]:
    """The WHERE clause (with a leading space, or empty) and parameters of a frame listing."""
    where, params = [], []
    if state:
        where.append("state = ?")
        params.append(state)
    if since is not None:
        where.append("updated_at >= ?")
        params.append(since)
    if alert_id:
        where.append("alert_ids LIKE ?")
        params.append(f'%"{alert_id}"%')
    return (" WHERE " + " AND ".join(where) if where else ""), params


class FrameStore:
    def __init__(self, db: Database):
        self.db = db

    # -- recording ----------------------------------------------------------------------
    def add(self, path: str, sha256: str, size: int, mtime: float | None = None, *,
            priority: int = 0, steps: list[str] | None = None, options: dict | None = None,
            kind: str | None = None, imagetyp: str | None = None) -> tuple[dict, bool]:
        """Record a frame as queued (`kind`, `imagetyp`: its type from the header, when known).
        Returns (row, created); identical content is never added twice."""
        return self._insert(path, sha256, size, mtime, {
            "state": "queued", "priority": priority, "kind": kind, "imagetyp": imagetyp,
            "steps": json.dumps(steps) if steps else None, "options": json.dumps(options) if options else None,
        }, "frame.queued", f"queued {path}", "INFO")

    def add_calibration(self, path: str, sha256: str, size: int, mtime: float | None, *, kind: str,
                        imagetyp: str | None, group: str) -> tuple[dict, bool]:
        """Record a calibration frame (bias, dark, flat): never queued as science; it waits, in state
        `calibration` with no `master`, until its set is built into a master."""
        return self._insert(path, sha256, size, mtime, {
            "state": "calibration", "priority": 0, "kind": kind, "imagetyp": imagetyp, "calib_group": group,
            "queued_at": None,
        }, "frame.calibration", f"{path}: a {kind} frame ({imagetyp})", "INFO")

    def pending_calibration(self) -> list[dict]:
        """Calibration frames not yet built into a master, oldest first."""
        return [_decode(r) for r in self.db.query(
            "SELECT * FROM frames WHERE state = 'calibration' AND master IS NULL ORDER BY id")]

    def set_master(self, frame_ids: list[int], master: str) -> None:
        """What became of calibration frames: the master file, or why none was built."""
        now = _now()
        with self.db.write() as conn:
            conn.executemany("UPDATE frames SET master = ?, updated_at = ?, finished_at = ? WHERE id = ?",
                             [(master, now, now, fid) for fid in frame_ids])

    def hold(self, frame_id: int, until: float, reason: str = HOLD_FOR_MASTERS) -> None:
        """Keep a queued frame from being claimed before `until` (released earlier by `release_held`)."""
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET next_attempt_at = ?, error = ?, updated_at = ? WHERE id = ? AND "
                         "state = 'queued'", (until, reason, _now(), frame_id))
            self._event(conn, "frame.held", frame_id, reason, {"until": until})

    def release_held(self, reason: str = HOLD_FOR_MASTERS) -> int:
        """Queued frames held for `reason` may be claimed now. Returns how many."""
        with self.db.write() as conn:
            return conn.execute("UPDATE frames SET next_attempt_at = NULL, error = NULL, updated_at = ? WHERE "
                                "state = 'queued' AND error = ?", (_now(), reason)).rowcount

    def _insert(self, path: str, sha256: str, size: int, mtime: float | None, columns: dict,
                event: str, message: str, level: str) -> tuple[dict, bool]:
        """One new frame version (numbered per path), unless this content is already recorded."""
        with self.db.write() as conn:
            existing = self.get_by_sha(sha256)
            if existing is not None:
                return existing, False
            prev = conn.execute("SELECT COUNT(*) FROM frames WHERE path = ?", (path,)).fetchone()[0]
            now = _now()
            row = {"path": path, "name": path.rsplit("/", 1)[-1], "sha256": sha256, "size": size, "mtime": mtime,
                   "version": prev + 1, "attempts": 0, "created_at": now, "queued_at": now, "updated_at": now,
                   **columns}
            cur = conn.execute(f"INSERT INTO frames ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
            frame_id = cur.lastrowid
            self._event(conn, event, frame_id, message, {"sha256": sha256, "size": size}, level=level)
            return self.get(frame_id), True

    # -- reading ------------------------------------------------------------------------
    def get(self, frame_id: int) -> dict | None:
        return _decode(self.db.query_one("SELECT * FROM frames WHERE id = ?", (frame_id,)))

    def get_by_sha(self, sha256: str) -> dict | None:
        return _decode(self.db.query_one("SELECT * FROM frames WHERE sha256 = ?", (sha256,)))

    def list(self, state: str | None = None, since: float | None = None, limit: int = 100,
             offset: int = 0, alert_id: str | None = None) -> list[dict]:
        where, params = frame_filters(state, since, alert_id)
        sql = "SELECT * FROM frames" + where + " ORDER BY id DESC LIMIT ? OFFSET ?"
        return [_decode(r) for r in self.db.query(sql, (*params, limit, offset))]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for row in self.db.query("SELECT state, COUNT(*) AS n FROM frames GROUP BY state"):
            out[row["state"]] = row["n"]
        return out

    def stage_runs(self, frame_id: int) -> list[dict]:
        rows = self.db.query("SELECT * FROM stage_runs WHERE frame_id = ? ORDER BY id", (frame_id,))
        for r in rows:
            if r.get("summary"):
                r["summary"] = json.loads(r["summary"])
        return rows

    # -- the queue ----------------------------------------------------------------------
    def claim_next(self, worker: str, now: float | None = None) -> dict | None:
        """Atomically take the best queued frame whose retry time has come, or None."""
        now = now or _now()
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT id FROM frames WHERE state = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
                " ORDER BY priority DESC, queued_at ASC, id ASC LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE frames SET state = 'running', attempts = attempts + 1, worker = ?, started_at = ?,"
                " updated_at = ?, error = NULL WHERE id = ?",
                (worker, now, now, row[0]),
            )
            frame = self.get(row[0])
            self._event(conn, "frame.started", frame["id"], f"attempt {frame['attempts']} on {worker}")
            return frame

    def set_stage(self, frame_id: int, stage: str, pid: int | None = None) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET stage = ?, pid = ?, updated_at = ? WHERE id = ?",
                         (stage, pid, _now(), frame_id))

    def set_dirs(self, frame_id: int, work_dir: str, result_dir: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET work_dir = ?, result_dir = ?, updated_at = ? WHERE id = ?",
                         (work_dir, result_dir, _now(), frame_id))

    def finish(self, frame_id: int, state: str, error: str | None = None, result: dict | None = None) -> None:
        if state not in TERMINAL:
            raise ValueError(f"not a terminal state: {state}")
        now = _now()
        sets = {"state": state, "error": error, "finished_at": now, "updated_at": now, "pid": None}
        if result:
            for key in RESULT_COLUMNS:
                if key in result and not isinstance(result[key], (dict, list)):
                    sets[key] = result[key]
            if isinstance(result.get("footprint"), (list, dict)):
                sets["footprint"] = json.dumps(result["footprint"])
            cands = (result.get("candidates_simple") or []) + (result.get("candidates_sub") or [])
            sets["n_candidates"] = len(cands)
        cols = ", ".join(f"{k} = ?" for k in sets)
        with self.db.write() as conn:
            conn.execute(f"UPDATE frames SET {cols} WHERE id = ?", (*sets.values(), frame_id))
            self._event(conn, f"frame.{state}", frame_id, error or state,
                        level="ERROR" if state == "failed" else "INFO")

    def requeue(self, frame_id: int, reason: str, delay: float = 0.0, count_attempt: bool = True) -> None:
        """Put a frame back in the queue (after a crash, a timeout or a shutdown)."""
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE frames SET state = 'queued', stage = NULL, pid = NULL, error = ?, next_attempt_at = ?,"
                " queued_at = COALESCE(queued_at, ?), updated_at = ?"
                + ("" if count_attempt else ", attempts = MAX(attempts - 1, 0)") + " WHERE id = ?",
                (reason, now + delay if delay else None, now, now, frame_id),
            )
            self._event(conn, "frame.requeued", frame_id, reason, {"delay": delay}, level="WARNING")

    def retry(self, frame_id: int, steps: list[str] | None = None) -> None:
        """A user's retry: back to queued with a fresh attempt count."""
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE frames SET state = 'queued', stage = NULL, error = NULL, attempts = 0, next_attempt_at = NULL,"
                " queued_at = ?, updated_at = ?, steps = COALESCE(?, steps) WHERE id = ?",
                (now, now, json.dumps(steps) if steps else None, frame_id),
            )
            self._event(conn, "frame.retry", frame_id, "retry requested", {"steps": steps})

    def recover_running(self) -> list[int]:
        """At start: frames left running by a crash go back to the queue. Returns their ids."""
        with self.db.write() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM frames WHERE state = 'running'").fetchall()]
            for fid in ids:
                self.requeue(fid, "recovered after an unclean stop", count_attempt=False)
            return ids

    def set_priority(self, frame_id: int, priority: int, alert_id: str | None = None) -> None:
        with self.db.write() as conn:
            frame = self.get(frame_id)
            if frame is None:
                return
            alerts = frame.get("alert_ids") or []
            if alert_id and alert_id not in alerts:
                alerts.append(alert_id)
            conn.execute("UPDATE frames SET priority = MAX(priority, ?), alert_ids = ?, updated_at = ? WHERE id = ?",
                         (priority, json.dumps(alerts) if alerts else None, _now(), frame_id))

    def set_footprint(self, frame_id: int, ra: float, dec: float, radius: float, footprint: Any = None) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET ra = ?, dec = ?, radius = ?, footprint = ?, updated_at = ? WHERE id = ?",
                         (ra, dec, radius, json.dumps(footprint) if footprint is not None else None, _now(), frame_id))

    # -- stage runs ---------------------------------------------------------------------
    def start_stage_run(self, frame_id: int, stage: str, attempt: int, pid: int | None) -> int:
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT INTO stage_runs (frame_id, stage, attempt, state, started_at, pid) VALUES (?, ?, ?, 'running', ?, ?)",
                (frame_id, stage, attempt, _now(), pid),
            )
            conn.execute("UPDATE frames SET stage = ?, pid = ?, updated_at = ? WHERE id = ?",
                         (stage, pid, _now(), frame_id))
            return cur.lastrowid

    def end_stage_run(self, run_id: int, state: str, error: str | None = None, summary: dict | None = None,
                      seconds: float | None = None) -> None:
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE stage_runs SET state = ?, error = ?, summary = ?, finished_at = ?,"
                " seconds = COALESCE(?, ? - started_at) WHERE id = ?",
                (state, error, json.dumps(summary, default=str) if summary else None, now, seconds, now, run_id),
            )

    def close_open_stage_runs(self, frame_id: int, reason: str) -> None:
        now = _now()
        with self.db.write() as conn:
            conn.execute(
                "UPDATE stage_runs SET state = 'aborted', error = ?, finished_at = ?, seconds = ? - started_at"
                " WHERE frame_id = ? AND state = 'running'",
                (reason, now, now, frame_id),
            )

    # -- audit --------------------------------------------------------------------------
    def _event(self, conn, kind: str, frame_id: int | None, message: str, data: dict | None = None,
               level: str = "INFO") -> None:
        conn.execute(
            "INSERT INTO events (time, level, kind, frame_id, message, data) VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), level, kind, frame_id, message, json.dumps(data, default=str) if data else None),
        )

    def ids_in_states(self, states: Iterable[str]) -> list[int]:
        states = list(states)
        marks = ",".join("?" * len(states))
        return [r["id"] for r in self.db.query(f"SELECT id FROM frames WHERE state IN ({marks})", states)]

    # -- for the daemon: intake, cancel, housekeeping --------------------------------------
    def add_rejected(self, path: str, sha256: str, size: int, mtime: float | None, error: str) -> tuple[dict, bool]:
        """Record a file that cannot be processed (empty, truncated, not FITS) as failed at once.
        Returns (row, created); identical content already recorded is not added again."""
        return self._insert(path, sha256, size, mtime,
                            {"state": "failed", "priority": 0, "error": error, "finished_at": _now()},
                            "frame.rejected", f"{path}: {error}", "ERROR")

    def latest_for_path(self, path: str) -> dict | None:
        """The newest recorded version of the file at `path`."""
        return _decode(self.db.query_one("SELECT * FROM frames WHERE path = ? ORDER BY id DESC LIMIT 1", (path,)))

    def cancel_queued(self, frame_id: int, reason: str) -> bool:
        """Cancel a frame that is still queued (atomic against a claim). False if it is not queued."""
        now = _now()
        with self.db.write() as conn:
            n = conn.execute(
                "UPDATE frames SET state = 'cancelled', error = ?, finished_at = ?, updated_at = ?, pid = NULL"
                " WHERE id = ? AND state = 'queued'", (reason, now, now, frame_id)).rowcount
            if n:
                self._event(conn, "frame.cancelled", frame_id, reason)
            return bool(n)

    def next_attempt_time(self) -> float | None:
        """The earliest time a queued frame may be claimed (None: nothing queued)."""
        row = self.db.query_one(
            "SELECT MIN(COALESCE(next_attempt_at, 0)) AS t, COUNT(*) AS n FROM frames WHERE state = 'queued'")
        return row["t"] if row and row["n"] else None

    def queued(self, limit: int = 1000) -> list[dict]:
        """Queued frames in claim order."""
        return [_decode(r) for r in self.db.query(
            "SELECT * FROM frames WHERE state = 'queued' ORDER BY priority DESC, queued_at ASC, id ASC LIMIT ?",
            (limit,))]

    def running(self) -> list[dict]:
        return [_decode(r) for r in self.db.query("SELECT * FROM frames WHERE state = 'running' ORDER BY id")]

    def finished_between(self, t0: float, t1: float) -> list[dict]:
        """Terminal frames created in [t0, t1) (the nightly summary)."""
        return [_decode(r) for r in self.db.query(
            "SELECT * FROM frames WHERE state IN ('done', 'failed', 'cancelled') AND created_at >= ? AND created_at < ?"
            " ORDER BY id", (t0, t1))]

    def finished_before(self, t: float) -> list[dict]:
        """Terminal frames finished before `t` that still have a work folder (retention)."""
        return [_decode(r) for r in self.db.query(
            "SELECT id, name, sha256, path, state, work_dir, finished_at FROM frames"
            " WHERE state IN ('done', 'failed', 'cancelled') AND finished_at < ? AND work_dir IS NOT NULL"
            " ORDER BY id", (t,))]

    def clear_work_dir(self, frame_id: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET work_dir = NULL, updated_at = ? WHERE id = ?", (_now(), frame_id))

    def known_ids(self) -> set[int]:
        return {r["id"] for r in self.db.query("SELECT id FROM frames")}

    def last_stage_run(self, frame_id: int) -> dict | None:
        return self.db.query_one("SELECT * FROM stage_runs WHERE frame_id = ? ORDER BY id DESC LIMIT 1", (frame_id,))

    def set_options(self, frame_id: int, options: dict | None) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE frames SET options = ?, updated_at = ? WHERE id = ?",
                         (json.dumps(options) if options else None, _now(), frame_id))

"""Retention of the state file's history (stdd.store.retention, jobs.prune_database) on real
SQLite files: what ages out and what stays, batches, incremental vacuum, the one-time conversion
of a file made before it, the settings, and a writer in another process during a prune."""
from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time

import pytest

from stdd.config.load import settings_from_dict
from stdd.config.settings import RetentionSettings
from stdd.daemon import jobs
from stdd.store import Database, EventLog, FrameStore
from stdd.store.alerts import AlertStore
from stdd.store.retention import prune

DAY = 86400.0
NOW = time.time()


def age(db: Database, days: float, table: str, column: str, where: str = "1", params=()) -> None:
    """Move rows back in time (the store stamps them with the wall clock)."""
    with db.write() as conn:
        conn.execute(f"UPDATE {table} SET {column} = {column} - ? WHERE {where}", (days * DAY, *params))


def frame_with_runs(frames: FrameStore, name: str, finish: str | None = "done", priority: int = 0) -> int:
    f, _ = frames.add(f"/in/{name}.fits", f"sha-{name}", 100, priority=priority)
    f = frames.claim_next("w")
    assert f["path"] == f"/in/{name}.fits"
    for stage in ("inspect", "photometry"):
        run = frames.start_stage_run(f["id"], stage, 1, 123)
        frames.end_stage_run(run, "done", summary={"blob": "x" * 3000}, seconds=1.0)
    if finish:
        frames.finish(f["id"], finish, None if finish == "done" else "photometry: no stars", {"zp": 25.0})
    return f["id"]


@pytest.fixture
def filled(tmp_path):
    """Frames and their history, 100 days old and new; notices old and new, one not yet parsed."""
    db = Database(tmp_path / "s.sqlite")
    frames, events, alerts = FrameStore(db), EventLog(db), AlertStore(db)
    old_done = [frame_with_runs(frames, f"old{i}") for i in range(30)]
    old_failed = frame_with_runs(frames, "oldfail", "failed")
    old_running = frame_with_runs(frames, "oldrun", None)        # still running (a very long frame)
    f, _ = frames.add("/in/oldq.fits", "sha-oldq", 100)          # queued again after a retry, with old runs
    old_queued = f["id"]
    run = frames.start_stage_run(old_queued, "inspect", 1, 9)
    frames.end_stage_run(run, "failed", error="died")
    for i in range(40):
        events.add("daemon.note", f"old note {i}", data={"pad": "y" * 500})
    mids = []
    for i in range(6):
        mid, _ = alerts.add_message(b"<voe>" + os.urandom(20_000), "gcn.test", 0, i)
        alerts.add_alert({"id": f"ivo://test/{i}", "received_at": time.time(), "message_id": mid, "state": "live"})
        alerts.set_message(mid, "parsed", f"ivo://test/{i}")
        mids.append(mid)
    unparsed, _ = alerts.add_message(b"<voe>not parsed yet</voe>", "gcn.test", 0, 99)
    # everything so far is 100 days old
    for table, col in (("events", "time"), ("stage_runs", "started_at"), ("stage_runs", "finished_at"),
                       ("alert_messages", "received_at"), ("frames", "created_at"), ("frames", "finished_at")):
        age(db, 100, table, col)
    new_done = frame_with_runs(frames, "new", priority=1)  # taken before the queued one
    events.add("daemon.note", "new note")
    new_mid, _ = alerts.add_message(b"<voe>new</voe>", "gcn.test", 0, 100)
    alerts.set_message(new_mid, "parsed", "ivo://test/new")
    yield db, {"old_done": old_done, "old_failed": old_failed, "old_running": old_running, "old_queued": old_queued,
               "new_done": new_done, "mids": mids, "unparsed": unparsed, "new_mid": new_mid}
    db.close()


def count(db: Database, sql: str, params=()) -> int:
    return next(iter(db.query_one(sql, params).values()))


def test_old_history_goes_summaries_and_active_frames_stay(filled):
    db, ids = filled
    n_frames, n_alerts = count(db, "SELECT COUNT(*) FROM frames"), count(db, "SELECT COUNT(*) FROM alerts")
    frame_before = FrameStore(db).get(ids["old_done"][0])
    size_before = db.path.stat().st_size
    rep = prune(db, events_days=30, stage_runs_days=90, notices_days=30, now=NOW, batch_rows=7,
                notice_batch_rows=2)
    # the summaries: every frame and alert row, unchanged
    assert count(db, "SELECT COUNT(*) FROM frames") == n_frames
    assert count(db, "SELECT COUNT(*) FROM alerts") == n_alerts
    assert FrameStore(db).get(ids["old_done"][0]) == frame_before
    # stage runs: the old ones of finished frames go; a running or queued frame's stay, whatever their age
    assert rep.stage_runs == 2 * 31
    left = {r["frame_id"] for r in db.query("SELECT frame_id FROM stage_runs")}
    assert left == {ids["old_running"], ids["old_queued"], ids["new_done"]}
    # events: old ones go, except those of the frames still running or queued; new ones stay
    kept = db.query("SELECT kind, frame_id FROM events")
    assert {e["frame_id"] for e in kept if e["frame_id"]} == {ids["old_running"], ids["old_queued"], ids["new_done"]}
    assert [e["kind"] for e in kept if e["frame_id"] is None] == ["daemon.note"]
    assert rep.events == 40 + 3 * 31  # the notes, and queued/started/finished of each old finished frame
    # notices: old parsed ones lose their bytes but keep their row; the unparsed one and the new one keep theirs
    assert rep.notices == 6
    for mid in ids["mids"]:
        m = AlertStore(db).get_message(mid)
        assert m["raw"] == b"" and m["state"] == "parsed" and m["alert_id"] and m["offset"] is not None
    assert AlertStore(db).get_message(ids["unparsed"])["raw"] == b"<voe>not parsed yet</voe>"
    assert AlertStore(db).get_message(ids["new_mid"])["raw"] == b"<voe>new</voe>"
    # a redelivered notice is still recognised by its (topic, partition, offset)
    assert AlertStore(db).add_message(b"again", "gcn.test", 0, 0) == (ids["mids"][0], False)
    # in short transactions, and the freed pages went back to the file system
    assert rep.batches >= 10 and rep.complete and rep.auto_vacuum == "incremental"
    assert rep.pages_freed > 0 and db.free_pages() == 0
    assert rep.file_bytes_after < size_before and db.path.stat().st_size == rep.file_bytes_after
    # a second run finds nothing more
    again = prune(db, events_days=30, stage_runs_days=90, notices_days=30, now=NOW)
    assert (again.events, again.stage_runs, again.notices, again.pages_freed) == (0, 0, 0, 0)


def test_zero_days_keeps_for_ever_and_the_budget_stops_a_run_that_the_next_one_finishes(filled):
    db, _ = filled
    rep = prune(db, events_days=0, stage_runs_days=0, notices_days=0, now=NOW)
    assert (rep.events, rep.stage_runs, rep.notices, rep.batches) == (0, 0, 0, 0)
    cut = prune(db, events_days=30, stage_runs_days=90, notices_days=30, now=NOW, budget_seconds=0)
    assert not cut.complete and "the next run goes on" in cut.text()
    full = prune(db, events_days=30, stage_runs_days=90, notices_days=30, now=NOW)
    assert full.complete and full.events == 133 and full.stage_runs == 62 and full.notices == 6


def test_a_file_made_before_incremental_vacuum_is_converted_once_and_then_shrinks(tmp_path):
    path = tmp_path / "old.sqlite"
    raw = sqlite3.connect(path)  # an earlier stdd's file: tables made without auto_vacuum
    raw.execute("CREATE TABLE leftover (x)")
    raw.commit()
    raw.close()
    db = Database(path)
    try:
        assert db.auto_vacuum_mode() == "none"
        frames = FrameStore(db)
        for i in range(20):
            frame_with_runs(frames, f"f{i}")
        age(db, 200, "stage_runs", "started_at")
        # pruning works without the conversion: rows go, the pages are kept for reuse
        rep = prune(db, events_days=0, stage_runs_days=90, notices_days=0, now=NOW)
        assert rep.stage_runs == 40 and rep.pages_freed == 0 and "the file does not shrink" in rep.text()
        assert db.free_pages() > 0
        # a file holding more than the start-up limit waits for a later start
        out = jobs.prepare_database(db, convert_max_mb=0.01)
        assert not out["converted"] and out["auto_vacuum"] == "none" and out["content_mb"] > 0.01
        out = jobs.prepare_database(db)
        assert out["converted"] and db.auto_vacuum_mode() == "incremental" and out["auto_vacuum"] == "incremental"
        assert FrameStore(db).counts()["done"] == 20
        assert jobs.prepare_database(db)["converted"] is False  # once only
        names = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"idx_stage_runs_started_at", "idx_alert_messages_received_at"} <= names
    finally:
        db.close()


def test_retention_settings_are_typed_documented_and_validated(tmp_path):
    s = RetentionSettings()
    assert (s.events_days, s.stage_runs_days, s.notices_days) == (30.0, 30.0, 30.0)
    s = settings_from_dict({"retention": {"events_days": 7, "stage_runs_days": 14, "notices_days": 0}}, base=tmp_path)
    assert (s.retention.events_days, s.retention.stage_runs_days, s.retention.notices_days) == (7, 14, 0)
    for bad in ({"events_days": -1}, {"stage_run_days": 3}, {"notices_days": "a month"}):
        with pytest.raises(Exception, match="retention"):
            settings_from_dict({"retention": bad}, base=tmp_path)


def _writer(path: str, ready, stop, out) -> None:
    """Another process (as the daemon is to the job's connection): add events and time each one."""
    db = Database(path, migrate=False)
    log = EventLog(db)
    waits = []
    while not stop.is_set():
        t0 = time.perf_counter()
        log.add("test.writer", "while the prune runs")
        waits.append(time.perf_counter() - t0)
        ready.set()
        time.sleep(0.002)
    db.close()
    out.put((len(waits), max(waits)))


def test_the_daemons_job_prunes_on_its_own_connection_while_another_process_writes(tmp_path):
    path = tmp_path / "s.sqlite"
    with Database(path) as db:
        frames, log = FrameStore(db), EventLog(db)
        with db.write():
            for i in range(300):
                frame_with_runs(frames, f"f{i}")
            for i in range(3000):
                log.add("daemon.note", f"note {i}", data={"pad": "z" * 300})
        age(db, 100, "events", "time")
        age(db, 100, "stage_runs", "started_at")
    ctx = mp.get_context("spawn")
    q, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=_writer, args=(str(path), ready, stop, q))
    p.start()
    assert ready.wait(30)  # the writer is up and writing
    out = jobs.prune_database(path, RetentionSettings(events_days=30, stage_runs_days=90), now=NOW)
    stop.set()
    writes, worst_wait = q.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert out["stage_runs"] == 600 and out["events"] >= 3000 + 900 and out["complete"]
    assert out["batches"] >= 3 and out["longest_lock_ms"] < 1000
    assert writes > 5 and worst_wait < 2.0, f"a writer waited {worst_wait:.2f} s during the prune"
    assert "stage run(s) deleted" in out["text"]


def test_opening_an_existing_file_does_not_wait_for_a_writer(tmp_path):
    """Only a new file gets `auto_vacuum` set on open: on an existing one the pragma would take
    the write lock, so a reader (/health, `stdd status`) would wait for whoever holds it."""
    path = tmp_path / "s.sqlite"
    Database(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer (a backup, a sqlite3 shell) holds the lock
    try:
        t0 = time.monotonic()
        db = Database(path, migrate=False, busy_timeout_ms=3000)
        assert db.schema_version() >= 1 and db.auto_vacuum_mode() == "incremental"
        db.close()
        assert time.monotonic() - t0 < 1.0
    finally:
        holder.execute("COMMIT")
        holder.close()

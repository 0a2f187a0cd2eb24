"""The SQLite store: schema and migrations, the frame queue, concurrent writers in real processes."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from stdd.store import SCHEMA_VERSION, Database, EventLog, FrameStore, StoreError
from stdd.store import database as dbmod


def test_create_migrate_reopen_idempotent(tmp_path):
    path = tmp_path / "s.sqlite"
    with Database(path) as db:
        assert db.schema_version() == SCHEMA_VERSION
        tables = set(db.db.table_names())
        assert {"frames", "stage_runs", "alerts", "alert_messages", "actions", "events", "meta"} <= tables
        assert db.query_one("PRAGMA journal_mode")["journal_mode"] == "wal"
        FrameStore(db).add("/x/a.fits", "h1", 10)
    for _ in range(2):
        with Database(path) as db:
            assert db.migrate() == SCHEMA_VERSION
            assert FrameStore(db).counts()["queued"] == 1


def test_forward_migration_applies_only_new_steps(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    Database(path).close()
    calls = []

    def v2(db):
        calls.append(1)
        db["frames"].add_column("note", str)

    monkeypatch.setattr(dbmod, "MIGRATIONS", [*dbmod.MIGRATIONS, v2])
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", len(dbmod.MIGRATIONS))
    with Database(path) as db:
        assert db.schema_version() == SCHEMA_VERSION + 1
        assert "note" in db.db["frames"].columns_dict
    with Database(path) as db:
        pass
    assert calls == [1]


def test_newer_file_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    with Database(path) as db:
        with db.write():
            db.db["meta"].upsert({"key": "schema_version", "value": "999"}, pk="key")
    with pytest.raises(StoreError, match="newer than this stdd"):
        Database(path)


def test_a_failed_transaction_leaves_nothing(tmp_path):
    with Database(tmp_path / "s.sqlite") as db:
        frames = FrameStore(db)
        with pytest.raises(RuntimeError):
            with db.write():
                frames.add("/x/a.fits", "h1", 1)
                raise RuntimeError("boom")
        assert frames.counts()["queued"] == 0


def test_queue_order_dedupe_versions_and_recovery(tmp_path):
    with Database(tmp_path / "s.sqlite") as db:
        frames = FrameStore(db)
        a, created = frames.add("/cam/a.fits", "ha", 1)
        assert created
        assert frames.add("/cam/copy.fits", "ha", 1) == (a, False)  # same content: never twice
        b, _ = frames.add("/cam/a.fits", "hb", 1)  # new content at the same path: a new version
        assert b["version"] == 2
        c, _ = frames.add("/cam/c.fits", "hc", 1, priority=5)
        assert frames.claim_next("w")["id"] == c["id"]  # priority first
        assert frames.claim_next("w")["id"] == a["id"]  # then oldest
        assert frames.recover_running() == sorted([a["id"], c["id"]])
        assert frames.counts()["running"] == 0
        assert frames.get(a["id"])["attempts"] == 0
        f = frames.claim_next("w")
        run = frames.start_stage_run(f["id"], "inspect", f["attempts"], 123)
        frames.end_stage_run(run, "done", summary={"ra": 1.0})
        frames.finish(f["id"], "done", result={"zp": 25.01, "zp_err": 0.01, "candidates_sub": [{}, {}]})
        row = frames.get(f["id"])
        assert (row["state"], row["zp"], row["n_candidates"]) == ("done", 25.01, 2)
        assert frames.stage_runs(f["id"])[0]["summary"] == {"ra": 1.0}
        kinds = [e["kind"] for e in EventLog(db).recent(frame_id=f["id"])]
        assert "frame.done" in kinds and "frame.queued" in kinds
        with pytest.raises(ValueError):
            frames.finish(f["id"], "running")


def test_retry_backoff_is_respected(tmp_path):
    with Database(tmp_path / "s.sqlite") as db:
        frames = FrameStore(db)
        f, _ = frames.add("/cam/a.fits", "ha", 1)
        frames.claim_next("w")
        frames.requeue(f["id"], "worker died", delay=60)
        assert frames.claim_next("w") is None
        assert frames.claim_next("w", now=frames.get(f["id"])["next_attempt_at"] + 1)["id"] == f["id"]


def _writer(path: str, tag: str, n: int, claims) -> None:
    db = Database(path)
    frames = FrameStore(db)
    for i in range(n):
        frames.add(f"/cam/{tag}{i}.fits", f"{tag}-{i}", i)
        got = frames.claim_next(tag)
        if got:
            claims.put(got["id"])
    db.close()


def test_two_processes_writing_at_once(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Database(path).close()
    ctx = mp.get_context("spawn")
    claims = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, tag, 150, claims)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    taken = []
    while not claims.empty():
        taken.append(claims.get())
    assert len(taken) == len(set(taken))  # no frame claimed twice
    with Database(path) as db:
        assert db.query_one("PRAGMA integrity_check")["integrity_check"] == "ok"
        counts = FrameStore(db).counts()
        assert sum(counts.values()) == 300
        assert counts["running"] == len(taken)
    # a plain sqlite3 reader agrees
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(DISTINCT sha256) FROM frames").fetchone()[0] == 300


def test_a_failed_commit_leaves_no_open_transaction(tmp_path):
    """A COMMIT refused (here: a deferred foreign key broken at commit time) is rolled back,
    so the next write transaction can begin (a full disk fails at COMMIT the same way)."""
    import sqlite3

    import pytest as _pytest

    from stdd.store import Database

    db = Database(tmp_path / "s.sqlite")
    db.conn.execute("PRAGMA defer_foreign_keys = ON")
    with _pytest.raises(sqlite3.IntegrityError):
        with db.write() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO stage_runs (frame_id, stage, state) VALUES (999, 'inspect', 'running')")
    assert not db.conn.in_transaction
    with db.write() as conn:
        conn.execute("INSERT INTO events (time, kind) VALUES (1, 'x')")
    assert db.query_one("SELECT COUNT(*) AS n FROM stage_runs")["n"] == 0
    db.close()

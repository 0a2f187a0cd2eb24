"""Alert delivery on a real SQLite file: the schema v2 migration of a v1 file (with what the old
code could leave behind), content-hash de-duplication, fsync'd commits, and what `recover` does
with each kind of half-done work."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest
import sqlite_utils

from stdd.alerts import AlertService, IntakeMessage
from stdd.alerts.latency import swift_voevent
from stdd.config import settings_from_dict
from stdd.store import SCHEMA_VERSION, Database
from stdd.store import database as dbmod

TOPIC = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"


def settings_for(tmp_path, **action):
    return settings_from_dict({"alerts": {
        "enabled": True, "rules": [{"require_visible": False, "actions": ["req"]}],
        "actions": {"req": {"kind": "request_file", "folder": "req", **action}}}}, base=tmp_path)


def requests(tmp_path) -> list[str]:
    folder = tmp_path / "req"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def wait_all(futures, timeout=30):
    for f in futures:
        f.result(timeout=timeout)


def v1_file(path) -> None:
    """A database as stdd wrote it before schema v2."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    db = sqlite_utils.Database(conn)
    dbmod.MIGRATIONS[0](db)
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert({"key": "schema_version", "value": "1"})
    conn.close()


def test_v1_file_migrates_and_recovery_finishes_what_the_old_code_left(tmp_path):
    path = tmp_path / "stdd.sqlite"
    v1_file(path)
    raw, raw_kafka = swift_voevent(8801, ra=33.0, dec=-3.0), swift_voevent(8802)
    decision = {"act": True, "kind": "observe", "reason": None, "priority": 5, "rule": 0, "actions": ["req"],
                "visibility": None}
    conn = sqlite3.connect(path, isolation_level=None)
    ins = 'INSERT INTO alert_messages (topic, partition, "offset", received_at, raw, state) VALUES (?, ?, ?, ?, ?, ?)'
    # the drop folder retried a file: two rows of the same bytes; the old path then stopped between
    # the alert row and its claims, leaving the alert live without actions and the message unprocessed
    conn.execute(ins, ("file:grb.xml", None, None, 1.0, raw, "received"))
    conn.execute(ins, ("file:grb.xml", None, None, 2.0, raw, "received"))
    conn.execute(ins, (TOPIC, 0, 7, 3.0, raw_kafka, "parsed"))
    alert_id = "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_8801-1"
    conn.execute("INSERT INTO alerts (id, event_id, mission, state, actionable, decision, live_until, received_at,"
                 " message_id, parsed, region, priority) VALUES (?, '8801', 'Swift', 'live', 1, ?, ?, ?, 1, ?, ?, 5)",
                 (alert_id, json.dumps(decision), time.time() + 3600, time.time(),
                  json.dumps({"id": alert_id, "ra": 33.0, "dec": -3.0}),
                  json.dumps({"kind": "circle", "ra": 33.0, "dec": -3.0, "radius": 0.05, "containment": 0.9})))
    conn.close()

    db = Database(path)
    assert db.schema_version() == SCHEMA_VERSION
    msgs = {m["id"]: m for m in db.query("SELECT id, sha256, deliveries, attempts FROM alert_messages")}
    assert msgs[1]["sha256"] and msgs[2]["sha256"] is None and msgs[3]["sha256"]  # the copy keeps no hash
    assert {m["deliveries"] for m in msgs.values()} == {1}
    with pytest.raises(sqlite3.IntegrityError):  # the hash is unique among messages without an offset
        with db.write() as c:
            c.execute("INSERT INTO alert_messages (received_at, raw, state, sha256) VALUES (0, x'00', 'x', ?)",
                      (msgs[1]["sha256"],))

    service = AlertService(db, settings_for(tmp_path))
    outcomes = service.recover()
    wait_all(service.resumed)
    # the live alert got its claim and acted once; both old messages are now duplicates of it
    assert [o.state for o in outcomes] == ["duplicate", "duplicate"]
    assert requests(tmp_path) == ["ivo_nasa.gsfc.gcn_SWIFT_BAT_GRB_Pos_8801-1.req.observe.json"]
    assert [e["kind"] for e in service.events.recent(kind_prefix="alert.recovered")] == ["alert.recovered"]
    again = service.handle(IntakeMessage(raw, hint="grb.xml"))  # the same file dropped again
    assert again.state == "duplicate" and again.message_id == 1
    assert service.recover() == [] and service.resumed == []
    service.close()
    db.close()


def test_messages_without_offset_are_deduplicated_by_content(tmp_path):
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings_for(tmp_path))
    raw = swift_voevent(8810)
    first = service.handle(IntakeMessage(raw, hint="a.xml"))
    first.wait(30)
    posted = service.handle(IntakeMessage(raw, topic=TOPIC))  # the same bytes POSTed with a topic
    renamed = service.handle(IntakeMessage(raw, hint="b.xml"))
    assert first.state == "parsed" and posted.state == renamed.state == "duplicate"
    assert posted.message_id == renamed.message_id == first.message_id and posted.alert_id == first.alert_id
    garbage = service.handle(IntakeMessage(b"<nothing/>", hint="x.xml"))
    garbage_again = service.handle(IntakeMessage(b"<nothing/>", hint="y.xml"))
    assert garbage.state == garbage_again.state == "error" and garbage_again.error == garbage.error
    rows = {m["id"]: m for m in service.store.messages()}
    assert rows[first.message_id]["deliveries"] == 3 and len(rows) == 2
    assert len(requests(tmp_path)) == 1
    # a Kafka message is keyed by its offset, not its bytes: the same notice at a new offset is a new
    # message, recognised as a duplicate notice
    k1 = service.handle(IntakeMessage(raw, TOPIC, 0, 1))
    assert k1.state == "duplicate" and k1.message_id != first.message_id
    assert db.query_one("PRAGMA synchronous")["synchronous"] == 2  # FULL: every commit is fsync'd
    service.close()
    db.close()


def test_a_notice_that_keeps_killing_stdd_is_given_up(tmp_path):
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings_for(tmp_path))
    mid, _ = service.store_message(IntakeMessage(swift_voevent(8820), TOPIC, 0, 3))  # attempt 1: died
    service.store.count_attempt(mid)  # attempts 2 and 3 (two restarts): died as well
    service.store.count_attempt(mid)
    out = service.recover()
    assert [o.state for o in out] == ["error"] and "3 processing attempts" in out[0].error
    assert service.store.get_message(mid)["state"] == "error" and requests(tmp_path) == []
    assert service.events.recent(kind_prefix="alert.error")[0]["level"] == "ERROR"
    again = service.handle(IntakeMessage(swift_voevent(8820), TOPIC, 0, 3))  # Kafka redelivers it
    assert again.state == "already-processed"
    service.close()
    db.close()


def claimed_then_stopped(tmp_path, state: str, **action):
    """An alert whose action a stopped stdd left `state` (pending or running)."""
    db = Database(tmp_path / "stdd.sqlite")
    settings = settings_for(tmp_path, **action)
    first = AlertService(db, settings)
    first.runner.close()  # nothing submitted runs: as if stdd stopped right after the commit
    out = first.handle(IntakeMessage(swift_voevent(8830), TOPIC, 0, 1))
    assert out.state == "parsed" and out.futures == [] and len(out.action_ids) == 1  # claimed, not started
    action_id = first.store.actions_for_alert(out.alert_id)[0]["id"]
    if state == "running":
        first.store.start_action(action_id)
    return db, settings, out.alert_id, action_id


@pytest.mark.parametrize("state", ["pending", "running"])
def test_recovery_runs_claimed_actions(tmp_path, state):
    db, settings, alert_id, action_id = claimed_then_stopped(tmp_path, state)
    service = AlertService(db, settings)
    service.recover()
    wait_all(service.resumed)
    row = service.store.get_action(action_id)
    assert row["state"] == "done" and row["runs"] == (2 if state == "running" else 1)
    payload = json.loads((tmp_path / "req" / requests(tmp_path)[0]).read_text())
    assert payload["run"] == row["runs"] and payload["action_id"] == action_id and payload["idempotency_key"]
    service.close()
    db.close()


def test_rerun_interrupted_false_is_at_most_once(tmp_path):
    db, settings, alert_id, action_id = claimed_then_stopped(tmp_path, "running", rerun_interrupted=False)
    service = AlertService(db, settings)
    service.recover()
    assert service.resumed == [] and requests(tmp_path) == []
    row = service.store.get_action(action_id)
    assert row["state"] == "failed" and "rerun_interrupted = false" in row["error"]
    service.close()
    db.close()


def test_no_observation_for_an_alert_retracted_or_expired_meanwhile(tmp_path):
    db, settings, alert_id, action_id = claimed_then_stopped(tmp_path, "pending")
    later = AlertService(db, settings, clock=lambda: time.time() + 49 * 3600)  # restarted after the live time
    later.recover()
    assert later.resumed == [] and requests(tmp_path) == []
    assert "live time ended" in later.store.get_action(action_id)["error"]
    later.close()
    db.close()
    retracted_dir = tmp_path / "r"
    retracted_dir.mkdir()
    db, settings, alert_id, action_id = claimed_then_stopped(retracted_dir, "pending")
    service = AlertService(db, settings)
    service.store.update_alert(alert_id, state="retracted")
    service.recover()
    assert service.resumed == [] and requests(retracted_dir) == []
    assert "retracted" in service.store.get_action(action_id)["error"]
    service.close()
    db.close()

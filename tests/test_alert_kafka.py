"""End to end with a real local Kafka broker (noida-db): intake → SQLite → policy → actions."""
from __future__ import annotations

import json
import time

import pytest
from alert_skymap import make_gwalert
from kafka_broker import broker_binary, broker_or_skip, produce

from stdd.alerts import AlertService, KafkaIntake
from stdd.alerts.latency import measure_latency, swift_voevent
from stdd.config import settings_from_dict
from stdd.store import Database

BAT = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"
GBM = "gcn.classic.voevent.FERMI_GBM_SUBTHRESH"
GW = "igwn.gwalert"
HB = "gcn.heartbeat"
TOPICS = [BAT, GBM, GW, HB]

pytestmark = pytest.mark.skipif(broker_binary() is None, reason="noida-db (the local Kafka broker) is not installed")


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def broker(tmp_path):
    b = broker_or_skip(tmp_path / "kafka", *TOPICS, max_message_bytes=8 * 1024 * 1024)
    yield b
    b.stop()


@pytest.fixture
def chain(tmp_path, broker):
    settings = settings_from_dict({"alerts": {
        "enabled": True,
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": TOPICS, "group_id": "stdd-test",
                  "reconnect_backoff_max_seconds": 1.0},
        "rules": [{"require_visible": False, "priority": 5, "actions": ["req"]}],
        "actions": {"req": {"kind": "request_file", "folder": "requests"}}}}, base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings)
    intake = KafkaIntake(settings, service.handle)
    intake.start()
    yield broker, service, intake, tmp_path / "requests"
    intake.stop()
    service.close()
    db.close()


def actions(service) -> list[dict]:
    return service.store.list_actions(limit=1000)


def test_notice_acts_once_duplicate_and_test_role_do_not(chain, shared_data):
    broker, service, intake, requests = chain
    producer = broker.producer()
    raw = swift_voevent(4001, ra=12.0, dec=-3.0)
    produce(producer, BAT, raw)
    wait_for(lambda: [a for a in actions(service) if a["state"] == "done"], what="the action")
    assert intake.status()["connected"]
    # the same notice delivered again, and a real test-role notice
    produce(producer, BAT, raw)
    produce(producer, GBM, (shared_data / "gcn/voevent/fermi_gbm_subthresh_546126856_roletest.xml").read_bytes())
    wait_for(lambda: intake.status()["messages_stored"] == 3, what="three messages stored")
    counts = service.store.message_counts()
    assert counts == {"parsed": 2, "duplicate": 1}
    assert len(actions(service)) == 1 and len(list(requests.glob("*.json"))) == 1
    test_row = [r for r in service.store.list_alerts() if r["role"] == "test"]
    assert len(test_row) == 1 and test_row[0]["state"] == "ignored"
    msgs = service.store.messages()
    assert {(m["topic"], m["offset"]) for m in msgs} == {(BAT, 0), (BAT, 1), (GBM, 0)}


def test_heartbeat_is_tracked_not_stored(chain):
    broker, service, intake, _ = chain
    produce(broker, HB, json.dumps({"alert_datetime": "2026-01-01T00:00:01Z"}).encode())
    st = wait_for(lambda: (s := intake.status())["heartbeats"] and s, what="a heartbeat")
    assert st["last_heartbeat_notice"] == "2026-01-01T00:00:01Z" and st["heartbeat_age_seconds"] < 30
    assert service.store.messages() == []


def test_broker_restart_loses_nothing(chain):
    broker, service, intake, requests = chain
    producer = broker.producer()
    for i in range(3):
        produce(producer, BAT, swift_voevent(5000 + i))
    wait_for(lambda: len(actions(service)) >= 1, what="the first action")
    broker.stop()
    wait_for(lambda: not intake.status()["connected"], timeout=30, what="the intake to notice the broker is gone")
    assert intake.status()["last_error"]
    broker.start()
    producer = broker.producer()
    for i in range(3, 6):
        produce(producer, BAT, swift_voevent(5000 + i))
    wait_for(lambda: len([a for a in actions(service) if a["state"] == "done"]) == 6, timeout=60,
             what="all six actions")
    per_alert = {}
    for a in actions(service):
        per_alert[a["alert_id"]] = per_alert.get(a["alert_id"], 0) + 1
    assert len(per_alert) == 6 and set(per_alert.values()) == {1}
    assert len(list(requests.glob("*.json"))) == 6
    assert intake.status()["connected"]


def test_restarted_consumer_resumes_after_committed_offset(tmp_path, broker):
    settings = settings_from_dict({"alerts": {
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": [BAT], "group_id": "stdd-resume"},
        "rules": [{"require_visible": False, "actions": ["req"]}],
        "actions": {"req": {"kind": "request_file", "folder": "requests"}}}}, base=tmp_path)
    db = Database(tmp_path / "resume.sqlite")
    service = AlertService(db, settings)
    produce(broker, BAT, swift_voevent(6001))
    first = KafkaIntake(settings, service.handle)
    first.start()
    wait_for(lambda: first.status()["messages_stored"] == 1, what="first message")
    first.stop()
    produce(broker, BAT, swift_voevent(6002))
    second = KafkaIntake(settings, service.handle)
    second.start()
    try:
        wait_for(lambda: second.status()["messages_stored"] >= 1, what="second message")
        time.sleep(1.0)
        assert second.status()["messages_stored"] == 1  # the first one was committed: not redelivered
        assert service.store.message_counts() == {"parsed": 2}
    finally:
        second.stop()
        service.close()
        db.close()


def test_failed_handling_is_retried_not_skipped(tmp_path, broker):
    settings = settings_from_dict({"alerts": {
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": [BAT], "group_id": "stdd-retry"},
        "rules": [{"require_visible": False}]}}, base=tmp_path)
    db = Database(tmp_path / "retry.sqlite")
    service = AlertService(db, settings)
    calls = []

    def flaky(msg):
        calls.append(msg.offset)
        if len(calls) == 1:
            raise OSError("disk full (simulated by the test's callback)")
        return service.handle(msg)

    intake = KafkaIntake(settings, flaky)
    intake.start()
    try:
        produce(broker, BAT, swift_voevent(7001))
        wait_for(lambda: intake.status()["messages_stored"] == 1, timeout=30, what="the retried message")
        assert calls == [0, 0] and "disk full" in intake.status()["last_error"]
        assert service.store.message_counts() == {"parsed": 1}
    finally:
        intake.stop()
        service.close()
        db.close()


def test_one_megabyte_lvk_alert(chain):
    broker, service, intake, requests = chain
    raw = make_gwalert("S260103ef", ra0=120.0, dec0=10.0)
    assert len(raw) > 1_000_000  # over librdkafka's default message.max.bytes
    produce(broker.producer(), GW, raw)
    wait_for(lambda: [a for a in actions(service) if a["state"] == "done"], timeout=60, what="the LVK action")
    alert = service.store.list_alerts()[0]
    assert alert["mission"] == "LVK" and alert["event_id"] == "S260103ef"
    row = service.store.get_alert(alert["id"])
    assert row["parsed"]["has_skymap"] and row["skymap"]["area_deg2"] == pytest.approx(173.6, rel=0.06)
    region = service.live_regions()[0]
    assert region.kind == "skymap" and region.contains(120.0, 10.0) and not region.contains(300.0, -10.0)
    assert region.overlaps(121.0, 10.5, 0.5)
    payload = json.loads(next(requests.glob("*.json")).read_text())
    assert payload["alert"]["skymap"]["area_deg2"] == pytest.approx(row["skymap"]["area_deg2"])
    assert len(json.dumps(payload)) < 100_000  # the 1 MB base64 map is not forwarded, its summary is


def test_latency_bench(tmp_path, broker):
    result = measure_latency(broker.bootstrap, tmp_path / "bench", n=20)
    assert result["n"] == 20 and result["missing"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 2000

"""Supervised intakes and their health: the daemon's alert link with the drop folder only, a
Kafka broker that is not there, and a real local broker (noida-db) with faults injected into
the consumer loop (STDD_FAULTS, in this process): an iteration that raises, a loop that hangs,
a consumer that keeps failing, a thread that dies."""
from __future__ import annotations

import asyncio
import time

import pytest
from kafka_broker import broker_or_skip, free_port, produce

from stdd import faults
from stdd.alerts import AlertService, KafkaIntake
from stdd.alerts.intake import consumer_config
from stdd.alerts.latency import swift_voevent
from stdd.alerts.link import AlertLink
from stdd.config import settings_from_dict
from stdd.store import Database, EventLog

TOPIC = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def set_faults(monkeypatch):
    def set_(spec: str) -> None:
        monkeypatch.setenv(faults.ENV, spec)
        faults.reload_from_env()

    yield set_
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reload_from_env()


def link_settings(tmp_path, kafka: dict | None):
    return settings_from_dict({
        "paths": {"database": "stdd.sqlite", "alert_drop": "drop"},
        "alerts": {"enabled": True, "drop_poll_seconds": 0.05, "drop_settle_seconds": 0.0,
                   "kafka": kafka or {"enabled": False},
                   "rules": [{"require_visible": False, "actions": ["req"]}],
                   "actions": {"req": {"kind": "request_file", "folder": "req"}}}}, base=tmp_path)


def test_drop_folder_only_link_is_healthy_while_its_watcher_runs(tmp_path):
    async def scenario():
        link = AlertLink(link_settings(tmp_path, None))
        before = link.health()
        assert before["ok"] is False and before["stalled"] is False
        await link.start(None)
        try:
            health = link.health()
            assert health["ok"] is True and health["stalled"] is False and health["kafka"] is None
            assert "drop folder: running" in health["detail"] and health["drop_folder"]["last_poll_at"]
            (tmp_path / "drop" / "grb.xml").write_bytes(swift_voevent(9901))
            await asyncio.to_thread(wait_for, lambda: list((tmp_path / "req").glob("*.json")), 20, "the request")
            assert link.health()["drop_folder"]["files"] == 1
        finally:
            await link.stop()
        after = link.drop.health()
        assert after["ok"] is False and after["stalled"] is False and "not running" in after["detail"]

    asyncio.run(scenario())


def test_unreachable_broker_is_not_ok_but_not_stalled(tmp_path):
    port = free_port()  # nothing listens here

    async def scenario():
        link = AlertLink(link_settings(tmp_path, {"bootstrap_servers": f"127.0.0.1:{port}", "topics": [TOPIC],
                                                  "reconnect_backoff_max_seconds": 1.0}))
        await link.start(None)
        try:
            await asyncio.to_thread(wait_for, lambda: link.kafka.status()["last_error"], 20, "a connection error")
            health = link.health()
            assert health["ok"] is False and health["stalled"] is False
            assert f"not connected to 127.0.0.1:{port} since" in health["detail"]
            assert health["drop_folder"]["ok"] and not health["kafka"]["ok"]
            events = EventLog(link.db).recent(kind_prefix="alert.intake")
            assert events and events[0]["level"] == "WARNING" and "kafka" in events[0]["message"]
        finally:
            await link.stop()

    asyncio.run(scenario())


@pytest.fixture
def broker(tmp_path):
    b = broker_or_skip(tmp_path / "kafka", TOPIC)
    yield b
    b.stop()


@pytest.fixture
def chain(tmp_path, broker):
    settings = settings_from_dict({"alerts": {
        "enabled": True, "rules": [{"require_visible": False}],
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": [TOPIC], "group_id": "stdd-health",
                  "reconnect_backoff_max_seconds": 1.0}}}, base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings)
    events = []
    intakes = []

    def make(**kw):
        intake = KafkaIntake(settings, service.handle, on_event=lambda *a: events.append(a), **kw)
        intakes.append(intake)
        return intake

    yield broker, service, make, events, settings
    for intake in intakes:
        intake.stop()
    service.close()
    db.close()


def stored(service) -> int:
    return sum(service.store.message_counts().values())


def test_iteration_errors_are_recorded_and_a_failing_consumer_is_rebuilt(chain, set_faults):
    broker, service, make, events, _ = chain
    intake = make()
    intake.start()
    wait_for(lambda: intake.health()["ok"], 30, "connected")
    set_faults("alert.kafka_poll=once:raise")  # one iteration fails: recorded, the loop goes on
    wait_for(lambda: intake.status()["errors"], 10, "the error recorded")
    assert "FaultInjected" in intake.status()["last_error"] and intake.status()["consumer_restarts"] == 0
    assert any("poll iteration failed" in e[1] for e in events)
    set_faults("alert.kafka_poll=raise")  # every iteration fails: after 5 in a row, a new consumer
    wait_for(lambda: intake.status()["consumer_restarts"] >= 1, 30, "the consumer rebuilt")
    assert intake.health()["stalled"] is False  # failing and retrying is not being stuck
    set_faults("")
    produce(broker, TOPIC, swift_voevent(9910))
    wait_for(lambda: stored(service) == 1, 30, "the notice after the faults")
    wait_for(lambda: intake.health()["ok"], 30, "healthy again")


def test_a_stuck_loop_is_stalled_until_it_moves_again(chain, set_faults):
    broker, service, make, events, _ = chain
    intake = make(stall_after=1.0)
    intake.start()
    wait_for(lambda: intake.health()["ok"], 30, "connected")
    set_faults("alert.kafka_poll=once:hang:3")
    health = wait_for(lambda: (h := intake.health())["stalled"] and h, 5, "stalled")
    assert health["ok"] is False and "stuck, no loop iteration for" in health["detail"]
    wait_for(lambda: not intake.health()["stalled"], 10, "moving again")
    produce(broker, TOPIC, swift_voevent(9920))
    wait_for(lambda: stored(service) == 1, 30, "a notice after the hang")


def test_a_dead_consumer_thread_is_started_again(chain):
    broker, service, make, events, settings = chain
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("the consumer thread ends (test)")  # not an Exception: the thread dies
        from gcn_kafka import Consumer

        return Consumer(**consumer_config(settings.alerts.kafka))

    intake = make(consumer_factory=factory)
    intake.start()
    health = wait_for(lambda: (h := intake.health())["stalled"] and h, 10, "the dead thread noticed")
    assert "thread has died" in health["detail"]
    assert intake.ensure_running() is True and intake.status()["thread_restarts"] == 1
    wait_for(lambda: intake.health()["ok"], 30, "connected after the restart")
    produce(broker, TOPIC, swift_voevent(9930))
    wait_for(lambda: stored(service) == 1, 30, "a notice on the new thread")
    assert any("thread ended" in e[1] for e in events)

"""/health's alert-stream check and /alerts against a real local Kafka broker (noida-db): the
stream connected but silent is down (503); a heartbeat makes it healthy; a notice sent through
Kafka shows up in GET /alerts."""
from __future__ import annotations

import json

import aiohttp
import pytest

from http_env import AlertServiceBeside, make_settings, running_daemon, wait_for
from kafka_broker import broker_binary, broker_or_skip, produce

BAT = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"
HB = "gcn.heartbeat"

pytestmark = pytest.mark.skipif(broker_binary() is None, reason="noida-db (the local Kafka broker) is not installed")


@pytest.fixture
def broker(tmp_path):
    b = broker_or_skip(tmp_path / "kafka", BAT, HB)
    yield b
    b.stop()


async def test_alert_stream_health_and_alerts_from_kafka(tmp_path, broker, shared_data):
    settings = make_settings(tmp_path, extra={"alerts": {
        "enabled": True, "rules": [{"require_visible": False}],
        "kafka": {"bootstrap_servers": broker.bootstrap, "topics": [BAT, HB], "group_id": "stdd-http-test",
                  "reconnect_backoff_max_seconds": 1.0}}})
    beside = AlertServiceBeside(kafka=True)
    async with running_daemon(settings, services=(beside,)) as (daemon, svc):
        async with aiohttp.ClientSession() as s:
            async def health():
                async with s.get(svc.url + "/health") as r:
                    return r.status, await r.json()

            async def connected():
                _, body = await health()
                return body["checks"]["alert_stream"]["connected"] and body
            body = await wait_for(connected, 30, "the Kafka intake connected")
            stream = body["checks"]["alert_stream"]
            assert stream["ok"] is False and stream["last_heartbeat"] is None  # connected, but no heartbeat yet
            assert "no heartbeat on gcn.heartbeat yet" in stream["detail"], stream
            assert (await health())[0] == 503

            produce(broker, HB, json.dumps({"alert_datetime": "2026-01-01T00:00:01Z"}).encode())

            async def healthy():
                status, body = await health()
                return status == 200 and body
            body = await wait_for(healthy, 30, "a heartbeat making the stream healthy")
            assert body["checks"]["alert_stream"]["heartbeat_age_seconds"] < 30
            assert body["checks"]["alert_stream"]["detail"].startswith("connected to ")
            async with s.get(svc.url + "/metrics") as r:
                text = await r.text()
            assert 'stdd_health_check{check="alert_stream"} 1.0' in text
            age = [line for line in text.splitlines() if line.startswith("stdd_alert_stream_heartbeat_age_seconds ")]
            assert age and float(age[0].split()[1]) < 30

            produce(broker, BAT, (shared_data / "gcn/voevent/swift_bat_grb_pos_532871.xml").read_bytes())

            async def listed():
                async with s.get(svc.url + "/alerts") as r:
                    return (await r.json())["alerts"]
            alerts = await wait_for(listed, 30, "the Kafka notice in GET /alerts")
            assert alerts[0]["id"] == "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_532871-729"
            assert alerts[0]["mission"] and alerts[0]["state"] == "live"

"""Alert latency bench: notice produced → action started, against a Kafka broker.

`measure_latency(bootstrap, workdir, n=...)` runs the real chain — gcn-kafka consumer
(KafkaIntake) → SQLite → parse → policy → ActionRunner — with one `request_file` action
(or `exec` of `true`), produces `n` distinct Swift BAT VOEvents one after another and reads,
for each, the action's `started_at` from the actions table. Latency = started_at − the
moment just before `produce()`. Returns p50/p90/p99/max in milliseconds. Group join and the
first poll are excluded by a warm-up notice.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..config import settings_from_dict
from ..store import Database
from .intake import KafkaIntake
from .service import AlertService

TOPIC = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"

_VOEVENT = """<?xml version="1.0" encoding="UTF-8"?>
<voe:VOEvent xmlns:voe="http://www.ivoa.net/xml/VOEvent/v2.0" version="2.0" role="observation"
 ivorn="ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_{trig}-{seq}">
  <Who><Date>2026-01-01T00:00:00</Date></Who>
  <What>
    <Param name="Packet_Type" value="61"/>
    <Param name="TrigID" value="{trig}" ucd="meta.id"/>
    <Group name="Solution_Status"><Param name="Test_Submission" value="false"/></Group>
  </What>
  <WhereWhen><ObsDataLocation><ObservationLocation>
    <AstroCoordSystem id="UTC-FK5-GEO"/>
    <AstroCoords coord_system_id="UTC-FK5-GEO">
      <Time unit="s"><TimeInstant><ISOTime>2026-01-01T00:00:00.00</ISOTime></TimeInstant></Time>
      <Position2D unit="deg"><Name1>RA</Name1><Name2>Dec</Name2>
        <Value2><C1>{ra:.4f}</C1><C2>{dec:.4f}</C2></Value2><Error2Radius>0.0500</Error2Radius></Position2D>
    </AstroCoords>
  </ObservationLocation></ObsDataLocation></WhereWhen>
</voe:VOEvent>
"""


def swift_voevent(trig: int, ra: float = 150.0, dec: float = 2.0, seq: int = 1) -> bytes:
    return _VOEVENT.format(trig=trig, seq=seq, ra=ra, dec=dec).encode()


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure_latency(bootstrap: str, workdir: str | Path, n: int = 50, action: str = "request_file",
                    timeout: float = 30.0, topic: str = TOPIC) -> dict:
    from confluent_kafka import Producer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    act = ({"kind": "request_file", "folder": str(workdir / "requests")} if action == "request_file"
           else {"kind": "exec", "command": ["true"], "timeout_seconds": 10})
    settings = settings_from_dict({"alerts": {
        "enabled": True,
        "kafka": {"bootstrap_servers": bootstrap, "topics": [topic], "group_id": f"stdd-bench-{time.time_ns()}"},
        "rules": [{"require_visible": False, "actions": ["bench"]}],
        "actions": {"bench": act}}}, base=workdir)
    db = Database(workdir / "bench.sqlite")
    service = AlertService(db, settings)
    intake = KafkaIntake(settings, service.handle)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    base = int(time.time()) % 10_000_000 * 100
    latencies: list[float] = []
    try:
        intake.start()

        def one(trig: int) -> float | None:
            alert_id = f"ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_{trig}-1"
            t0 = time.time()
            producer.produce(topic, swift_voevent(trig, ra=(trig * 7.3) % 360))
            producer.flush(timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                row = db.query_one("SELECT started_at FROM actions WHERE alert_id = ?", (alert_id,))
                if row and row["started_at"]:
                    return row["started_at"] - t0
                time.sleep(0.001)
            return None

        if one(base) is None:  # warm-up: group join, first fetch
            raise TimeoutError(f"no action within {timeout:g} s of the warm-up notice: {intake.status()}")
        missing = 0
        for i in range(1, n + 1):
            lat = one(base + i)
            if lat is None:
                missing += 1
            else:
                latencies.append(lat * 1000)
    finally:
        intake.stop()
        service.close()
        db.close()
    # what a rule with require_visible adds per alert (astropy Sun/Moon/target over the window)
    from .parse import parse_notice
    from .policy import Policy

    policy = Policy(settings.alerts, settings.site)
    alert = parse_notice(swift_voevent(base))
    policy.visibility(alert, time.time())  # imports, ephemeris set-up
    vis = []
    for _ in range(10):
        t0 = time.perf_counter()
        policy.visibility(alert, time.time())
        vis.append((time.perf_counter() - t0) * 1000)
    return {
        "visibility_check_ms": _percentile(vis, 0.5),
        "n": len(latencies), "missing": missing, "action": action,
        "p50_ms": _percentile(latencies, 0.5), "p90_ms": _percentile(latencies, 0.9),
        "p99_ms": _percentile(latencies, 0.99), "max_ms": max(latencies) if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
    }


def measure_commit_cost(workdir: str | Path, n: int = 40) -> dict:
    """What making each notice durable costs: `service.handle` of `n` distinct actionable notices
    (a rule with no action: the two commits of the alert path, no action's own writes) on a
    connection with synchronous=FULL (what the service uses), with NORMAL (not durable across a
    power cut), and with NORMAL plus a `wal_checkpoint(PASSIVE)` after each notice (the other
    way to reach the disk). Milliseconds per notice, median and p90."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = settings_from_dict({"alerts": {"enabled": True, "rules": [{"require_visible": False}]}},
                                  base=workdir)
    out: dict = {"n": n}
    for mode in ("full", "normal", "normal_checkpoint"):
        path = workdir / f"commit-{mode}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        db = Database(path)
        service = AlertService(db, settings, durable=(mode == "full"))
        base = 9_000_000 + int(time.time()) % 1_000_000
        times = []
        try:
            for i in range(n + 3):
                raw = swift_voevent(base + i, ra=(i * 7.3) % 360)
                t0 = time.perf_counter()
                service.handle_message(raw, TOPIC, 0, i)
                if mode == "normal_checkpoint":
                    db.query("PRAGMA wal_checkpoint(PASSIVE)")
                if i >= 3:  # the first ones warm up imports and caches
                    times.append((time.perf_counter() - t0) * 1000)
        finally:
            service.close()
            db.close()
        out[f"{mode}_p50_ms"] = round(_percentile(times, 0.5), 3)
        out[f"{mode}_p90_ms"] = round(_percentile(times, 0.9), 3)
    out["fsync_cost_p50_ms"] = round(out["full_p50_ms"] - out["normal_p50_ms"], 3)
    return out


if __name__ == "__main__":  # python -m stdd.alerts.latency BOOTSTRAP WORKDIR [N]
    import sys

    print(json.dumps(measure_latency(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 50),
                     indent=2))

"""Prometheus metrics for the endpoint's GET /metrics (prometheus-client, names prefixed `stdd_`).

Design note: what lives in SQLite (frames by state, queue depth, stage durations, alerts,
actions) is not mirrored in counters that would drift from the database or reset at restart:
a custom collector reads it at scrape time, on a reader connection in a worker thread, and
turns stage_runs into an exact histogram with SQL bucket counts. What lives only in the
daemon's memory (workers, paused, watcher, alert stream, event-loop lag, HTTP requests) is
kept in ordinary metric objects. Each app has its own registry, so two apps in one process
(tests) never share values.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..store import STATES, Database, FrameStore
from ..store.stats import Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: stage durations: from a fraction of a second (inspect) to the 30-minute stage timeout
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StoreCollector(Collector):
    """Collects from the database at scrape time; `db_factory()` gives this thread's connection."""

    def __init__(self, db_factory: Callable[[], Database]):
        self.db_factory = db_factory

    def describe(self):
        return []  # computed at scrape time; do not collect at registration

    def collect(self):
        db = self.db_factory()
        frames, stats = FrameStore(db), Stats(db)
        counts = frames.counts()
        g = GaugeMetricFamily("stdd_frames", "Frames by state", labels=["state"])
        for state in STATES:
            g.add_metric([state], counts.get(state, 0))
        yield g
        yield GaugeMetricFamily("stdd_queue_depth", "Frames waiting in the queue", value=counts.get("queued", 0))
        yield GaugeMetricFamily("stdd_queue_due", "Queued frames whose retry time has come",
                                value=stats.queue_due(time.time()))
        h = HistogramMetricFamily("stdd_stage_duration_seconds", "Duration of finished stage runs",
                                  labels=["stage"])
        for stage, data in sorted(stats.stage_duration_buckets(STAGE_BUCKETS).items()):
            buckets = [(repr(float(b)), n) for b, n in zip(STAGE_BUCKETS, data["buckets"])]
            buckets.append(("+Inf", data["count"]))
            h.add_metric([stage], buckets, data["sum"])
        yield h
        c = CounterMetricFamily("stdd_stage_runs", "Stage runs by stage and outcome", labels=["stage", "state"])
        for row in stats.stage_run_counts():
            c.add_metric([row["stage"], row["state"]], row["n"])
        yield c
        a = CounterMetricFamily("stdd_alerts", "Alerts received, by whether they were actionable",
                                labels=["actionable"])
        for row in stats.alert_counts():
            a.add_metric(["true" if row["actionable"] else "false"], row["n"])
        yield a
        yield GaugeMetricFamily("stdd_alerts_live", "Alerts whose region is live now",
                                value=stats.live_alerts(time.time()))
        ac = CounterMetricFamily("stdd_actions", "Alert actions by kind and state", labels=["kind", "state"])
        for row in stats.action_counts():
            ac.add_metric([row["kind"], row["state"] or ""], row["n"])
        yield ac


class Metrics:
    """The app's registry and the in-memory metrics it updates."""

    def __init__(self, db_factory: Callable[[], Database]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(db_factory))
        r = self.registry
        self.requests = Counter("stdd_http_requests", "HTTP requests served", ["method", "route", "status"],
                                registry=r)
        self.request_seconds = Histogram("stdd_http_request_duration_seconds", "HTTP request duration",
                                         ["route"], registry=r)
        self.lag = Histogram("stdd_event_loop_lag_seconds", "Event-loop lag samples", buckets=LAG_BUCKETS,
                             registry=r)
        self.lag_max = Gauge("stdd_event_loop_lag_max_seconds", "Worst event-loop lag in a window",
                             ["window"], registry=r)
        self.lag_last = Gauge("stdd_event_loop_lag_last_seconds", "Latest event-loop lag sample", registry=r)
        self.up = Gauge("stdd_up", "1 while the daemon serves", registry=r)
        self.uptime = Gauge("stdd_uptime_seconds", "Seconds since the daemon started", registry=r)
        self.paused = Gauge("stdd_paused", "1 while the queue is paused", registry=r)
        self.workers = Gauge("stdd_workers", "Pool workers by state", ["state"], registry=r)
        self.check = Gauge("stdd_health_check", "1 when a health check passes", ["check"], registry=r)
        self.alert_heartbeat_age = Gauge("stdd_alert_stream_heartbeat_age_seconds",
                                         "Seconds since the last GCN heartbeat (NaN when none)", registry=r)
        self.info = Gauge("stdd_build_info", "stdd version", ["version"], registry=r)

    def update_from(self, snapshot: dict[str, Any], lag) -> None:
        """Copy the daemon's in-memory state (taken on the loop) into the gauges."""
        self.up.set(1)
        self.uptime.set(snapshot.get("uptime_seconds") or 0)
        self.paused.set(1 if snapshot.get("paused") else 0)
        self.info.labels(snapshot.get("version", "")).set(1)
        workers = snapshot.get("workers") or []
        busy = sum(1 for w in workers if w.get("busy"))
        alive = sum(1 for w in workers if w.get("alive"))
        self.workers.labels("total").set(len(workers))
        self.workers.labels("alive").set(alive)
        self.workers.labels("busy").set(busy)
        self.workers.labels("idle").set(max(0, alive - busy))
        for name, check in (snapshot.get("checks") or {}).items():
            self.check.labels(name).set(1 if check.get("ok") else 0)
        stream = (snapshot.get("checks") or {}).get("alert_stream") or {}
        age = stream.get("heartbeat_age_seconds")
        self.alert_heartbeat_age.set(float("nan") if age is None else age)
        self.lag_last.set(lag.last)
        self.lag_max.labels("1m").set(lag.max_recent(60))
        self.lag_max.labels("total").set(lag.max_total)

    def render(self) -> bytes:
        return generate_latest(self.registry)

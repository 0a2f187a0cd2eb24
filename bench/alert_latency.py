"""`alert_to_action_p99_ms`: a GCN notice produced to a local Kafka broker → its action started.

Built on the alert engineers' own pieces: the noida-db broker helper of the test suite
(tests/kafka_broker.py, loaded from the checkout) and `stdd.alerts.latency.measure_latency`, which
runs the real chain (gcn-kafka consumer → SQLite → parse → policy → action runner) and times each
notice from just before `produce()` to the action's `started_at`. The value is its p99.
"""
from __future__ import annotations

import importlib.util

from .common import ROOT, Context, Unavailable, Value, rnd

KEYS = ("alert_to_action_p99_ms",)


def load_broker_helper():
    path = ROOT / "tests" / "kafka_broker.py"
    if not path.is_file():
        raise Unavailable(f"the local broker helper {path} is not in this checkout")
    spec = importlib.util.spec_from_file_location("stdd_bench_kafka_broker", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(ctx: Context) -> dict[str, Value]:
    try:
        from stdd.alerts.latency import measure_latency
    except ImportError as e:
        return {"alert_to_action_p99_ms": Value.missing(f"stdd.alerts.latency is not available: {e}")}
    try:
        helper = load_broker_helper()
    except Unavailable as e:
        return {"alert_to_action_p99_ms": Value.missing(str(e))}
    if helper.broker_binary() is None:
        return {"alert_to_action_p99_ms": Value.missing("noida-db (the local Kafka broker) is not installed")}
    folder = ctx.folder("alerts")
    n = 20 if ctx.quick else 100
    broker = helper.KafkaBroker(folder / "kafka")
    try:
        broker.start()
    except helper.BrokerError as e:
        return {"alert_to_action_p99_ms": Value.missing(f"the local broker did not start: {e}")}
    try:
        from stdd.alerts.latency import TOPIC

        broker.create_topics(TOPIC)
        res = measure_latency(broker.bootstrap, folder / "work", n=n, action="request_file")
    finally:
        broker.stop()
    p99 = res.get("p99_ms")
    v = Value(rnd(p99, 1), context={k: rnd(x, 2) if isinstance(x, float) else x for k, x in res.items()})
    v.note = (f"{res['n']} notices one after another (a warm-up excluded), request_file action; "
              f"p50 {res['p50_ms']:.0f} ms, max {res['max_ms']:.0f} ms")
    if res.get("missing"):
        v.note += f"; {res['missing']} notice(s) got no action within the timeout"
    return {"alert_to_action_p99_ms": v}

"""KafkaIntake: the GCN Kafka consumer, on its own thread, at-least-once.

Design note (shared/spec/alerts.md): gcn-kafka's defaults are wrong for a daemon, so the
consumer gets a fixed group.id, auto.offset.reset=earliest and enable.auto.commit=False.
Each message goes to `on_message` (AlertService.handle: stored, processed, fsync'd) and only
when that returns is its offset committed; if `on_message` raises, the consumer seeks back to
the message and retries after a pause, so nothing is skipped. A crash between storing and
committing redelivers the message, which the store recognises by (topic, partition, offset).

Supervision: the loop polls continuously (short timeouts), so the group membership and the
OAuth token stay alive while actions run elsewhere, and `stop()` is honoured within a second.
Every iteration beats a `LoopMonitor` (supervision.py) and runs inside its own try: an error
is recorded (log + an `alert.intake` event through `on_event`) and the loop goes on after a
growing pause; after MAX_ITERATION_FAILURES failures in a row, or a fatal Kafka error, the
consumer is closed and rebuilt with exponential backoff; should the thread itself end,
`ensure_running()` (called by the daemon's alert link every few seconds) starts a new one.
`health()` tells "our loop is stuck" (`stalled`: no iteration for STALL_AFTER_S) from "the
broker is away" (`ok` false, not stalled). The broker going away is librdkafka's to handle (it
reconnects with its own backoff). gcn.heartbeat messages (about one a second) are not stored:
they update `status()["last_heartbeat"]` and are committed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..faults import fault_point
from .service import IntakeMessage
from .supervision import EventCallback, LoopMonitor

log = logging.getLogger("stdd.alerts.kafka")

POLL_TIMEOUT_S = 0.5
PROBE_IDLE_S = 5.0
RETRY_PAUSE_S = 2.0
#: our loop is stuck when it has not iterated for this long (a poll takes at most POLL_TIMEOUT_S,
#: a probe 2 s; handling one message is well under a second, a 1 MB skymap included)
STALL_AFTER_S = 3 * POLL_TIMEOUT_S + 30.0
#: iteration failures in a row after which the consumer is closed and a new one made
MAX_ITERATION_FAILURES = 5


class IntakeConfigError(ValueError):
    pass


def _env_config() -> dict[str, Any]:
    """librdkafka settings from KAFKA_* environment variables (gcn-kafka's `config_from_env`)."""
    try:
        from gcn_kafka import config_from_env
    except ImportError as e:  # gcn-kafka older than 0.3 has no env support
        log.info("kafka: KAFKA_* environment variables are not read: this gcn-kafka has no config_from_env (%s)", e)
        return {}
    try:
        return dict(config_from_env())
    except Exception as e:  # a malformed variable: say which, go on with the configured settings
        log.warning("kafka: KAFKA_* environment variables ignored: gcn_kafka.config_from_env failed: %s: %s",
                    type(e).__name__, e)
        return {}


def consumer_config(kafka_settings) -> dict[str, Any]:
    """Keyword arguments for gcn_kafka.Consumer built from KafkaSettings (credentials resolved)."""
    k = kafka_settings
    config: dict[str, Any] = {
        "group.id": k.group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": int(k.reconnect_backoff_max_seconds * 1000),
        "topic.metadata.refresh.interval.ms": 10000,
    }
    config.update(_env_config())
    client_id = k.client_id or os.environ.get(k.client_id_env) or None
    client_secret = os.environ.get(k.client_secret_env) or None
    if client_secret is None and k.client_secret_file:
        try:
            client_secret = Path(k.client_secret_file).read_text().strip() or None
        except OSError as e:
            raise IntakeConfigError(f"cannot read GCN client secret from {k.client_secret_file}: {e}") from None
    if k.bootstrap_servers:
        config["bootstrap.servers"] = k.bootstrap_servers
        config["security.protocol"] = k.security_protocol or ("SASL_SSL" if client_id else "PLAINTEXT")
    elif k.security_protocol:
        config["security.protocol"] = k.security_protocol
    if not k.bootstrap_servers and not client_id:
        raise IntakeConfigError(
            f"no GCN credentials: set ${k.client_id_env} and ${k.client_secret_env} (or alerts.kafka.client_id and "
            "client_secret_file), or alerts.kafka.bootstrap_servers for a local broker")
    config.update(k.config)
    kwargs: dict[str, Any] = {"config": config, "domain": k.domain}
    if client_id:
        kwargs["client_id"] = client_id
        kwargs["client_secret"] = client_secret
    return kwargs


class KafkaIntake:
    """Consume the configured topics on a thread; hand each message to `on_message`."""

    def __init__(self, settings, on_message: Callable[[IntakeMessage], Any], *, consumer_factory=None,
                 on_event: EventCallback | None = None, stall_after: float = STALL_AFTER_S):
        self.kafka = settings.alerts.kafka
        self.on_message = on_message
        self._factory = consumer_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        bootstrap = self.kafka.bootstrap_servers or f"kafka.{self.kafka.domain}"
        self.monitor = LoopMonitor("kafka", stall_after, target=bootstrap, on_event=on_event)
        self._status: dict[str, Any] = {
            "running": False, "topics": list(self.kafka.topics),
            "bootstrap": bootstrap, "group_id": self.kafka.group_id, "last_heartbeat": None,
            "last_heartbeat_notice": None, "heartbeats": 0, "last_message_at": None, "messages_received": 0,
            "messages_stored": 0, "consumer_restarts": 0, "thread_restarts": 0, "started_at": None,
        }

    # -- public --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread and self._thread.is_alive():
                return
            self._stop.clear()
            self._status.update(running=True, started_at=self._status["started_at"] or time.time())
            self._thread = threading.Thread(target=self._thread_main, name="stdd-kafka-intake", daemon=True)
            self._thread.start()

    def ensure_running(self) -> bool:
        """Start a new consumer thread if the one started has ended; True when one was started."""
        with self._lock:
            dead = self._status["running"] and not self._stop.is_set() and not (self._thread and self._thread.is_alive())
            if dead:
                self._status["thread_restarts"] += 1
        if dead:
            self.monitor.error("the consumer thread had ended: started again", level="ERROR")
            self.start()
        return dead

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set(running=False)
        self.monitor.connection(False, "stopped")

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self._status)
        st.update(self.monitor.snapshot())
        hb = st.get("last_heartbeat")
        st["heartbeat_age_seconds"] = round(time.time() - hb, 3) if hb else None
        st["alive"] = bool(self._thread and self._thread.is_alive())
        return st

    def health(self) -> dict[str, Any]:
        """{"ok", "stalled", "detail", ...}: stalled only when our own loop is stuck (see module doc)."""
        with self._lock:
            running = self._status["running"] and not self._stop.is_set()
        alive = bool(self._thread and self._thread.is_alive())
        h = self.monitor.health(running=running, alive=alive)
        h.update({k: self._status[k] for k in ("bootstrap", "group_id", "consumer_restarts", "thread_restarts",
                                               "messages_stored", "last_heartbeat")})
        return h

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["connected"]:
                return True
            time.sleep(0.05)
        return False

    # -- internals -----------------------------------------------------------------------
    def _set(self, **kv) -> None:
        with self._lock:
            self._status.update(kv)

    def _pause(self, seconds: float) -> bool:
        """Wait, beating the heartbeat (a backoff is the loop working); True when stop was asked."""
        deadline = time.monotonic() + seconds
        while True:
            self.monitor.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, POLL_TIMEOUT_S)):
                return True

    def _on_kafka_error(self, err) -> None:
        from confluent_kafka import KafkaError

        text = f"{err.name()}: {err.str()}"
        self.monitor.error(text)
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._AUTHENTICATION):
            self.monitor.connection(False, text)

    def _make_consumer(self):
        if self._factory is not None:
            return self._factory()
        from gcn_kafka import Consumer

        kwargs = consumer_config(self.kafka)
        kwargs["config"] = {**kwargs["config"], "error_cb": self._on_kafka_error}
        return Consumer(**kwargs)

    def _thread_main(self) -> None:
        try:
            self._run()
        except BaseException as e:  # the thread ends: say so; ensure_running() starts another
            self.monitor.error(f"the consumer thread ended: {type(e).__name__}: {e}", level="ERROR", exc_info=True)
            self.monitor.connection(False, "consumer thread ended")
            # the thread ends here (logged above with its traceback)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self.monitor.beat()
            consumer = None
            try:
                consumer = self._make_consumer()
                consumer.subscribe(list(self.kafka.topics), on_assign=self._on_assign)
                self._loop(consumer)
                backoff = 1.0
            except IntakeConfigError as e:
                self.monitor.error(str(e), level="ERROR")
                self.monitor.connection(False, str(e))
                backoff = self.kafka.reconnect_backoff_max_seconds
            except Exception as e:  # any consumer failure: rebuild it after a pause
                self.monitor.error(f"consumer failed, a new one in {backoff:g} s: {type(e).__name__}: {e}")
                self.monitor.connection(False, f"consumer failed: {type(e).__name__}: {e}")
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception as e:
                        log.info("kafka: closing the consumer: %s", e)
            if not self._stop.is_set():
                with self._lock:
                    self._status["consumer_restarts"] += 1
                self._pause(backoff)
                backoff = min(backoff * 2, self.kafka.reconnect_backoff_max_seconds)
        self.monitor.connection(False, "stopped")

    def _on_assign(self, consumer, partitions) -> None:
        self._set(assignment=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.monitor.connection(True)

    def _loop(self, consumer) -> None:
        """Poll until stop; returns on stop, raises when the consumer must be rebuilt."""
        from confluent_kafka import KafkaException

        self._last_activity = time.monotonic()
        failures = 0
        while not self._stop.is_set():
            self.monitor.beat()
            try:
                fault_point("alert.kafka_poll")
                self._iteration(consumer)
                failures = 0
            except KafkaException as e:
                if e.args and hasattr(e.args[0], "fatal") and e.args[0].fatal():
                    raise
                failures = self._iteration_failed(e, failures)
            except Exception as e:
                failures = self._iteration_failed(e, failures)

    def _iteration_failed(self, e: Exception, failures: int) -> int:
        failures += 1
        if failures >= MAX_ITERATION_FAILURES:
            raise RuntimeError(f"{failures} poll iterations failed in a row, the last: {type(e).__name__}: {e}") from e
        pause = min(RETRY_PAUSE_S * 2 ** (failures - 1), self.kafka.reconnect_backoff_max_seconds)
        self.monitor.error(f"poll iteration failed ({failures} in a row), again in {pause:g} s: {type(e).__name__}: {e}",
                           exc_info=not isinstance(e, RuntimeError))
        self._pause(pause)
        return failures

    def _iteration(self, consumer) -> None:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        msg = consumer.poll(POLL_TIMEOUT_S)
        if msg is None:
            if time.monotonic() - self._last_activity > PROBE_IDLE_S:
                self._last_activity = time.monotonic()
                try:
                    consumer.list_topics(timeout=2.0)
                    if consumer.assignment():
                        self.monitor.connection(True)
                except KafkaException as e:
                    self.monitor.connection(False, f"broker unreachable: {e}")
            return
        self._last_activity = time.monotonic()
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            self.monitor.error(f"{err.name()}: {err.str()}")
            if err.fatal():
                raise KafkaException(err)
            return
        self.monitor.connection(True)
        topic = msg.topic()
        if topic == self.kafka.heartbeat_topic:
            with self._lock:
                self._status["heartbeats"] += 1
                self._status["last_heartbeat"] = time.time()
                self._status["last_heartbeat_notice"] = _heartbeat_time(msg.value())
            self._commit(consumer, msg, asynchronous=True)
            return
        with self._lock:
            self._status["messages_received"] += 1
            self._status["last_message_at"] = time.time()
        ts_type, ts = msg.timestamp()
        item = IntakeMessage(value=msg.value() or b"", topic=topic, partition=msg.partition(),
                             offset=msg.offset(), timestamp=ts / 1000 if ts and ts > 0 else None)
        try:
            self.on_message(item)
        except Exception as e:
            # not stored: do not commit; go back to this message and try again after a pause
            self.monitor.error(f"handling {topic}[{msg.partition()}]@{msg.offset()} failed, again in "
                               f"{RETRY_PAUSE_S:g} s: {type(e).__name__}: {e}", exc_info=True)
            consumer.seek(TopicPartition(topic, msg.partition(), msg.offset()))
            self._pause(RETRY_PAUSE_S)
            return
        with self._lock:
            self._status["messages_stored"] += 1
        fault_point("alert.kafka_commit")
        self._commit(consumer, msg, asynchronous=False)

    def _commit(self, consumer, msg, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException

        try:
            consumer.commit(message=msg, asynchronous=asynchronous)
        except KafkaException as e:
            # the message is stored; a redelivery is recognised by its offset
            self.monitor.error(f"commit of {msg.topic()}[{msg.partition()}]@{msg.offset()} failed: {e}")


def _heartbeat_time(value: bytes | None) -> str | None:
    import json

    try:
        data = json.loads(value or b"")
    except ValueError:
        return None
    return data.get("alert_datetime") if isinstance(data, dict) else None

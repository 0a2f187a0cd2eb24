"""KafkaIntake: the GCN Kafka consumer, on its own thread, at-least-once.

Design note (shared/spec/alerts.md): gcn-kafka's defaults are wrong for a daemon, so the
consumer gets a fixed group.id, auto.offset.reset=earliest and enable.auto.commit=False.
Each message goes to `on_message` (which stores it in SQLite) and only when that returns is
its offset committed; if `on_message` raises, the consumer seeks back to the message and
retries after a pause, so nothing is skipped. A crash between storing and committing
redelivers the message, which the store recognises by (topic, partition, offset).

The loop polls continuously (short timeouts), so the group membership and the OAuth token
stay alive while actions run elsewhere, and `stop()` is honoured within a second. The
broker going away is librdkafka's to handle (it reconnects with its own backoff); if the
consumer itself fails it is rebuilt with exponential backoff. gcn.heartbeat messages (about
one a second) are not stored: they update `status()["last_heartbeat"]` and are committed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .service import IntakeMessage

log = logging.getLogger("stdd.alerts.kafka")

POLL_TIMEOUT_S = 0.5
PROBE_IDLE_S = 5.0
RETRY_PAUSE_S = 2.0


class IntakeConfigError(ValueError):
    pass


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
    try:
        from gcn_kafka import config_from_env

        config.update(config_from_env())  # KAFKA_* environment variables, if any
    except Exception:  # older gcn-kafka: no env support
        pass
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

    def __init__(self, settings, on_message: Callable[[IntakeMessage], Any], *, consumer_factory=None):
        self.kafka = settings.alerts.kafka
        self.on_message = on_message
        self._factory = consumer_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "running": False, "connected": False, "topics": list(self.kafka.topics),
            "bootstrap": self.kafka.bootstrap_servers or f"kafka.{self.kafka.domain}",
            "group_id": self.kafka.group_id, "last_heartbeat": None, "last_heartbeat_notice": None,
            "heartbeats": 0, "last_message_at": None, "messages_received": 0, "messages_stored": 0,
            "last_error": None, "last_error_at": None, "consumer_restarts": 0, "started_at": None,
        }

    # -- public --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._set(running=True, started_at=time.time())
        self._thread = threading.Thread(target=self._run, name="stdd-kafka-intake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set(running=False, connected=False)

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self._status)
        hb = st.get("last_heartbeat")
        st["heartbeat_age_seconds"] = round(time.time() - hb, 3) if hb else None
        st["alive"] = bool(self._thread and self._thread.is_alive())
        return st

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

    def _error(self, text: str) -> None:
        log.warning("kafka: %s", text)
        self._set(last_error=text, last_error_at=time.time())

    def _on_kafka_error(self, err) -> None:
        from confluent_kafka import KafkaError

        self._error(f"{err.name()}: {err.str()}")
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._AUTHENTICATION):
            self._set(connected=False)

    def _make_consumer(self):
        if self._factory is not None:
            return self._factory()
        from gcn_kafka import Consumer

        kwargs = consumer_config(self.kafka)
        kwargs["config"] = {**kwargs["config"], "error_cb": self._on_kafka_error}
        return Consumer(**kwargs)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._make_consumer()
                consumer.subscribe(list(self.kafka.topics), on_assign=self._on_assign)
                self._loop(consumer)
                backoff = 1.0
            except IntakeConfigError as e:
                self._error(str(e))
                self._stop.wait(self.kafka.reconnect_backoff_max_seconds)
            except Exception as e:  # any consumer failure: rebuild it after a pause
                self._error(f"consumer failed: {type(e).__name__}: {e}")
                self._set(connected=False)
            finally:
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:
                        pass
            if not self._stop.is_set():
                with self._lock:
                    self._status["consumer_restarts"] += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.kafka.reconnect_backoff_max_seconds)
        self._set(running=False, connected=False)

    def _on_assign(self, consumer, partitions) -> None:
        self._set(connected=True, assignment=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _loop(self, consumer) -> None:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        last_activity = time.monotonic()
        while not self._stop.is_set():
            msg = consumer.poll(POLL_TIMEOUT_S)
            if msg is None:
                if time.monotonic() - last_activity > PROBE_IDLE_S:
                    last_activity = time.monotonic()
                    try:
                        consumer.list_topics(timeout=2.0)
                        self._set(connected=True)
                    except KafkaException as e:
                        self._set(connected=False)
                        self._error(f"broker unreachable: {e}")
                continue
            last_activity = time.monotonic()
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                self._error(f"{err.name()}: {err.str()}")
                if err.fatal():
                    raise KafkaException(err)
                continue
            self._set(connected=True)
            topic = msg.topic()
            if topic == self.kafka.heartbeat_topic:
                with self._lock:
                    self._status["heartbeats"] += 1
                    self._status["last_heartbeat"] = time.time()
                    self._status["last_heartbeat_notice"] = _heartbeat_time(msg.value())
                self._commit(consumer, msg, asynchronous=True)
                continue
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
                log.exception("kafka: handling %s[%s]@%s failed", topic, msg.partition(), msg.offset())
                self._error(f"handling {topic}[{msg.partition()}]@{msg.offset()} failed: {type(e).__name__}: {e}")
                try:
                    consumer.seek(TopicPartition(topic, msg.partition(), msg.offset()))
                except KafkaException as se:
                    raise se
                self._stop.wait(RETRY_PAUSE_S)
                continue
            with self._lock:
                self._status["messages_stored"] += 1
            self._commit(consumer, msg, asynchronous=False)

    def _commit(self, consumer, msg, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException

        try:
            consumer.commit(message=msg, asynchronous=asynchronous)
        except KafkaException as e:
            # the message is stored; a redelivery is recognised by its offset
            self._error(f"commit of {msg.topic()}[{msg.partition()}]@{msg.offset()} failed: {e}")


def _heartbeat_time(value: bytes | None) -> str | None:
    import json

    try:
        data = json.loads(value or b"")
    except ValueError:
        return None
    return data.get("alert_datetime") if isinstance(data, dict) else None

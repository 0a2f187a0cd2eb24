"""A real local Kafka broker for tests: noida-db (PyPI) on a free 127.0.0.1 port, in a temp dir.

Usage:
    broker = KafkaBroker(tmp_path / "kafka"); broker.start()
    ... broker.bootstrap ...  broker.restart()  ...  broker.stop()
or the `kafka_broker` context manager. The broker keeps its data in `data_dir`, so a
restart (stop + start on the same port) keeps topics, messages and committed offsets.
"""
from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

READY_TIMEOUT_S = 20.0


def broker_binary() -> Path | None:
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db") / "noida-db"))
    except (ImportError, ModuleNotFoundError, TypeError):
        return None
    if not path.is_file():
        return None
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class BrokerError(RuntimeError):
    pass


class KafkaBroker:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"noida-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = READY_TIMEOUT_S) -> "KafkaBroker":
        binary = broker_binary()
        if binary is None:
            raise BrokerError("noida-db is not installed (pip install noida-db)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(binary), "start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", str(self.port),
             "--data-dir", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded wait for the port
            if self.proc.poll() is not None:
                raise BrokerError(f"noida-db exited with {self.proc.returncode}: {self.log_tail()}")
            if _port_open(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"noida-db did not open port {self.port} within {timeout:g} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    # -- clients ---------------------------------------------------------------------------
    def create_topics(self, *names: str, max_message_bytes: int | None = None, timeout: float = 15.0) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        config = {"max.message.bytes": str(max_message_bytes)} if max_message_bytes else {}
        futures = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1, config=config)
                                       for n in names], request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except Exception as e:  # an existing topic is fine
                if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e).lower():
                    raise

    def producer(self, **config):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "message.max.bytes": 8 * 1024 * 1024,
                         "linger.ms": 0, **config})


def broker_or_skip(data_dir: Path, *topics: str, **topic_config) -> "KafkaBroker":
    """A started local broker with these topics, or the calling test skipped with the reason
    (no noida-db, or a broker that cannot start here). The caller stops it."""
    import pytest

    if broker_binary() is None:
        pytest.skip("noida-db (the local Kafka broker) is not installed")
    broker = KafkaBroker(data_dir)
    try:
        broker.start()
    except BrokerError as e:
        pytest.skip(f"local Kafka broker cannot start here: {e}")
    broker.create_topics(*topics, **topic_config)
    return broker


@contextlib.contextmanager
def kafka_broker(data_dir: Path):
    broker = KafkaBroker(data_dir).start()
    try:
        yield broker
    finally:
        broker.stop()


def produce(broker_or_producer, topic: str, value: bytes, timeout: float = 15.0) -> None:
    """Produce one message and wait until the broker has it."""
    producer = broker_or_producer.producer() if isinstance(broker_or_producer, KafkaBroker) else broker_or_producer
    errors = []
    producer.produce(topic, value, on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(timeout)
    if left or errors:
        raise BrokerError(f"produce to {topic} failed: {errors or f'{left} message(s) not delivered'}")


if __name__ == "__main__":  # manual use: python tests/kafka_broker.py DIR
    import sys

    b = KafkaBroker(Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()) / "kafka").start()
    print(b.bootstrap, flush=True)
    try:
        b.proc.wait()
    except KeyboardInterrupt:
        b.stop()

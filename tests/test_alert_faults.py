"""The real daemon (`python -m stdd run`) killed at each fault point of the alert path
(STDD_FAULTS=alert.<step>=exit: os._exit, as a power cut would leave the process), a real GCN
notice dropped into its alert folder, then started again without the fault: every action ran
exactly once — an exec action appending a line to a witness file counts the runs — except where
docs/alerts-delivery.md says at-least-once, and the same notice dropped again afterwards, byte
for byte or re-serialised, is a duplicate that runs nothing."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, config_text
from kafka_broker import broker_or_skip, produce

from stdd.faults import FAULT_EXIT_CODE
from stdd.store import Database
from stdd.store.alerts import AlertStore

NOTICE = "gcn/voevent/swift_bat_grb_pos_532871.xml"
ALERT_ID = "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_532871-729"
TOPIC = "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK"

WITNESS = """\
import json, os, sys
alert = json.load(sys.stdin)["alert"]["id"]
with open(sys.argv[1], "a") as fh:
    fh.write(f"{alert} run={os.environ['STDD_ACTION_RUN']} key={os.environ['STDD_IDEMPOTENCY_KEY']}\\n")
"""


def alerts_config(root: Path, kafka: str | None = None) -> str:
    (root / "witness.py").write_text(WITNESS)
    # static group membership: the restarted daemon takes the dead one's place in the group at once
    # (the test broker never expires a member that died without leaving; real Kafka does after
    # session.timeout.ms, 45 s by default)
    kafka_section = (f'bootstrap_servers = "{kafka}"\ntopics = ["{TOPIC}"]\ngroup_id = "stdd-faults"\n'
                     'reconnect_backoff_max_seconds = 1.0\nconfig = {"group.instance.id" = "stdd-faults-1"}'
                     if kafka else "enabled = false")
    return config_text().replace("[paths]\n", '[paths]\nalert_drop = "alerts-in"\n') + f"""
[alerts]
enabled = true
drop_poll_seconds = 0.05
drop_settle_seconds = 0.0
[alerts.kafka]
{kafka_section}
[[alerts.rules]]
missions = ["*"]
require_visible = false
priority = 50
actions = ["witness"]
[alerts.actions.witness]
kind = "exec"
command = [{json.dumps(sys.executable)}, {json.dumps(str(root / "witness.py"))}, {json.dumps(str(root / "witness.txt"))}]
timeout_seconds = 20
"""


def drop(root: Path, name: str, raw: bytes) -> None:
    folder = root / "alerts-in"
    folder.mkdir(exist_ok=True)
    (folder / (name + ".part")).write_bytes(raw)
    (folder / (name + ".part")).rename(folder / name)  # the way a writer should: whole file or none


def witness(root: Path) -> list[str]:
    path = root / "witness.txt"
    return path.read_text().splitlines() if path.exists() else []


def store_rows(root: Path) -> tuple[list[dict], list[dict]]:
    with Database(root / "var" / "stdd.sqlite", readonly=True) as db:
        store = AlertStore(db)
        return store.list_actions(), store.messages()


def wait_exit(d: DaemonProcess, timeout: float = 30) -> int:
    try:
        code = d.proc.wait(timeout)
    finally:
        d.log_fh.close()
    return code


def settled(root: Path) -> bool:
    actions, _ = store_rows(root)
    return len(actions) == 1 and actions[0]["state"] == "done"


def dropped_again(root: Path, raw: bytes, d: DaemonProcess) -> None:
    """The same notice after the restart: the same bytes, and re-serialised (same IVORN, new bytes)."""
    drop(root, "grb-again.xml", raw)
    drop(root, "grb-copy.xml", raw.replace(b"?>", b"?>\n<!-- forwarded -->", 1))
    done = root / "alerts-in" / "done"
    d.wait(lambda: (done / "grb-again.xml").exists() and (done / "grb-copy.xml").exists(), 30,
           "the two copies handled")


#: fault point -> (witness lines, runs of the action) after the restart; None: the crash came while
#: the action may have been running on its own thread (the drop folder moves the file away
#: meanwhile): it ran once or twice, each run at most one line (a run cut short writes none)
EXPECTED = {
    "alert.received": (1, 1),
    "alert.stored": (1, 1),
    "alert.parsed": (1, 1),
    "alert.claimed": (1, 1),
    "alert.committed": (1, 1),
    "alert.action_started": (1, 2),    # marked running, not yet run: run again, once
    "alert.action_ran": (2, 2),        # ran, outcome not recorded: run again (exec is at-least-once)
    "alert.action_finished": (1, 1),
    "alert.drop_done": None,           # handled, file not moved: the action runs meanwhile
}


@pytest.mark.parametrize("point", list(EXPECTED))
def test_daemon_killed_at_a_fault_point_acts_once(tmp_path, shared_data, point):
    raw = (shared_data / NOTICE).read_bytes()
    d = DaemonProcess(tmp_path, alerts_config(tmp_path), env={"STDD_FAULTS": f"{point}=exit"}).start()
    drop(tmp_path, "grb.xml", raw)
    assert wait_exit(d) == FAULT_EXIT_CODE, d.log()[-2000:]
    if point in ("alert.action_ran", "alert.action_finished"):
        assert len(witness(tmp_path)) == 1  # the action had run when the daemon died

    d = DaemonProcess(tmp_path, env={"STDD_FAULTS": ""}).start()
    try:
        d.wait(lambda: settled(tmp_path), 30, "the action done after the restart")
        dropped_again(tmp_path, raw, d)
        time.sleep(0.3)  # anything wrongly started by the copies would have written by now
    finally:
        assert d.stop() == 0
    lines = witness(tmp_path)
    actions, messages = store_rows(tmp_path)
    assert len(actions) == 1 and actions[0]["alert_id"] == ALERT_ID and actions[0]["state"] == "done"
    runs = actions[0]["runs"]
    if EXPECTED[point] is None:
        assert 1 <= len(lines) <= runs <= 2, (lines, runs)
    else:
        assert (len(lines), runs) == EXPECTED[point], (lines, runs)
    assert len(set(line.split(" key=")[1] for line in lines)) == 1  # every run: the same idempotency key
    # one message for the dropped bytes (every delivery counted), one duplicate by notice id
    by_state = sorted((m["state"], m["deliveries"]) for m in messages)
    # grb.xml is handed over again after the restart unless it was moved to done/ before the crash
    # (the action points: the file is moved while the action runs on its own thread)
    first = {2} if point == "alert.received" else {2, 3} if point.startswith("alert.action_") else {3}
    assert [s for s, _ in by_state] == ["duplicate", "parsed"] and by_state[0][1] == 1, by_state
    assert by_state[1][1] in first, by_state
    assert sorted(p.name for p in (tmp_path / "alerts-in" / "done").iterdir()) == \
        ["grb-again.xml", "grb-copy.xml", "grb.xml"]


@pytest.fixture
def broker(tmp_path):
    b = broker_or_skip(tmp_path / "kafka", TOPIC)
    yield b
    b.stop()


def test_daemon_killed_before_the_kafka_commit(tmp_path, shared_data, broker):
    """Stored and fsync'd, offset not committed: the broker redelivers it to the restarted daemon,
    which knows the offset; the same notice on a new offset is a duplicate."""
    raw = (shared_data / NOTICE).read_bytes()
    root = tmp_path / "d"
    root.mkdir()
    d = DaemonProcess(root, alerts_config(root, broker.bootstrap),
                      env={"STDD_FAULTS": "alert.kafka_commit=exit"}).start()
    produce(broker, TOPIC, raw)
    assert wait_exit(d, 60) == FAULT_EXIT_CODE, d.log()[-2000:]

    d = DaemonProcess(root, env={"STDD_FAULTS": ""}).start()
    try:
        d.wait(lambda: settled(root) and any(m["deliveries"] == 2 for m in store_rows(root)[1]), 60,
               "the redelivered message recognised")
        produce(broker, TOPIC, raw)  # the same notice again, at the next offset
        d.wait(lambda: len(store_rows(root)[1]) == 2, 30, "the second copy recorded")
        time.sleep(0.3)
    finally:
        assert d.stop() == 0
    actions, messages = store_rows(root)
    lines = witness(root)
    assert len(actions) == 1 and actions[0]["state"] == "done"
    assert 1 <= len(lines) <= actions[0]["runs"] <= 2, lines  # it may have been running when the daemon died
    assert sorted((m["offset"], m["state"], m["deliveries"]) for m in messages) == \
        [(0, "parsed", 2), (1, "duplicate", 1)]

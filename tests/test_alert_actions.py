"""Actions: a real subprocess, a real local HTTP server, real files; each recorded in SQLite."""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stdd.alerts.actions import ActionRunner, safe_name
from stdd.config import settings_from_dict
from stdd.store import Database
from stdd.store.alerts import AlertStore

ALERT = {"id": "ivo://nasa.gsfc.gcn/SWIFT#BAT_GRB_Pos_1-1", "mission": "Swift", "ra": 10.0, "dec": 20.0}


def runner_for(tmp_path: Path, actions: dict) -> tuple[ActionRunner, AlertStore, Database]:
    settings = settings_from_dict({"alerts": {"actions": actions, "rules": []}}, base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    store = AlertStore(db)
    store.add_alert({"id": ALERT["id"], "received_at": 0.0, "state": "live"})
    return ActionRunner(store, settings, workers=2), store, db


def test_exec_gets_the_alert_on_stdin_and_exit_code_is_recorded(tmp_path):
    script = tmp_path / "observe.py"
    script.write_text(
        "import json, os, sys\n"
        "d = json.load(sys.stdin)\n"
        "open(sys.argv[1], 'w').write(json.dumps({'id': d['alert']['id'], 'purpose': d['purpose'],\n"
        "    'env': os.environ['STDD_ALERT_ID']}))\n"
        "print('queued')\n"
        "sys.exit(int(sys.argv[2]))\n")
    out_ok, out_bad = tmp_path / "ok.json", tmp_path / "bad.json"
    runner, store, db = runner_for(tmp_path, {
        "ok": {"kind": "exec", "command": [sys.executable, str(script), str(out_ok), "0"]},
        "bad": {"kind": "exec", "command": [sys.executable, str(script), str(out_bad), "3"]},
        "slow": {"kind": "exec", "command": [sys.executable, "-c", "import time; time.sleep(30)"],
                 "timeout_seconds": 0.5},
        "missing": {"kind": "exec", "command": [str(tmp_path / "no-such-program")]},
    })
    started = runner.dispatch(ALERT["id"], ["ok", "bad", "slow", "missing"], "observe", ALERT)
    for _, fut in started:
        fut.result(timeout=60)
    rows = {r["name"]: r for r in store.actions_for_alert(ALERT["id"])}
    assert rows["ok"]["state"] == "done" and rows["ok"]["exit_code"] == 0 and "queued" in rows["ok"]["output"]
    assert json.loads(out_ok.read_text()) == {"id": ALERT["id"], "purpose": "observe", "env": ALERT["id"]}
    assert rows["bad"]["state"] == "failed" and rows["bad"]["exit_code"] == 3
    assert rows["slow"]["state"] == "failed" and "timed out" in rows["slow"]["error"]
    assert rows["missing"]["state"] == "failed" and "cannot run" in rows["missing"]["error"]
    assert all(r["started_at"] and r["finished_at"] >= r["started_at"] for r in rows.values())
    # claimed once: the same action for the same alert and purpose never runs again
    assert runner.dispatch(ALERT["id"], ["ok"], "observe", ALERT) == []
    runner.close()
    db.close()


class Hook(BaseHTTPRequestHandler):
    fail_first = 0
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((self.headers.get("X-Token"), json.loads(body)))
        status = 503 if len(type(self).bodies) <= type(self).fail_first else 201
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"thanks")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    Hook.bodies, Hook.fail_first = [], 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_retries_until_accepted(tmp_path, hook_server):
    url = f"http://127.0.0.1:{hook_server.server_port}/alerts"
    runner, store, db = runner_for(tmp_path, {
        "hook": {"kind": "webhook", "url": url, "retries": 3, "retry_backoff_seconds": 0.05,
                 "headers": {"X-Token": "s3cret"}},
        "dead": {"kind": "webhook", "url": "http://127.0.0.1:9/nothing", "retries": 1, "retry_backoff_seconds": 0.05,
                 "timeout_seconds": 2},
    })
    for _, fut in runner.dispatch(ALERT["id"], ["hook", "dead"], "observe", ALERT):
        fut.result(timeout=60)
    rows = {r["name"]: r for r in store.actions_for_alert(ALERT["id"])}
    assert rows["hook"]["state"] == "done" and rows["hook"]["http_status"] == 201 and rows["hook"]["attempts"] == 3
    assert len(Hook.bodies) == 3 and Hook.bodies[-1][0] == "s3cret"
    assert Hook.bodies[-1][1]["alert"]["id"] == ALERT["id"] and Hook.bodies[-1][1]["purpose"] == "observe"
    assert rows["dead"]["state"] == "failed" and rows["dead"]["attempts"] == 2 and rows["dead"]["http_status"] is None
    runner.close()
    db.close()


def test_request_file_is_written_atomically(tmp_path):
    folder = tmp_path / "requests"
    runner, store, db = runner_for(tmp_path, {"req": {"kind": "request_file", "folder": str(folder)}})
    for _, fut in runner.dispatch(ALERT["id"], ["req"], "observe", ALERT) + \
            runner.dispatch(ALERT["id"], ["req"], "cancel", ALERT):
        fut.result(timeout=60)
    files = sorted(p.name for p in folder.iterdir())
    stem = safe_name(ALERT["id"])
    assert files == [f"{stem}.req.cancel.json", f"{stem}.req.observe.json"]  # no temporary leftovers
    assert json.loads((folder / files[1]).read_text())["alert"] == ALERT
    assert json.loads((folder / files[0]).read_text())["purpose"] == "cancel"
    rows = store.actions_for_alert(ALERT["id"])
    assert [r["state"] for r in rows] == ["done", "done"]
    runner.close()
    db.close()


def test_request_file_into_an_unwritable_place_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    runner, store, db = runner_for(tmp_path, {"req": {"kind": "request_file", "folder": str(blocker / "sub")}})
    for _, fut in runner.dispatch(ALERT["id"], ["req"], "observe", ALERT):
        fut.result(timeout=60)
    row = store.actions_for_alert(ALERT["id"])[0]
    assert row["state"] == "failed" and "cannot write request" in row["error"]
    runner.close()
    db.close()

"""Notifications through Apprise to a local SMTP server (aiosmtpd): e-mails arrive, the rate limit
folds the excess into one summary and holds the rest for the next window (nothing lost), daemon
trouble (a crash loop) is told, and an alert action's outcome is queued in its own transaction."""
from __future__ import annotations

import asyncio
import email
import time

import pytest
from aiosmtpd.controller import Controller

from pool_stages import write_frame
from skyportal_receiver import free_port
from stdd.config.load import settings_from_dict
from stdd.daemon import Daemon
from stdd.delivery import notify_confirmed_candidates
from stdd.delivery.channels import plan
from stdd.delivery.sender import DeliveryService, send_message
from stdd.store import Outbox
from test_daemon_api import Running, make_settings, until


class Inbox:
    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def bodies(self) -> list[str]:
        out = []
        for m in self.messages:
            parts = [p for p in m.walk() if p.get_content_type() == "text/plain"]
            out.append(parts[0].get_payload(decode=True).decode() if parts else "")
        return out


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=free_port())
    ctl.start()
    inbox.url = f"mailto://127.0.0.1:{ctl.port}?from=stdd@example.org&to=ops@example.org"
    yield inbox
    ctl.stop()


def channel(smtp, **kw):
    return {"ops": {"urls": [smtp.url], **kw}}


def test_an_email_arrives(smtp, tmp_path):
    s = settings_from_dict({"delivery": {"notify": channel(smtp)}}, base=tmp_path)
    item = {"id": 1, "kind": "candidates", "payload": {"title": "stdd: 1 new confirmed candidate",
                                                       "body": "AT1: RA 10.00000 Dec +20.00000"}}
    out = send_message(s, "notify:ops", [item])
    assert out.ok, out.error
    (msg,) = smtp.messages
    assert msg["Subject"] == "stdd: 1 new confirmed candidate" and msg["To"] == "ops@example.org"
    assert "AT1: RA 10.00000" in smtp.bodies()[0]


def test_smtp_down_is_a_retryable_failure(tmp_path):
    url = f"mailto://127.0.0.1:{free_port()}?from=stdd@example.org&to=ops@example.org"
    s = settings_from_dict({"delivery": {"notify": {"ops": {"urls": [url]}}}}, base=tmp_path)
    out = send_message(s, "notify:ops", [{"id": 1, "kind": "x", "payload": {"title": "t", "body": "b"}}])
    assert not out.ok and out.retryable
    bad = settings_from_dict({"delivery": {"notify": {"ops": {"urls": ["nosuchscheme://x"]}}}}, base=tmp_path)
    out = send_message(bad, "notify:ops", [{"id": 1, "kind": "x", "payload": {"title": "t", "body": "b"}}])
    assert not out.ok and not out.retryable and "nosuchscheme" not in out.error  # URLs may hold secrets


def test_plan():
    items = [{"id": i} for i in range(5)]
    assert plan(items, 0, 10) == [[it] for it in items]
    assert plan(items, 1, 3) == [[items[0]], items[1:]]
    assert plan(items, 3, 3) == [] and plan([], 0, 3) == []


async def test_rate_limit_summarises_and_holds_nothing_lost(smtp, tmp_path):
    s = make_settings(tmp_path, delivery={"notify": channel(smtp, max_per_window=2, window_minutes=0.1),
                                          "poll_seconds": 0.2})
    async with Running(Daemon(s, services=[DeliveryService()])) as d:
        outbox = Outbox(d.db)

        def confirm(names):
            with d.db.write():
                return notify_confirmed_candidates(outbox, d.settings, [
                    {"name": n, "ra": 10 + i, "dec": 20, "mag": 18.5, "filter": "r"} for i, n in enumerate(names)])

        for n in ("AT1", "AT2", "AT3", "AT4", "AT5"):
            assert await d.gate.run(confirm, [n]) == 1
        assert await d.gate.run(confirm, ["AT5"]) == 0  # the same set: once only
        await until(lambda: len(smtp.messages) >= 2, 20)
        await asyncio.sleep(1.0)
        assert len(smtp.messages) == 2
        first, summary = smtp.messages
        assert first["Subject"] == "stdd: 1 new confirmed candidate" and "AT1" in smtp.bodies()[0]
        assert "4 notifications" in summary["Subject"]
        assert all(f"AT{i}:" in smtp.bodies()[1] for i in (2, 3, 4, 5))
        rows = {r["key"]: r for r in await d.gate.run(outbox.list)}
        assert sorted(r["state"] for r in rows.values()) == ["held", "held", "held", "sent", "sent"]

        # the window is full: the next one waits (pending, due later), then goes out
        await d.gate.run(confirm, ["AT6"])
        await asyncio.sleep(1.5)
        assert len(smtp.messages) == 2
        (waiting,) = await d.gate.run(outbox.list, "pending")
        assert waiting["next_try"] > time.time() and waiting["attempts"] == 0
        await until(lambda: len(smtp.messages) == 3, 20)
        assert "AT6" in smtp.bodies()[2]
        for _ in range(100):  # the mail is in; its record follows the send
            events = await d.gate.run(d.events.recent, 50, None, None, "delivery.")
            if sum(e["kind"] == "delivery.sent" for e in events) == 3:
                break
            await asyncio.sleep(0.1)
        assert sum(e["kind"] == "delivery.sent" for e in events) == 3


async def test_crash_loop_is_told_once(smtp, tmp_path):
    s = make_settings(tmp_path, pool={"crash_loop_failures": 2, "crash_loop_window_seconds": 60,
                                      "crash_loop_pause_minutes": 0, "max_attempts": 1},
                      delivery={"notify": channel(smtp, events=["daemon_trouble"]), "poll_seconds": 0.2,
                                "trouble_check_seconds": 0.5})
    async with Running(Daemon(s, services=[DeliveryService()])) as d:
        for i in range(2):
            write_frame(tmp_path / "in" / f"crash{i}.fits", f"c{i}", T_CRASH="SIGKILL")
        await until(lambda: d.state == "paused", 60)
        await until(lambda: len(smtp.messages) >= 1, 20)
        await asyncio.sleep(2.0)
        assert len(smtp.messages) == 1
        assert smtp.messages[0]["Subject"] == "stdd trouble: crash_loop"
        assert "crash loop" in smtp.bodies()[0]


def test_an_acted_on_alert_is_queued_with_its_action_and_mailed(smtp, tmp_path):
    from stdd.alerts import AlertService, IntakeMessage
    from stdd.alerts.latency import swift_voevent
    from stdd.store import Database

    settings = settings_from_dict({
        "alerts": {"enabled": True, "rules": [{"require_visible": False, "priority": 5, "actions": ["req"]}],
                   "actions": {"req": {"kind": "request_file", "folder": "requests"}}},
        "delivery": {"notify": channel(smtp, events=["alert_acted"])}}, base=tmp_path)
    db = Database(tmp_path / "stdd.sqlite")
    service = AlertService(db, settings)
    try:
        out = service.handle(IntakeMessage(swift_voevent(2002, ra=30.0, dec=-10.0),
                                           "gcn.classic.voevent.SWIFT_BAT_GRB_POS_ACK", 0, 1))
        out.wait(30)
        (item,) = Outbox(db).list()
        assert item["target"] == "notify:ops" and item["kind"] == "alert_acted" and item["alert_id"] == out.alert_id
        assert item["payload"]["data"]["state"] == "done"
        assert send_message(settings, "notify:ops", [item]).ok
        assert out.alert_id in smtp.messages[0]["Subject"]
    finally:
        service.close()
        db.close()


async def test_disk_full_is_told_directly(smtp, tmp_path, caplog):
    """The database file is full (SQLite's max_page_count reached: SQLITE_FULL, as on a full disk):
    the trouble cannot be queued in it, so it is mailed directly."""
    import sqlite3

    s = make_settings(tmp_path, delivery={"notify": channel(smtp, events=["daemon_trouble"]), "poll_seconds": 0.2,
                                          "trouble_check_seconds": 0.5},
                      daemon={"intake_retry_seconds": 0.2})
    async with Running(Daemon(s, services=[DeliveryService()])) as d:
        def fill():
            conn = d.db.conn
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages + 1}")
            try:
                for i in range(100000):
                    d.events.add("test.filler", "x" * 500)
            except sqlite3.OperationalError as e:
                return str(e)

        assert "full" in await d.gate.run(fill)
        write_frame(tmp_path / "in" / "full.fits", "full")
        await until(lambda: d.gate.problem() is not None and "disk full" in d.gate.problem(), 30)
        subjects = lambda: [m["Subject"] for m in smtp.messages]  # noqa: E731
        await until(lambda: any("database_writes" in t for t in subjects()), 30)
        body = smtp.bodies()[[i for i, t in enumerate(subjects()) if "database_writes" in t][0]]
        assert "database_writes: database: disk full since" in body or "disk full since" in body
        assert "notifying directly" in caplog.text
        await d.gate.run(lambda: d.db.conn.execute("PRAGMA max_page_count = 1073741823"))
        await until(lambda: d.gate.problem() is None, 60)

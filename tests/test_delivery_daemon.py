"""The daemon delivers: a frame done → its target's photometry reaches SkyPortal (a local
receiver checking SkyPortal's API rules). With the receiver down, the item is retried with
backoff and every attempt recorded; across a daemon restart nothing is lost, and once the
receiver is back the payload arrives, once."""
from __future__ import annotations

import pytest

from daemon_harness import DaemonProcess, config_text
from pool_stages import write_frame
from skyportal_receiver import SkyPortalReceiver, free_port
from stdd.store import Database, EventLog, Outbox


def deliveries(daemon: DaemonProcess) -> list[dict]:
    with Database(daemon.db_path, readonly=True) as db:
        return Outbox(db).list()


def events(daemon: DaemonProcess) -> list[dict]:
    with Database(daemon.db_path, readonly=True) as db:
        return EventLog(db).recent(200, kind_prefix="delivery.")


@pytest.mark.timeout(240)
def test_frame_done_payload_arrives_after_receiver_down_and_restart(tmp_path):
    port = free_port()
    (tmp_path / "sp.token").write_text("sp-token\n")
    config = config_text().replace("pool_stages:quick", "delivery_stages:measured") + f"""
[delivery]
backoff_seconds = 0.5
backoff_max_seconds = 1.0
poll_seconds = 0.2
[delivery.skyportal]
url = "http://127.0.0.1:{port}"
token_file = "sp.token"
instrument_id = 7
group_ids = [2]
filter_ids = [1]
"""
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        write_frame(daemon.incoming / "f1.fits", "f1", T_TARGET="SN2026dmn", T_RA=45.5, T_DEC=-20.25,
                    T_MAG=17.75, T_MAGERR=0.04, T_TIME="2026-03-01T02:24:00")
        write_frame(daemon.incoming / "f2.fits", "f2", T_TARGET="SN2026two", T_RA=46.5, T_DEC=-20.25,
                    T_MAG=18.5, T_MAGERR=0.06, T_TIME="2026-03-01T02:30:00")
        frames = daemon.wait_terminal(2)
        assert [f["state"] for f in frames] == ["done", "done"]
        daemon.wait(lambda: len(deliveries(daemon)) == 2 and max(r["attempts"] for r in deliveries(daemon)) >= 3,
                    60, "three failed attempts")
        rows = sorted(deliveries(daemon), key=lambda r: -r["attempts"])
        assert all(r["state"] == "pending" and r["target"] == "skyportal" for r in rows)
        assert {r["frame_id"] for r in rows} == {f["id"] for f in frames}
        tried, waiting = rows
        assert "ConnectionError" in tried["error"]
        # the receiver is down: the other item waits with the one tried, no attempt of its own each round
        assert waiting["attempts"] <= 1 and waiting["error"].startswith(("waiting: skyportal failed", "Connection"))
        retries = [e for e in events(daemon) if e["kind"] == "delivery.retry"]
        assert len(retries) >= 3 and {e["frame_id"] for e in retries} <= {f["id"] for f in frames}
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()

    receiver = SkyPortalReceiver().start(port)
    try:
        daemon = DaemonProcess(tmp_path).start()
        daemon.wait(lambda: all(r["state"] == "sent" for r in deliveries(daemon)), 60, "the deliveries to be sent")
        rows = {r["response"]["obj_id"]: r for r in deliveries(daemon)}
        assert set(rows) == {"SN2026dmn", "SN2026two"} and all(r["error"] is None for r in rows.values())
        assert receiver.rejected == []
        phot = {p["obj_id"]: p for p in receiver.photometry}
        assert len(receiver.photometry) == 2
        p = phot["SN2026dmn"]
        assert p["filter"] == "sdssr" and p["group_ids"] == [2] and p["instrument_id"] == 7
        assert p["mag"] == pytest.approx(17.75) and p["mjd"] == pytest.approx(61100.1)
        assert [e["kind"] for e in events(daemon)].count("delivery.sent") == 2
        cli = daemon.cli("delivery", "list", "--json")
        assert cli.returncode == 0 and '"state": "sent"' in cli.stdout
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        receiver.stop()


def test_cli_lists_and_retries_failed_items(tmp_path):
    import subprocess
    import sys

    from daemon_harness import ROOT, TESTS

    (tmp_path / "stdd.toml").write_text('[paths]\nvar = "var"\ndatabase = "var/stdd.sqlite"\n')
    with Database(tmp_path / "var" / "stdd.sqlite") as db:
        outbox = Outbox(db)
        a = outbox.enqueue("skyportal", "photometry", "k1", {"name": "x"})
        b = outbox.enqueue("notify:ops", "candidates", "k2", {"title": "t"})
        outbox.record(a, "failed", http_status=400, error="Invalid filter")
        outbox.record(b, "sent")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stdd", "--config", str(tmp_path / "stdd.toml"), "delivery", *args],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**__import__("os").environ, "PYTHONPATH": f"{TESTS}:{ROOT}"})

    out = cli("list")
    assert out.returncode == 0, out.stderr
    assert "failed 1" in out.stdout and "sent 1" in out.stdout and "error: Invalid filter" in out.stdout
    out = cli("retry")
    assert out.returncode == 0 and "1 item(s) queued again" in out.stdout
    with Database(tmp_path / "var" / "stdd.sqlite", readonly=True) as db:
        row = Outbox(db).get(a)
        assert row["state"] == "pending" and row["attempts"] == 0
        assert Outbox(db).get(b)["state"] == "sent"
        assert EventLog(db).recent(5, kind_prefix="delivery.requeued")


async def test_a_failing_finish_hook_is_undone_alone(tmp_path, caplog):
    """A finish hook's writes join the frame's end; a hook that raises is rolled back to its
    savepoint and the frame's end is recorded all the same."""
    from stdd.daemon import Daemon
    from test_daemon_api import Running, make_settings, until

    s = make_settings(tmp_path)
    daemon = Daemon(s)
    seen = []

    def good(frame, result):
        Outbox(daemon.db).enqueue("skyportal", "photometry", f"good:{frame['id']}", {"ok": True},
                                  frame_id=frame["id"])
        seen.append(frame["id"])

    def bad(frame, result):
        Outbox(daemon.db).enqueue("skyportal", "photometry", f"bad:{frame['id']}", {"ok": False})
        raise ValueError("a bug in a hook")

    daemon.finish_hooks += [good, bad]
    async with Running(daemon) as d:
        write_frame(tmp_path / "in" / "a.fits", "a")
        await until(lambda: d.frames.list() and d.frames.list()[0]["state"] == "done", 60)
        rows = await d.gate.run(Outbox(d.db).list)
    assert [r["key"] for r in rows] == [f"good:{seen[0]}"]
    assert "finish hook" in caplog.text and "a bug in a hook" in caplog.text


def test_outbox_prune_keeps_pending_and_failed(tmp_path):
    import time

    with Database(tmp_path / "db.sqlite") as db:
        outbox = Outbox(db)
        ids = [outbox.enqueue("tom", "photometry", f"k{i}", {}) for i in range(4)]
        outbox.record(ids[0], "sent")
        outbox.record(ids[1], "failed", error="x")
        outbox.record(ids[2], "sent")
        assert outbox.prune(time.time() - 3600) == 0  # all too young
        assert outbox.prune(time.time() + 1) == 2
        assert sorted(r["state"] for r in outbox.list()) == ["failed", "pending"]


@pytest.mark.timeout(180)
def test_killed_between_send_and_record_sends_again_harmlessly(tmp_path):
    """The daemon dies after SkyPortal took the photometry but before the outcome is recorded:
    the next start sends it again, and SkyPortal's PUT keeps one point."""
    receiver = SkyPortalReceiver().start()
    (tmp_path / "sp.token").write_text("sp-token\n")
    config = config_text().replace("pool_stages:quick", "delivery_stages:measured") + f"""
[delivery]
poll_seconds = 0.2
[delivery.skyportal]
url = "{receiver.url}"
token_file = "sp.token"
instrument_id = 7
candidates = "none"
"""
    daemon = DaemonProcess(tmp_path, config, env={"STDD_FAULTS": "delivery.sent=exit"}).start()
    try:
        write_frame(daemon.incoming / "k.fits", "k", T_TARGET="SN2026kil", T_RA=5.5, T_DEC=5.25,
                    T_MAG=16.5, T_MAGERR=0.02, T_TIME="2026-03-04T00:00:00")
        assert daemon.proc.wait(60) == 86
        daemon.log_fh.close()
        assert len(receiver.photometry) == 1
        (row,) = deliveries(daemon)
        assert row["state"] == "pending" and row["attempts"] == 0
        daemon = DaemonProcess(tmp_path).start()
        daemon.wait(lambda: deliveries(daemon)[0]["state"] == "sent", 60, "the delivery to be recorded")
        assert len(receiver.photometry) == 1 and receiver.rejected == []
        assert [r[0] for r in receiver.requests].count("PUT") == 2
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        receiver.stop()


@pytest.mark.timeout(120)
def test_a_frame_ending_during_the_shutdown_queues_its_delivery(tmp_path):
    (tmp_path / "sp.token").write_text("sp-token\n")
    config = config_text().replace("pool_stages:quick", "delivery_stages:measured") + f"""
[delivery.skyportal]
url = "http://127.0.0.1:{free_port()}"
token_file = "sp.token"
instrument_id = 7
candidates = "none"
"""
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        write_frame(daemon.incoming / "s.fits", "s", T_LATE=2.0, T_TARGET="SN2026late", T_RA=1.5, T_DEC=2.5,
                    T_MAG=15.5, T_MAGERR=0.01, T_TIME="2026-03-05T00:00:00")
        daemon.wait(lambda: any(r["stage"] == "photometry" for r in daemon.stage_runs(daemon.frames()[0]["id"])), 60,
                    "the last stage to run")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    (frame,) = daemon.frames()
    assert frame["state"] == "done"
    (row,) = deliveries(daemon)
    assert row["frame_id"] == frame["id"] and row["state"] == "pending" and row["payload"]["name"] == "SN2026late"

"""The daemon in this process: the methods the endpoint calls, what happens to the source
after success, the scheduled jobs, sd_notify on a real socket, the journald log format."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from pool_stages import write_frame
from stdd.config.load import settings_from_dict
from stdd.daemon import Daemon, SubmitError
from stdd.daemon import jobs
from stdd.daemon.logs import JournalFormatter
from stdd.daemon.notify import SystemdNotifier
from stdd.store import Database, FrameStore


def make_settings(root: Path, **sections):
    data = {
        "paths": {"var": "var", "incoming": ["in"], "work": "var/work", "results": "var/results",
                  "quarantine": "var/q", "archive": "var/archive", "database": "var/db.sqlite", "cache": "var/cache"},
        "watch": {"settle_seconds": 0.2, "incomplete_seconds": 2},
        "pool": {"workers": 2, "retry_backoff_seconds": 0.2, "kill_grace_seconds": 0.5, "shutdown_grace_seconds": 1,
                 "stage_functions": {"inspect": "pool_stages:behave", "photometry": "pool_stages:quick"}},
        "pipeline": {"steps": ["inspect", "photometry"]},
        "http": {"enabled": False},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return settings_from_dict(data, base=root)


async def until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


class Running:
    def __init__(self, daemon: Daemon):
        self.d = daemon
        self.task: asyncio.Task | None = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.d.run())
        await until(lambda: self.d.state in ("running", "paused") or self.task.done())
        if self.task.done():
            self.task.result()
        return self.d

    async def __aexit__(self, *exc):
        self.d.request_stop()
        assert await asyncio.wait_for(self.task, 30) == 0

    def frame(self, fid):
        return self.d.frames.get(fid)


async def test_submit_cancel_retry_pause_resume(tmp_path):
    s = make_settings(tmp_path)
    elsewhere = write_frame(tmp_path / "elsewhere" / "a.fits", "a")
    slow = write_frame(tmp_path / "elsewhere" / "slow.fits", "slow", T_SLEEP=30)
    async with Running(Daemon(s)) as d:
        f = await d.submit(elsewhere)
        assert f["duplicate"] is False and f["state"] == "queued"
        await until(lambda: d.frames.get(f["id"])["state"] == "done")
        again = await d.submit(elsewhere)
        assert again["duplicate"] is True and again["id"] == f["id"]
        with pytest.raises(SubmitError, match="no such file"):
            await d.submit(tmp_path / "nope.fits")
        (tmp_path / "text.fits").write_text("hello")
        with pytest.raises(SubmitError, match="not a FITS file"):
            await d.submit(tmp_path / "text.fits")
        with pytest.raises(SubmitError, match="unknown stage"):
            await d.submit(elsewhere, steps=["nonsense"])

        # cancel a running frame: its group is killed, it ends cancelled, with a result folder
        g = await d.submit(slow)
        await until(lambda: d.frames.get(g["id"])["stage"] == "inspect")
        assert (await d.cancel(g["id"]))["state"] == "cancelling"
        await until(lambda: d.frames.get(g["id"])["state"] == "cancelled")
        res = json.loads((Path(d.frames.get(g["id"])["result_dir"]) / "result.json").read_text())
        assert res["status"] == "cancelled"

        # pause: new frames wait; resume: they run
        d.pause("maintenance")
        assert d.status()["state"] == "paused" and d.status()["paused_reason"] == "maintenance"
        h = await d.submit(write_frame(tmp_path / "elsewhere" / "h.fits", "h"))
        await asyncio.sleep(0.5)
        assert d.frames.get(h["id"])["state"] == "queued"
        assert (await d.cancel(h["id"]))["state"] == "cancelled"
        k = await d.submit(write_frame(tmp_path / "elsewhere" / "k.fits", "k"))
        d.resume()
        await until(lambda: d.frames.get(k["id"])["state"] == "done")

        # retry a finished frame from a later stage: the work folder is kept, one stage runs
        n_before = len(d.frames.stage_runs(f["id"]))
        r = await d.retry(f["id"], from_stage="photometry")
        assert r["state"] == "queued" and r["steps"] == ["photometry"]
        await until(lambda: d.frames.get(f["id"])["state"] == "done")
        runs = d.frames.stage_runs(f["id"])[n_before:]
        assert [x["stage"] for x in runs] == ["photometry"]
        with pytest.raises(SubmitError, match="unknown stage"):
            await d.retry(f["id"], from_stage="bogus")
        st = d.status()
        assert st["frames"]["done"] == 2 and st["frames"]["cancelled"] == 2 and st["pool"]["workers"] == 2


@pytest.mark.parametrize("mode", ["archive", "delete", "leave"])
async def test_source_after_success(tmp_path, mode):
    s = make_settings(tmp_path, watch={"after_success": mode})
    async with Running(Daemon(s)) as d:
        src = write_frame(d.settings.paths.incoming[0] / "night1" / "x.fits", "x")
        await until(lambda: d.frames.counts()["done"] == 1)
        await asyncio.sleep(0.3)
        archived = d.settings.paths.archive / "night1" / "x.fits"
        assert src.exists() is (mode == "leave")
        assert archived.exists() is (mode == "archive")
        assert not list(d.spool.glob("*.fits"))  # the spool copy went; the work folder keeps one
        assert list((d.settings.paths.work / "1").glob("original.fits"))


async def test_new_content_at_the_same_path_is_a_new_version(tmp_path):
    s = make_settings(tmp_path)
    async with Running(Daemon(s)) as d:
        p = d.settings.paths.incoming[0] / "same.fits"
        write_frame(p, "v1")
        await until(lambda: d.frames.counts()["done"] == 1)
        write_frame(p, "v2")
        await until(lambda: d.frames.counts()["done"] == 2)
        rows = sorted(d.frames.list(), key=lambda r: r["id"])
        assert [r["version"] for r in rows] == [1, 2] and rows[0]["sha256"] != rows[1]["sha256"]
        assert len({r["result_dir"] for r in rows}) == 2


async def test_queued_frames_survive_a_restart_and_recorded_files_are_not_hashed_again(tmp_path):
    s = make_settings(tmp_path)
    async with Running(Daemon(s)) as d:
        d.pause("hold")
        write_frame(d.settings.paths.incoming[0] / "q.fits", "q")
        await until(lambda: d.frames.counts()["queued"] == 1)
    async with Running(Daemon(s)) as d:  # the state file is the queue: nothing lost
        await until(lambda: d.frames.counts()["done"] == 1)
        await asyncio.sleep(0.5)
        assert d.intake.taken == 0 and len(d.frames.list()) == 1


def test_jobs_summary_retention_cache(tmp_path):
    with Database(tmp_path / "db.sqlite") as db:
        frames = FrameStore(db)
        night = date(2026, 3, 4)
        t = datetime(2026, 3, 4, 23, 0, tzinfo=timezone.utc).timestamp()
        for i, (zp, fwhm, lim, state) in enumerate([(20.0, 2.0, 19.0, "done"), (21.0, 3.0, 20.0, "done"),
                                                    (None, None, None, "failed")]):
            f, _ = frames.add(f"/in/{i}.fits", f"h{i}", 10)
            db.conn.execute("UPDATE frames SET created_at = ? WHERE id = ?", (t + i * 60, f["id"]))
            frames.finish(f["id"], state, "photometry: no stars" if state == "failed" else None,
                          {"zp": zp, "fwhm_arcsec": fwhm, "mag_limit": lim, "filter": "r"} if zp else None)
        path, s = jobs.write_night_summary(frames, tmp_path / "results", 0.0, night)
        assert (s["frames"], s["done"], s["failed"]) == (3, 2, 1)
        assert (s["median_zp"], s["median_fwhm_arcsec"], s["median_mag_limit"]) == (20.5, 2.5, 19.5)
        assert s["failure_reasons"] == {"photometry": 1} and s["by_filter"]["r"]["done"] == 2
        assert json.loads(path.read_text()) == s and "night 2026-03-04: 3 frames" in jobs.format_summary(s)
        # a frame taken at 03:00 UTC belongs to the night that began the evening before
        assert jobs.night_of(datetime(2026, 3, 5, 3, tzinfo=timezone.utc).timestamp(), 0.0) == night

        work, spool = tmp_path / "work", tmp_path / "spool"
        for row in frames.list():
            (work / str(row["id"])).mkdir(parents=True)
            frames.set_dirs(row["id"], str(work / str(row["id"])), None)
            spool.mkdir(exist_ok=True)
            (spool / f"{row['sha256']}.fits").write_bytes(b"x")
        assert jobs.clean_work(frames, work, spool, 7, now=time.time())["removed"] == 0
        assert jobs.clean_work(frames, work, spool, 7, now=time.time() + 8 * 86400)["removed"] == 3
        assert not list(work.iterdir()) and not list(spool.iterdir())

    cache = tmp_path / "cache"
    (cache / "cat").mkdir(parents=True)
    old, new = cache / "cat" / "old.fits", cache / "new.fits"
    old.write_bytes(b"1" * 100)
    new.write_bytes(b"2")
    os.utime(old, (time.time() - 100 * 86400,) * 2)
    out = jobs.prune_cache(cache, 90)
    assert out == {"removed": 1, "bytes": 100} and new.exists() and not (cache / "cat").exists()


async def test_sd_notify_ready_status_watchdog_on_a_real_socket(tmp_path):
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.setblocking(False)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1500000"})
    assert notifier.watchdog_seconds == 1.5
    messages: list[str] = []

    def drain():
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return

    s = make_settings(tmp_path)
    async with Running(Daemon(s, notifier=notifier)) as d:
        assert "watchdog" in d.job_ids()
        await asyncio.sleep(1.3)
        drain()
        assert any("READY=1" in m and "STATUS=running" in m for m in messages)
        assert sum(m == "WATCHDOG=1" for m in messages) >= 2
        ok, errors = d.reload()  # started without a config file
        assert not ok and "without a config file" in errors[0]
    drain()
    assert any(m.startswith("STOPPING=1") for m in messages)
    sock.close()
    assert SystemdNotifier({}).notify(READY=1) is False


async def test_a_second_daemon_on_the_same_database_is_refused(tmp_path):
    from stdd.daemon import DaemonError

    s = make_settings(tmp_path)
    async with Running(Daemon(s)):
        with pytest.raises(DaemonError, match="another stdd daemon"):
            await Daemon(s).run()


def test_journald_lines_carry_the_priority():
    rec = logging.LogRecord("stdd.daemon", logging.WARNING, __file__, 1, "frame=%d failed", (3,), None)
    assert JournalFormatter("%(name)s: %(message)s").format(rec) == "<4>stdd.daemon: frame=3 failed"


async def test_frames_in_a_live_alert_region_jump_the_queue(tmp_path, shared_data):
    """A real alert (the EP notice, moved onto the Feder frame's field) makes that frame run
    before frames queued earlier; the stages get the region."""
    from stdd.alerts import AlertService, IntakeMessage
    from stdd.alerts.link import AlertRegionProvider, header_footprint

    frame = shared_data / "frames" / "feder_aspencg16_EYUMa_r_thumb256_wcs.fits"
    fp = header_footprint(frame)
    assert fp and abs(fp["ra"] - 135.62) < 0.1 and abs(fp["dec"] - 49.79) < 0.1
    assert header_footprint(shared_data / "frames" / "orion_ssdsi_M13_blue_0001.fits") is None  # no WCS

    s = make_settings(tmp_path, alerts={"rules": [{"require_visible": False, "priority": 50}]},
                      pool={"workers": 1})
    notice = json.loads((shared_data / "gcn" / "json" / "ep_wxt_alert_EP240508.json").read_text())
    notice.update(ra=fp["ra"] + 0.05, dec=fp["dec"], trigger_time=datetime.now(timezone.utc).isoformat())
    db = Database(tmp_path / "alerts.sqlite")
    service = AlertService(db, s)
    service.handle(IntakeMessage(json.dumps(notice).encode(), topic="gcn.notices.einstein_probe.wxt.alert"))
    (live,) = service.live_regions()
    provider = AlertRegionProvider(service)
    assert provider.frame_priority(frame) == (50, [live.alert_id])

    async with Running(Daemon(s, region_provider=provider)) as d:
        d.pause("fill the queue")
        inc = d.settings.paths.incoming[0]
        for i in range(3):
            write_frame(inc / f"early{i}.fits", f"e{i}")
        await until(lambda: d.frames.counts()["queued"] == 3)
        import shutil
        shutil.copy(frame, inc / "feder.fits")
        await until(lambda: d.frames.counts()["queued"] == 4)
        feder = next(f for f in d.frames.list() if f["name"] == "feder.fits")
        assert feder["priority"] == 50 and feder["alert_ids"] == [live.alert_id]
        d.resume()
        await until(lambda: sum(d.frames.counts()[k] for k in ("done", "failed")) == 4)
        order = sorted(d.frames.list(), key=lambda f: f["started_at"])
        assert order[0]["name"] == "feder.fits"
        # a frame covering a live alert is searched whatever the configured steps
        feder = d.frames.get(feder["id"])
        result = json.loads((Path(feder["result_dir"]) / "result.json").read_text())
        assert list(result["stages"]) == ["inspect", "photometry", "transients", "subtraction"]
        assert all(f["state"] == "done" for f in d.frames.list() if f["name"] != "feder.fits")
    service.close()
    db.close()


@pytest.mark.parametrize("threads, helper", [(1, False), (2, True)])
async def test_the_frames_thread_budget_decides_where_output_is_drawn(tmp_path, threads, helper):
    """pool.threads_per_frame reaches the frame process: with 1, output work (plots) is done on
    the chain's own thread; with 2, on the helper thread while the next stages run."""
    s = make_settings(tmp_path, pool={"workers": 2, "threads_per_frame": threads,
                                      "stage_functions": {"inspect": "pool_stages:behave",
                                                          "photometry": "pool_stages:output_probe"}})
    src = write_frame(tmp_path / "elsewhere" / "a.fits", "a")
    async with Running(Daemon(s)) as d:
        f = await d.submit(src)
        await until(lambda: d.frames.get(f["id"])["state"] in ("done", "failed"))
        row = d.frames.get(f["id"])
        assert row["state"] == "done", row
        name = (Path(row["result_dir"]) / "output_thread.txt").read_text().strip()
    assert name.startswith("stdd-output") is helper, name


async def test_the_retention_job_prunes_the_database_history(tmp_path):
    """The hourly retention job, run now in a live daemon: old events go, the frame rows stay."""
    s = make_settings(tmp_path, retention={"events_days": 1})
    async with Running(Daemon(s)) as d:
        write_frame(d.settings.paths.incoming[0] / "r.fits", "r")
        await until(lambda: d.frames.counts()["done"] == 1)
        with d.db.write() as conn:  # age the history by ten days
            conn.execute("UPDATE events SET time = time - 10 * 86400")
        out = await d.run_job("retention")
        assert out["database"]["events"] > 0, out
        assert d.db.query_one("SELECT COUNT(*) AS n FROM events WHERE time < ?", (time.time() - 86400,))["n"] == 0
        assert d.frames.counts()["done"] == 1

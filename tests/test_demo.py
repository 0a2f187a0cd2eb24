"""`stdd demo` — the README's first command — end to end: the real daemon on the demo field."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stdd.store import Database


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`stdd demo` run once (not in a terminal: it does not stay up to serve the browser)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "stdd", "demo", "--dir", str(tmp_path), "--timeout", "600"],
                       capture_output=True, text=True, timeout=900)
    return tmp_path, r


@pytest.mark.slow
def test_demo_runs_the_daemon_and_every_frame_ends_as_expected(demo_run):
    tmp_path, r = demo_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo: OK" in r.stdout
    assert "/ui/" in r.stdout  # it says where to look at the results
    db = Database(tmp_path / "var" / "stdd.sqlite", readonly=True)
    frames = {f["name"]: f for f in db.query("SELECT * FROM frames")}
    alerts = db.query("SELECT id FROM alerts")
    actions = db.query("SELECT state FROM actions")
    db.close()
    assert frames["frame_04.fits"]["state"] == "failed" and "truncated" in frames["frame_04.fits"]["error"]
    assert len(alerts) == 1 and [a["state"] for a in actions] == ["done"]
    truth = json.loads((tmp_path / "data" / "truth" / "frame_03.json").read_text())
    result_dir = next((tmp_path / "var" / "results").glob(f"{frames['frame_03.fits']['id']}-*"))
    result = json.loads((result_dir / "result.json").read_text())
    assert result["status"] == "done" and result["zp_err"] < 0.05
    # both injected transients are found by the subtraction
    assert len(result["candidates_sub"]) >= len(truth["transients"]) == 2
    for name in ("frame_01.fits", "frame_02.fits", "frame_03.fits"):
        assert frames[name]["state"] == "done" and frames[name]["alert_ids"]  # the alert covers the field
    assert len(list((tmp_path / "var" / "requests").glob("*.json"))) == 1


def _alert_id(tmp_path) -> str:
    db = Database(tmp_path / "var" / "stdd.sqlite", readonly=True)
    try:
        return db.query("SELECT id FROM alerts")[0]["id"]
    finally:
        db.close()


@pytest.mark.slow
def test_the_alert_report_on_the_demo(demo_run):
    """The follow-up report of the demo's alert: its frames by time since T0 with their limits at the
    position (reference nights before the trigger marked), the candidates in the region, a circular
    naming the limits; from the CLI (daemon stopped)."""
    tmp_path, r = demo_run
    assert r.returncode == 0
    alert_id = _alert_id(tmp_path)
    out = subprocess.run([sys.executable, "-m", "stdd", "--config", str(tmp_path / "stdd.toml"), "alert", "report",
                          alert_id, "--json", "--plot", str(tmp_path / "lc.png")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    manifest = json.loads((tmp_path / "data" / "demo.json").read_text())
    frames = {f["name"]: f for f in report["frames"]}
    done = [n for n in ("frame_01.fits", "frame_02.fits", "frame_03.fits")]
    assert set(done) <= set(frames)
    # frame 3 was taken 20 min after the trigger, the others on earlier nights
    assert 19 * 60 < frames["frame_03.fits"]["t_minus_t0_s"] < 22 * 60
    assert frames["frame_01.fits"]["before_trigger"] and not frames["frame_03.fits"]["before_trigger"]
    for n in done:
        assert frames[n]["measured"] and frames[n]["limit"] > 15  # a limit (or a magnitude) at the position
    assert report["summary"]["candidates_in_region"] >= 1
    tr = manifest["alert"]["transient"]
    best = report["candidates"][0]
    assert abs(best["ra"] - tr["ra"]) * 3600 < 2 and abs(best["dec"] - tr["dec"]) * 3600 < 2
    circ = report["circular"]
    from stdd.reports.alert_report import fmt_dt

    assert f"> {frames['frame_03.fits']['limit']:.2f}" in circ  # the limit after the trigger, named
    assert fmt_dt(frames["frame_03.fits"]["t_minus_t0_s"]) in circ  # and when it was taken
    assert "Demo site" in circ and "SUBJECT:" in circ
    assert (tmp_path / "lc.png").stat().st_size > 1000
    text = subprocess.run([sys.executable, "-m", "stdd", "--config", str(tmp_path / "stdd.toml"), "alert",
                           "report", alert_id, "--text"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and text.stdout.startswith("SUBJECT:")
    missing = subprocess.run([sys.executable, "-m", "stdd", "--config", str(tmp_path / "stdd.toml"), "alert",
                              "report", "no-such-alert"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no alert" in missing.stderr


@pytest.mark.slow
async def test_every_page_of_the_demo_in_chromium(demo_run):
    """The web interface on the demo's results (the daemon started again on its state): the night,
    every frame, the alert with its report; every page and every image loads; the report over
    HTTP; nothing requested outside the daemon."""
    import shutil
    import urllib.parse

    import aiohttp

    from http_env import running_daemon
    from stdd.config.load import load_settings

    playwright_api = pytest.importorskip("playwright.async_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; scripts/setup.sh test installs it)")
    tmp_path, r = demo_run
    assert r.returncode == 0
    alert_id = _alert_id(tmp_path)
    quoted = urllib.parse.quote(alert_id, safe="")
    settings = load_settings(tmp_path / "stdd.toml")
    async with running_daemon(settings, tmp_path / "stdd.toml") as (daemon, svc):
        async with aiohttp.ClientSession() as s:
            async with s.get(svc.url + f"/alerts/{quoted}/report") as resp:
                assert resp.status == 200
                rep = await resp.json()
            async with s.get(svc.url + f"/alerts/{quoted}/report?format=text") as resp:
                assert resp.status == 200 and (await resp.text()).startswith("SUBJECT:")
            async with s.get(svc.url + "/alerts/no-such/report") as resp:
                assert resp.status == 404
        assert len(rep["frames"]) >= 3
        ids = [f["id"] for f in await daemon.gate.run(daemon.frames.list)]
        requests: list[str] = []
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda q: requests.append(q.url))
            try:
                pages = ["/ui/?night=2026-02-28", "/ui/", f"/ui/alerts/{quoted}"] + [f"/ui/frames/{i}" for i in ids]
                for path in pages:
                    resp = await page.goto(svc.url + path)
                    assert resp.status == 200, path
                    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
                    await page.wait_for_load_state("networkidle")
                    broken = await page.evaluate(
                        "Array.from(document.images).filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src)")
                    assert broken == [], (path, broken)
                await page.goto(svc.url + f"/ui/alerts/{quoted}")
                assert await page.locator("tr.alert-frame").count() >= 3
                assert "SUBJECT:" in await page.inner_text("#circular-text")
                await page.click("#copy-circular")
                await page.wait_for_function("document.getElementById('copy-circular').dataset.copied === '1'",
                                             timeout=5000)
            finally:
                await browser.close()
        assert requests and all(u.startswith(svc.url + "/") for u in requests), \
            [u for u in requests if not u.startswith(svc.url)]

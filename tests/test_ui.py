"""The web interface (/ui/) in a real headless Chromium (Debian's, driven by Playwright) on the
real daemon's results: pages load with every image, the viewer zooms, overlays are drawn, the
blink runs, a rerun from the frame page runs, and no request leaves the machine. And its
security from outside the browser: a POST without a session or without the CSRF token is
refused (401 / 403), a foreign Host header is refused (DNS rebinding)."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path

import aiohttp
import pytest

from http_env import running_daemon, wait_for
from stdd.config.load import load_settings

synth = pytest.importorskip("stdd.synth")
playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CONFIG = """
[paths]
var = "var"
incoming = ["incoming"]
[pool]
workers = 1
[watch]
settle_seconds = 0.2
[http]
port = {port}
token_file = "var/http.token"
[catalog]
source = "local"
files = ["{catalog}"]
[template]
source = "custom"
file = "{template}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("ui")
    return synth.make_field(d / "f", seed=3, width=512, height=512, n_stars=300, n_transients=2,
                            transient_snr=(30, 40), n_cosmics=5)


@pytest.fixture
async def ui(field, tmp_path):
    """The real daemon with one frame processed by the real stages."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; scripts/setup.sh test installs it)")
    cfg = tmp_path / "stdd.toml"
    cfg.write_text(CONFIG.format(port=free_port(), catalog=field.catalog.resolve(),
                                 template=field.template.resolve()))
    (tmp_path / "incoming").mkdir()
    settings = load_settings(cfg)
    async with running_daemon(settings, cfg) as (daemon, svc):
        src = tmp_path / "incoming" / "night1.fits"
        src.write_bytes(field.frame.read_bytes())
        frame = await wait_for(lambda: finished(daemon), 240, "the frame processed")
        assert frame["state"] == "done", frame["error"]
        (tmp_path / "incoming" / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
        await wait_for(lambda: n_frames(daemon, 2), 60, "the broken file recorded")
        yield daemon, svc, frame


async def n_frames(daemon, n: int):
    rows = await daemon.gate.run(daemon.frames.list)
    return len(rows) >= n and all(r["state"] in ("done", "failed") for r in rows)


async def finished(daemon):
    rows = await daemon.gate.run(daemon.frames.list)
    return rows[-1] if rows and rows[-1]["state"] in ("done", "failed") else None


async def browser_page(p):
    browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    return browser, page


async def shot(page, name: str) -> None:
    """A full-page screenshot into $STDD_UI_SHOTS, when set (to look at the pages)."""
    import os

    if os.environ.get("STDD_UI_SHOTS"):
        await page.screenshot(path=str(Path(os.environ["STDD_UI_SHOTS"]) / f"{name}.png"), full_page=True)


async def all_images_loaded(page) -> list[str]:
    """The sources of images on the page that did not load (scrolled into view first)."""
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await page.wait_for_load_state("networkidle")
    return await page.evaluate("""() => Array.from(document.images)
        .filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src)""")


async def test_pages_viewer_blink_and_rerun_in_chromium(ui):
    daemon, svc, frame = ui
    fid = frame["id"]
    requests: list[str] = []
    async with playwright_api.async_playwright() as p:
        browser, page = await browser_page(p)
        page.on("request", lambda r: requests.append(r.url))
        try:
            # tonight: the broken file, a failure with its reason, a picture that says there is no image
            r = await page.goto(svc.url + "/ui/")
            assert r.status == 200
            assert await page.locator("#failures li").count() == 1
            assert "truncated" in await page.inner_text("#failures")
            assert await all_images_loaded(page) == []
            broken = await daemon.gate.run(lambda: [f for f in daemon.frames.list() if f["state"] == "failed"][0])
            r = await page.goto(svc.url + f"/ui/frames/{broken['id']}")
            assert r.status == 200 and await all_images_loaded(page) == []
            # the night the frame was taken (2026-03-01T03:00 UT at longitude 0): the frame with its image
            # thumbnail, the trend plots
            r = await page.goto(svc.url + "/ui/?night=2026-02-28")
            assert r.status == 200
            assert await page.locator(f"tr.frame[data-id='{fid}']").count() == 1
            assert await all_images_loaded(page) == []
            thumb = page.locator("img.thumb").first
            assert await thumb.evaluate("(i) => i.naturalWidth") > 16
            assert await page.locator("#night-plot").evaluate("(i) => i.naturalWidth") > 300
            await shot(page, "night")

            # the frame: viewer, overlays, candidates with their cutout planes and blink, plots
            r = await page.goto(svc.url + f"/ui/frames/{fid}")
            assert r.status == 200
            await page.wait_for_function("document.getElementById('viewer-img').dataset.loaded === '1'")
            drawn = int(await page.locator("#viewer-svg").get_attribute("data-drawn") or 0)
            assert drawn >= 2  # calibration stars and candidates at least
            region0 = await page.evaluate("document.getElementById('viewer').viewerApi.region()")
            assert region0 == [0, 512, 0, 512]
            await page.click("#v-zoom-in")
            await page.wait_for_function("document.getElementById('viewer-img').dataset.loaded === '1'")
            region1 = await page.evaluate("document.getElementById('viewer').viewerApi.region()")
            assert region1[1] - region1[0] == 256 and "x0=128" in await page.locator("#viewer-img").get_attribute("src")
            await page.select_option("#v-cmap", "viridis")
            await page.wait_for_function("document.getElementById('viewer-img').dataset.loaded === '1'")
            assert "cmap=viridis" in await page.locator("#viewer-img").get_attribute("src")
            assert await page.locator("tr.candidate").count() >= 1
            assert await page.locator("img.cutout").count() >= 3
            if await page.locator("img.blink").count():
                await page.wait_for_function("document.querySelector('img.blink').dataset.index === '1'",
                                             timeout=5000)
            assert await all_images_loaded(page) == []
            assert await page.locator("#plots img.plot").count() >= 3
            assert await page.locator("#result-json").count() == 1
            await shot(page, "frame")
            # not logged in: no forms to act, a link to log in
            assert await page.locator("#retry-form").count() == 0

            # log in with the token, then rerun from subtraction with a changed setting
            await page.goto(svc.url + f"/ui/login?next=/ui/frames/{fid}")
            await page.fill("input[name=token]", "wrong")
            await page.click("#login button")
            assert await page.locator("#login-error").count() == 1
            await page.fill("input[name=token]", svc.token)
            await page.click("#login button")
            await page.wait_for_url(svc.url + f"/ui/frames/{fid}")
            cookies = await page.context.cookies()
            sess = [c for c in cookies if c["name"] == "stdd_session"][0]
            assert sess["httpOnly"] and sess["sameSite"] == "Strict"
            await page.select_option("#retry-form select[name=from_stage]", "subtraction")
            await page.fill("#retry-form textarea[name=settings]", "sub_size=128")
            await page.click("#retry-form button")
            await page.wait_for_selector("#message")
            assert "queued again from subtraction" in await page.inner_text("#message")
        finally:
            await browser.close()

    async def rerun_done():
        f = await daemon.gate.run(daemon.frames.get, fid)
        if f["state"] != "done":
            return None
        res = json.loads((Path(f["result_dir"]) / "result.json").read_text())
        return res if res.get("run") == 2 else None
    res = await wait_for(rerun_done, 240, "the rerun from the page")
    assert res["kept_stages"] == ["inspect", "photometry", "transients"]
    assert res["settings"]["frame_options"] == {"pipeline": {"sub_size": 128}}
    # every request the browser made went to the daemon's endpoint: nothing left the machine
    assert requests and all(u.startswith(svc.url + "/") for u in requests), \
        [u for u in requests if not u.startswith(svc.url)]


async def test_actions_need_a_session_and_the_csrf_token_and_the_host_is_checked(ui):
    daemon, svc, frame = ui
    fid = frame["id"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: an IP host
        # no session: 401
        async with s.post(svc.url + f"/ui/frames/{fid}/retry", data={"from_stage": "subtraction"}) as r:
            assert r.status == 401
        # the bearer token of the JSON API is not a session either
        async with s.post(svc.url + f"/ui/frames/{fid}/cancel",
                          headers={"Authorization": f"Bearer {svc.token}"}) as r:
            assert r.status == 401
        # log in: a session cookie, but a POST without (or with a wrong) CSRF token: 403
        async with s.post(svc.url + "/ui/login", data={"token": svc.token, "next": "/ui/"},
                          allow_redirects=False) as r:
            assert r.status == 303 and "stdd_session" in r.cookies
            cookie = r.cookies["stdd_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with s.post(svc.url + f"/ui/frames/{fid}/retry", data={"from_stage": "subtraction"}) as r:
            assert r.status == 403
        async with s.post(svc.url + f"/ui/frames/{fid}/retry",
                          data={"from_stage": "subtraction", "csrf": "not-it"}) as r:
            assert r.status == 403
        # the page gives the CSRF token; with it a bad setting is a 400 naming it
        async with s.get(svc.url + f"/ui/frames/{fid}") as r:
            text = await r.text()
        csrf = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with s.post(svc.url + f"/ui/frames/{fid}/retry",
                          data={"from_stage": "subtraction", "csrf": csrf, "settings": "sub_sise=600"}) as r:
            assert r.status == 400 and "sub_sise" in await r.text()
        assert (await daemon.gate.run(daemon.frames.get, fid))["state"] == "done"
        # a login redirect never leaves the interface
        async with s.post(svc.url + "/ui/login", data={"token": svc.token, "next": "//evil.example/"},
                          allow_redirects=False) as r:
            assert r.headers["Location"] == "/ui/"
    # DNS rebinding: a foreign name in the Host header is refused, for pages and the API alike
    port = int(svc.url.rsplit(":", 1)[1])
    for path in ("/ui/", f"/ui/frames/{fid}", "/frames", "/status"):
        status, _ = await raw_get(port, path, "evil.example:%d" % port)
        assert status == 421, path
        status, _ = await raw_get(port, path, "localhost:%d" % port)
        assert status == 200, path
    status, _ = await raw_get(port, "/status", "127.0.0.1:1")  # the right name, another port
    assert status == 421


async def raw_get(port: int, path: str, host: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data

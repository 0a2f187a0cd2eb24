"""From frames to science over time (issue 17), through the real daemon on real synthetic frames:
six frames of one field over three nights with a variable star (a known sine), a transient that
appears in frame 3 and a moving object (night 2) → the variable's light curve, forced photometry
at the transient (limits before it appears, detections after), candidate histories (the transient
one `confirmed` candidate, the moving object one `moving` candidate, the variable a `known
variable` from a local catalogue), by the CLI and over HTTP."""
from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest

from http_env import running_daemon, wait_for
from stdd.config.load import load_settings

synth = pytest.importorskip("stdd.synth")

SIZE = 512
RA, DEC = 150.0, 30.0
START = datetime(2026, 3, 1, 2, 0, 0)
#: (night, minutes after the night's first frame) of the six frames
TIMES = [(0, 0), (0, 30), (1, 0), (1, 30), (2, 0), (2, 30)]
VAR_MEAN, VAR_AMP, VAR_PERIOD_D = 16.0, 0.6, 1.7
TRANSIENT_MAG = 16.3
MOVER_MAG, MOVER_RATE = 16.0, 60.0  # arcsec/hour, along RA, night 2 (frames 3 and 4) only

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
[store]
variable_catalogs = ["{variables}"]
"""


def frame_time(i: int) -> datetime:
    night, minutes = TIMES[i]
    return START + timedelta(days=night, minutes=minutes)


def var_mag(t: datetime) -> float:
    days = (t - START).total_seconds() / 86400
    return VAR_MEAN + VAR_AMP * math.sin(2 * math.pi * days / VAR_PERIOD_D)


def empty_spots(truth: dict, n: int) -> list[tuple[float, float]]:
    stars = truth["stars"]
    xy = np.array([(s["x"], s["y"]) for s in stars if s["mag"] < 21.5])
    w = synth.wcs_from_truth(truth["wcs"])
    out = []
    for x in range(70, SIZE - 70, 12):
        for y in range(70, SIZE - 70, 12):
            if np.min(np.hypot(xy[:, 0] - x, xy[:, 1] - y)) > 22 and all(
                    math.hypot(x - a, y - b) > 80 for a, b, *_ in out):
                ra, dec = w.all_pix2world([x], [y], 0)
                out.append((x, y, float(ra[0]), float(dec[0])))
                if len(out) == n:
                    return [(r, d) for _, _, r, d in out]
    raise AssertionError("not enough empty spots on the synthetic frame")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("series")
    sky = synth.default_starfield(11, width=SIZE, height=SIZE, n_stars=400)
    ref = synth.make_field(tmp / "ref", seed=100, width=SIZE, height=SIZE, ra=RA, dec=DEC, starfield=sky,
                           n_transients=0, n_cosmics=0, date_obs="2025-01-01T00:00:00")
    truth = json.loads(ref.truth.read_text())
    (v_ra, v_dec), (t_ra, t_dec), (m_ra, m_dec) = empty_spots(truth, 3)
    frames = []
    for i in range(6):
        t = frame_time(i)
        inj = [(v_ra, v_dec, var_mag(t))]
        if i >= 2:
            inj.append((t_ra, t_dec, TRANSIENT_MAG))
        if i in (2, 3):
            hours = (t - frame_time(2)).total_seconds() / 3600
            inj.append((m_ra + MOVER_RATE * hours / 3600 / math.cos(math.radians(m_dec)), m_dec, MOVER_MAG))
        fp = synth.make_field(tmp / f"f{i}", seed=200 + i, width=SIZE, height=SIZE, ra=RA, dec=DEC, starfield=sky,
                              template=False, transients=inj, n_cosmics=5, date_obs=t.isoformat(timespec="seconds"),
                              catalog_name=None)
        frames.append(fp.frame)
    from astropy.table import Table

    variables = tmp / "variables.ecsv"
    Table({"RAJ2000": [v_ra], "DEJ2000": [v_dec], "name": ["SYN Var 1"]}).write(variables)
    return {"tmp": tmp, "ref": ref, "frames": frames, "variable": (v_ra, v_dec), "transient": (t_ra, t_dec),
            "mover": (m_ra, m_dec), "variables": variables}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def cli(cfg, *args) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STDD_HTTP_TOKEN", "STDD_CONFIG")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "stdd", "--config", str(cfg), *map(str, args),
                                                env={**env, "MPLBACKEND": "Agg"}, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


async def test_light_curves_and_candidate_histories_over_three_nights(series, tmp_path):
    import aiohttp

    cfg = tmp_path / "stdd.toml"
    cfg.write_text(CONFIG.format(port=free_port(), catalog=series["ref"].catalog.resolve(),
                                 template=series["ref"].template.resolve(), variables=series["variables"]))
    (tmp_path / "incoming").mkdir()
    settings = load_settings(cfg)
    async with running_daemon(settings, cfg) as (daemon, svc):
        for i, f in enumerate(series["frames"]):  # in time order, as a camera writes them
            (tmp_path / "incoming" / f"night_{i}.fits").write_bytes(f.read_bytes())

            async def done(n=i + 1):
                rows = await daemon.gate.run(daemon.frames.list)
                return len(rows) >= n and all(r["state"] in ("done", "failed") for r in rows)
            await wait_for(done, 240, f"frame {i + 1} processed")
        rows = await daemon.gate.run(daemon.frames.list)
        assert all(r["state"] == "done" for r in rows), [r["error"] for r in rows]

        # the variable: six matched points within 3 sigma of the sine
        v_ra, v_dec = series["variable"]
        code, out, err = await cli(cfg, "lightcurve", v_ra, v_dec, "--json")
        assert code == 0, err
        lc = json.loads(out)
        pts = [p for p in lc["points"] if p["detected"]]
        assert len(pts) == 6, lc["points"]
        for p in pts:
            t = datetime.fromisoformat(p["time"])
            truth = var_mag(t)  # the frames' times are mid-exposure: 30 s later than DATE-OBS
            sigma = math.hypot(p["mag_err"] or 0, p.get("zp_err") or 0)
            assert abs(p["mag"] - truth) < 3 * sigma + 0.01, (p, truth)

        # forced photometry at the transient: limits before it appeared, detections after
        t_ra, t_dec = series["transient"]
        async with aiohttp.ClientSession() as s:
            async with s.get(svc.url + "/lightcurve", params={"ra": t_ra, "dec": t_dec, "forced": "true"}) as r:
                assert r.status == 200
                forced = await r.json()
            async with s.get(svc.url + "/lightcurve", params={"ra": t_ra, "dec": t_dec, "format": "votable"}) as r:
                assert r.status == 200 and b"VOTABLE" in await r.read()
            async with s.get(svc.url + "/candidates", params={"non_detections": "true"}) as r:
                assert r.status == 200
                cands = (await r.json())["candidates"]
            async with s.get(svc.url + "/lightcurve", params={"ra": 400, "dec": 0}) as r:
                assert r.status == 400
        fp = forced["points"]
        assert len(fp) == 6 and all(p["source"] == "forced" for p in fp)
        assert [p["detected"] for p in fp] == [False, False, True, True, True, True], fp
        assert all(p["limit"] > TRANSIENT_MAG + 0.5 for p in fp[:2])
        assert all(abs(p["mag"] - TRANSIENT_MAG) < 0.2 for p in fp[2:])

        # candidate histories
        def near(c, pos, arcsec=3.0):
            return math.hypot((c["ra"] - pos[0]) * math.cos(math.radians(pos[1])), c["dec"] - pos[1]) * 3600 < arcsec
        at_transient = [c for c in cands if near(c, series["transient"])]
        assert len(at_transient) == 1 and at_transient[0]["state"] == "confirmed"
        assert at_transient[0]["n_det"] >= 4
        assert [n["frame_id"] for n in at_transient[0]["non_detections"]] == [1, 2]  # with their limits
        assert all(n["limit"] > TRANSIENT_MAG for n in at_transient[0]["non_detections"])
        at_variable = [c for c in cands if near(c, series["variable"])]
        assert len(at_variable) == 1 and at_variable[0]["state"] == "known variable"
        mover_pos = [series["mover"], (series["mover"][0] + MOVER_RATE * 0.5 / 3600 / math.cos(math.radians(DEC)),
                                       series["mover"][1])]
        on_mover = [c for c in cands if any(any(near(d, p) for p in mover_pos) for d in c["detections"])]
        assert on_mover, "the moving object was not recorded"
        assert all(c["state"] == "moving" for c in on_mover), [(c["state"], c["n_det"]) for c in on_mover]
        assert len(on_mover) == 1 and on_mover[0]["n_det"] == 2, json.dumps(on_mover, indent=1)[:3000]
        code, out, err = await cli(cfg, "candidates", "--state", "confirmed", "--json")
        assert code == 0, err
        confirmed = json.loads(out)
        assert any(near(c, series["transient"]) for c in confirmed)
        tr = [c for c in confirmed if near(c, series["transient"])][0]
        assert len(tr["non_detections"]) == 2  # frames 1 and 2 cover it without a detection

        # the web interface: the vetting queue (cutout triplets, histories), a mark stored with who and
        # when and exported; the light-curve page with its plot; every image loads, nothing leaves
        await vet_and_look(daemon, svc, at_transient[0]["id"], series["variable"])


async def vet_and_look(daemon, svc, cid: int, variable) -> None:
    import shutil

    pw = pytest.importorskip("playwright.async_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; scripts/setup.sh test installs it)")
    requests: list[str] = []
    async with pw.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda q: requests.append(q.url))
        try:
            await page.goto(svc.url + "/ui/login?next=/ui/candidates")
            await page.fill("input[name=token]", svc.token)
            await page.fill("input[name=who]", "ak")
            await page.click("#login button")
            await page.wait_for_url(svc.url + "/ui/candidates")
            assert await page.locator(f"#cand-{cid}").count() == 1
            assert await page.locator(f"#cand-{cid} img.cutout").count() == 3
            assert await page.locator(f"#cand-{cid} table.history tr").count() >= 5
            await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            await page.wait_for_load_state("networkidle")
            broken = await page.evaluate(
                "Array.from(document.images).filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src)")
            assert broken == []
            await page.click(f"#cand-{cid} button[value=real]")
            await page.wait_for_selector("#message")
            assert await page.locator(f"#cand-{cid}").count() == 0  # vetted: out of the queue
            resp = await page.goto(svc.url + "/ui/candidates/export.json")
            marks = await resp.json()
            assert [(m["candidate_id"], m["mark"], m["who"]) for m in marks] == [(cid, "real", "ak")]
            assert marks[0]["cutout"] and marks[0]["result_dir"]
            await page.goto(svc.url + f"/ui/lightcurve?ra={variable[0]}&dec={variable[1]}")
            assert await page.locator("#lc-table tr.det").count() == 6
            assert await page.locator("#lc-plot").evaluate("(i) => i.naturalWidth") > 200
        finally:
            await browser.close()
    rows = await daemon.gate.run(lambda: daemon.db.query("SELECT * FROM vetting"))
    assert len(rows) == 1 and rows[0]["who"] == "ak" and rows[0]["mark"] == "real" and rows[0]["at"] > 0
    assert all(u.startswith(svc.url + "/") for u in requests)

"""Per-frame settings and reruns from a stage (issue 15, parts 2 and 3), on real frames with the
real stages: `stdd process --from`, and the real daemon through `stdd submit/retry -c` and HTTP.

A rerun keeps the earlier stages' products byte for byte, runs only the stage asked and later
ones with the changed settings, records which stages were kept and with which settings, and keeps
the previous result as a version; a bad key is an error naming it (exit 2, HTTP 400)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from http_env import running_daemon, wait_for
from stdd.config.load import load_settings

synth = pytest.importorskip("stdd.synth")

KEPT = ("inspect.json", "objects.fits", "photometry.json", "zeropoint.json", "transients.json",
        "candidates_simple.ecsv", "image.wcs")


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("STDD_CONFIG", None)
    env.pop("STDD_HTTP_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "stdd", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in KEPT}


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerun")
    fp = synth.make_field(d / "f", seed=11, width=1024, height=1024, n_stars=900, n_transients=1,
                          transient_snr=(40, 40), n_cosmics=5)
    return d, fp


def test_process_rerun_from_subtraction_keeps_earlier_products(field):
    d, fp = field
    out = d / "out"
    r = run_cli("process", fp.frame, "--catalog", fp.catalog, "--template", fp.template, "-c", "sn=4",
                "--out", out, "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    full = json.loads(r.stdout)
    folder = Path(full["result_dir"])
    before = digests(folder)
    tiles_before = len(full["sub_tiles"])

    r = run_cli("process", fp.frame, "--out", out, "--from", "subtraction", "-c", "sub_size=600", "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    rerun = json.loads(r.stdout)
    # only subtraction ran; the earlier stages' products are the very same bytes
    assert rerun["kept_stages"] == ["inspect", "photometry", "transients"]
    assert digests(folder) == before
    for name in ("inspect", "photometry", "transients"):
        assert rerun["stages"][name] == full["stages"][name]
    assert len(rerun["sub_tiles"]) > tiles_before
    # the template's reprojection onto this frame is kept in its work folder and reused
    assert "template reprojection reused" in (folder / "subtraction.log").read_text()
    assert "template reprojection reused" not in (out / "frame.versions" / "run-1" / "subtraction.log").read_text()
    # settings: this run's (the earlier -c kept, the new one added) and those the kept stages ran with
    assert rerun["settings"]["pipeline"]["sub_size"] == 600 and rerun["settings"]["pipeline"]["sn"] == 4
    assert rerun["settings"]["frame_options"]["pipeline"] == {"sn": 4, "sub_size": 600}
    assert rerun["kept_settings"]["pipeline"]["sub_size"] == 1000
    # the previous result is a version, not overwritten
    assert rerun["run"] == 2
    old = json.loads((out / "frame.versions" / "run-1" / "result.json").read_text())
    assert old["run"] == 1 and len(old["sub_tiles"]) == tiles_before
    assert digests(out / "frame.versions" / "run-1") == before

    # bad keys and values, and a rerun with nothing to start from: exit 2, naming what is wrong
    r = run_cli("process", fp.frame, "--out", out, "--from", "subtraction", "-c", "sub_sise=600", cwd=d)
    assert r.returncode == 2 and "sub_sise" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("process", fp.frame, "--out", out, "--from", "subtraction", "-c", "sub_size=10", cwd=d)
    assert r.returncode == 2 and "sub_size" in r.stderr
    r = run_cli("process", fp.frame, "--out", d / "elsewhere", "--from", "photometry", cwd=d)
    assert r.returncode == 2 and "without --from" in r.stderr
    r = run_cli("process", fp.frame, "--out", out, "--from", "subtractoin", cwd=d)
    assert r.returncode == 2 and "subtractoin" in r.stderr
    assert json.loads((folder / "result.json").read_text())["run"] == 2  # none of those touched the result


def test_clean_work_removes_the_work_folder_and_then_a_rerun_says_why(field, tmp_path):
    d, fp = field
    r = run_cli("process", fp.frame, "--steps", "inspect", "--clean-work", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "o" / ".work").exists()
    r = run_cli("process", fp.frame, "--steps", "inspect", "--from", "inspect", "--out", tmp_path / "o",
                cwd=tmp_path)
    assert r.returncode == 2 and "--clean-work" in r.stderr


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


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("rerun-daemon")
    fp = synth.make_field(d / "f", seed=5, width=384, height=384, n_stars=250, n_transients=1,
                          transient_snr=(40, 40), n_cosmics=5)
    return fp


async def cli(config: Path, *args) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STDD_HTTP_TOKEN", "STDD_CONFIG")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "stdd", "--config", str(config),
                                                *map(str, args), env={**env, "MPLBACKEND": "Agg"},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_daemon_submit_with_options_then_retry_from_a_stage(small, tmp_path):
    cfg = tmp_path / "stdd.toml"
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg.write_text(CONFIG.format(catalog=small.catalog.resolve(), template=small.template.resolve(), port=port))
    (tmp_path / "incoming").mkdir()
    settings = load_settings(cfg)
    settings.watch.patterns = ["*.nomatch"]  # only what is submitted is processed
    src = tmp_path / "incoming" / "frame.fits"
    src.write_bytes(small.frame.read_bytes())
    async with running_daemon(settings, cfg) as (daemon, svc):
        # a bad key or value is refused before anything is queued, naming it
        code, out, err = await cli(cfg, "submit", src, "-c", "sn_typo=3")
        assert code == 2 and "sn_typo" in err
        code, out, err = await cli(cfg, "submit", src, "-c", "paths.work=/tmp")
        assert code == 2 and "paths.work" in err
        status, body = await svc_post(svc, "/frames", {"path": str(src), "options": {"template.survey": "nope"}})
        assert status == 400 and "template.survey" in body["error"]
        assert await daemon.gate.run(daemon.frames.list) == []

        code, out, err = await cli(cfg, "submit", src, "-c", "sn=4", "--target", "x=100 y=120", "--json")
        assert code == 0, err
        fid = json.loads(out)["frame"]["id"]
        frame = await wait_for(lambda: done(daemon, fid), 240, "the frame to be processed")
        result_dir = Path(frame["result_dir"])
        first = json.loads((result_dir / "result.json").read_text())
        assert first["status"] == "done", first["error"]
        assert first["settings"]["frame_options"] == {"pipeline": {"sn": 4, "targets": ["x=100 y=120"]}}
        assert first["settings"]["pipeline"]["sn"] == 4
        before = digests(result_dir)

        code, out, err = await cli(cfg, "retry", fid, "--from", "subtraction", "-c", "sub_size=128")
        assert code == 0, err
        await wait_for(lambda: done(daemon, fid, run=2), 240, "the rerun")
        second = json.loads((result_dir / "result.json").read_text())
        assert second["kept_stages"] == ["inspect", "photometry", "transients"]
        assert digests(result_dir) == before
        assert len(second["sub_tiles"]) > len(first["sub_tiles"])
        assert second["settings"]["frame_options"]["pipeline"] == {"sn": 4, "targets": ["x=100 y=120"],
                                                                   "sub_size": 128}
        runs = await daemon.gate.run(daemon.frames.stage_runs, fid)
        assert sum(1 for r in runs if r["stage"] == "inspect") == 1  # inspect ran once, for the first run
        # the frame's history lists both results
        status, detail = await svc_get(svc, f"/frames/{fid}")
        assert status == 200
        assert [(v["run"], v["current"]) for v in detail["versions"]] == [(1, False), (2, True)]
        assert detail["versions"][1]["kept_stages"] == ["inspect", "photometry", "transients"]
        assert detail["versions"][1]["stages_run"] == ["subtraction"]
        # a retry with a bad option is a 400 naming it, and leaves the frame alone
        status, body = await svc_post(svc, f"/frames/{fid}/retry", {"from_stage": "subtraction",
                                                                    "options": {"sub_size": -1}})
        assert status == 400 and "sub_size" in body["error"]


async def done(daemon, fid: int, run: int = 1):
    frame = await daemon.gate.run(daemon.frames.get, fid)
    if frame["state"] not in ("done", "failed") or not frame.get("result_dir"):
        return None
    try:
        res = json.loads((Path(frame["result_dir"]) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return frame if res.get("run") == run else None


async def svc_request(svc, method: str, path: str, body=None):
    import aiohttp

    headers = {"Authorization": f"Bearer {svc.token}"}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, svc.url.rstrip("/") + path, json=body, headers=headers) as r:
            return r.status, await r.json()


async def svc_get(svc, path):
    return await svc_request(svc, "GET", path)


async def svc_post(svc, path, body):
    return await svc_request(svc, "POST", path, body)

"""Every route of the endpoint against the real daemon (real store, real pool, real server on a
free port): answers, filters, paging, auth (401), bad bodies (400), roots (403), unknown ids
(404), conflicts (409), and the file-traversal attempts."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from http_env import running_daemon, wait_for, write_frame
from stdd.config.load import load_settings
from stdd.http import openapi
from stdd.store import STATES

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONFIG = """
[paths]
var = "var"
incoming = ["incoming"]
[pool]
workers = 2
retry_backoff_seconds = 0.5
kill_grace_seconds = 1.0
shutdown_grace_seconds = 2.0
stage_functions = { inspect = "pool_stages:behave", photometry = "pool_stages:quick" }
[pipeline]
steps = ["inspect", "photometry"]
[watch]
settle_seconds = 0.2
[http]
port = 0
token_file = "var/http.token"
"""


class Env:
    def __init__(self, root, daemon, svc, session):
        self.root, self.daemon, self.svc, self.session = root, daemon, svc, session
        self.url = svc.url
        self.auth = {"Authorization": f"Bearer {svc.token}"}
        self.incoming = root / "incoming"

    async def get(self, path, **kw):
        async with self.session.get(self.url + path, **kw) as r:
            body = await r.read()
            return r.status, (json.loads(body) if r.content_type == "application/json" else body), r

    async def post(self, path, body=None, auth=True, **kw):
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers.update(self.auth)
        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        async with self.session.post(self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if r.content_type == "application/json" else raw)

    async def frame(self, frame_id):
        return (await self.get(f"/frames/{frame_id}"))[1]["frame"]

    async def submit(self, path):
        status, body = await self.post("/frames", {"path": str(path)})
        assert status == 201, body
        return body["frame"]["id"]

    async def wait_state(self, frame_id, states, timeout=30):
        async def check():
            f = await self.frame(frame_id)
            return f if f["state"] in states else None
        return await wait_for(check, timeout, f"frame {frame_id} in {states}")

    async def raw(self, target: str) -> tuple[int, bytes]:
        """A request line sent byte for byte (a client library would normalise the path)."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("http")
    (root / "stdd.toml").write_text(CONFIG)
    monkeypatch_module.delenv("STDD_HTTP_TOKEN", raising=False)
    settings = load_settings(root / "stdd.toml")
    async with running_daemon(settings, config_path=root / "stdd.toml") as (daemon, svc):
        async with aiohttp.ClientSession() as session:
            yield Env(root, daemon, svc, session)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def done_frame(env):
    """A frame that ran both stages (two stage runs, result.json, a log, products)."""
    fid = await env.submit(write_frame(env.incoming / "done.fits", 1.0, T_ID="done"))
    await env.wait_state(fid, {"done"})
    return fid


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def failed_frame(env):
    fid = await env.submit(write_frame(env.incoming / "bad.fits", 2.0, T_ID="bad", T_FAIL="no stars at all"))
    await env.wait_state(fid, {"failed"})
    return fid


# -- reads --------------------------------------------------------------------------------
async def test_health_all_checks(env):
    status, body, _ = await env.get("/health")
    assert status == 200 and body["ok"] is True
    assert {"database", "workers", "watcher", "event_loop"} <= set(body["checks"])
    assert all(c["ok"] is True and isinstance(c["detail"], str) and c["detail"] for c in body["checks"].values())
    assert body["checks"]["workers"]["slots"] == 2
    assert "alert_stream" not in body["checks"]  # alerts are off in this config


async def test_status_shape(env, done_frame):
    status, body, _ = await env.get("/status")
    assert status == 200
    assert set(body["frames"]) == set(STATES) and body["frames"]["done"] >= 1
    assert body["version"] and body["uptime_seconds"] > 0 and body["paused"] is False
    assert body["state"] == "running" and body["pid"] == os.getpid()
    assert len(body["workers"]) == 2 and all(w["alive"] for w in body["workers"])
    assert body["queue"]["depth"] == body["frames"]["queued"]


async def test_frames_list_filters_and_paging(env, done_frame, failed_frame):
    status, body, _ = await env.get("/frames")
    assert status == 200 and body["total"] >= 2
    ids = [f["id"] for f in body["frames"]]
    assert ids == sorted(ids, reverse=True)
    _, done, _ = await env.get("/frames", params={"state": "done"})
    assert done_frame in [f["id"] for f in done["frames"]] and all(f["state"] == "done" for f in done["frames"])
    _, failed, _ = await env.get("/frames", params={"state": "failed"})
    assert [f["id"] for f in failed["frames"]] == [failed_frame]
    assert failed["frames"][0]["error"] and "no stars at all" in failed["frames"][0]["error"]
    _, page1, _ = await env.get("/frames", params={"limit": 1})
    assert len(page1["frames"]) == 1 and page1["next_offset"] == 1
    _, page2, _ = await env.get("/frames", params={"limit": 1, "offset": 1})
    assert page2["frames"][0]["id"] != page1["frames"][0]["id"]
    _, future, _ = await env.get("/frames", params={"since": time.time() + 3600})
    assert future["frames"] == [] and future["total"] == 0
    _, iso, _ = await env.get("/frames", params={"since": "2000-01-01T00:00:00Z"})
    assert iso["total"] == body["total"]
    _, none, _ = await env.get("/frames", params={"alert": "no-such-alert"})
    assert none["frames"] == []


@pytest.mark.parametrize("query,word", [
    ({"state": "sleeping"}, "state"), ({"state": ""}, "state"), ({"limit": "0"}, "limit"),
    ({"limit": "ten"}, "limit"), ({"limit": "5000"}, "limit"), ({"offset": "-1"}, "offset"),
    ({"since": "yesterday"}, "since"), ({"since": "nan"}, "since"),
])
async def test_frames_bad_parameters_are_400(env, query, word):
    status, body, _ = await env.get("/frames", params=query)
    assert status == 400 and word in body["error"] and body["status"] == 400


async def test_frame_detail(env, done_frame):
    status, body, _ = await env.get(f"/frames/{done_frame}")
    assert status == 200
    assert body["frame"]["id"] == done_frame and body["frame"]["zp"] == 20.5
    assert [r["stage"] for r in body["stage_runs"]] == ["inspect", "photometry"]
    assert all(r["state"] == "done" for r in body["stage_runs"])
    assert body["result"]["status"] == "done" and body["result"]["test_id"] == "done"
    names = {f["name"] for f in body["files"]}
    assert {"result.json", "behave.txt", "quick.txt"} <= names
    assert any(e["kind"] == "frame.done" for e in body["events"])
    status, small, _ = await env.get(f"/frames/{done_frame}", params={"log_lines": "0"})
    assert status == 200 and all(lines == [] for lines in small["logs"].values())


@pytest.mark.parametrize("target", ["/frames/999999", "/frames/0", "/frames/99999999999999999999999",
                                    "/frames/abc", "/frames/-1"])
async def test_unknown_frame_is_404(env, target):
    status, body, _ = await env.get(target)
    assert status == 404 and body["status"] == 404


async def test_frame_file_served(env, done_frame):
    status, body, resp = await env.get(f"/frames/{done_frame}/files/behave.txt")
    assert status == 200 and body == b"done\n"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    status, body, _ = await env.get(f"/frames/{done_frame}/files/result.json")
    assert status == 200 and body["status"] == "done"
    status, body, _ = await env.get(f"/frames/{done_frame}/files/nothing.fits")
    assert status == 404


async def test_file_traversal_attempts_never_leave_the_folder(env, done_frame, tmp_path_factory):
    secret_dir = tmp_path_factory.mktemp("outside")
    secret = secret_dir / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    frame = await env.frame(done_frame)
    folder = Path(frame["result_dir"])
    (folder / "link_out.txt").symlink_to(secret)
    (folder / "dir_out").symlink_to(secret_dir)
    (folder / "link_in.txt").symlink_to(folder / "behave.txt")
    rel = os.path.relpath(secret, folder)
    base = f"/frames/{done_frame}/files/"
    attempts = [
        base + rel, base + rel.replace("/", "%2F"), base + rel.replace("/", "%2f").replace("..", "%2e%2e"),
        base + "..%2F..%2F..%2Fetc%2Fpasswd", base + "%2Fetc%2Fpasswd", base + "%2e%2e/%2e%2e/etc/passwd",
        base + "..%252F..%252Fetc%252Fpasswd", base + "link_out.txt", base + "dir_out/secret.txt",
        base + "..\\..\\etc\\passwd", base + "plots/../../" + rel, base + "%00secret", base + "~root",
        f"/frames/{done_frame}/files/{secret}", f"/frames/{done_frame}/files//etc/passwd",
    ]
    for target in attempts:
        status, body = await env.raw(target)
        assert status in (400, 403, 404), (target, status)
        assert b"TOP-SECRET" not in body and b"root:" not in body, target
    for target in (base + "link_out.txt", base + "dir_out/secret.txt", base + "..%2F" + "secret.txt",
                   base + "%2Fetc%2Fpasswd"):
        status, _ = await env.raw(target)
        assert status == 403, target
    status, body = await env.raw(base + "link_in.txt")  # a link that stays inside is fine
    assert status == 200 and body == b"done\n"


async def test_thumbnail_drawn_from_the_frame(env, done_frame):
    status, png, resp = await env.get(f"/frames/{done_frame}/thumbnail.png")
    assert status == 200 and png.startswith(b"\x89PNG") and resp.headers["Content-Type"] == "image/png"
    cached = list((env.root / "var" / "cache" / "thumbnails").glob("*.png"))
    assert len(cached) >= 1
    status, again, _ = await env.get(f"/frames/{done_frame}/thumbnail.png")
    assert again == png
    status, body, _ = await env.get("/frames/777777/thumbnail.png")
    assert status == 404


async def test_frame_files_of_unknown_frame_404(env):
    status, body, _ = await env.get("/frames/424242/files/result.json")
    assert status == 404 and "no frame" in body["error"]


# -- auth ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/frames", "/frames/1/cancel", "/frames/1/retry", "/pause", "/resume", "/reload",
                                  "/alerts"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer"])
async def test_posts_need_the_token(env, path, header):
    headers = {"Authorization": header} if header else {}
    status, body = await env.post(path, {"path": "/x"} if path == "/frames" else None, auth=False, headers=headers)
    assert status == 401 and "Bearer" in body["error"]


async def test_gets_are_open_on_loopback(env):
    for path in ("/health", "/status", "/frames", "/metrics", "/openapi.json", "/", "/alerts"):
        async with env.session.get(env.url + path) as r:
            assert r.status == 200, path


# -- submit -------------------------------------------------------------------------------
async def test_submit_outside_roots_is_403(env, tmp_path_factory):
    outside = write_frame(tmp_path_factory.mktemp("elsewhere") / "x.fits", T_ID="x")
    status, body = await env.post("/frames", {"path": str(outside)})
    assert status == 403 and "not under an allowed root" in body["error"]
    link = env.incoming / "sneaky.fits"
    link.symlink_to(outside)  # inside by name, outside in fact
    status, body = await env.post("/frames", {"path": str(link)})
    assert status == 403
    status, body = await env.post("/frames", {"path": str(env.incoming / ".." / "stdd.toml")})
    assert status == 403


@pytest.mark.parametrize("body,word", [
    (b"not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "JSON object"), ({}, "'path'"),
    ({"path": 5}, "'path'"), ({"path": ""}, "'path'"), ({"path": "relative/x.fits"}, "absolute"),
    ({"path": "/x.fits", "colour": "red"}, "unknown key"), ({"path": "/x.fits", "priority": "high"}, "priority"),
    ({"path": "/x.fits", "steps": ["dance"]}, "steps"), ({"path": "/x.fits", "steps": []}, "steps"),
])
async def test_submit_bad_body_is_400(env, body, word):
    status, out = await env.post("/frames", body)
    assert status == 400 and word in out["error"]


async def test_submit_missing_and_non_fits(env):
    status, body = await env.post("/frames", {"path": str(env.incoming / "nope.fits")})
    assert status == 404
    junk = env.incoming / "junk" / "notfits.txt"
    junk.parent.mkdir(exist_ok=True)
    junk.write_text("hello, not a FITS file\n" * 10)
    status, body = await env.post("/frames", {"path": str(junk)})
    assert status == 400 and "notfits.txt" in body["error"]


async def test_submit_then_same_content_again(env):
    path = write_frame(env.incoming / "sub" / "twice.fits", 7.0, T_ID="twice")
    status, body = await env.post("/frames", {"path": str(path), "priority": 5})
    assert status == 201 and body["created"] is True and body["frame"]["priority"] == 5
    status, again = await env.post("/frames", {"path": str(path)})
    assert status == 200 and again["created"] is False and again["frame"]["id"] == body["frame"]["id"]
    await env.wait_state(body["frame"]["id"], {"done"})


# -- cancel, retry --------------------------------------------------------------------------
async def test_cancel(env, done_frame):
    status, body = await env.post("/frames/999999/cancel")
    assert status == 404
    status, body = await env.post(f"/frames/{done_frame}/cancel")
    assert status == 409 and body["state"] == "done"
    fid = await env.submit(write_frame(env.incoming / "long.fits", 3.0, T_ID="long", T_SLEEP=60))

    async def inspecting():
        f = await env.frame(fid)
        return f["state"] == "running" and f["stage"] == "inspect"
    await wait_for(inspecting, 20, "the long frame to run")
    await asyncio.sleep(0.3)
    status, body = await env.post(f"/frames/{fid}/retry")
    assert status == 409 and body["state"] == "running"
    status, body = await env.post(f"/frames/{fid}/cancel")
    assert status == 202 and body["state"] == "cancelling"
    await env.wait_state(fid, {"cancelled"})
    status, body = await env.post(f"/frames/{fid}/cancel", b"[]")
    assert status == 400  # a body, if given, must be an object


async def test_cancel_right_after_submit(env):
    """Queued, just claimed, or running: a cancel right after a submit always takes."""
    for i in range(3):
        fid = await env.submit(write_frame(env.incoming / f"quick_cancel_{i}.fits", 10.0 + i, T_ID=f"qc{i}",
                                           T_SLEEP=30))
        status, body = await env.post(f"/frames/{fid}/cancel")
        assert status in (200, 202), body
        await env.wait_state(fid, {"cancelled"})


async def test_cancel_queued_while_paused(env):
    status, _ = await env.post("/pause", {"reason": "test: hold the queue"})
    assert status == 200
    try:
        fid = await env.submit(write_frame(env.incoming / "held.fits", 4.0, T_ID="held"))
        assert (await env.frame(fid))["state"] == "queued"
        status, body = await env.post(f"/frames/{fid}/cancel")
        assert status == 200 and body["state"] == "cancelled" and body["frame"]["state"] == "cancelled"
    finally:
        assert (await env.post("/resume"))[0] == 200


async def test_retry(env, failed_frame):
    status, _ = await env.post("/frames/999999/retry")
    assert status == 404
    for bad in ({"from_stage": "dance"}, {"from_stage": None}, {"from_stage": 3}, {"stage": "inspect"}):
        status, body = await env.post(f"/frames/{failed_frame}/retry", bad)
        assert status == 400, bad
    status, body = await env.post(f"/frames/{failed_frame}/retry")
    assert status == 200 and body["frame"]["state"] in ("queued", "running") and body["frame"]["error"] is None
    await env.wait_state(failed_frame, {"failed"})
    _, detail, _ = await env.get(f"/frames/{failed_frame}")
    assert [r["stage"] for r in detail["stage_runs"]] == ["inspect", "inspect"]


async def test_retry_from_stage(env, done_frame):
    status, body = await env.post(f"/frames/{done_frame}/retry", {"from_stage": "photometry"})
    assert status == 200, (status, body)
    assert body["frame"]["steps"] == ["photometry"]
    await env.wait_state(done_frame, {"done"})
    _, detail, _ = await env.get(f"/frames/{done_frame}")
    assert [r["stage"] for r in detail["stage_runs"]] == ["inspect", "photometry", "photometry"]


# -- control --------------------------------------------------------------------------------
async def test_pause_and_resume(env):
    status, body = await env.post("/pause")
    assert status == 200 and body["paused"] is True and body["paused_reason"] == "paused by request (HTTP)"
    try:
        _, st, _ = await env.get("/status")
        assert st["paused"] is True and st["state"] == "paused"
        fid = await env.submit(write_frame(env.incoming / "waits.fits", 5.0, T_ID="waits"))
        await asyncio.sleep(0.5)
        assert (await env.frame(fid))["state"] == "queued"
        status, body = await env.post("/pause", {"reason": 12})
        assert status == 400
    finally:
        status, body = await env.post("/resume")
    assert status == 200 and body["paused"] is False
    await env.wait_state(fid, {"done"})


async def test_reload(env):
    config = env.root / "stdd.toml"
    status, body = await env.post("/reload")
    assert status == 200 and body["reloaded"] is True
    good = config.read_text()
    config.write_text(good.replace("workers = 2", "workers = -4\nmystery_key = 1"))
    try:
        status, body = await env.post("/reload")
        assert status == 409 and any("workers" in e for e in body["errors"])
        assert any("mystery_key" in e for e in body["errors"])
        assert env.daemon.settings.pool.workers == 2  # the running settings stayed
    finally:
        config.write_text(good)


# -- metrics, openapi, errors ---------------------------------------------------------------
async def test_metrics(env, done_frame, failed_frame):
    status, text, resp = await env.get("/metrics")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert all(name.startswith("stdd_") for name in families)
    frames = {s.labels["state"]: s.value for s in families["stdd_frames"].samples}
    assert set(frames) == set(STATES) and frames["done"] >= 1 and frames["failed"] >= 1
    stage = [s for s in families["stdd_stage_duration_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["stage"] for s in stage} >= {"inspect", "photometry"}
    for name in ("stdd_queue_depth", "stdd_alerts", "stdd_alerts_live", "stdd_actions", "stdd_event_loop_lag_seconds",
                 "stdd_event_loop_lag_max_seconds", "stdd_workers", "stdd_paused", "stdd_http_requests",
                 "stdd_health_check", "stdd_uptime_seconds"):
        assert name in families, name
    lag = [s for s in families["stdd_event_loop_lag_seconds"].samples if s.name.endswith("_count")][0]
    assert lag.value > 10  # the monitor has been sampling
    requests = families["stdd_http_requests"].samples
    assert any(s.labels["route"] == "/frames/{id}" and s.labels["status"] == "404" for s in requests)


async def test_openapi_route_and_unknown_routes(env):
    status, body, _ = await env.get("/openapi.json")
    assert status == 200 and body == json.loads(json.dumps(openapi.document(body["info"]["version"])))
    status, body, _ = await env.get("/no/such/route")
    assert status == 404 and body["error"]
    async with env.session.delete(env.url + "/status", headers=env.auth) as r:
        assert r.status == 405 and "GET" in r.headers["Allow"]
        assert (await r.json())["status"] == 405


# -- alerts (alert handling is off in this daemon) -------------------------------------------
async def test_alerts_when_alert_handling_is_off(env):
    status, body, _ = await env.get("/alerts")
    assert status == 200 and body["alerts"] == [] and body["total"] == 0
    status, body, _ = await env.get("/alerts/ivo://nowhere#1")
    assert status == 404
    status, body, _ = await env.get("/alerts", params={"live": "maybe"})
    assert status == 400
    status, body = await env.post("/alerts", b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert status == 409 and "not running" in body["error"]
    status, body = await env.post("/alerts", b"   ")
    assert status == 400

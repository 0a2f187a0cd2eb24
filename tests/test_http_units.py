"""The endpoint's parts that need no daemon: the token file, safe file names, the lag monitor,
the client's "daemon is not running" answer, the OpenAPI document."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import time

import pytest

from stdd.config.settings import HttpSettings
from stdd.http import auth, files, openapi
from stdd.http.client import Client, DaemonNotRunning
from stdd.http.lag import LagMonitor
from stdd.http.loadcheck import percentile


# -- token --------------------------------------------------------------------------------
def test_token_file_made_once_with_mode_600(tmp_path, monkeypatch):
    monkeypatch.delenv("STDD_HTTP_TOKEN", raising=False)
    http = HttpSettings(token_file=tmp_path / "var" / "http.token")
    old = os.umask(0o022)
    try:
        token = auth.ensure_token(http)
    finally:
        os.umask(old)
    assert len(token) >= 40
    assert stat.S_IMODE(http.token_file.stat().st_mode) == 0o600
    assert auth.ensure_token(http) == token  # second start reads it, does not replace it
    assert auth.read_token(http) == token


def test_token_file_too_open_is_tightened(tmp_path, monkeypatch):
    monkeypatch.delenv("STDD_HTTP_TOKEN", raising=False)
    path = tmp_path / "http.token"
    path.write_text("s3cret-token\n")
    path.chmod(0o644)
    assert auth.ensure_token(HttpSettings(token_file=path)) == "s3cret-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_from_environment_wins_and_no_file_is_made(tmp_path, monkeypatch):
    http = HttpSettings(token_file=tmp_path / "http.token", token_env="MY_STDD_TOKEN")
    monkeypatch.setenv("MY_STDD_TOKEN", "from-env")
    assert auth.ensure_token(http) == "from-env"
    assert auth.read_token(http) == "from-env"
    assert not http.token_file.exists()


def test_client_without_token_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("STDD_HTTP_TOKEN", raising=False)
    http = HttpSettings(token_file=tmp_path / "missing.token")
    with pytest.raises(auth.TokenError, match="STDD_HTTP_TOKEN is not set and .*missing.token does not exist"):
        auth.read_token(http)
    (tmp_path / "missing.token").write_text("  \n")
    with pytest.raises(auth.TokenError, match="is empty"):
        auth.read_token(http)


@pytest.mark.parametrize("header,expected", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None), ("", None),
])
def test_bearer_header(header, expected):
    assert auth.bearer(header) == expected


def test_loopback_peers():
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("127.5.6.7") and auth.is_loopback("::1")
    assert auth.is_loopback("::ffff:127.0.0.1")
    assert not auth.is_loopback("192.168.1.5") and not auth.is_loopback("::ffff:10.0.0.1")
    assert not auth.is_loopback("not-an-address")


# -- file names ---------------------------------------------------------------------------
@pytest.fixture
def frame_dirs(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    folder = tmp_path / "results" / "f1"
    (folder / "plots").mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    (folder / "plots" / "fwhm.png").write_bytes(b"\x89PNG")
    (folder / "escape.txt").symlink_to(outside)
    (folder / "escape_dir").symlink_to(tmp_path)
    (folder / "alias.json").symlink_to(folder / "result.json")
    return folder, outside


def test_files_inside_are_served(frame_dirs):
    folder, _ = frame_dirs
    assert files.resolve_in(folder, "result.json").read_text() == "{}"
    assert files.resolve_in(folder, "plots/fwhm.png").name == "fwhm.png"
    assert files.resolve_in(folder, "alias.json").name == "result.json"  # a link that stays inside


@pytest.mark.parametrize("name", [
    "../secret.txt", "../../etc/passwd", "plots/../../secret.txt", "/etc/passwd", "~/x", "a\\..\\b",
    "plots//fwhm.png", "./result.json", "plots/./fwhm.png", "a\x00b", "escape.txt", "escape_dir/secret.txt",
])
def test_names_outside_are_refused(frame_dirs, name):
    folder, _ = frame_dirs
    with pytest.raises(files.FileRefused) as e:
        files.resolve_in(folder, name)
    assert e.value.status == 403


def test_missing_and_folder_names_are_404(frame_dirs):
    folder, _ = frame_dirs
    for name in ("nothing.fits", "plots"):
        with pytest.raises(files.FileRefused) as e:
            files.resolve_in(folder, name)
        assert e.value.status == 404
    with pytest.raises(files.FileRefused) as e:
        files.find_frame_file([None, folder / "nope"], "result.json")
    assert e.value.status == 404


def test_outside_refusal_wins_over_missing(frame_dirs, tmp_path):
    folder, _ = frame_dirs
    other = tmp_path / "work"
    other.mkdir()
    with pytest.raises(files.FileRefused) as e:
        files.find_frame_file([folder, other], "escape.txt")
    assert e.value.status == 403


def test_tail_reads_the_end_only(tmp_path):
    log = tmp_path / "photometry.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert files.tail(log, 3) == ["line 99997", "line 99998", "line 99999"]
    assert files.tail(log, 0) == []
    short = tmp_path / "s.log"
    short.write_text("a\nb\n")
    assert files.tail(short, 10) == ["a", "b"]


# -- lag ----------------------------------------------------------------------------------
async def test_lag_monitor_sees_a_blocked_loop():
    lag = LagMonitor(interval=0.01)
    lag.start()
    await asyncio.sleep(0.05)
    t0 = time.time()
    time.sleep(0.2)  # block the loop on purpose
    await asyncio.sleep(0.05)
    assert lag.max_since(t0) >= 0.15
    assert lag.max_total >= 0.15 and lag.count > 3
    await lag.stop()
    assert not lag.running


def test_lag_window_forgets_old_samples():
    lag = LagMonitor(window=10)
    lag.record(0.5, now=100.0)
    lag.record(0.01, now=105.0)
    lag.record(0.02, now=111.0)
    assert lag.max_since(0) == 0.02 and lag.max_total == 0.5


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 99) == 99 and percentile(values, 50) == 50 and percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0


# -- client -------------------------------------------------------------------------------
def test_client_says_daemon_is_not_running(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed
    client = Client(HttpSettings(port=port))
    with pytest.raises(DaemonNotRunning, match=f"daemon is not running at http://127.0.0.1:{port}"):
        client.get("/status")
    sock = Client(HttpSettings(unix_socket=tmp_path / "stdd.sock"))
    with pytest.raises(DaemonNotRunning, match="daemon is not running at unix:"):
        sock.get("/status")


# -- OpenAPI ------------------------------------------------------------------------------
def test_openapi_document_is_valid():
    from openapi_spec_validator import validate

    doc = openapi.document("0.1.0")
    validate(doc)
    assert {"/health", "/status", "/frames", "/frames/{id}", "/frames/{id}/files/{name}", "/frames/{id}/cancel",
            "/frames/{id}/retry", "/pause", "/resume", "/reload", "/alerts", "/alerts/{id}", "/metrics",
            "/openapi.json", "/"} <= set(doc["paths"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "post":
                assert op["security"] == [{"bearer": []}], path
                assert "401" in op["responses"], path


# -- thumbnails ---------------------------------------------------------------------------
def test_thumbnail_from_real_frames(shared_data, tmp_path):
    from PIL import Image

    from stdd.http import thumbs

    for name in ("feder_aspencg16_EYUMa_r_thumb256_orig.fit.gz", "orion_ssdsi_M13_blue_0001.fits"):
        src = shared_data / "frames" / name
        if not src.exists():
            pytest.skip(f"{src} is not in the shared data")
        out = thumbs.draw(src, tmp_path / f"{name}.png")
        with Image.open(out) as im:
            assert im.format == "PNG" and max(im.size) <= thumbs.SIZE and min(im.size) > 16
            lo, hi = im.getextrema()
            assert hi - lo > 100  # stretched, not a flat square


def test_thumbnail_of_nothing(tmp_path):
    from stdd.http import thumbs

    with pytest.raises(thumbs.NoThumbnail, match="no image yet"):
        thumbs.thumbnail_path({"id": 1, "sha256": "ab" * 32, "work_dir": None, "result_dir": None}, tmp_path)
    table = tmp_path / "table.fits"
    from astropy.io import fits
    from astropy.table import Table

    Table({"a": [1, 2]}).write(table)
    with pytest.raises(thumbs.NoThumbnail, match="no 2-D image"):
        thumbs.draw(table, tmp_path / "t.png")
    assert fits.getheader(table, 1)["NAXIS"] == 2  # a table HDU is 2-D in FITS terms, but not an image

"""The watcher's parts: names, FITS completeness, hashing, settling, inotify and polling."""
from __future__ import annotations

import gzip
import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pool_stages import frame_bytes, write_frame
from stdd.config import Settings
from stdd.watch import FolderWatcher, SettleTracker, check_fits, copy_and_hash, matches, scan, sha256_file
from stdd.watch.files import fits_suffix, frame_stem

W = Settings().watch


@pytest.mark.parametrize("name,ok", [
    ("a.fits", True), ("A.FITS", True), ("b.fit", True), ("c.fts", True), ("d.fits.fz", True),
    ("e.fits.gz", True), ("f.fit.gz", True), (".a.fits.Xy12Ab", False), (".a.fits", False),
    ("a.fits.part", False), ("a.fits.tmp", False), ("a.fits~", False), ("a.txt", False), ("a.gz", False),
])
def test_default_patterns_take_fits_and_skip_temporary_names(name, ok):
    assert matches(name, W.patterns, W.ignore) is ok


def test_suffix_and_stem():
    assert fits_suffix("x.FITS.gz") == ".fits.gz" and frame_stem("m13.fits.fz") == "m13"
    assert fits_suffix("a.b.fit") == ".fit" and frame_stem("a.b.fit") == "a.b"


def test_whole_files_pass(tmp_path):
    plain = write_frame(tmp_path / "a.fits", 1, size=40)
    assert check_fits(plain).ok and check_fits(plain).hdus == 1
    mef = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((30, 20), "i2")),
                  fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.arange(5.0))])]).writeto(mef)
    assert check_fits(mef).hdus == 3
    gz = tmp_path / "a.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert check_fits(gz).ok
    fz = tmp_path / "a.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.random.default_rng(1).normal(size=(64, 64)).astype("f4"))]
                 ).writeto(fz)
    assert check_fits(fz).ok and check_fits(fz).hdus == 2


def test_real_frames_pass(shared_data):
    frames = sorted((shared_data / "frames").glob("*.fit*"))
    assert frames
    for f in frames:
        assert check_fits(f).ok, (f, check_fits(f))


def test_bad_and_incomplete_files_say_why(tmp_path):
    whole = frame_bytes(1, size=64)
    cases = {
        "empty.fits": (b"", "incomplete", "empty file"),
        "half.fits": (whole[: len(whole) // 2], "incomplete", "HDU 0 has"),
        "header.fits": (whole[:1000], "incomplete", "inside the primary header"),
        "text.fits": (b"hello, this is not an image\n" * 200, "bad", "not a FITS file"),
        "trunc.fits.gz": (gzip.compress(whole)[:300], "incomplete", "gzip stream ends early"),
        "corrupt.fits.gz": (b"\x1f\x8b" + b"\x00" * 100, "bad", "corrupt gzip"),
    }
    for name, (data, state, words) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        c = check_fits(p)
        assert c.state == state and words in c.reason, (name, c)


def test_copy_and_hash_names_the_bytes_copied(tmp_path):
    src = write_frame(tmp_path / "a.fits", 7, size=300)
    sha, st = copy_and_hash(src, tmp_path / "copy")
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest() == sha256_file(tmp_path / "copy")
    assert st.size == src.stat().st_size


def test_scan_skips_hidden_folders_and_temporaries(tmp_path):
    write_frame(tmp_path / "a.fits", 1)
    write_frame(tmp_path / "night" / "b.fit", 2)
    write_frame(tmp_path / ".rsync-partial" / "c.fits", 3)
    (tmp_path / ".d.fits.Abc123").write_bytes(b"x")
    write_frame(tmp_path / "skip" / "e.fits", 5)
    found = sorted(p.name for p in scan([tmp_path], W.patterns, W.ignore, exclude=[tmp_path / "skip"]))
    assert found == ["a.fits", "b.fit"]
    assert [p.name for p in scan([tmp_path], W.patterns, W.ignore, recursive=False)] == ["a.fits"]


def test_settle_waits_for_quiet_and_holds_incomplete(tmp_path):
    t = [0.0]
    tr = SettleTracker(settle_seconds=1.0, incomplete_seconds=5.0, clock=lambda: t[0])
    p = tmp_path / "a.fits"
    p.write_bytes(b"x" * 10)
    tr.note(p)
    assert tr.due() == []            # first look: records the stat
    t[0] = 0.5
    assert tr.due() == []            # not quiet long enough
    with open(p, "ab") as fh:        # grows: the wait starts over
        fh.write(b"y")
    t[0] = 1.2
    assert tr.due() == []
    t[0] = 2.3
    (s,) = tr.due()
    assert s.path == p and not s.expired and len(tr) == 0
    tr.hold(p, s.stat, "truncated")  # incomplete: kept until it changes or time is up
    t[0] = 4.0
    assert tr.due() == []
    t[0] = 7.5
    (s,) = tr.due()
    assert s.expired and s.reason == "truncated"
    tr.hold(p, s.stat, "truncated")
    tr.note(p, closed=True)          # the writer closed it: settle once more, then give up
    t[0] = 8.6
    (s,) = tr.due()
    assert s.expired and s.closed
    tr.note(p)
    p.unlink()
    assert tr.due() == [] and len(tr) == 0  # vanished: forgotten


@pytest.mark.parametrize("poll", [False, True])
def test_watcher_sees_final_names_only(tmp_path, poll):
    seen: list[tuple[Path, bool]] = []
    lock = threading.Lock()

    def cb(path, closed):
        with lock:
            seen.append((path, closed))

    inc = tmp_path / "in"
    w = FolderWatcher([inc], W.patterns, W.ignore, cb, poll=poll, poll_interval=0.1)
    w.start()
    try:
        tmp = inc / ".x.fits.AbC123"
        tmp.write_bytes(frame_bytes(1))
        (inc / "y.fits.part").write_bytes(b"partial")
        time.sleep(0.4)
        os.rename(tmp, inc / "x.fits")
        (inc / "sub").mkdir()
        write_frame(inc / "sub" / "z.fits", 2)
        write_frame(inc / "w.fits", 3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                names = {p.name for p, _ in seen}
            if {"x.fits", "z.fits", "w.fits"} <= names and (poll or any(c for p, c in seen if p.name == "w.fits")):
                break
            time.sleep(0.05)
    finally:
        w.stop()
    assert names == {"x.fits", "z.fits", "w.fits"}
    if not poll:  # inotify reports the writer's close
        assert any(c for p, c in seen if p.name == "w.fits")
    assert sorted(p.name for p in w.rescan()) == ["w.fits", "x.fits", "z.fits"]

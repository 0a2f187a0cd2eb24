"""Publishing a result folder and settling what a crash left: publish runs in a real process
stopped at its fault points (`STDD_FAULTS`, os._exit as a power cut would), then the recovery
(stdd.daemon.jobs) runs, by itself and in a real daemon's start-up. Only stdd's own temporary
folders are touched: a user's `.git` or `.Trash-1000` under results/ stays."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import DaemonProcess
from stdd.daemon import jobs
from stdd.daemon.intake import publish_outcome
from stdd.faults import FAULT_EXIT_CODE
from stdd.pipeline import parse_publish_temp, publish, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def work_folder(path: Path, version: int) -> Path:
    """A frame's work folder after a chain: result.json listing a product, and a stage log."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "objects.txt").write_text(f"objects of version {version}\n")
    (path / "inspect.log").write_text(f"log of version {version}\n")
    write_json_atomic(path / "result.json", {"status": "done", "version": version, "products": ["objects.txt"]})
    return path


def publish_in_a_process(work: Path, result_dir: Path, faults: str) -> int:
    """stdd.pipeline.publish in a new Python process with `STDD_FAULTS` set; its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STDD_FAULTS": faults}
    code = ("import sys; from pathlib import Path; from stdd.pipeline import publish; "
            "publish(Path(sys.argv[1]), Path(sys.argv[2]), {'frame_id': 7})")
    return subprocess.run([sys.executable, "-c", code, str(work), str(result_dir)], env=env, timeout=60).returncode


def stdd_temps(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir() if parse_publish_temp(p.name))


def user_folders(results: Path) -> None:
    (results / ".git" / "objects").mkdir(parents=True)
    (results / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (results / ".Trash-1000" / "files").mkdir(parents=True)
    (results / ".Trash-1000" / "files" / "old.fits").write_bytes(b"x" * 10)
    (results / ".hidden-notes").mkdir()


def assert_user_folders_intact(results: Path) -> None:
    assert (results / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (results / ".git" / "objects").is_dir()
    assert (results / ".Trash-1000" / "files" / "old.fits").read_bytes() == b"x" * 10
    assert (results / ".hidden-notes").is_dir()


@pytest.fixture
def published(tmp_path):
    """results/7-frame holding version 1, and a work folder holding version 2."""
    results = tmp_path / "results"
    result_dir = results / "7-frame"
    publish(work_folder(tmp_path / "work1", 1), result_dir, {"frame_id": 7})
    return results, result_dir, work_folder(tmp_path / "work2", 2)


def version(result_dir: Path) -> int:
    return json.loads((result_dir / "result.json").read_text())["version"]


def test_publish_writes_the_products_the_logs_and_result_json_and_leaves_nothing_behind(published):
    results, result_dir, work2 = published
    assert version(result_dir) == 1 and (result_dir / "objects.txt").read_text() == "objects of version 1\n"
    publish(work2, result_dir, {"frame_id": 7})
    assert version(result_dir) == 2 and (result_dir / "inspect.log").read_text() == "log of version 2\n"
    # the replaced result is kept as a version, whole, beside it (stdd.result_versions)
    assert sorted(p.name for p in results.iterdir()) == ["7-frame", "7-frame.versions"]
    kept = results / "7-frame.versions" / "run-1"
    assert version(kept) == 1 and (kept / "objects.txt").read_text() == "objects of version 1\n"
    assert [os.listdir(results / "7-frame.versions")] == [["run-1"]]
    assert json.loads((result_dir / "result.json").read_text())["run"] == 2


def test_a_crash_between_the_two_renames_leaves_the_previous_result_which_recovery_restores(published):
    results, result_dir, work2 = published
    user_folders(results)
    assert publish_in_a_process(work2, result_dir, "publish.between_renames=exit") == FAULT_EXIT_CODE
    # the process died with the old result renamed aside and the new one not yet in place
    assert not result_dir.exists()
    temps = stdd_temps(results)
    assert [parse_publish_temp(t) for t in temps] == [("old", "7-frame"), ("tmp", "7-frame")]
    assert jobs.clean_stale_publish(results) == 2
    assert version(result_dir) == 1 and (result_dir / "objects.txt").read_text() == "objects of version 1\n"
    assert stdd_temps(results) == []
    assert_user_folders_intact(results)
    # the next publish goes through as usual; the version kept before the crash is kept once
    publish(work2, result_dir, {"frame_id": 7})
    assert version(result_dir) == 2 and stdd_temps(results) == []
    assert os.listdir(results / "7-frame.versions") == ["run-1"]
    assert json.loads((result_dir / "result.json").read_text())["run"] == 2


def test_a_crash_before_the_renames_leaves_the_old_result_in_place(published):
    results, result_dir, work2 = published
    assert publish_in_a_process(work2, result_dir, "publish.before_renames=exit") == FAULT_EXIT_CODE
    assert version(result_dir) == 1
    assert [parse_publish_temp(t)[0] for t in stdd_temps(results)] == ["tmp"]
    out = jobs.settle_publish(results)
    assert len(out["removed"]) == 1 and out["restored"] == []
    assert version(result_dir) == 1 and stdd_temps(results) == []


def test_a_crash_after_the_renames_keeps_the_new_result_and_drops_the_old(published):
    results, result_dir, work2 = published
    assert publish_in_a_process(work2, result_dir, "publish.after_renames=exit") == FAULT_EXIT_CODE
    assert version(result_dir) == 2
    assert [parse_publish_temp(t)[0] for t in stdd_temps(results)] == ["old"]
    out = jobs.settle_publish(results)
    assert len(out["removed"]) == 1 and out["restored"] == []
    assert version(result_dir) == 2 and stdd_temps(results) == []


def test_cleaning_one_frames_partial_publish_touches_only_its_own_folders(published, tmp_path):
    results, result_dir, work2 = published
    other = results / "8-other"
    publish(work_folder(tmp_path / "w8", 8), other, {"frame_id": 8})
    assert publish_in_a_process(work2, result_dir, "publish.between_renames=exit") == FAULT_EXIT_CODE
    assert publish_in_a_process(tmp_path / "w8", other, "publish.between_renames=exit") == FAULT_EXIT_CODE
    out = jobs.clean_partial_publish(result_dir)
    assert out["restored"] == ["7-frame"] and len(out["removed"]) == 1
    assert version(result_dir) == 1
    assert not other.exists() and [parse_publish_temp(t) for t in stdd_temps(results)] == [
        ("old", "8-other"), ("tmp", "8-other")]


def test_folder_names_of_earlier_versions_are_recognised_only_when_unambiguous():
    assert parse_publish_temp(".12-night1.old-4242") == ("old", "12-night1")
    assert parse_publish_temp(".12-night1.fits.k3j_h5g6") == ("tmp", "12-night1.fits")
    assert parse_publish_temp(".stdd-old-12-a-b-77-0123abcd") == ("old", "12-a-b")
    assert parse_publish_temp(".stdd-tmp-3-x-1-deadbeef") == ("tmp", "3-x")
    for name in (".git", ".Trash-1000", ".cache", ".notes.old-12", ".x.k3j_h5g6", ".stdd-old-3-x", ".outcome-abc",
                 "12-night1", ".stdd-old-3-x-12-NOTHEX00"):
        assert parse_publish_temp(name) is None, name


def test_an_outcome_is_published_without_a_work_folder(tmp_path):
    result_dir = tmp_path / "results" / "5-bad"
    publish_outcome(result_dir, {"frame_id": 5, "status": "failed", "error": "truncated file"})
    data = json.loads((result_dir / "result.json").read_text())
    assert data["status"] == "failed" and data["error"] == "truncated file" and data["frame_id"] == 5
    assert sorted(p.name for p in result_dir.parent.iterdir()) == ["5-bad"]


def test_the_daemons_start_restores_an_interrupted_publish_and_leaves_user_folders(tmp_path):
    """The real daemon's start-up recovery (`stdd run`) after a publish died between its renames
    and an earlier version left its own names: the previous result is back, stdd's temporary
    folders are gone, a `.git` and a `.Trash-1000` beside them are untouched."""
    d = DaemonProcess(tmp_path)
    results = d.results
    results.mkdir(parents=True)
    result_dir = results / "7-frame"
    publish(work_folder(tmp_path / "work1", 1), result_dir, {"frame_id": 7})
    assert publish_in_a_process(work_folder(tmp_path / "work2", 2), result_dir,
                                "publish.between_renames=exit") == FAULT_EXIT_CODE
    user_folders(results)
    legacy_old = results / ".9-legacy.old-31337"      # an earlier version's crash between its renames
    legacy_old.mkdir()
    (legacy_old / "result.json").write_text('{"version": 0}')
    (results / ".10-legacy.k3j_h5g6").mkdir()        # an earlier version's half-written folder
    d.start()
    try:
        assert version(result_dir) == 1
        assert json.loads((results / "9-legacy" / "result.json").read_text()) == {"version": 0}
        assert stdd_temps(results) == []
        assert_user_folders_intact(results)
        assert "restored from" in d.log()
    finally:
        assert d.stop() == 0

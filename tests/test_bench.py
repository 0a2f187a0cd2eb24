"""The benchmark package: it imports, runs one cheap measure for real, and writes the report's shape.

Timings are not checked (the machine is shared); the shape is: every key present, a measured key
with a number, its goal and whether it is met, every other key null with a reason, and a Markdown
table with one row per key.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import runner  # noqa: E402
from bench.db_status import fill  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    rep = runner.run(quick=True, only=["db_status_ms_10k"], out_dir=out, params={"db_status_records": 300},
                     log=lambda msg: None)
    return rep, out


def test_every_key_is_present_with_its_goal(report):
    rep, out = report
    on_disk = json.loads((out / "latest.json").read_text())
    assert on_disk == json.loads(json.dumps(rep))
    assert list(on_disk["keys"]) == list(runner.KEY_NAMES)
    assert set(on_disk["summary"]) == set(runner.KEY_NAMES)
    for name, key in on_disk["keys"].items():
        assert set(key) >= {"value", "unit", "goal", "met", "what", "reason", "note", "runs", "context"}, name
    assert on_disk["mode"] == "quick" and on_disk["schema"] == runner.SCHEMA
    assert on_disk["machine"]["cpus"] >= 1 and on_disk["params"] == {"db_status_records": 300}


def test_the_cheap_measure_ran_for_real(report):
    rep, _ = report
    key = rep["keys"]["db_status_ms_10k"]
    assert isinstance(key["value"], float) and key["value"] > 0
    assert key["goal"] == "<= 50" and key["met"] == (key["value"] <= 50)
    assert key["reason"] is None
    assert len(key["runs"]) == 10
    assert key["value"] == pytest.approx(statistics.median(key["runs"]), abs=0.02)  # the median of the runs
    frames = key["context"]["frames"]
    assert sum(frames.values()) == 340 and frames["running"] == 2 and frames["queued"] == 38
    paths = key["context"]["paths"]
    assert set(paths) == {"daemon running", "daemon not running"}
    assert key["value"] == max(p["median_ms"] for p in paths.values())
    assert all(p["new_process_ms"] > 0 for p in paths.values())


def test_keys_not_measured_are_null_with_a_reason(report):
    rep, _ = report
    for name, key in rep["keys"].items():
        if name == "db_status_ms_10k":
            continue
        assert key["value"] is None and key["met"] is None, name
        assert key["reason"] == "not measured in this run (--only)", name


def test_markdown_table_has_a_row_per_key(report):
    _, out = report
    md = (out / "latest.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(runner.KEY_NAMES)
    db_row = next(r for r in rows if "`db_status_ms_10k`" in r)
    assert " ms " in db_row and "<= 50" in db_row


def test_fill_records_realistic_states(tmp_path):
    counts = fill(tmp_path / "s.sqlite", n=120)
    assert counts["queued"] == 38 and counts["running"] == 2
    assert counts["done"] + counts["failed"] == 80


def test_command_line_rejects_an_unknown_key():
    r = subprocess.run([sys.executable, "-m", "bench", "--only", "no_such_key"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "no_such_key" in r.stderr


def test_the_db_size_measure_runs_a_small_week_through_the_store_and_the_retention_job(tmp_path):
    rep = runner.run(quick=True, only=["db_size_week_mb"], out_dir=tmp_path,
                     params={"db_size_frames_per_night": 40, "db_size_nights": 2}, log=lambda msg: None)
    key = rep["keys"]["db_size_week_mb"]
    assert key["reason"] is None and isinstance(key["value"], float) and key["value"] > 0
    assert key["goal"] == "<= 120" and key["met"] == (key["value"] <= 120)
    ctx = key["context"]
    rows = ctx["week"]["rows"]
    assert rows["frames"] == 80 and rows["alert_messages"] == 80 and len(key["runs"]) == 2
    assert 0.9 * 4 * 80 <= rows["stage_runs"] <= 4 * 80 + 2  # 4 stages each; a failure stops a frame early
    assert ctx["week"]["size"]["total_mb"] == key["value"]
    # aged past every retention: the history goes, the frame and alert rows stay, the file shrinks
    pruned = ctx["aged"]["prune"]
    assert pruned["stage_runs"] == rows["stage_runs"] and pruned["notices"] == rows["alert_messages"]
    assert pruned["complete"] and pruned["auto_vacuum"] == "incremental" and pruned["pages_freed"] > 0
    assert ctx["aged"]["size"]["total_mb"] < key["value"]
    assert ctx["projection"]["steady_state_history_mb"] > 0


def test_the_plain_script_runs_every_stage_on_a_small_frame(tmp_path):
    """The benchmark's denominator really runs (it calls stdd's stage helpers: a rename there
    must not leave it broken until the next full bench)."""
    from bench.common import Context
    from bench.frame import plain
    from bench.inputs import field_of

    ctx = Context(quick=True, work=tmp_path, log=lambda *_: None)
    field = field_of(ctx, 512, 1)
    res = plain(ctx, field, field.frames[0], "t", timeout=300)
    assert res["status"] == "done", res
    assert set(res["stages"]) >= {"inspect", "photometry", "transients", "subtraction"}, res


def test_the_lightcurve_query_measure_fills_a_store_and_queries_it(tmp_path):
    rep = runner.run(quick=True, only=["lightcurve_query_ms_10k"], out_dir=tmp_path,
                     params={"lightcurve_frames": 60}, log=lambda *a: None)
    key = rep["keys"]["lightcurve_query_ms_10k"]
    assert key["value"] is not None and key["value"] > 0
    assert key["context"]["points_per_query"] == [60] * 20  # one point per frame at each star

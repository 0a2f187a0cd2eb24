"""Output drawn on the helper thread (stages.background): inside a chain it overlaps the next
stages and is all there, listed and explained, when result.json is written; a stage run on
its own does it in line. Real stage functions through run_chain's `functions`, real threads."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from stdd.pipeline import prepare_folder, run_chain
from stdd.stages import background
from stdd.stages.base import StageResult, StageSettings
from stdd.stages.products import StageRun

FUNCS = {"inspect": "test_stages_background:first", "photometry": "test_stages_background:second"}
SEEN: dict[str, object] = {}


def _slow_plot(folder: Path, name: str, seconds: float) -> tuple[list[str], list[str]]:
    SEEN["thread"] = threading.current_thread().name
    time.sleep(seconds)
    target = Path(folder) / "plots" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("png\n")
    SEEN["plot_done"] = time.monotonic()
    return [f"plots/{name}"], []


def _broken(folder: Path) -> tuple[list[str], list[str]]:
    raise ValueError("no axes today")


def first(folder: Path, settings) -> StageResult:
    with StageRun(Path(folder), "inspect", settings) as run:
        background.submit(run, "inspect plots", _slow_plot, run.folder, "inspect_a.png", 0.6)
        background.submit(run, "inspect histogram", _broken, run.folder)
        return run.result({"filter": "r"})


def second(folder: Path, settings) -> StageResult:
    with StageRun(Path(folder), "photometry", settings) as run:  # clears later stages' products, not the plots dir
        SEEN["second_started"] = time.monotonic()
        SEEN["plot_file_at_second_start"] = (Path(folder) / "plots" / "inspect_a.png").exists()
        time.sleep(0.3)
        return run.result({"zp": 20.0})


def _frame(tmp_path: Path) -> Path:
    from astropy.io import fits
    import numpy as np

    src = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((16, 16), np.float32)).writeto(src)
    return prepare_folder(src, tmp_path / "w").parent


def test_in_a_chain_the_output_overlaps_the_next_stage_and_is_all_in_the_result(tmp_path):
    SEEN.clear()
    folder = _frame(tmp_path)
    settings = StageSettings(cache_dir=tmp_path / "cache")
    t0 = time.monotonic()
    res = run_chain(folder, settings, ["inspect", "photometry"], functions=FUNCS)
    took = time.monotonic() - t0
    assert res["status"] == "done"
    # the next stage started before the plot was finished: they overlapped
    assert SEEN["plot_file_at_second_start"] is False and SEEN["second_started"] < SEEN["plot_done"]
    assert SEEN["thread"].startswith("stdd-output")
    assert took < 0.6 + 0.3 + 0.25  # not the sum of the two plus the stage
    # ... and the chain waited for it: the product is there and listed, the failure explained
    assert (folder / "plots" / "inspect_a.png").is_file()
    assert "plots/inspect_a.png" in res["products"]
    assert any(n == "inspect: inspect histogram not made: ValueError: no axes today" for n in res["notes"])
    assert "inspect histogram not made" in (folder / "inspect.log").read_text()
    assert not background.busy()


def test_a_stage_alone_draws_in_line(tmp_path):
    SEEN.clear()
    folder = _frame(tmp_path)
    res = first(folder, StageSettings(cache_dir=tmp_path / "cache"))
    assert "thread" in SEEN and not SEEN["thread"].startswith("stdd-output")
    assert (folder / "plots" / "inspect_a.png").is_file() and "plots/inspect_a.png" in res.products
    assert "inspect histogram not made: ValueError: no axes today" in res.notes
    assert not background.busy()


def test_a_failed_chain_still_waits_for_its_output(tmp_path):
    SEEN.clear()
    folder = _frame(tmp_path)
    res = run_chain(folder, StageSettings(cache_dir=tmp_path / "cache"), ["inspect", "photometry"],
                    functions={"inspect": FUNCS["inspect"], "photometry": "test_stages_background:nope"})
    assert res["status"] == "failed" and "photometry" in res["error"]
    assert (folder / "plots" / "inspect_a.png").is_file() and "plots/inspect_a.png" in res["products"]
    assert not background.busy()


def test_a_chain_with_one_thread_draws_in_line(tmp_path):
    """threads=1 (the pool's budget when workers = cores): the plot is done before the next
    stage starts, on the chain's own thread, and still listed."""
    SEEN.clear()
    folder = _frame(tmp_path)
    res = run_chain(folder, StageSettings(cache_dir=tmp_path / "cache"), ["inspect", "photometry"],
                    functions=FUNCS, threads=1)
    assert res["status"] == "done"
    assert not SEEN["thread"].startswith("stdd-output")
    assert SEEN["plot_file_at_second_start"] is True and SEEN["plot_done"] < SEEN["second_started"]
    assert "plots/inspect_a.png" in res["products"]
    assert any(n == "inspect: inspect histogram not made: ValueError: no axes today" for n in res["notes"])
    assert not background.busy()


def test_the_pool_shares_the_cores_among_the_workers(config_file):
    from stdd.config import load_settings

    cores = os.cpu_count() or 1
    s = load_settings(config_file("[pool]\nworkers = 1\n"))
    assert s.pool.effective_threads_per_frame == cores
    s = load_settings(config_file(f"[pool]\nworkers = {cores}\n"))
    assert s.pool.effective_threads_per_frame == 1
    s = load_settings(config_file(f"[pool]\nworkers = {2 * cores}\n"))
    assert s.pool.effective_threads_per_frame == 1
    s = load_settings(config_file("[pool]\nworkers = 1\nthreads_per_frame = 1\n"))
    assert s.pool.effective_threads_per_frame == 1


def omp_probe(folder: Path, settings) -> StageResult:
    from threadpoolctl import threadpool_info

    SEEN["omp"] = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"})
    return StageResult(stage="inspect", summary={})


def test_openmp_code_runs_on_the_frames_threads(tmp_path):
    """astroscrappy's OpenMP filters get the frame's budget inside the chain, and the process's
    own setting comes back after it."""
    import astroscrappy  # noqa: F401  (loads libgomp, as the pool's fork server does)
    from threadpoolctl import threadpool_info

    def omp():
        return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"})

    before = omp()
    assert before, "no OpenMP library loaded"
    folder = _frame(tmp_path)
    for threads in (1, 2, 3):
        SEEN.clear()
        res = run_chain(folder, StageSettings(cache_dir=tmp_path / "cache"), ["inspect"],
                        functions={"inspect": "test_stages_background:omp_probe"}, threads=threads)
        assert res["status"] == "done" and SEEN["omp"] == [threads]
        assert omp() == before

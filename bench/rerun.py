"""`rerun_subtraction_ratio`: a rerun from subtraction with a changed setting ÷ the frame's full run.

The observer's loop (issue 15): a frame processed fully, then `stdd retry ID --from subtraction
-c sub_size=600` (or `stdd process --from`). Both sides run the same way — stdd's chain in a new
process (`bench.chain_child`, what a pool worker does), the same warm-up before the clock (the
fork server's preload), all the cores — on the same 2048² frame; the rerun starts from the full
run's work folder (`--rerun`: the folder is not prepared again), so only subtraction runs, with
its tiles at 600 px instead of 1000. Seconds are the chain's (`total_s`), medians over repeats.
"""
from __future__ import annotations

import os
import shutil

from .common import Context, Value, median, rnd
from .frame import run_child
from .inputs import field_of, write_json

KEYS = ("rerun_subtraction_ratio",)


def measure(ctx: Context) -> dict[str, Value]:
    timeout = 900 if ctx.quick else 3600
    size = 1024 if ctx.quick else 2048
    field = field_of(ctx, size, 1)
    frame = field.frames[0]
    threads = str(os.cpu_count() or 1)
    fulls, reruns, tiles = [], [], []
    for rep in range(ctx.repeats):
        folder = ctx.folder(f"rerun/{size}-{rep}")
        work = folder / "work"
        first = write_json(folder / "settings.json", field.stage_settings(folder / "cache"))
        again = write_json(folder / "settings-600.json", field.stage_settings(folder / "cache", sub_size=600))
        ctx.log(f"  {size}² repeat {rep + 1}/{ctx.repeats}: full run, then from subtraction")
        full = run_child(ctx, "bench.chain_child", [str(frame), str(work), str(first), "--threads", threads],
                         timeout)
        rerun = run_child(ctx, "bench.chain_child", [str(frame), str(work), str(again), "--threads", threads,
                                                     "--rerun", "--steps", "subtraction"], timeout)
        shutil.rmtree(work, ignore_errors=True)
        if full.get("status") != "done" or rerun.get("status") != "done":
            return {"rerun_subtraction_ratio": Value.missing(
                f"the chain did not finish: full {full.get('error')}, rerun {rerun.get('error')}")}
        fulls.append(full["total_s"])
        reruns.append(rerun["total_s"])
        tiles.append((len(full.get("sub_tiles") or []), len(rerun.get("sub_tiles") or [])))
    ratio = rnd(median(reruns) / median(fulls), 3)
    v = Value(ratio, runs=[rnd(r / f, 3) for r, f in zip(reruns, fulls)],
              context={"size": size, "full_s": fulls, "rerun_s": reruns, "tiles_full_rerun": tiles})
    v.note = (f"{size}², median of {len(fulls)}: full run {rnd(median(fulls), 2)} s, rerun from subtraction with "
              f"sub_size=600 {rnd(median(reruns), 2)} s (tiles {tiles[0][0]} → {tiles[0][1]})")
    return {"rerun_subtraction_ratio": v}

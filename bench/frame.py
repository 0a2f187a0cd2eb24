"""`frame_2k_s`, `frame_2k_hotpants_s`, `worker_peak_mb`, and seconds per stage against the plain script.

One frame at a time, each run in a new process, on the same frame of the same field with the same
settings, the order of the sides alternating between repeats:

* `stdd_1_thread` — stdd's chain (`bench.chain_child`: what a pool worker does) with one thread,
  the budget a frame gets when workers = cores;
* `plain` — the plain script (`bench.plain_script`), one thread;
* `stdd` — stdd's chain with the thread budget a frame alone on this machine gets (a 1-worker
  daemon's: all the cores; OpenMP cosmic-ray filters on them, plots on a helper thread,
  subtraction tiles side by side).

Symmetry of the seconds per stage (issue #4): the table compares `stdd_1_thread` with `plain`,
like with like — one thread each, the same warm-up before the clock starts (`bench.warm.preload`:
the daemon fork server's imports and first-use work), a new process and a first frame on both
sides. Until 2026-12-04 the table set stdd with all the cores against the plain script with one,
and the plain script's stages included its lazy imports (sklearn and matplotlib in photometry,
the subtraction modules), which stdd's side had preloaded: both flattered stdd. The `stdd` side
(all cores) is a third row, for context, and what `frame_2k_s` and `worker_peak_mb` measure.

* 1024² and 2048²: the three sides (quick mode: the 2048² frame through `stdd` only), seconds per
  stage, medians over repeats;
* `frame_2k_s`: stdd's chain on the 2048² frame, all cores, SFFT (the median of its runs above);
* `frame_2k_hotpants_s`: the same with `sub_method = "hotpants"`, when a `hotpants` binary is on PATH;
* `worker_peak_mb`: the largest memory peak of stdd's chain on 1k, 2k and 4k frames (4k: full
  mode only), each the larger of the frame process's own peak (VmHWM) and the sampled peak of its
  process group (the process and the program it runs at the moment: SExtractor, SCAMP, SWarp,
  HOTPANTS; summed as PSS, so a just-forked program's shared pages are not counted twice).

When `frame_2k_s` misses its goal, one more run under cProfile gives the functions that limit it
(full mode; in quick mode the seconds per stage are the profile).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

from .common import ROOT, Context, Value, median, rnd, session_mb
from .inputs import field_of, write_json

KEYS = ("frame_2k_s", "frame_2k_hotpants_s", "worker_peak_mb")

STAGES = ("inspect", "photometry", "transients", "subtraction")


def _sample_session(proc: subprocess.Popen, peaks: dict, stop: threading.Event, interval: float = 0.1) -> None:
    while not stop.wait(interval):
        try:
            total = session_mb(proc.pid)
        except Exception:
            continue
        peaks["session_mb"] = max(peaks.get("session_mb", 0.0), round(total, 1))


def run_child(ctx: Context, module: str, args: list[str], timeout: float) -> dict:
    """`python -m <module> args...` in its own session, its process group's memory sampled;
    returns the JSON it prints, with `session_peak_mb`."""
    peaks: dict = {}
    stop = threading.Event()
    proc = subprocess.Popen([ctx.python, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT), start_new_session=True)
    t = threading.Thread(target=_sample_session, args=(proc, peaks, stop), daemon=True)
    t.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise RuntimeError(f"{module} took more than {timeout:g} s")
    finally:
        stop.set()
        t.join(2)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} exited {proc.returncode}: {err[-1500:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["session_peak_mb"] = peaks.get("session_mb")
    return res


def ours(ctx: Context, field, frame: Path, tag: str, timeout: float, profile: int = 0, preload=(),
         threads: int = 0, **pipeline) -> dict:
    """stdd's chain on `frame` in a new process, with `threads` threads (0: all the cores)."""
    folder = ctx.folder(f"frame/{tag}")
    settings = write_json(folder / "settings.json", field.stage_settings(folder / "cache", **pipeline))
    args = [str(frame), str(folder / "work"), str(settings), "--threads", str(threads or os.cpu_count() or 1)]
    args += ["--profile", str(profile)] if profile else []
    args += ["--preload", *preload] if preload else []
    res = run_child(ctx, "bench.chain_child", args, timeout)
    res["peak_mb"] = max(res.get("peak_rss_mb") or 0, res.get("session_peak_mb") or 0)
    shutil.rmtree(folder / "work", ignore_errors=True)
    return res


def plain(ctx: Context, field, frame: Path, tag: str, timeout: float) -> dict:
    folder = ctx.folder(f"frame/{tag}")
    settings = write_json(folder / "settings.json", field.stage_settings(folder / "cache"))
    res = run_child(ctx, "bench.plain_script", [str(settings), str(folder / "work"), str(frame)], timeout)
    f = res["frames"][0]
    shutil.rmtree(folder / "work", ignore_errors=True)
    return {"status": f.get("status"), "error": f.get("error"), "stages": f.get("stages", {}),
            "total_s": f.get("total_s"), "peak_mb": max(res.get("peak_rss_mb") or 0, res.get("session_peak_mb") or 0)}


def _stage_medians(runs: list[dict]) -> dict:
    out = {s: rnd(median(r["stages"].get(s) for r in runs if r.get("stages")), 2) for s in STAGES}
    out["total"] = rnd(median(r["total_s"] for r in runs), 2)
    return out


def measure(ctx: Context) -> dict[str, Value]:
    timeout = 900 if ctx.quick else 3600
    side_sizes = (1024, 2048)
    repeats = ctx.repeats
    per_size: dict[int, dict[str, list[dict]]] = {}
    for size in side_sizes:
        field = field_of(ctx, size, 1)
        frame = field.frames[0]
        runs = {"stdd_1_thread": [], "plain": [], "stdd": []}
        # quick mode: the 2048² frame through stdd (all cores) only (the comparison at 2048² is the full mode's)
        sides = ("stdd",) if ctx.quick and size == 2048 else tuple(runs)
        for rep in range(repeats):
            order = sides if rep % 2 == 0 else tuple(reversed(sides))
            for side in order:
                ctx.log(f"  {size}² repeat {rep + 1}/{repeats}: {side}")
                tag = f"{side}-{size}-{rep}"
                if side == "plain":
                    runs[side].append(plain(ctx, field, frame, tag, timeout))
                else:
                    threads = 1 if side == "stdd_1_thread" else 0  # 0: all the cores
                    runs[side].append(ours(ctx, field, frame, tag, timeout, threads=threads))
        per_size[size] = runs

    out: dict[str, Value] = {}
    first = per_size[min(per_size)]["stdd"][0]
    ctx.shared["chain_imports"] = {"size": min(per_size), "seconds": first.get("imports_in_stages_s") or {},
                                   "modules": first.get("imported_in_chain") or []}
    stage_seconds = {f"{s}²": {side: (_stage_medians(r) if r else None) for side, r in runs.items()}
                     for s, runs in per_size.items()}
    like = {size: rnd(sec["stdd_1_thread"]["total"] / sec["plain"]["total"], 3)
            for size, sec in stage_seconds.items()
            if sec.get("stdd_1_thread") and sec.get("plain") and sec["plain"]["total"]}
    r2k = per_size[2048]["stdd"]
    states = sorted({r.get("status") for r in r2k})
    methods = sorted({str(r.get("sub_method")) for r in r2k})
    v = Value(rnd(median(r["total_s"] for r in r2k), 2), runs=[r["total_s"] for r in r2k],
              context={"stage_seconds": stage_seconds, "stdd_1_thread_over_plain": like, "status": states,
                       "sub_method": methods,
                       "imports_in_stages_s": r2k[0].get("imports_in_stages_s"),
                       "sub_tiles": r2k[0].get("sub_tiles"), "notes": r2k[0].get("notes")})
    sec = stage_seconds["2048²"]["stdd"]
    v.note = (f"median of {len(r2k)}, status {'/'.join(map(str, states))}, method {'/'.join(methods)}, the frame "
              f"alone on the machine ({os.cpu_count() or 1} threads, as a 1-worker daemon gives it); per stage "
              + ", ".join(f"{s} {sec[s]}" for s in STAGES if sec.get(s) is not None))
    if like:
        v.note += "; at one thread each, stdd's chain ÷ the plain script: " + ", ".join(
            f"{size} {r}" for size, r in like.items())
    if states != ["done"]:  # a chain that stopped early is not a frame's time
        v = Value.missing(f"the chain did not finish on the 2048² frame: {r2k[0].get('error')}", **v.context)
    if v.value is not None and v.value > 30:
        slowest = max((s for s in STAGES if sec.get(s) is not None), key=lambda s: sec[s], default=None)
        v.note += f"; over the goal, limited by {slowest} ({sec.get(slowest)} s)"
        imp = sum((r2k[0].get("imports_in_stages_s") or {}).values())
        if imp > 0.5:
            v.note += f"; {imp:.1f} s of it is importing modules the fork server does not preload"
        if not ctx.quick:
            field = field_of(ctx, 2048, 1)
            prof = ours(ctx, field, field.frames[0], "stdd-2048-profile", timeout, profile=25)
            v.context["profile"] = prof.get("profile")
            v.note += "; see context.profile"
    out["frame_2k_s"] = v

    if shutil.which("hotpants"):
        field = field_of(ctx, 2048, 1)
        hp = [ours(ctx, field, field.frames[0], f"stdd-2048-hotpants-{rep}", timeout, sub_method="hotpants")
              for rep in range(repeats)]
        hsec = _stage_medians(hp)
        hv = Value(rnd(median(r["total_s"] for r in hp), 2), runs=[r["total_s"] for r in hp],
                   context={"stage_seconds": hsec, "hotpants": shutil.which("hotpants"),
                            "sub_tiles": hp[0].get("sub_tiles")})
        hv.note = (f"median of {len(hp)}, the frame alone ({os.cpu_count() or 1} threads: tiles side by side); "
                   "per stage " + ", ".join(f"{s} {hsec[s]}" for s in STAGES if hsec.get(s) is not None))
        if hv.value is not None and hv.value > 15:
            slowest = max((s for s in STAGES if hsec.get(s) is not None), key=lambda s: hsec[s], default=None)
            hv.note += f"; over the goal, limited by {slowest} ({hsec.get(slowest)} s)"
            if not ctx.quick:
                prof = ours(ctx, field, field.frames[0], "stdd-2048-hotpants-profile", timeout, profile=25,
                            sub_method="hotpants")
                hv.context["profile"] = prof.get("profile")
                hv.note += "; see context.profile"
        out["frame_2k_hotpants_s"] = hv
        if any(r.get("status") != "done" or r.get("sub_method") != "hotpants" for r in hp):
            out["frame_2k_hotpants_s"] = Value.missing(
                f"the chain with HOTPANTS did not finish: {hp[0].get('error')} (method {hp[0].get('sub_method')})")
    else:
        out["frame_2k_hotpants_s"] = Value.missing("no hotpants binary on PATH (HOTPANTS is in no registry "
                                                   "reachable here); SFFT is the default")

    peaks = {"1024²": max(r["peak_mb"] for r in per_size[1024]["stdd"]),
             "2048²": max(r["peak_mb"] for r in per_size[2048]["stdd"])}
    detail = {k: {"frame_process_hwm_mb": None} for k in peaks}
    if ctx.quick:
        peaks["4096²"] = None
    else:
        field = field_of(ctx, 4096, 1)
        r4 = ours(ctx, field, field.frames[0], "stdd-4096", timeout)
        peaks["4096²"] = r4["peak_mb"]
        detail["4096²"] = {"status": r4.get("status"), "total_s": r4.get("total_s")}
    for size, runs in per_size.items():
        r = runs["stdd"][0]
        detail[f"{size}²"] = {"frame_process_hwm_mb": r.get("peak_rss_mb"), "group_sampled_mb": r.get("session_peak_mb")}
    known = {k: p for k, p in peaks.items() if p is not None}
    w = Value(max(known.values()) if known else None, context={"peak_mb": peaks, "detail": detail,
                                                                "plain_peak_mb": {f"{s}²": max(r["peak_mb"] for r in runs["plain"])
                                                                                  for s, runs in per_size.items()
                                                                                  if runs["plain"]}})
    w.note = ", ".join(f"{k} {p:.0f} MB" if p is not None else f"{k} not run (--quick: a 4096² frame takes minutes)"
                       for k, p in peaks.items())
    out["worker_peak_mb"] = w
    return out

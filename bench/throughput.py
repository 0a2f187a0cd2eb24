"""`overhead_ratio` and `scaling_2v1`: the daemon against the plain script, and 2 workers against 1.

Symmetry (what each side has done before its clock starts, and what it is timed on):
both sides are warm in the same way. The daemon's fork server has imported the stage libraries and
run the first-use warm-up (`warm_at_start`, waited for); the plain script runs the very same
warm-up (`bench.warm.preload`) before its first frame. Until 2026-12-04 it did not, so its first
frame also paid the lazy imports (sklearn, matplotlib, the subtraction modules: its first 1024²
frame took ~1 s more than the next ones, ~0.2 s per frame over 6 frames, ~4 % of the ratio) and
the overhead ratio flattered the daemon. What remains is
the daemon's own: intake, a new frame process for its first frame (forked from the warm server),
its bookkeeping and products. As a check that no warm-up asymmetry is left, each repeat also
gives the ratio with the first frame dropped on both sides (context `overhead_without_first_frame`:
the daemon from its first result.json to its last, the plain script's frames but the one the
daemon ran first).

One repeat runs three sides on the same N frames, back to back, in an order that alternates
between repeats (so drift in the machine's load does not favour one side):

* plain — `bench.plain_script` in a new process, warmed up as above: the same STDPipe calls with
  the same settings, frame after frame; its time is the sum of its frames' times;
* 1 worker — a daemon (`stdd run`, 1 worker) started and idle, its warm fork server up (as it is
  during a night); the N files are written into its incoming folder back to back; span = last
  result.json written − first file closed;
* 2 workers — the same with 2 workers.

Both daemons give each frame one thread (`pool.threads_per_frame = 1`, what the default
configuration gives when workers = cores), as the plain script has one: the ratios then measure
the pool, one core per worker, and stdd's own work. In full mode a fourth side runs 1 worker with
the default budget (cores ÷ workers: on 2 cores the frame draws its plots on a helper thread while
its next stages run), reported as context: it gains from the spare core that 2 workers do not
have, so it is not the baseline of the scaling.

The settle window (a configured wait, timed on its own by `ingest_p99_s`) is subtracted from each
span once: the files settle together. overhead = (span₁ − settle)/N ÷ plain s/frame; scaling =
(span₁ − settle) ÷ (span₂ − settle). The key is the median over repeats of each repeat's ratio.
Intake samples (file closed → queued, beyond the settle window) are left for `ingest_p99_s`.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from .common import Context, Value, median, rnd
from .harness import BenchDaemon
from .inputs import field_of, write_json

KEYS = ("overhead_ratio", "scaling_2v1")
SETTLE = 0.5


def run_plain(ctx: Context, settings_json: Path, frames: list[Path], work: Path, timeout: float = 3600) -> dict:
    cmd = [ctx.python, "-m", "bench.plain_script", str(settings_json), str(work), *map(str, frames)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(Path(__file__).parents[1]))
    if r.returncode != 0:
        raise RuntimeError(f"the plain script exited {r.returncode}: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_daemon(ctx: Context, root: Path, field, frames: list[Path], workers: int, timeout: float,
               threads_per_frame: int = 1) -> dict:
    load0 = os.getloadavg()[0]
    pool = f"warm_at_start = true\nthreads_per_frame = {threads_per_frame}\n"
    with BenchDaemon(root, field, workers=workers, settle=SETTLE, pool=pool) as d:
        d.wait_warm(True, 180)  # the fork server has imported the stage libraries
        time.sleep(1.0)  # let start-up work (rescan, scheduler) finish
        drops = [d.drop(f) for f in frames]
        rows = d.wait_terminal(len(frames), timeout)
        written = [d.result_written(r) for r in rows]
        states = [r["state"] for r in rows]
        errors = sorted({r["error"] for r in rows if r.get("error")})
        ingest = []
        for r in rows:
            i = _src(frames, r)
            if i is not None and r.get("queued_at"):
                ingest.append(r["queued_at"] - drops[i] - SETTLE)
        stage_runs = {}
        seen_pids: set = set()
        fresh, reused = [], []  # a frame's stage seconds, in a new frame process / one that ran a frame before
        for r in sorted(rows, key=lambda r: r.get("started_at") or 0):
            runs = d.proc_h.stage_runs(r["id"])
            for s in runs:
                stage_runs.setdefault(s["stage"], []).append(s.get("seconds"))
            pid = runs[0].get("pid") if runs else None
            total = sum(s.get("seconds") or 0 for s in runs)
            (reused if pid in seen_pids else fresh).append(total)
            seen_pids.add(pid)
        ready_s = d.ready_s
        starts = [r["started_at"] for r in rows if r.get("started_at")]
        ends = [r["finished_at"] for r in rows if r.get("finished_at")]
        busy = sum(r["finished_at"] - r["started_at"] for r in rows if r.get("started_at") and r.get("finished_at"))
        util = busy / (workers * (max(ends) - min(starts))) if starts and ends and max(ends) > min(starts) else None
    done_at = sorted(w for w in written if w is not None)
    span = done_at[-1] - min(drops)
    first = min(rows, key=lambda r: r.get("started_at") or float("inf"))
    return {"workers": workers, "span_s": round(span, 3),
            # frames 2..N: from the first result.json to the last (with 1 worker, one frame after another)
            "span_after_first_s": round(done_at[-1] - done_at[0], 3) if len(done_at) > 1 else None,
            "first_frame": Path(first["path"]).name,
            "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "states": states, "errors": errors[:5],
            "ingest_s": [round(x, 4) for x in ingest], "ready_s": round(ready_s, 2),
            "worker_utilisation": rnd(util, 3),
            "frame_stage_seconds_fresh_process": [rnd(x, 3) for x in fresh],
            "frame_stage_seconds_reused_process": [rnd(x, 3) for x in reused],
            "stage_seconds_median": {k: rnd(median(v), 3) for k, v in stage_runs.items()}}


def _src(frames: list[Path], row: dict) -> int | None:
    name = Path(row["path"]).name
    for i, f in enumerate(frames):
        if f.name == name:
            return i
    return None


def measure(ctx: Context) -> dict[str, Value]:
    size = 512 if ctx.quick else 1024
    n = 2 if ctx.quick else 6
    try:
        field = field_of(ctx, size, n)
    except Exception as e:
        raise RuntimeError(f"synthetic frames could not be made: {e}") from e
    frames = field.frames[:n]
    folder = ctx.folder("throughput")
    settings_json = write_json(folder / "settings.json", field.stage_settings(folder / "plain-cache"))
    timeout = 600 if ctx.quick else 3600
    repeats = []
    ingest: list[float] = []
    # a 1-worker span is ~40 s on a shared machine whose speed drifts by ±20 % over minutes: full
    # mode takes at least 5 side-by-side repeats for these two ratios
    n_rep = ctx.repeats if ctx.quick else max(ctx.repeats, 5)
    sides = ["plain", "w1", "w2"] + ([] if ctx.quick else ["w1auto"])
    for rep in range(n_rep):
        order = sides if rep % 2 == 0 else sides[::-1]
        got = {}
        for side in order:
            ctx.log(f"  repeat {rep + 1}/{n_rep}: {side} on {n} frames of {size}²")
            if side == "plain":
                got[side] = run_plain(ctx, settings_json, frames, folder / f"plain-{rep}", timeout)
            else:
                got[side] = run_daemon(ctx, folder / f"{side}-{rep}", field, frames, int(side[1]), timeout,
                                       threads_per_frame=0 if side == "w1auto" else 1)
                ingest += got[side]["ingest_s"]
        plain_pf = got["plain"]["total_s"] / n
        w1 = got["w1"]["span_s"] - SETTLE
        w2 = got["w2"]["span_s"] - SETTLE
        rep_row = {"plain_s_per_frame": rnd(plain_pf), "daemon_1w_s_per_frame": rnd(w1 / n),
                   "daemon_2w_s_per_frame": rnd(w2 / n), "overhead": rnd((w1 / n) / plain_pf, 4),
                   "scaling": rnd(w1 / w2, 4), "sides": got}
        # the first frame dropped on both sides: the plain script's frames but the daemon's first
        rest = [f["total_s"] for f in got["plain"]["frames"] if Path(f["frame"]).name != got["w1"]["first_frame"]]
        if got["w1"]["span_after_first_s"] and len(rest) == n - 1:
            rep_row["overhead_without_first_frame"] = rnd(got["w1"]["span_after_first_s"] / sum(rest), 4)
        if "w1auto" in got:
            w1a = got["w1auto"]["span_s"] - SETTLE
            rep_row.update({"daemon_1w_default_threads_s_per_frame": rnd(w1a / n),
                            "overhead_default_threads": rnd((w1a / n) / plain_pf, 4),
                            "scaling_over_default_threads": rnd(w1a / w2, 4)})
        repeats.append(rep_row)
    ctx.shared["ingest_samples"] = ctx.shared.get("ingest_samples", []) + ingest
    daemons = [side for side in sides if side != "plain"]
    failed = sorted({s for r in repeats for side in daemons for s in r["sides"][side]["states"]} - {"done"})
    plain_failed = sorted({f.get("status") for r in repeats for f in r["sides"]["plain"]["frames"]} - {"done"})
    ctx_common = {"frame_size": size, "frames": n, "settle_seconds": SETTLE, "repeats": len(repeats)}
    overhead = Value(rnd(median(r["overhead"] for r in repeats), 3), runs=[r["overhead"] for r in repeats],
                     context={**ctx_common, "repeats_detail": repeats})
    scaling = Value(rnd(median(r["scaling"] for r in repeats), 3), runs=[r["scaling"] for r in repeats],
                    context=ctx_common)
    med = {k: rnd(median(r[k] for r in repeats), 2) for k in ("plain_s_per_frame", "daemon_1w_s_per_frame",
                                                              "daemon_2w_s_per_frame")}
    steady = rnd(median(r.get("overhead_without_first_frame") for r in repeats), 3)
    overhead.context["overhead_without_first_frame"] = steady
    overhead.note = (f"{n} frames of {size}², median of {len(repeats)}: daemon {med['daemon_1w_s_per_frame']} s/frame"
                     f" vs plain {med['plain_s_per_frame']} s/frame (settle {SETTLE} s subtracted once; both sides "
                     f"warmed up alike); first frame dropped on both sides: {steady}")
    scaling.note = (f"{n} frames of {size}², one thread per frame: 1 worker {med['daemon_1w_s_per_frame']} s/frame,"
                    f" 2 workers {med['daemon_2w_s_per_frame']} s/frame")
    if "w1auto" in sides:
        auto = {k: rnd(median(r[k] for r in repeats), 3) for k in (
            "daemon_1w_default_threads_s_per_frame", "overhead_default_threads", "scaling_over_default_threads")}
        for v in (overhead, scaling):
            v.context["one_worker_default_threads"] = auto
        text = (f"; 1 worker with the default thread budget ({os.cpu_count() or 1} cores ÷ 1 worker: plots on a "
                f"helper thread) {auto['daemon_1w_default_threads_s_per_frame']} s/frame")
        overhead.note += text + f", overhead {auto['overhead_default_threads']}"
        scaling.note += text + f", 2 workers ÷ that {auto['scaling_over_default_threads']}"
    daemon_errors = sorted({e for r in repeats for side in daemons for e in r["sides"][side]["errors"]})
    plain_errors = sorted({f["error"] for r in repeats for f in r["sides"]["plain"]["frames"] if f.get("error")})
    if failed or plain_failed:  # a ratio of runs that did different work means nothing
        why = (f"frames did not finish, so the sides did not do the same work: daemon {failed or 'all done'}"
               f" {daemon_errors[:2] or ''}, plain script {plain_failed or 'all done'} {plain_errors[:2] or ''}")
        overhead = Value.missing(why, **overhead.context)
        if failed:
            scaling = Value.missing(why, **scaling.context)
    if overhead.value is not None and overhead.value > 1.05:
        overhead.note += "; " + _overhead_limits(repeats, ctx.shared.get("chain_imports"))
    if scaling.value is not None and scaling.value < 1.8:
        loads = [x for r in repeats for x in r["sides"]["w2"]["loadavg_1m"]]
        slow = median(sum(v for v in r["sides"]["w2"]["stage_seconds_median"].values() if v)
                      / max(1e-9, sum(v for v in r["sides"]["w1"]["stage_seconds_median"].values() if v))
                      for r in repeats)
        scaling.context["stage_seconds_2w_over_1w"] = rnd(slow, 3)
        util = median(r["sides"]["w2"]["worker_utilisation"] for r in repeats)
        scaling.note += (f"; each frame's stages took {slow:.2f}× as long with 2 workers as with 1 (1.0 if both "
                         f"workers had a core of their own), and the 2 workers were busy {100 * (util or 0):.0f}% "
                         f"of the span (dispatch gaps are the rest)")
        scaling.note += (f"; 2 workers need 2 free cores: the 1-minute load average was {min(loads):.1f}–"
                         f"{max(loads):.1f} during the 2-worker runs (other work on this machine counts), and each "
                         f"frame process also pays its imports and start-up")
        if ctx.quick:
            scaling.note += f"; --quick: only {n} frames, one per worker, so one slow frame sets the span"
    return {"overhead_ratio": overhead, "scaling_2v1": scaling}


def _overhead_limits(repeats: list[dict], imports: dict | None = None) -> str:
    """What the daemon spends beyond the plain script, stage by stage (the profile of the gap)."""
    r = repeats[0]
    ours = r["sides"]["w1"]["stage_seconds_median"]
    plain = {}
    for f in r["sides"]["plain"]["frames"]:
        for k, v in (f.get("stages") or {}).items():
            plain.setdefault(k, []).append(v)
    plain = {k: median(v) for k, v in plain.items()}
    gaps = []
    for stage, sec in ours.items():
        if sec is not None and plain.get(stage) is not None:
            gaps.append((sec - plain[stage], stage, sec, plain[stage]))
    gaps.sort(reverse=True)
    parts = [f"{s} {a:.2f} s vs {b:.2f} s" for _, s, a, b in gaps[:4]]
    text = "per stage, daemon vs plain: " + ", ".join(parts) if parts else "no per-stage figures"
    fresh = [x for r in repeats for x in r["sides"]["w1"].get("frame_stage_seconds_fresh_process", [])]
    reused = [x for r in repeats for x in r["sides"]["w1"].get("frame_stage_seconds_reused_process", [])]
    firsts = [f["total_s"] for r in repeats for f in r["sides"]["plain"]["frames"][:1]]
    laters = [f["total_s"] for r in repeats for f in r["sides"]["plain"]["frames"][1:]]
    if fresh and reused:
        text += (f"; a frame's stages took {median(fresh):.2f} s in a new frame process and {median(reused):.2f} s in "
                 f"one that had run a frame (the plain script: first frame {median(firsts):.2f} s, later "
                 f"{median(laters):.2f} s); the rest of the gap is stdd's own products (image, mask, template and "
                 f"difference files, the astrometric residual plot, PNG cutouts, result.json) and checks (WCS "
                 f"double-check, difference noise ratio), which the plain script does not make: a profile of one "
                 f"frame process is written with STDD_PROFILE_DIR=<folder>")
    imp = imports or {}
    secs = sum((imp.get("seconds") or {}).values())
    if secs > 0.2:
        heavy = [m for m in imp.get("modules", []) if m in ("matplotlib", "scipy", "sklearn", "statsmodels", "skimage",
                                                             "photutils", "astroquery", "astroscrappy", "sep_x",
                                                             "pandas", "PIL", "numba")]
        text += (f"; each frame process spends {secs:.1f} s importing modules its fork server does not preload "
                 f"({', '.join(heavy)}; measured by bench.chain_child on a {imp.get('size')}² frame), which the "
                 f"plain script pays once")
    return text

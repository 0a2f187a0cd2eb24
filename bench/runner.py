"""The keys, their goals, and the run: every measure in turn, then JSON and a Markdown table.

Each measure module exposes `KEYS` (the keys it fills) and `measure(ctx) -> {key: Value}`. The
runner calls them in a fixed order (cheap and independent first, so a failure late in a run
still leaves the early numbers), turns an exception into null values with the reason, and
writes `latest.json` / `latest.md`. A key a measure did not return is null with a reason too,
so every key is always present.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import ROOT, Context, Unavailable, Value, environment, finite

RESULTS = ROOT / "bench" / "results"
SCHEMA = 1


@dataclass(frozen=True)
class Key:
    name: str
    unit: str
    what: str
    op: str | None = None        # "<=" or ">=" (None: context only, no goal)
    goal: float | None = None

    def met(self, value) -> bool | None:
        if value is None or self.op is None:
            return None
        return value <= self.goal if self.op == "<=" else value >= self.goal

    @property
    def goal_text(self) -> str:
        return f"{self.op} {self.goal:g}" if self.op else "context"


KEYS: tuple[Key, ...] = (
    Key("overhead_ratio", "ratio", "s/frame through the daemon (file dropped → result written) ÷ s/frame "
        "of the plain STDPipe script, same frames and settings, 1 worker", "<=", 1.05),
    Key("scaling_2v1", "ratio", "daemon throughput with 2 workers ÷ with 1 worker", ">=", 1.8),
    Key("ingest_p99_s", "s", "file closed → queued, beyond the settle window (p99)", "<=", 1.0),
    Key("frame_2k_s", "s", "a 2048² frame through all four stages, local catalogue and template, SFFT",
        "<=", 30.0),
    Key("frame_2k_hotpants_s", "s", "the same with HOTPANTS", "<=", 15.0),
    Key("alert_to_action_p99_ms", "ms", "notice produced to a local Kafka broker → action started (p99)",
        "<=", 1000.0),
    Key("status_p99_ms", "ms", "GET /status p99 over 500 requests while two workers are busy", "<=", 50.0),
    Key("loop_lag_max_ms", "ms", "worst event-loop lag during those requests", "<=", 100.0),
    Key("ui_frame_p95_ms", "ms", "the web interface's frame page (GET /ui/frames/{id}) p95 while two workers are "
        "busy", "<=", 200.0),
    Key("rss_idle_mb", "MB", "resident memory of the idle daemon (all its processes)", "<=", 200.0),
    Key("worker_peak_mb", "MB", "peak resident memory of one frame's process (+ its programs), "
        "worst of the 1k, 2k, 4k frames", "<=", 2000.0),
    Key("db_status_ms_10k", "ms", "`stdd status` with 10,000 frame records", "<=", 50.0),
    Key("db_size_week_mb", "MB", "the state file after a week at 2,000 frames a night (4 stage runs each, 40 "
        "notices a day), the retention job run as the daemon runs it", "<=", 120.0),
    Key("calib_stage_2k_s", "s", "the calibrate stage on a 2048² raw frame (bench/calib.py)", "<=", 1.0),
    Key("calib_build_20_s", "s", "`stdd calib build` of a master from 20 raw 2048² frames", "<=", 30.0),
    Key("rerun_subtraction_ratio", "ratio", "a rerun from subtraction with sub_size=600 ÷ the same frame's full "
        "run (2048², all cores, both in a new warmed process)", "<=", 0.40),
    Key("stack_3x2k_s", "s", "stacking three 2048² frames (background removed, SWarp, sum)", "<=", 15.0),
    Key("lightcurve_query_ms_10k", "ms", "a light curve (matched detections, 2″) at a star's position over "
        "10,000 frames of its field in the measurement store", "<=", 200.0),
    Key("dask_vs_local", "ratio", "seconds for the same frames on a 2-worker Dask LocalCluster ÷ on the "
        "2-worker local pool (above 1: Dask is slower)"),
)
KEY_NAMES = tuple(k.name for k in KEYS)

#: measure modules in run order, with the keys each fills
MEASURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench.db_status", ("db_status_ms_10k",)),
    ("bench.db_size", ("db_size_week_mb",)),
    ("bench.alert_latency", ("alert_to_action_p99_ms",)),
    ("bench.frame", ("frame_2k_s", "frame_2k_hotpants_s", "worker_peak_mb")),
    ("bench.throughput", ("overhead_ratio", "scaling_2v1")),
    ("bench.status_load", ("status_p99_ms", "loop_lag_max_ms", "ingest_p99_s", "rss_idle_mb", "ui_frame_p95_ms")),
    ("bench.dask_compare", ("dask_vs_local",)),
    ("bench.calib", ("calib_stage_2k_s", "calib_build_20_s")),
    ("bench.rerun", ("rerun_subtraction_ratio",)),
    ("bench.lightcurve_query", ("lightcurve_query_ms_10k",)),
    ("bench.stacking", ("stack_3x2k_s",)),
)


def run(*, quick: bool, only: list[str] | None = None, out_dir: Path = RESULTS, keep_work: bool = False,
        repeats: int | None = None, params: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Run the measures (all, or those filling the keys in `only`); write and return the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stdd-bench-"))
    ctx = Context(quick=quick, work=work, log=log, repeats=repeats or (1 if quick else 3), params=dict(params or {}))
    env_start = environment()
    started = time.time()
    values: dict[str, Value] = {}
    timings: dict[str, float] = {}
    wanted = set(only or KEY_NAMES)
    try:
        for modname, keys in MEASURES:
            if not wanted & set(keys):
                continue
            log(f"[bench] {modname.split('.')[-1]}: {', '.join(keys)}")
            t0 = time.monotonic()
            try:
                got = importlib.import_module(modname).measure(ctx)
            except Unavailable as e:  # a component this measure needs is not here: null, with the reason
                got = {k: Value.missing(str(e)) for k in keys}
            except Exception as e:  # a measure's failure is recorded, the run goes on
                trace = traceback.format_exc()
                (out_dir / f"error-{modname.split('.')[-1]}.txt").write_text(trace)
                log(trace)
                got = {k: Value.missing(f"the measure failed: {type(e).__name__}: {e}") for k in keys}
            timings[modname] = round(time.monotonic() - t0, 1)
            log(f"[bench] {modname.split('.')[-1]} took {timings[modname]:.0f} s")
            for k in keys:
                values[k] = got.get(k) or Value.missing(f"{modname} returned no value for {k}")
    finally:
        if keep_work:
            log(f"[bench] scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for k in KEYS:
        if k.name not in values:
            values[k.name] = Value.missing("not measured in this run (--only)" if only else "no measure fills it")
    report = build_report(values, quick=quick, started=started, env_start=env_start, timings=timings,
                          repeats=ctx.repeats)
    if ctx.params:
        report["params"] = ctx.params
    write(report, out_dir)
    return report


def build_report(values: dict[str, Value], *, quick: bool, started: float, env_start: dict, timings: dict,
                 repeats: int) -> dict[str, Any]:
    keys = {}
    for k in KEYS:
        v = values[k.name]
        keys[k.name] = {"value": finite(v.value), "unit": k.unit, "goal": k.goal_text, "met": k.met(v.value),
                        "what": k.what, **{x: y for x, y in v.to_json().items() if x != "value"}}
    return {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "repeats": repeats,
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "measure_seconds": timings,
        "machine": {**env_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "summary": {k.name: finite(values[k.name].value) for k in KEYS},
        "keys": keys,
    }


def write(report: dict, out_dir: Path) -> tuple[Path, Path]:
    js = out_dir / "latest.json"
    md = out_dir / "latest.md"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, js)
    md.write_text(markdown(report))
    return js, md


def _fmt(v, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if unit == "ratio":
            return f"{v:.2f}"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# stdd benchmarks ({report['mode']}, {report['started_at']})",
        "",
        f"{m.get('cpus')} cores, load {m.get('loadavg')} → {m.get('loadavg_end')}; Python {m.get('python')}, "
        f"stdpipe {m.get('stdpipe')}, stdd {m.get('stdd_commit')}{' (modified)' if m.get('stdd_tree_dirty') else ''}; "
        f"HOTPANTS {'present' if m.get('hotpants') else 'absent'}; {report['repeats']} repeat(s); "
        f"{report['seconds']:.0f} s in all.",
        "",
        "| key | value | goal | met | note |",
        "|---|---|---|---|---|",
    ]
    for name, k in report["keys"].items():
        met = {True: "yes", False: "**no**", None: ""}[k["met"]]
        text = k["reason"] if k["value"] is None else (k["note"] or "")
        text = (text or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {_fmt(k['value'], k['unit'])} {k['unit'] if k['value'] is not None else ''} "
                     f"| {k['goal']} | {met} | {text} |")
    stages = report["keys"].get("frame_2k_s", {}).get("context", {}).get("stage_seconds")
    if stages:
        label = {"stdd_1_thread": "stdd, 1 thread", "plain": "plain script, 1 thread",
                 "stdd": f"stdd, frame alone ({m.get('cpus')} threads)"}
        lines += ["", "Seconds per stage (median), each side in a new process after the same warm-up: stdd's stages "
                  "and the plain STDPipe script at one thread each (like with like), then stdd with a frame-alone "
                  "budget (context, what `frame_2k_s` measures):", "",
                  "| frame | side | inspect | photometry | transients | subtraction | total |",
                  "|---|---|---|---|---|---|---|"]
        for size, sides in stages.items():
            for side, sec in sides.items():
                if not sec:
                    continue
                cells = [_fmt(sec.get(s), "s") for s in ("inspect", "photometry", "transients", "subtraction",
                                                          "total")]
                lines.append(f"| {size} | {label.get(side, side)} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)

"""What every measure shares: the run context, results with reasons, statistics, process memory.

A measure is a function `measure(ctx) -> dict[key, Value]`. A `Value` holds the number (or None),
the reason when it is None, a note (what limits it when a goal is missed), the individual runs it
was made of, and any context figures. Statistics are medians; percentiles use the nearest-rank
method (stdd.http.loadcheck.percentile), the same for every key.
"""
from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Value:
    value: float | int | None
    reason: str | None = None          # why the value is None
    note: str | None = None            # what limits it, how it was measured
    runs: list[Any] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def missing(cls, reason: str, **context: Any) -> "Value":
        return cls(None, reason=reason, context=context)

    def to_json(self) -> dict[str, Any]:
        return {"value": finite(self.value), "reason": self.reason, "note": self.note,
                "runs": finite(self.runs), "context": finite(self.context)}


class Unavailable(Exception):
    """A measure cannot run here (a component missing, a binary absent): its keys become null."""


@dataclass
class Context:
    quick: bool
    work: Path                         # scratch folder for this run (frames, daemons, databases)
    log: Callable[[str], None] = print
    python: str = sys.executable
    repeats: int = 1                   # side-by-side repeats for the ratio measures
    shared: dict[str, Any] = field(default_factory=dict)  # results one measure leaves for another
    params: dict[str, Any] = field(default_factory=dict)  # size overrides (tests): e.g. db_status_records

    def folder(self, name: str) -> Path:
        p = self.work / name
        p.mkdir(parents=True, exist_ok=True)
        return p


# ---------------------------------------------------------------- numbers

def finite(o: Any) -> Any:
    """JSON has no NaN or infinity: those become null; numpy scalars become Python numbers."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0 and not isinstance(o, (str, bytes)):
        return finite(o.item())
    return o


def median(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), as the endpoint's load check computes it."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[rank - 1]


def rnd(v: float | None, nd: int = 3) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


class Stopwatch:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def profile_top(fn: Callable[[], Any], n: int = 15) -> tuple[Any, str]:
    """Run `fn` under cProfile; return (its result, the top `n` functions by cumulative time)."""
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative").print_stats(n)
    return result, _trim_profile(buf.getvalue())


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("ncalls"):
            return "\n".join(lines[i:]).rstrip()
    return text.strip()


# ---------------------------------------------------------------- processes and memory

def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def hwm_mb(pid: int) -> float | None:
    """The process's own peak resident set (VmHWM)."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = fh.read().split(b"\0")
        return " ".join(p.decode(errors="replace") for p in parts if p)[:160]
    except OSError:
        return "?"


def descendants(pid: int) -> list[int]:
    """`pid` and every live descendant (from /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st and st[0] != "Z":
            children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (a frame process and the programs it started)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st and st[0] != "Z" and int(st[3]) == sid:
            out.append(int(entry))
    return out


def pss_mb(pid: int) -> float | None:
    """Proportional set size (shared pages divided among the processes sharing them)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def session_mb(sid: int) -> float:
    """Memory of a frame process and the programs it runs now (its session): the sum of their PSS.
    Not RSS: a program started by fork + exec (os.system, subprocess) holds, until its exec, every
    page of the frame process, and a sum of RSS counts them twice (a 1.4 GB frame process sampled as
    2.8 GB while it forks SExtractor); PSS divides shared pages among the processes sharing them. A
    member still running the leader's program is such a child before its exec (with vfork it shares
    the leader's whole address space, PSS included): it is skipped."""
    def exe(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None

    leader_exe = exe(sid)
    total = 0.0
    for p in session_members(sid):
        if p != sid and leader_exe is not None and exe(p) == leader_exe:
            continue
        v = pss_mb(p)
        if v is None:
            v = rss_mb(p)
        total += v or 0.0
    return total


def tree_rss_mb(pid: int) -> dict[str, Any]:
    """RSS (and PSS) of a process tree: totals and per process."""
    procs = []
    for p in descendants(pid):
        r = rss_mb(p)
        if r is not None:
            pss = pss_mb(p)
            procs.append({"pid": p, "rss_mb": round(r, 1), "pss_mb": rnd(pss, 1), "cmd": process_name(p)})
    return {"total_mb": round(sum(p["rss_mb"] for p in procs), 1),
            "total_pss_mb": round(sum(p["pss_mb"] or 0 for p in procs), 1), "processes": procs}


_IMPORT_RSS = """
import importlib, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
def tops():
    return {n.split('.')[0] for n in sys.modules} - set(sys.stdlib_module_names)
out = [['python', round(rss(), 1), []]]
for m in sys.argv[1:]:
    before = tops()
    try:
        importlib.import_module(m)
        name = m
    except Exception as e:
        name = m + ' (failed: ' + type(e).__name__ + ')'
    out.append([name, round(rss(), 1), sorted(tops() - before - {m.split('.')[0]})])
print(json.dumps(out))
"""


def import_memory_profile(python: str, modules: list[str]) -> list[list]:
    """Resident memory of a new Python process after importing each module in turn:
    [[module, RSS MB after it, MB it added, [third-party packages it brought in]], ...]
    (a memory profile of a process's imports)."""
    import json
    import subprocess

    r = subprocess.run([python, "-c", _IMPORT_RSS, *modules], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return [["failed", r.stderr[-300:]]]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    out, prev = [], 0.0
    for name, mb, pulled in rows:
        out.append([name, mb, round(mb - prev, 1), pulled])
        prev = mb
    return out


def environment() -> dict[str, Any]:
    """What the numbers were measured on (they are meaningless without it)."""
    import platform
    import shutil
    import subprocess

    def version(mod: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:
            return None

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    if commit is None and os.environ.get("STDD_BENCH_COMMIT"):  # run from an exported tree (git archive)
        commit = os.environ["STDD_BENCH_COMMIT"]
    return {
        "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(),
        "stdd_commit": commit, "stdd_tree_dirty": dirty,
        "stdpipe": version("stdpipe"), "numpy": version("numpy"), "astropy": version("astropy"),
        "hotpants": shutil.which("hotpants"), "source-extractor": shutil.which("source-extractor"),
        "scamp": shutil.which("scamp"), "swarp": shutil.which("swarp") or shutil.which("SWarp"),
    }

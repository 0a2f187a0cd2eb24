"""`db_status_ms_10k`: `stdd status` on a state file holding 10,000 frame records.

The database is filled through the store's own API (FrameStore: add, claim, stage runs, finish),
in one transaction, so it holds what a daemon leaves after 10,000 frames: 4 stage runs and the
audit events of each, most frames done, some failed. `stdd status` has two paths, both timed:

* daemon running — a real daemon (`stdd run`) on that file; the command asks its HTTP endpoint
  (GET /status and the running frames);
* daemon not running — then 40 queued frames (2 of them running) are added and the command reads
  the SQLite file itself (counts, running list, the daemon's status file).

Each is the median of the command run in-process (click's runner: settings load, the request or
the queries, JSON output) after one warm-up call; the key is the slower of the two medians. The
whole command as a new process (Python start-up and imports included) is context.
"""
from __future__ import annotations

import hashlib
import random
import subprocess
import time
from pathlib import Path

from .common import Context, Unavailable, Value, median, rnd

KEYS = ("db_status_ms_10k",)

STAGES = ("inspect", "photometry", "transients", "subtraction")


def fill(db_path: Path, n: int = 10_000, seed: int = 8, queued: int = 40, running: int = 2) -> dict[str, int]:
    """A state file with `n` frame records in realistic states: the last `queued` stay queued,
    `running` of them are claimed (see the module docstring)."""
    from stdd.store import Database, FrameStore

    rng = random.Random(seed)
    db = Database(db_path)
    frames = FrameStore(db)
    t0 = time.time() - n * 30.0
    try:
        with db.write():
            for i in range(n):
                sha = hashlib.sha256(f"bench-frame-{seed}-{i}".encode()).hexdigest()
                frames.add(f"/data/incoming/night{i // 400:03d}/frame_{i:05d}.fits", sha, 16_781_760,
                           t0 + 30 * i)
                if i >= n - queued:  # the last ones stay queued; `running` of them are claimed below
                    continue
                f = frames.claim_next(f"worker-{i % 2}", now=t0 + 30 * i + 5)
                fail_at = rng.choice(STAGES) if rng.random() < 0.03 else None
                for stage in STAGES:
                    run = frames.start_stage_run(f["id"], stage, f["attempts"], 10_000 + i % 5000)
                    failed = stage == fail_at
                    frames.end_stage_run(run, "failed" if failed else "done",
                                         error=f"{stage}: bench failure" if failed else None,
                                         summary={"n": rng.randint(100, 3000)}, seconds=rng.uniform(1, 20))
                    if failed:
                        break
                result = {"filter": "r", "zp": 25 + rng.gauss(0, 0.1), "zp_err": 0.01, "fwhm_arcsec": 2.5,
                          "mag_limit": 20.5, "n_stars_calib": 400, "candidates_simple": [], "candidates_sub": []}
                frames.finish(f["id"], "failed" if fail_at else "done",
                              error=f"{fail_at}: bench failure" if fail_at else None, result=result)
            for k in range(running):
                frames.claim_next(f"worker-{k}")
        counts = frames.counts()
    finally:
        db.close()
    return counts


def add_queue(db_path: Path, queued: int = 40, running: int = 2, seed: int = 9) -> dict[str, int]:
    """Add `queued` new frames to a state file and claim `running` of them."""
    from stdd.store import Database, FrameStore

    db = Database(db_path)
    frames = FrameStore(db)
    try:
        with db.write():
            for i in range(queued):
                sha = hashlib.sha256(f"bench-queued-{seed}-{i}".encode()).hexdigest()
                frames.add(f"/data/incoming/tonight/frame_{i:05d}.fits", sha, 16_781_760, time.time())
            for k in range(running):
                frames.claim_next(f"worker-{k}")
        return frames.counts()
    finally:
        db.close()


def _config(folder: Path, db_path: Path) -> Path:
    cfg = folder / "stdd.toml"
    cfg.write_text(f'[paths]\nvar = "{folder / "var"}"\ndatabase = "{db_path}"\n'
                   f'incoming = ["{folder / "incoming"}"]\n[http]\nport = {_free_port()}\n')
    return cfg


def _free_port() -> int:
    from .harness import free_port

    return free_port()


def time_status_inprocess(cfg: Path, n: int, expect_daemon: str | None = None) -> list[float]:
    import json

    from click.testing import CliRunner

    from stdd.cli import cli

    runner = CliRunner()
    out = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        res = runner.invoke(cli, ["--config", str(cfg), "status", "--json"])
        dt = (time.perf_counter() - t0) * 1000
        if res.exit_code != 0:
            raise RuntimeError(f"stdd status exited {res.exit_code}: {res.output[-500:]}")
        if i == 0 and expect_daemon is not None:
            got = json.loads(res.stdout)["daemon"]
            if got != expect_daemon:
                raise RuntimeError(f"stdd status says the daemon is {got!r}, expected {expect_daemon!r}")
        if i:  # the first call warms imports and the page cache
            out.append(dt)
    return out


def time_status_process(python: str, cfg: Path, n: int) -> tuple[list[float], list[float]]:
    cmd = [python, "-m", "stdd", "--config", str(cfg), "status", "--json"]
    base = [python, "-c", "import stdd.cli"]
    full, imports = [], []
    for _ in range(n):
        for argv, sink in ((cmd, full), (base, imports)):
            t0 = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            sink.append((time.perf_counter() - t0) * 1000)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[-3:])} exited {r.returncode}: {r.stderr[-500:]}")
    return full, imports


def slowest_imports(python: str, cfg: Path, n: int = 6) -> dict[str, float]:
    """Where a new `stdd status` process spends its start-up: top-level imports by cumulative ms."""
    r = subprocess.run([python, "-X", "importtime", "-m", "stdd", "--config", str(cfg), "status", "--json"],
                       capture_output=True, text=True, timeout=120)
    top: dict[str, float] = {}
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not line.startswith("import time:"):
            continue
        name = parts[2].rstrip()
        if name.startswith("  "):  # nested deeper than one level below a top-level import
            continue
        try:
            top[name.strip()] = round(int(parts[1]) / 1000, 1)
        except ValueError:
            pass
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:n])


def measure(ctx: Context) -> dict[str, Value]:
    folder = ctx.folder("db_status")
    db_path = folder / "var" / "stdd.sqlite"
    n_records = int(ctx.params.get("db_status_records", 10_000))
    n_runs = 10 if ctx.quick else 30
    n_proc = 1 if ctx.quick else 3
    t0 = time.monotonic()
    fill(db_path, n=n_records, queued=0, running=0)
    fill_s = time.monotonic() - t0
    paths: dict[str, dict] = {}

    # the daemon is running: the command asks its endpoint
    try:
        from .harness import BenchDaemon

        d = BenchDaemon(folder, None, workers=1, http=True)
    except Unavailable as e:
        paths["daemon running"] = {"reason": str(e)}
    else:
        with d:
            runs = time_status_inprocess(d.proc_h.config, n_runs, expect_daemon="running")
            full, imports = time_status_process(ctx.python, d.proc_h.config, n_proc)
        paths["daemon running"] = {"median_ms": rnd(median(runs), 2), "runs": [rnd(x, 2) for x in runs],
                                   "new_process_ms": rnd(median(full), 1)}

    # the daemon is not running: the command reads the file
    counts = add_queue(db_path)
    cfg = _config(folder, db_path)
    runs = time_status_inprocess(cfg, n_runs, expect_daemon="not running")
    full, imports = time_status_process(ctx.python, cfg, n_proc)
    paths["daemon not running"] = {"median_ms": rnd(median(runs), 2), "runs": [rnd(x, 2) for x in runs],
                                   "new_process_ms": rnd(median(full), 1)}

    measured = {k: p for k, p in paths.items() if p.get("median_ms") is not None}
    worst = max(measured, key=lambda k: measured[k]["median_ms"])
    v = Value(measured[worst]["median_ms"], runs=measured[worst]["runs"], context={
        "frames": counts, "database_mb": round(db_path.stat().st_size / 2**20, 1), "fill_seconds": round(fill_s, 1),
        "paths": paths, "python_import_stdd_cli_ms": rnd(median(imports), 1),
        "slowest_imports_ms": slowest_imports(ctx.python, cfg),
    })
    v.note = ("in-process command, median of " + str(n_runs) + "; " + "; ".join(
        f"{k}: {p['median_ms']:.1f} ms" + (f" (as a new process {p['new_process_ms']:.0f} ms)" if p.get('new_process_ms') else "")
        if p.get("median_ms") is not None else f"{k}: not measured ({p['reason']})" for k, p in paths.items())
        + f"; Python start-up + `import stdd.cli` alone {v.context['python_import_stdd_cli_ms']:.0f} ms")
    if v.value is not None and v.value > 50:
        from .common import profile_top

        _, prof = profile_top(lambda: time_status_inprocess(cfg, 3))
        v.context["profile"] = prof
        v.note += "; over the goal: see context.profile"
    return {"db_status_ms_10k": v}

"""One frame through stdd's own chain in a fresh process, as a pool worker runs it; prints JSON.

`python -m bench.chain_child FRAME WORKDIR SETTINGS_JSON [--steps ...] [--rerun] [--profile N]`

It does what `stdd.pool.worker` does between `begin` and `publishing` (prepare the folder from
the frame's bytes, then `stdd.pipeline.run_chain`), with the pool's environment (numerical
libraries on one thread each), and reports the seconds of each stage, the seconds spent importing
modules during each stage (what a fresh frame process pays for what its fork server did not
preload), the chain's total, and this process's memory peak (VmHWM; the programs it runs are
sampled by the caller — ru_maxrss of children is useless here: a child forked from a large
process reports the parent's pages). With `--profile N` the chain runs under cProfile and the top
N functions by cumulative time are included (the timing is then not representative).
"""
from __future__ import annotations

import os

from stdd.pool.local import SINGLE_THREAD_ENV

for _var in SINGLE_THREAD_ENV:  # as the pool sets them, before numpy is imported
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chain_child")
    ap.add_argument("frame", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("settings", type=Path, help="StageSettings as JSON")
    ap.add_argument("--steps", nargs="+", default=None)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="the frame's thread budget, as the pool gives it (0: not limited; the environment's one thread)")
    ap.add_argument("--rerun", action="store_true",
                    help="WORKDIR already holds the frame's earlier stages: run --steps there without preparing it "
                         "again (what `stdd retry --from` and `stdd process --from` do)")
    ap.add_argument("--preload", nargs="+", default=[], metavar="MODULE",
                    help="import these too before the frame (what a larger fork-server preload would give)")
    args = ap.parse_args(argv)

    t_import = time.perf_counter()
    from bench.warm import preload
    from stdd.pipeline import prepare_folder, run_chain
    from stdd.stages.base import StageSettings

    # what a pool worker has imported before its frame arrives (the daemon's default preload); the
    # plain script gets the same warm-up before its clock starts
    preload(args.preload)
    import_s = time.perf_counter() - t_import
    settings = StageSettings.model_validate(json.loads(args.settings.read_text()))
    stages: dict[str, float] = {}
    starts: dict[str, float] = {}
    timer = ImportTimer()
    before = _top_level_modules()

    def on_stage(name, phase, res):
        if phase == "start":
            starts[name] = time.perf_counter()
            timer.stage = name
        else:
            stages[name] = round(time.perf_counter() - starts[name], 3)
            timer.stage = None

    def chain():
        if not args.rerun:
            prepare_folder(args.frame, args.work)
        return run_chain(args.work, settings, args.steps or settings.pipeline.steps, on_stage, threads=args.threads)

    profile = None
    t0 = time.perf_counter()
    with timer:
        if args.profile:
            from bench.common import profile_top

            result, profile = profile_top(chain, args.profile)
        else:
            result = chain()
    total = time.perf_counter() - t0
    out = {
        "status": result.get("status"), "error": result.get("error"),
        "stage_states": {k: v.get("state") for k, v in (result.get("stages") or {}).items()},
        "stages": stages, "total_s": round(total, 3), "import_s": round(import_s, 3),
        "imports_in_stages_s": {k: round(v, 3) for k, v in timer.by_stage.items()},
        "imported_in_chain": sorted(_top_level_modules() - before),
        "peak_rss_mb": _hwm_mb(),
        "sub_method": result.get("sub_method"), "sub_tiles": result.get("sub_tiles"),
        "notes": result.get("notes", [])[:20], "profile": profile,
    }
    print(json.dumps(out, default=str))
    return 0


class ImportTimer:
    """Seconds spent importing modules while each stage runs (outermost imports only): what a
    fresh frame process pays for modules its fork server did not preload."""

    def __init__(self):
        self.by_stage: dict[str, float] = {}
        self.stage: str | None = None
        self._depth = 0

    def __enter__(self):
        import builtins
        import importlib

        self._orig = (builtins.__import__, importlib.import_module)
        builtins.__import__ = self._wrap(self._orig[0])
        importlib.import_module = self._wrap(self._orig[1])
        return self

    def __exit__(self, *exc):
        import builtins
        import importlib

        builtins.__import__, importlib.import_module = self._orig

    def _wrap(self, fn):
        def timed(*a, **k):
            if self._depth or self.stage is None:
                return fn(*a, **k)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth -= 1
                self.by_stage[self.stage] = self.by_stage.get(self.stage, 0.0) + time.perf_counter() - t0
        return timed


def _top_level_modules() -> set[str]:
    return {n.split(".")[0] for n in list(sys.modules)} - set(sys.stdlib_module_names)


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())

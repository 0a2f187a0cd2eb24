"""`dask_vs_local` (issue #9): the same frames on the local pool and on a 2-worker Dask LocalCluster.

Built on the Dask executor's own comparison (`stdd.pool.dask.compare_local_vs_dask`): both
executors started and warmed, the same jobs run through each, wall time from the first submit to
the last result, and the results compared. The key is Dask's seconds ÷ the local pool's (so 1.0
means no cost, above 1 Dask is slower), the median over repeats; context only, no goal.
"""
from __future__ import annotations

from .common import Context, Value, median, rnd
from .inputs import field_of

KEYS = ("dask_vs_local",)


def measure(ctx: Context) -> dict[str, Value]:
    try:
        import distributed  # noqa: F401

        from stdd.pool.dask import compare_local_vs_dask
    except ImportError as e:
        return {"dask_vs_local": Value.missing(f"the Dask executor is not available: {e}")}
    size = 512 if ctx.quick else 1024
    n = 2 if ctx.quick else 4
    field = field_of(ctx, size, n)
    frames = field.frames[:n]
    runs = []
    for rep in range(ctx.repeats):
        ctx.log(f"  repeat {rep + 1}/{ctx.repeats}: {n} frames of {size}², local pool then Dask")
        folder = ctx.folder(f"dask/{rep}")
        res = compare_local_vs_dask(frames, work_root=folder, workers=2,
                                    stage_settings=field.stage_settings(folder / "cache"),
                                    timeout=600 if ctx.quick else 3600)
        runs.append(res)
    ratio = median(r["ratio"] for r in runs)
    v = Value(rnd(ratio, 3), runs=[r["ratio"] for r in runs],
              context={"frame_size": size, "frames": n, "repeats": runs})
    same = all(r["same_results"] for r in runs)
    states = sorted({s for r in runs for st in r["states"].values() for s in st.values()})
    v.note = (f"Dask seconds ÷ local pool seconds, {n} frames of {size}², 2 workers each; local "
              f"{median(r['local_seconds'] for r in runs):.1f} s, Dask {median(r['dask_seconds'] for r in runs):.1f} s; "
              f"results {'identical' if same else 'DIFFER (see context)'}; outcomes {', '.join(states)}; the local pool "
              f"always runs first (the comparison function's order), so drift in the machine's load is not balanced "
              f"within a repeat")
    return {"dask_vs_local": v}

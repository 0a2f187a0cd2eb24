"""The frame's thread budget, as the stages see it.

Design note: the pool gives each frame a budget of threads (`pool.threads_per_frame`, by default
cores ÷ workers) so that frames running side by side do not take each other's cores. `run_chain`
enters `budget(threads)` around the stages; inside, OpenMP code (astroscrappy's cosmic-ray
filters) is limited to it, and a stage that can split its work (subtraction's tiles) asks
`available()` how many pieces to run at once. A stage run on its own, with no budget around it,
may use every core.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

_budget = 0  # 0: no budget set (a stage run on its own, or a chain told "not limited")


def available() -> int:
    """Threads the current frame may keep busy (at least 1)."""
    return _budget if _budget > 0 else max(1, os.cpu_count() or 1)


@contextmanager
def budget(threads: int):
    """Inside: `available()` answers `threads`, and OpenMP libraries already loaded (the pool's fork
    server preloads them) use that many threads. 0 = not limited: every core for `available()`, and
    OpenMP as the environment says (OMP_NUM_THREADS)."""
    global _budget
    saved, _budget = _budget, max(0, int(threads))
    try:
        with _openmp_limited(threads):
            yield
    finally:
        _budget = saved


@contextmanager
def _openmp_limited(threads: int):
    if threads < 1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it the environment decides
        yield
        return
    with threadpool_limits(limits=threads, user_api="openmp"):
        yield

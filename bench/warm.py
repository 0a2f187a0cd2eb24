"""The warm-up every side of a comparison gets before its clock starts: the daemon's fork-server preload.

Before its first frame, the daemon's pool imports `PRELOAD`, the stage libraries and, last,
`stdd.pool.warmup` (the stages' first-use work: matplotlib's canvas and fonts, astropy's table
readers and writers, then `gc.freeze()`) in its fork server; `bench.throughput` waits for that
before it drops a file, so none of it is in the daemon's time. `bench.chain_child` (stdd's chain
in a new process) and `bench.plain_script` (the plain script) both call `preload()` here before
their clock starts, so no side pays imports or first-use costs that the other does not (symmetry
by construction: one list, one function). The plain script's timings used to include its lazy
imports (sklearn, matplotlib, the subtraction modules) in its first frame's stages.
"""
from __future__ import annotations

import importlib
import time


def preload(extra: list[str] | tuple[str, ...] = ()) -> float:
    """Import what the daemon's fork server imports (plus `extra`, before the warm-up module);
    missing modules are skipped, as the pool skips them. Returns the seconds it took."""
    from stdd.pool.local import PRELOAD, PRELOAD_LAST, PRELOAD_STAGE_LIBRARIES

    t0 = time.perf_counter()
    for mod in [*PRELOAD, *PRELOAD_STAGE_LIBRARIES, *extra, PRELOAD_LAST]:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    return time.perf_counter() - t0

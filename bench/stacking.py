"""`stack_3x2k_s`: stacking three 2048² frames of one field (stdd.stack.stack: background removal,
SWarp onto the first frame's grid, sum): three synthetic frames of one star field, dithered by
about 10″ and turned a little (so SWarp really resamples two of them), each with its own noise; the
median of the runs (full mode 3, quick 1), each in this process after a first untimed run
(imports, SWarp's first start)."""
from __future__ import annotations

import time

from .common import Context, Value, median, rnd

KEYS = ("stack_3x2k_s",)


def measure(ctx: Context) -> dict[str, Value]:
    from stdd.stack import stack

    from stdd.synth import default_starfield, make_field

    size = 2048
    folder = ctx.folder("stacking")
    sky = default_starfield(77, width=size, height=size, n_stars=3000)
    frames = []
    for i, (dra, ddec, rot) in enumerate([(0.0, 0.0, 0.0), (0.003, -0.002, 0.1), (-0.002, 0.003, -0.1)]):
        path = folder / f"in{i}" / "frame.fits"
        if not path.is_file():
            make_field(folder / f"in{i}", seed=500 + i, width=size, height=size, ra=150 + dra, dec=30 + ddec,
                       rot_deg=rot, starfield=sky, template=False, catalog_name=None, n_transients=0,
                       date_obs=f"2026-03-01T03:{2 * i:02d}:00")
        frames.append(path)
    stack(frames, folder / "warm.fits", tmpdir=folder, log=lambda m: None)
    runs = []
    for rep in range(max(1, ctx.repeats)):
        t0 = time.perf_counter()
        rec = stack(frames, folder / f"stack-{rep}.fits", tmpdir=folder, log=lambda m: None)
        runs.append(time.perf_counter() - t0)
    v = Value(rnd(median(runs), 2), runs=[rnd(x, 2) for x in runs],
              context={"alignment": rec["alignment"], "gain": rec["gain"], "n": rec["n"]})
    v.note = f"three {size}² frames, sum, background removed, SWarp; median of {len(runs)}"
    return {"stack_3x2k_s": v}

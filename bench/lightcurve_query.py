"""`lightcurve_query_ms_10k`: a light curve at a star's position over 10,000 frames of its field.

The measurement store (stdd.store.measurements) is filled the way the daemon fills it — each frame's
calibrated objects through `MeasurementStore.ingest`, in one transaction per 500 frames — with
10,000 frames of one field (quick mode: 2,000), each holding the same 300 stars (positions
scattered by 0.2″, magnitudes by their errors) and its time and filter. The key is the median of
`stdd.lightcurves.query.lightcurve` (matched detections, 2″ radius) at 20 of those stars, after one
warm-up query; p95 and the points returned are context.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from .common import Context, Value, median, percentile, rnd

KEYS = ("lightcurve_query_ms_10k",)


def fill(db_path: Path, n_frames: int, n_stars: int = 300, seed: int = 17) -> list[tuple[float, float]]:
    from stdd.store import Database
    from stdd.store.measurements import MeasurementStore

    rng = random.Random(seed)
    stars = [(150.0 + rng.uniform(-0.15, 0.15), 30.0 + rng.uniform(-0.15, 0.15), rng.uniform(14, 20))
             for _ in range(n_stars)]
    db = Database(db_path)
    ms = MeasurementStore(db)
    try:
        for start in range(0, n_frames, 500):
            with db.write() as conn:
                for i in range(start, min(n_frames, start + 500)):
                    conn.execute("INSERT INTO frames (id, path, sha256, state, created_at) VALUES (?, ?, ?, 'done', ?)",
                                 (i + 1, f"/data/f{i}.fits", f"{i:064x}", time.time()))
                    objects = [{"ra": ra + rng.gauss(0, 0.2 / 3600), "dec": dec + rng.gauss(0, 0.2 / 3600),
                                "mag": mag + rng.gauss(0, 0.02), "mag_err": 0.02, "snr": 50.0, "flags": 0}
                               for ra, dec, mag in stars]
                    result = {"time_mid": f"2026-{1 + (i // 800) % 12:02d}-{1 + (i // 30) % 27:02d}T"
                                          f"{(i % 30) % 24:02d}:00:00", "filter": "r", "zp": 25.0, "zp_err": 0.01}
                    ms.ingest({"id": i + 1}, result, objects)
    finally:
        db.close()
    return [(ra, dec) for ra, dec, _ in stars]


def measure(ctx: Context) -> dict[str, Value]:
    from stdd.lightcurves.query import lightcurve
    from stdd.store import Database

    n = ctx.params.get("lightcurve_frames", 2_000 if ctx.quick else 10_000)
    folder = ctx.folder("lightcurve_query")
    db_path = folder / "state.sqlite"
    for p in folder.glob("state.sqlite*"):
        p.unlink()
    t0 = time.perf_counter()
    stars = fill(db_path, n)
    fill_s = time.perf_counter() - t0
    db = Database(db_path, readonly=True)
    try:
        lightcurve(db, *stars[0], 2.0)  # warm-up
        times, points = [], []
        for ra, dec in stars[1:21]:
            t = time.perf_counter()
            lc = lightcurve(db, ra, dec, 2.0)
            times.append((time.perf_counter() - t) * 1000)
            points.append(len(lc["points"]))
    finally:
        db.close()
    size_mb = db_path.stat().st_size / 1e6
    v = Value(rnd(median(times), 1), runs=[rnd(x, 1) for x in times],
              context={"frames": n, "measurements": n * len(stars), "points_per_query": points,
                       "p95_ms": rnd(percentile(times, 95), 1), "fill_s": rnd(fill_s, 1), "db_mb": rnd(size_mb, 1)})
    v.note = (f"{n} frames × {len(stars)} stars ({rnd(size_mb, 0)} MB); median of 20 queries, each returning "
              f"{min(points)}–{max(points)} points; p95 {rnd(percentile(times, 95), 1)} ms")
    return {"lightcurve_query_ms_10k": v}

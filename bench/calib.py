"""Calibration: the calibrate stage on a 2048² raw frame, and masters from 20 raw frames.

A synthetic raw night (stdd.synth.rawnight: 2048² image area + 32 overscan columns, uint16 with
BZERO 32768) with 20 biases, 5 darks, 5 flats and one light frame. `calib_build_20_s` is
`stdd calib build` on the 20 biases, run as the command (its process start included), median
over the repeats; the build's own seconds are in the context. `calib_stage_2k_s` is the
calibrate stage on the light frame (overscan, trim, bias, scaled dark, flat, bad pixels, error
map, three FITS files written), median over the repeats after a first call that pays the imports;
the context also holds inspect's seconds on the calibrated and on the uncalibrated frame (what
the stage changes downstream). `--quick`: 1024² frames.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

from .common import ROOT, Value

KEYS = ("calib_stage_2k_s", "calib_build_20_s")


def _profile(folder: Path, size: int) -> Path:
    path = folder / "synth-raw-bench.toml"
    path.write_text(f'description = "stdd.synth.rawnight at {size}x{size} (benchmark)"\n'
                    f"gain = 1.5\nread_noise = 7.0\nsaturation = 65000.0\n"
                    f'overscan = "[{size + 1}:{size + 32},1:{size}]"\ntrim = "[1:{size},1:{size}]"\n')
    return path


def measure(ctx) -> dict[str, Value]:
    from stdd.config.load import load_instrument, settings_from_dict
    from stdd.pipeline import prepare_folder, run_stage
    from stdd.stages.base import StageSettings
    from stdd.synth.rawnight import make_raw_night

    size = 1024 if ctx.quick else 2048
    work = ctx.folder("calib")
    t0 = time.monotonic()
    night = make_raw_night(work / "night", seed=11, size=size, n_bias=20, n_dark=5, n_flat=5, n_light=1,
                           n_stars=int(1500 * (size / 1024) ** 2), n_cosmics=20)
    ctx.log(f"[bench] calib: raw night of {size}² made in {time.monotonic() - t0:.0f} s")
    prof_path = _profile(work, size)
    settings = settings_from_dict({}, "<bench>", work)
    profile = load_instrument(settings, str(prof_path))
    biases = [p for p, k in zip(night.files, night.kinds) if k == "bias"]
    builds, inner = [], []
    for i in range(max(1, ctx.repeats)):
        lib = work / f"bias-lib-{i}"
        t = time.monotonic()
        p = subprocess.run([ctx.python, "-m", "stdd", "calib", "build", *map(str, biases), "--out", str(lib),
                            "--profile", str(prof_path), "--json"], capture_output=True, text=True, cwd=work,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
        builds.append(round(time.monotonic() - t, 2))
        if p.returncode != 0:
            return {"calib_build_20_s": Value.missing(f"stdd calib build failed: {p.stderr[-500:]}"),
                    "calib_stage_2k_s": Value.missing("no masters")}
        inner.append(json.loads(p.stdout)["seconds"])
    # the full library for the stage: the biases above, then darks and flats
    lib = work / "bias-lib-0"
    rest = [p for p, k in zip(night.files, night.kinds) if k in ("dark", "flat")]
    subprocess.run([ctx.python, "-m", "stdd", "calib", "build", *map(str, rest), "--out", str(lib), "--profile",
                    str(prof_path)], capture_output=True, text=True, cwd=work, check=True,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    with_cal = StageSettings(instrument=profile, calibration=settings.calibration.model_copy(update={"library": lib}))
    without = StageSettings(instrument=profile)
    stage, insp_cal, insp_raw = [], [], []
    for i in range(max(1, ctx.repeats) + 1):
        f = prepare_folder(night.lights[0], work / f"frame-{i}").parent
        r = run_stage("calibrate", f, with_cal)
        if r.state != "done":
            return {"calib_build_20_s": Value(statistics.median(builds), runs=builds),
                    "calib_stage_2k_s": Value.missing(f"the calibrate stage failed: {r.error}")}
        r2 = run_stage("inspect", f, with_cal)
        g = prepare_folder(night.lights[0], work / f"raw-{i}").parent
        r3 = run_stage("inspect", g, without)
        if i:  # the first call pays the imports
            stage.append(r.seconds)
            insp_cal.append(r2.seconds)
            insp_raw.append(r3.seconds)
    return {
        "calib_build_20_s": Value(statistics.median(builds), runs=builds,
                                  note=f"{size}² frames; the build itself (no process start) "
                                       f"{statistics.median(inner):.1f} s",
                                  context={"size": size, "build_seconds": inner}),
        "calib_stage_2k_s": Value(statistics.median(stage), runs=stage,
                                  note=f"{size}² frame; inspect {statistics.median(insp_cal):.2f} s on the "
                                       f"calibrated frame, {statistics.median(insp_raw):.2f} s on the raw one",
                                  context={"size": size, "inspect_calibrated_s": insp_cal,
                                           "inspect_raw_s": insp_raw}),
    }

"""Test-only stages for the pool and daemon tests (set through `pool.stage_functions`).

Real stage functions — `run(folder, StageSettings) -> StageResult` — whose behaviour is read
from the frame's own FITS header, so one test can mix frames that pass, fail, sleep, hang in a
child program, or crash their process:

  T_SLEEP  seconds to sleep (in Python)          T_EXEC  a program (on PATH) to run, with T_ARGS
  T_FAIL   a StageError message                  T_CRASH a signal name to kill itself with
  T_CRASHN crash only while this file under the cache folder counts fewer attempts than this
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from stdd.stages.base import StageError, StageResult


def _header(folder: Path):
    from astropy.io import fits

    original = next(Path(folder).glob("original.*"))
    return fits.getheader(original)


def behave(folder: Path, settings) -> StageResult:
    folder = Path(folder)
    h = _header(folder)
    if h.get("T_CRASHN"):
        marker = Path(settings.cache_dir) / f"crash-{h['T_ID']}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < int(h["T_CRASHN"]):
            time.sleep(float(h.get("T_SLEEP", 0)))
            os.kill(os.getpid(), getattr(signal, h.get("T_CRASH", "SIGKILL")))
    elif h.get("T_CRASH"):
        os.kill(os.getpid(), getattr(signal, h["T_CRASH"]))
    if h.get("T_SLEEP"):
        time.sleep(float(h["T_SLEEP"]))
    if h.get("T_EXEC"):
        subprocess.run([h["T_EXEC"], *shlex.split(h.get("T_ARGS", ""))], check=True)
    if h.get("T_FAIL"):
        raise StageError(h["T_FAIL"])
    (folder / "behave.txt").write_text(f"{h.get('T_ID', '')}\n")
    return StageResult(stage="inspect", summary={"zp": 20.5, "fwhm_arcsec": 2.0, "mag_limit": 19.0,
                                                 "filter": "r", "test_id": h.get("T_ID")},
                       products=["behave.txt"])


def quick(folder: Path, settings) -> StageResult:
    """A second stage: proves the chain goes on and stage runs are recorded in order."""
    (Path(folder) / "quick.txt").write_text("ok\n")
    return StageResult(stage="photometry", summary={"n_stars_calib": 3}, products=["quick.txt"])


def write_frame(path: Path, ident, size: int = 8, **cards) -> Path:
    """A small real FITS file whose header carries the test behaviour (see the module doc)."""
    import numpy as np
    from astropy.io import fits

    h = fits.Header()
    h["T_ID"] = str(ident)
    for k, v in cards.items():
        h[k] = v
    data = (np.arange(size * size, dtype="f4").reshape(size, size) + hash(str(ident)) % 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data, h).writeto(path, overwrite=True)
    return path


def frame_bytes(ident, size: int = 8, **cards) -> bytes:
    import io

    import numpy as np
    from astropy.io import fits

    h = fits.Header()
    h["T_ID"] = str(ident)
    for k, v in cards.items():
        h[k] = v
    buf = io.BytesIO()
    fits.PrimaryHDU(np.arange(size * size, dtype="f4").reshape(size, size), h).writeto(buf)
    return buf.getvalue()


def _name_the_thread(folder: Path) -> tuple[list[str], list[str]]:
    import threading

    (Path(folder) / "output_thread.txt").write_text(threading.current_thread().name + "\n")
    return ["output_thread.txt"], []


def output_probe(folder: Path, settings) -> StageResult:
    """A stage that leaves output work (as photometry leaves its plots): the thread that did it
    is written to output_thread.txt, so a test sees the frame's thread budget at work."""
    from stdd.stages import background
    from stdd.stages.products import StageRun

    with StageRun(Path(folder), "photometry", settings) as run:
        background.submit(run, "thread probe", _name_the_thread, run.folder)
        return run.result({"n_stars_calib": 3})

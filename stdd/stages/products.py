"""What a stage owns in a frame folder, how it writes it, and the bookkeeping of one stage run.

Design note: product ownership is data (`OWNED`): before a stage runs it removes its own products
and those of every later stage (and their logs), so a folder never mixes results of two runs. All
files are written under a temporary name in the same folder and renamed into place, so a reader
(the publisher, a person, a crashed-and-restarted worker) never sees half a file. A `StageRun`
carries the log (`<stage>.log`), the stage's scratch folder (`tmp/<stage>`, passed to STDPipe as
`_tmpdir`), the notes and the list of products to publish.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .base import StageResult, StageSettings

STAGES = ("calibrate", "inspect", "photometry", "transients", "subtraction")

#: files (globs, relative to the frame folder) each stage owns
OWNED: dict[str, tuple[str, ...]] = {
    "calibrate": ("calibrated.fits", "calibrated_err.fits", "calibrated_mask.fits", "calibrate.json"),
    "inspect": ("image.fits", "mask.fits", "inspect.json", "image_target.fits", "plots/inspect_*",
                "background.fits", "background_rms.fits"),
    "photometry": ("objects.fits", "objects.parquet", "segmentation.fits", "color_diagnostics.json", "catalog.fits",
                   "image.wcs",
                   "zeropoint.json", "photometry.json", "targets.ecsv", "target.vot", "objects.reg",
                   "plots/photometry_*", "astrometry_index/*"),
    "transients": ("candidates_simple.ecsv", "candidates_simple.reg", "transients.json", "cutouts/simple_*",
                   "plots/transients_*"),
    "subtraction": ("template.fits", "template_mask.fits", "diff.fits", "diff_err.fits", "sub/*",
                    "candidates_sub.ecsv", "candidates_sub.reg", "targets_sub.ecsv", "sub_target.vot", "subtraction.json",
                    "cutouts/sub_*", "plots/subtraction_*"),
}

#: result.json keys each stage sets (a re-run of an earlier stage resets the later ones to null)
KEYS: dict[str, tuple[str, ...]] = {
    "calibrate": ("calibration", "image_type"),
    "inspect": ("filter", "filter_source", "exptime", "time_start", "time_mid", "time_source", "gain",
                "gain_source", "saturation", "saturation_source", "width", "height", "ra", "dec",
                "radius_deg", "footprint", "pixscale_arcsec", "wcs_initial", "masked_fraction",
                "n_cosmics_pixels", "instrument", "instrument_profile", "instrument_profile_source",
                "catalog_suggestion", "template_suggestion", "target_outcomes"),
    "photometry": ("fwhm_pixels", "fwhm_arcsec", "zp", "zp_err", "zp_scatter", "color_term", "color_term_err",
                   "color", "catalog_band", "catalog", "mag_limit", "mag_limit_sn", "n_objects",
                   "n_stars_calib", "wcs_rms_arcsec", "wcs_method", "wcs_n_matches", "objects_table",
                   "zeropoint_model", "targets", "aperture_pixels"),
    "transients": ("candidates_simple", "n_candidates_simple", "candidates_simple_table"),
    "subtraction": ("candidates_sub", "n_candidates_sub", "candidates_sub_table", "template", "sub_method",
                    "sub_tiles", "targets_sub", "diff_noise_ratio"),
}


def later_keys(stage: str) -> dict[str, None]:
    """result.json keys of the stages after `stage`, set to null (their products were just removed)."""
    out: dict[str, None] = {}
    for s in STAGES[STAGES.index(stage) + 1:]:
        out.update({k: None for k in KEYS[s]})
    return out


def clear_products(folder: Path, stage: str) -> None:
    """Remove the products (and logs) of `stage` and every later stage."""
    folder = Path(folder)
    for s in STAGES[STAGES.index(stage):]:
        for pattern in OWNED[s]:
            for p in folder.glob(pattern):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if s != stage:
            (folder / f"{s}.log").unlink(missing_ok=True)
        shutil.rmtree(folder / "tmp" / s, ignore_errors=True)
    from . import background

    if background.busy():  # an earlier stage's output may be about to land in one of them
        return
    for sub in ("plots", "cutouts", "sub"):
        d = folder / sub
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# ---------------------------------------------------------------- atomic writers

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it into place when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_fits(path: Path, data, header=None) -> None:
    from astropy.io import fits

    with atomic_path(path) as tmp:
        fits.PrimaryHDU(data=data, header=header).writeto(tmp, overwrite=True, output_verify="silentfix")


def write_table(path: Path, table) -> None:
    path = Path(path)
    fmt = {".ecsv": "ascii.ecsv", ".vot": "votable", ".parquet": "parquet"}.get(path.suffix, "fits")
    with atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)


def write_json(path: Path, data: Any) -> None:
    from ..pipeline import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(path), data)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def new_figure(figsize: tuple[float, float]):
    """A bare matplotlib Figure on the Agg canvas: no pyplot figure manager, nothing global to
    close, cheaper than plt.figure (a plot a frame makes costs ~0.1 s; this saves ~0.02 s)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, dpi: int = 80) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def ds9_regions(rows: Iterable[dict], color: str = "green", radius_arcsec: float = 5.0,
                label: str | None = "name") -> str:
    """DS9 region file text with a circle (fk5) per row with `ra`, `dec` (and optional label)."""
    lines = ["# Region file format: DS9 version 4.1", f"global color={color} width=1 font=\"helvetica 9 normal\"",
             "fk5"]
    for r in rows:
        text = f" # text={{{r[label]}}}" if label and r.get(label) not in (None, "") else ""
        lines.append(f"circle({float(r['ra']):.7f},{float(r['dec']):.7f},{radius_arcsec:.2f}\"){text}")
    return "\n".join(lines) + "\n"


def finite_or_none(v):
    """A JSON-friendly float (None for NaN, inf, masked)."""
    try:
        if v is None or np.ma.is_masked(v):
            return None
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


# ---------------------------------------------------------------- one stage run

class StageRun:
    """Bookkeeping of one stage in one folder: log, scratch dir, notes, products, environment."""

    def __init__(self, folder: Path, stage: str, settings: StageSettings):
        self.folder = Path(folder)
        self.stage = stage
        self.settings = settings
        self.notes: list[str] = []
        self.products: list[str] = []
        self.t0 = time.monotonic()
        self._log = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "StageRun":
        if not self.folder.is_dir():
            from .base import StageError

            raise StageError(f"{self.stage}: the frame folder {self.folder} does not exist")
        clear_products(self.folder, self.stage)
        self._log = open(self.folder / f"{self.stage}.log", "w", buffering=1)
        self.tmpdir = self.folder / "tmp" / self.stage
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(_environment(self.settings.offline, self.folder))
        self._stack.enter_context(_output_to(self._log))
        self.log(f"{self.stage} started in {self.folder}" + (" (offline)" if self.settings.offline else ""))
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc is not None:
                if exc_type.__name__ == "StageError":
                    self.log(f"FAILED: {exc}")
                else:
                    self.log("FAILED with an unexpected error:\n" + "".join(
                        traceback.format_exception(exc_type, exc, tb)))
            else:
                self.log(f"{self.stage} done in {time.monotonic() - self.t0:.1f} s")
        finally:
            self._stack.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            try:
                (self.folder / "tmp").rmdir()
            except OSError:
                pass
            if self._log:
                self._log.close()
        return False

    def log(self, *args, stamp: str | None = None) -> None:
        """print-like; also usable as STDPipe's `verbose=` callable. `stamp`: the time of a line
        written down earlier (a subtraction tile's)."""
        text = " ".join(str(a) for a in args)
        stamp = stamp or time.strftime("%H:%M:%S")
        if self._log and not self._log.closed:
            for line in text.splitlines() or [""]:
                self._log.write(f"{stamp} {line}\n")

    def note(self, text: str, stamp: str | None = None) -> None:
        self.notes.append(text)
        self.log(f"NOTE: {text}", stamp=stamp)

    def product(self, rel: str | Path) -> Path:
        rel = str(rel)
        if rel not in self.products:
            self.products.append(rel)
        return self.folder / rel

    def result(self, summary: dict) -> StageResult:
        full = dict(later_keys(self.stage))
        full.update(summary)
        return StageResult(stage=self.stage, state="done", summary=full, products=self.products,
                           notes=self.notes, seconds=round(time.monotonic() - self.t0, 3))

    def skipped(self, reason: str, summary: dict | None = None) -> StageResult:
        self.note(reason)
        full = dict(later_keys(self.stage))
        full.update(summary or {})
        return StageResult(stage=self.stage, state="skipped", summary=full, products=self.products,
                           notes=self.notes, error=None, seconds=round(time.monotonic() - self.t0, 3))


def null_keys(stage: str) -> dict[str, None]:
    """result.json keys of `stage` and every later stage, all null."""
    out: dict[str, None] = {}
    for s in STAGES[STAGES.index(stage):]:
        out.update({k: None for k in KEYS[s]})
    return out


def guarded(stage: str, folder: Path, settings: StageSettings, body) -> StageResult:
    """Run `body(run, settings)` in a StageRun; a failure becomes a failed StageResult whose summary sets
    this and later stages' result.json keys to null (so a failed frame's result.json has every key)."""
    from .base import StageError

    t0 = time.monotonic()
    notes: list[str] = []
    try:
        with StageRun(Path(folder), stage, settings) as run:
            notes = run.notes
            return body(run, settings)
    except StageError as e:
        error = str(e)
    except MemoryError:
        error = f"{stage}: out of memory"
    except Exception as e:  # a bug or an unexpected library error: the trace is in <stage>.log
        error = f"{stage}: {type(e).__name__}: {e}"
    logs = [f"{stage}.log"] if (Path(folder) / f"{stage}.log").is_file() else []
    return StageResult(stage=stage, state="failed", error=error, summary=null_keys(stage), notes=notes,
                       products=logs, seconds=round(time.monotonic() - t0, 3))


@contextlib.contextmanager
def _output_to(logfile):
    """Send this process's stdout/stderr (and so the output of SExtractor, SCAMP, ... and of
    STDPipe's prints) to the stage log while the stage runs; a CLI's --json output stays clean."""
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        # file descriptors belong to the whole process: only a process running one stage at a time
        # (a pool worker, `stdd process`) may point them at a stage log
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:
        yield
        return
    logfile.flush()
    os.dup2(logfile.fileno(), 1)
    os.dup2(logfile.fileno(), 2)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def _environment(offline: bool, folder: Path):
    """Headless plotting, no IERS downloads, and no network at all for astropy when offline."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    if not os.environ.get("MPLCONFIGDIR"):
        d = Path(tempfile.gettempdir()) / f"stdd-mpl-{os.getuid()}"
        d.mkdir(exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(d)
    import matplotlib

    matplotlib.use("Agg", force=True)
    from astropy.utils import iers
    from astropy.utils.data import conf as data_conf

    with contextlib.ExitStack() as stack:
        if offline:
            stack.enter_context(iers.conf.set_temp("auto_download", False))
            stack.enter_context(data_conf.set_temp("allow_internet", False))
        yield

"""The pipeline, declared as data, and the one function that runs it on a frame folder.

Design note: as in LCO's BANZAI, the order of stages is a list, not code. Each entry names the
stage, the function that runs it (imported lazily, so the daemon never imports astronomy
code) and the products it owns, so a stage can clear its own and later stages' products
before it runs. `run_chain` is what `stdd process`, a pool worker and a Dask worker all call.
"""
from __future__ import annotations


import importlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .faults import fault_point
from .result_versions import keep_version
from .stages import background, threads as frame_threads
from .stages.base import StageError, StageResult, StageSettings

RESULT_FILE = "result.json"
ORIGINAL_PREFIX = "original"


@dataclass(frozen=True)
class StageSpec:
    name: str
    function: str  # "module:callable"
    description: str

    def load(self) -> Callable[[Path, StageSettings], StageResult]:
        module, func = self.function.split(":")
        return getattr(importlib.import_module(module), func)


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("calibrate", "stdd.stages.calibrate:run",
              "overscan, trim, bias, scaled dark, flat and bad pixels from the calibration library"),
    StageSpec("inspect", "stdd.stages.inspect:run",
              "load, fix header, gain/saturation/filter, mask, WCS check, footprint"),
    StageSpec("photometry", "stdd.stages.photometry:run",
              "detection, astrometric refinement, zero point with colour term, limit, targets"),
    StageSpec("transients", "stdd.stages.transients:run",
              "simple transients: objects not in the catalogues"),
    StageSpec("subtraction", "stdd.stages.subtraction:run",
              "template, image subtraction, candidates"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in PIPELINE)


def stage_spec(name: str) -> StageSpec:
    for spec in PIPELINE:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


#: stages that run only when the settings turn them on (`with_optional_steps`), not by default
OPTIONAL_STAGES = ("calibrate",)


def select_steps(steps: Iterable[str] | None) -> list[str]:
    """Validate and order a requested set of steps (pipeline order wins). No steps: every stage
    but the optional ones."""
    if not steps:
        return [n for n in STAGE_NAMES if n not in OPTIONAL_STAGES]
    wanted = set(steps)
    for name in wanted:
        stage_spec(name)
    return [n for n in STAGE_NAMES if n in wanted]


def with_optional_steps(names: list[str], settings: StageSettings) -> list[str]:
    """`names` with calibrate in front when a calibration library is configured and the chain
    starts at inspect (a retry from a later stage keeps the calibrated frame it has)."""
    if settings.calibration.library is not None and "inspect" in names and "calibrate" not in names:
        return select_steps(["calibrate", *names])
    return names


def prepare_folder(source: Path, folder: Path) -> Path:
    """Copy a source file into a clean frame folder as `original.<ext>`; never touch the source."""
    source = Path(source)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    suffix = "".join(source.suffixes[-2:]) if source.suffix.lower() in (".gz", ".fz") else source.suffix
    target = folder / f"{ORIGINAL_PREFIX}{suffix.lower() or '.fits'}"
    shutil.copyfile(source, target)
    return target


StageCallback = Callable[[str, str, StageResult | None], None]


def run_chain(folder: Path, settings: StageSettings, steps: Iterable[str] | None = None,
              on_stage: StageCallback | None = None, functions: dict[str, str] | None = None,
              threads: int = 0) -> dict:
    """Run the selected stages in order in `folder`; a failed stage stops the chain.

    `on_stage(name, "start"|"end", result)` is called around each stage (the pool uses it to
    apply per-stage timeouts and to record stage runs). Returns the merged result (as written
    to result.json in the folder). `functions` (stage name -> "module:callable") replaces a
    stage's function: tests and experiments (settings `pool.stage_functions`). `threads` is how
    many threads the frame may keep busy (0 = not limited, `stages.threads`): with 1, output work
    (plots) is done in line instead of on a helper thread (`stages.background`) and subtraction's
    tiles run one at a time.
    """
    from .stages.profiles import settle

    folder = Path(folder)
    names = with_optional_steps(select_steps(steps), settings)
    settings = settle(settings, folder)  # the frame's instrument profile, chosen here by its header
    previous = _read_json(folder / RESULT_FILE) or {}
    results: dict[str, StageResult] = {}
    # stages may leave output (plots) drawing while the next ones run, when the frame has a spare
    # thread; OpenMP code (astroscrappy's cosmic-ray filters) and subtraction's tiles run on the
    # frame's threads
    with background.overlapping(threads != 1), frame_threads.budget(threads):
        for name in names:
            if on_stage:
                on_stage(name, "start", None)
            res = run_stage(name, folder, settings, (functions or {}).get(name))
            results[name] = res
            if on_stage:
                on_stage(name, "end", res)
            if res.state == "failed":
                break
        for done in background.wait():
            res = results.get(done.stage)
            if res is None:
                continue
            res.products.extend(rel for rel in done.written if rel not in res.products)
            res.notes.extend(done.problems)
            background.append_log(folder, done.stage, done.problems)
    merged = merge_results(previous, names, results)
    record_settings(merged, previous, settings, names)
    write_json_atomic(folder / RESULT_FILE, merged)
    return merged


def effective_settings(settings: StageSettings) -> dict:
    """What a result records of the settings it was made with: enough to make it again (the
    pipeline, catalogue, template and calibration sections after the instrument profile and the
    frame's own options, the profile's name, the regions searched, and those options as given)."""
    return {
        "pipeline": settings.pipeline.model_dump(mode="json"),
        "catalog": settings.catalog.model_dump(mode="json"),
        "template": settings.template.model_dump(mode="json"),
        "calibration": settings.calibration.model_dump(mode="json"),
        "offline": settings.offline,
        "instrument_profile": settings.instrument.name if settings.instrument else None,
        "instrument_profile_source": settings.instrument_source,
        "regions": [r.model_dump(mode="json") for r in settings.regions],
        "frame_options": dict(settings.frame_options),
    }


def record_settings(merged: dict, previous: dict, settings: StageSettings, ran: list[str]) -> None:
    """Put `settings` (this run's) into a result, with `kept_stages`: the earlier stages whose
    results a rerun kept (not in `ran`), and `kept_settings`: the settings those stages ran with."""
    kept = [n for n in (merged.get("stages") or {}) if n not in ran]
    merged["settings"] = effective_settings(settings)
    merged["kept_stages"] = kept
    merged.pop("kept_settings", None)
    if kept:
        earlier = previous.get("kept_settings") if set(kept) <= set(previous.get("kept_stages") or []) else None
        merged["kept_settings"] = earlier or previous.get("settings")


def run_stage(name: str, folder: Path, settings: StageSettings, function: str | None = None) -> StageResult:
    """Run one stage, turning any exception into a failed result with a specific reason."""
    spec = stage_spec(name)
    if function:
        spec = StageSpec(name, function, spec.description)
    t0 = time.monotonic()
    try:
        res = spec.load()(folder, settings)
    except StageError as e:
        res = StageResult(stage=name, state="failed", error=str(e))
    except MemoryError:
        res = StageResult(stage=name, state="failed", error=f"{name}: out of memory")
    except Exception as e:  # a bug or an unexpected library error: keep the reason and the trace
        _append_log(folder, name, traceback.format_exc())
        res = StageResult(stage=name, state="failed", error=f"{name}: {type(e).__name__}: {e}")
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def merge_results(previous: dict, names: list[str], results: dict[str, StageResult]) -> dict:
    """Build result.json: earlier stages' values kept, re-run and later stages replaced."""
    first = STAGE_NAMES.index(names[0]) if names else len(STAGE_NAMES)
    stages = {k: v for k, v in (previous.get("stages") or {}).items()
              if k in STAGE_NAMES and STAGE_NAMES.index(k) < first}
    merged = {k: v for k, v in previous.items() if k not in ("stages", "status", "error", "notes", "products")}
    notes = [n for n in previous.get("notes", []) if n.split(":", 1)[0] in stages]
    products = list(previous.get("products", []))
    for name in names:
        if name not in results:
            stages[name] = {"state": "not run", "seconds": None, "error": None}
            continue
        r = results[name]
        stages[name] = {"state": r.state, "seconds": r.seconds, "error": r.error}
        merged.update(r.summary)
        notes.extend(f"{name}: {n}" for n in r.notes)
        products.extend(p for p in r.products if p not in products)
    failed = [n for n in names if n in results and results[n].state == "failed"]
    merged["status"] = "failed" if failed else "done"
    merged["error"] = results[failed[0]].error if failed else None
    merged["stages"] = stages
    merged["notes"] = notes
    merged["products"] = products
    return merged


#: publish's temporary folders beside a result folder: `.stdd-tmp-<name>-<pid>-<token>` (being
#: written) and `.stdd-old-<name>-<pid>-<token>` (the previous result, between the two renames).
#: Only folders with these names are stdd's to remove or restore (stdd.daemon.jobs).
PUBLISH_TMP = ".stdd-tmp-"
PUBLISH_OLD = ".stdd-old-"
_PUBLISH_NAME = re.compile(r"^\.stdd-(tmp|old)-(.+)-(\d+)-([0-9a-f]{8})$")
#: the names earlier versions used: `.<id>-<stem>.old-<pid>` and mkdtemp's `.<id>-<stem>.<8 chars>`
_LEGACY_OLD = re.compile(r"^\.(\d+-.+)\.old-(\d+)$")
_LEGACY_TMP = re.compile(r"^\.(\d+-.+)\.([a-z0-9_]{8})$")


def publish_temp_name(kind: str, result_name: str) -> str:
    """The name of one of publish's temporary folders (`kind` "tmp" or "old") for `result_name`."""
    return f".stdd-{kind}-{result_name}-{os.getpid()}-{secrets.token_hex(4)}"


def parse_publish_temp(name: str) -> tuple[str, str] | None:
    """(kind, result folder name) when `name` is one of publish's temporary folders — kind "tmp"
    (incomplete, never a result) or "old" (a complete previous result) — else None. The names of
    earlier versions are recognised where they cannot be a user's folder: a frame's result name
    (`<id>-<stem>`) inside the exact pattern."""
    m = _PUBLISH_NAME.match(name)
    if m:
        return m.group(1), m.group(2)
    m = _LEGACY_OLD.match(name)
    if m:
        return "old", m.group(1)
    m = _LEGACY_TMP.match(name)
    if m:
        return "tmp", m.group(1)
    return None


def publish(folder: Path | None, result_dir: Path, extra: dict | None = None) -> Path:
    """Copy result.json and the listed products to `result_dir`, atomically: written into a
    temporary folder beside it, then renamed into place. An existing result is first renamed
    aside (`.stdd-old-…`) and removed after the new one is in place, so a crash between the two
    renames leaves the previous complete result to restore (stdd.daemon.jobs.restore_publish).
    `folder` None: no work folder, result.json is `extra` alone (a frame that ran no chain)."""
    result_dir = Path(result_dir)
    result = (_read_json(Path(folder) / RESULT_FILE) if folder is not None else None) \
        or {"status": "failed", "error": "no result was written"}
    if extra:
        result.update(extra)
    parent, name = result_dir.parent, result_dir.name
    parent.mkdir(parents=True, exist_ok=True)
    # the result being replaced is kept as a version (stdd.result_versions), never overwritten
    kept_run = keep_version(result_dir) if result_dir.exists() else None
    result["run"] = kept_run + 1 if kept_run else 1
    result["published_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = parent / publish_temp_name("tmp", name)
    tmp.mkdir()
    try:
        if folder is not None:
            folder = Path(folder)
            for rel in result.get("products", []):
                src = folder / rel
                if src.is_file():
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            for log in folder.glob("*.log"):
                shutil.copy2(log, tmp / log.name)
        write_json_atomic(tmp / RESULT_FILE, result)
        fault_point("publish.before_renames")
        if result_dir.exists():
            old = parent / publish_temp_name("old", name)
            os.replace(result_dir, old)
            fault_point("publish.between_renames")
            os.replace(tmp, result_dir)
            fault_point("publish.after_renames")
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, result_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result_dir / RESULT_FILE


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(data), fh, indent=2, default=_json_default, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _finite(o):
    """JSON has no NaN or infinity: an unknown number is written as null."""
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0 and not isinstance(o, (str, bytes)):
        return _finite(o.item())
    return o


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _append_log(folder: Path, stage: str, text: str) -> None:
    try:
        with open(Path(folder) / f"{stage}.log", "a") as fh:
            fh.write(text)
    except OSError:
        pass

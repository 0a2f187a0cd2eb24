"""Earlier versions of a frame's result: a result is never silently overwritten.

When a result folder is published again (a rerun from a stage with changed settings, a retry),
the folder being replaced is first kept as a version: `<result>.versions/run-<N>/` beside it,
where N is the `run` number in its result.json (1 for the first). The copy is made of hard links
(published files are never changed in place, only replaced with the whole folder), so a version
costs directory entries, not bytes, on the same filesystem; elsewhere the files are copied.

Crash safety: the version is assembled under a temporary name and renamed into place, and it is
keyed by its run number, so a publish interrupted after keeping the version keeps it once; a
stale temporary folder is removed the next time a version is kept there.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

RESULT_FILE = "result.json"
VERSIONS_SUFFIX = ".versions"
_TMP_PREFIX = ".stdd-tmp-"


def versions_dir(result_dir: Path) -> Path:
    result_dir = Path(result_dir)
    return result_dir.parent / f"{result_dir.name}{VERSIONS_SUFFIX}"


def run_number(result: dict | None) -> int:
    """The run number of a result (1 for results written before runs were numbered)."""
    try:
        return max(1, int((result or {}).get("run") or 1))
    except (TypeError, ValueError):
        return 1


def keep_version(result_dir: Path) -> int | None:
    """Keep the current result in `result_dir` as a version. Returns its run number (the next
    result is run + 1), or None when there is no complete result to keep."""
    result_dir = Path(result_dir)
    try:
        current = json.loads((result_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    run = run_number(current)
    root = versions_dir(result_dir)
    dest = root / f"run-{run}"
    if dest.is_dir():
        return run
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{_TMP_PREFIX}run-{run}-{os.getpid()}"
    try:
        shutil.copytree(result_dir, tmp, copy_function=_link_or_copy)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run


def list_versions(result_dir: Path) -> list[dict]:
    """The frame's history: every kept version, oldest first, then the current result, each with
    its run number, status, error, which stages ran and which were kept, the frame's own settings,
    and its folder."""
    result_dir = Path(result_dir)
    out = []
    root = versions_dir(result_dir)
    folders = []
    if root.is_dir():
        folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("run-")),
                         key=lambda p: _int(p.name[4:]))
    for folder, current in [(f, False) for f in folders] + [(result_dir, True)]:
        try:
            res = json.loads((folder / RESULT_FILE).read_text())
        except (OSError, ValueError):
            continue
        stages = res.get("stages") or {}
        kept = list(res.get("kept_stages") or [])
        out.append({
            "run": run_number(res), "current": current, "path": str(folder), "status": res.get("status"),
            "error": res.get("error"), "published_at": res.get("published_at"),
            "stages_run": [s for s in stages if s not in kept], "kept_stages": kept,
            "frame_options": ((res.get("settings") or {}).get("frame_options") or {}),
        })
    return out


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst

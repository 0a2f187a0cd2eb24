"""The calibration library: a folder of masters with `index.json`, and the nearest valid master.

Each index entry describes one master file: kind (bias, dark, flat, bpm), what it matches
(instrument, raw shape, binning, readout mode, temperature band, band for flats, exposure time
for darks), its time (median start of its frames, MJD) and validity window (`valid_from`,
`valid_until`: its frames' first and last times widened by the max age in force when it was
built), its number of frames, quality figures and warnings, and the files it was made from.

A frame takes, for each kind, the master that matches it and is nearest in time, within the
frame's `max_age_days` for that kind. Writers (a build) hold an exclusive lock on `.lock` in the
folder and replace `index.json` atomically; readers (the calibrate stage, in many processes at
once) read it without a lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

INDEX = "index.json"
LOCK = ".lock"
INDEX_VERSION = 1


class Library:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    # -- reading ------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.folder / INDEX

    def entries(self) -> list[dict]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ValueError(f"calibration library {self.index_path} is not valid JSON: {e}") from None
        return list(data.get("masters", []))

    def path_of(self, entry: dict) -> Path:
        return self.folder / entry["file"]

    # -- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self):
        """An exclusive lock on the library (one build at a time, across processes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add(self, entry: dict) -> None:
        """Record a master (call while holding `locked()`); an entry for the same file is replaced."""
        entries = [e for e in self.entries() if e.get("file") != entry["file"]]
        entries.append(entry)
        entries.sort(key=lambda e: (e.get("kind", ""), e.get("mjd") or 0.0, e.get("file", "")))
        self._write(entries)

    def _write(self, entries: list[dict]) -> None:
        data = {"version": INDEX_VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "masters": entries}
        fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, default=str)
                fh.write("\n")
            os.replace(tmp, self.index_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- matching -----------------------------------------------------------------------
    def nearest(self, kind: str, info, max_age_days: float, *, temperature_band: float,
                dark_scaling: bool = True) -> tuple[dict | None, str | None]:
        """(entry, None) for the matching master of `kind` nearest in time to the frame `info`
        (a FrameInfo), or (None, the reason in words: "no r flat within 30 days ...")."""
        matching = [e for e in self.entries() if e.get("kind") == kind
                    and mismatch(e, info, temperature_band, dark_scaling) is None]
        what = describe_need(kind, info, dark_scaling)
        if not matching:
            return None, f"no {what} in the library"
        if info.mjd is None:
            best = max(matching, key=lambda e: e.get("mjd") or 0.0)
            return best, None
        near = sorted(matching, key=lambda e: (abs((e.get("mjd") or 0.0) - info.mjd), e.get("file", "")))
        d0 = abs((near[0].get("mjd") or 0.0) - info.mjd)
        if d0 > max_age_days:
            return None, (f"no {what} within {max_age_days:g} days (the nearest is {d0:.1f} days away, "
                          f"{near[0]['file']})")
        if kind == "dark" and info.exptime:
            # among the masters of the same night, the exposure time nearest the frame's
            same_night = [e for e in near if abs(abs((e.get("mjd") or 0.0) - info.mjd) - d0) < 0.5]
            near = sorted(same_night, key=lambda e: (abs((e.get("exptime") or 0.0) - info.exptime),
                                                     abs((e.get("mjd") or 0.0) - info.mjd)))
        return near[0], None


def describe_need(kind: str, info, dark_scaling: bool = True) -> str:
    """"r flat", "bias", "dark of 120 s" — what a frame needs, in words."""
    if kind == "flat":
        from ..stages.filters import BANDS

        if not info.band:
            return "flat (the frame has no filter)"
        return f"{info.band} flat" if info.band in BANDS else f"flat of filter {info.band!r}"
    if kind == "dark" and not dark_scaling and info.exptime is not None:
        return f"dark of {info.exptime:g} s"
    if kind == "bpm":
        return "bad-pixel mask"
    return kind


def mismatch(entry: dict, info, temperature_band: float, dark_scaling: bool = True) -> str | None:
    """Why the master `entry` cannot calibrate the frame `info` (None when it can)."""
    if entry.get("instrument", "") != info.instrument:
        return f"instrument {entry.get('instrument')!r}, not {info.instrument!r}"
    if list(entry.get("raw_shape") or []) != list(info.shape):
        return f"raw shape {entry.get('raw_shape')}, not {list(info.shape)}"
    if entry.get("binning") != info.binning:
        return f"binning {entry.get('binning')}, not {info.binning}"
    if entry.get("kind") != "bpm" and entry.get("readout") != info.readout:
        return f"readout {entry.get('readout')!r}, not {info.readout!r}"
    t_master, t_frame = entry.get("temperature"), info.temperature
    if entry.get("kind") in ("bias", "dark") and t_master is not None and t_frame is not None \
            and abs(t_master - t_frame) > temperature_band:
        return f"temperature {t_master:g}, not {t_frame:g} (band {temperature_band:g})"
    if entry.get("kind") == "flat" and entry.get("band") != info.band:
        return f"band {entry.get('band')}, not {info.band}"
    if entry.get("kind") == "dark" and not dark_scaling:
        if info.exptime is None or abs((entry.get("exptime") or 0.0) - info.exptime) > 0.01 * max(info.exptime, 1):
            return f"exposure {entry.get('exptime')} s, not {info.exptime} s (the profile does not scale darks)"
    return None

"""Choosing the instrument profile of each frame, the same way in the daemon and in `stdd process`.

Precedence (`choose`), first that applies:

1. "folder": the profile `watch.profiles` names for the folder the file came from (the deepest
   such folder containing it); `stdd process --profile NAME` is the same kind of fixed choice
   ("explicit");
2. "header match": the first profile (file-name order in `instruments_dir`) whose `match` table
   fits the frame's header — every entry, keyword -> shell-style glob, case-insensitive, e.g.
   `match = { INSTRUME = "AspenCG16*" }`;
3. "configured default": `pipeline.instrument`;
4. "none".

Design note: each step runs where its knowledge is. Every profile a config names or may match is
read and validated once per config load (`load_profiles`: daemon start, SIGHUP reload, `stdd
process`), and a config error names its key. Steps 1 and 3 need only the file's path, so the job
builder (the daemon's `_job_for`, `stdd process`) turns them into a `ProfileChoice`
(`ProfileSet.choice_for`), which travels inside the stage settings. Step 2 needs the frame's
header — file I/O with astropy, which never runs on the daemon's event loop — so the choice is
settled in the frame's own process: `run_chain` calls `settle` before the first stage, which
reads the header of `original.*`, applies the chosen profile's `[pipeline]` table (explicit
per-frame overrides still win) and hands every stage the same settled settings. A retry from a
later stage settles again on the same bytes, so it gets the same profile. The inspect stage
records the outcome in result.json: `instrument_profile` and `instrument_profile_source`.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..config.load import ConfigError, list_instruments, load_instrument
from ..config.settings import InstrumentProfile
from .base import ProfileChoice, ProfileSource, StageSettings, merge_profile_pipeline


def header_matches(profile: InstrumentProfile, header) -> bool:
    if not profile.match:
        return False
    for key, pattern in profile.match.items():
        if key not in header:
            return False
        if not fnmatch.fnmatch(str(header[key]).strip().lower(), str(pattern).strip().lower()):
            return False
    return True


def choose(choice: ProfileChoice, header) -> tuple[InstrumentProfile | None, ProfileSource]:
    """The profile for a frame and why (the precedence above). `header` may be None (unreadable)."""
    if choice.fixed is not None:
        return choice.fixed, choice.fixed_source or "explicit"
    if header is not None:
        for prof in choice.by_header:
            if header_matches(prof, header):
                return prof, "header match"
    if choice.default is not None:
        return choice.default, "configured default"
    return None, "none"


def settle(settings: StageSettings, folder: Path) -> StageSettings:
    """Settings with the frame's profile chosen and applied (unchanged when already settled).
    Runs in the frame's process: reads the header of the folder's `original.*` only when needed."""
    choice = settings.profile_choice
    if choice is None:
        return settings
    header = None
    if choice.fixed is None and choice.by_header:
        originals = sorted(p for p in Path(folder).glob("original*") if p.is_file())
        header = read_header(originals[0]) if originals else None
    profile, source = choose(choice, header)
    return settings.with_profile(profile, source)


def read_header(path: Path):
    """Header of a frame's first image (for matching), or None when the file is not readable."""
    from .header import FrameError, load_first_image

    try:
        _, header, _ = load_first_image(Path(path), header_only=True)
    except FrameError:
        return None
    return header


# ---------------------------------------------------------------- loading, once per config load

@dataclass(frozen=True)
class ProfileSet:
    """Every profile a config names or may match, loaded and validated."""

    folders: tuple[tuple[Path, InstrumentProfile], ...] = ()  # deepest folder first
    by_header: tuple[InstrumentProfile, ...] = ()
    default: InstrumentProfile | None = None

    def folder_profile(self, path: str | os.PathLike) -> InstrumentProfile | None:
        """The profile named for the deepest `watch.profiles` folder holding `path` (compared as
        written, made absolute: the watcher reports paths under the folders as configured)."""
        p = _norm(path)
        for folder, prof in self.folders:
            if folder in p.parents:
                return prof
        return None

    def choice_for(self, path: str | os.PathLike, explicit: InstrumentProfile | None = None) -> ProfileChoice:
        """What the frame at `path` chooses from: steps 1 and 3 decided here, step 2 left to `settle`."""
        fixed, source = explicit, "explicit"
        if fixed is None:
            fixed, source = self.folder_profile(path), "folder"
        if fixed is not None:
            return ProfileChoice(fixed=fixed, fixed_source=source)
        return ProfileChoice(by_header=list(self.by_header), default=self.default)


def load_profiles(settings) -> ProfileSet:
    """Load and validate the profiles of `watch.profiles`, `pipeline.instrument` and every profile
    with a `match` table in `instruments_dir`. Raises ConfigError listing every problem, each naming
    the config key or the profile file."""
    src = str(settings.source_file or "<config>")
    errors: list[str] = []
    reported: set[Path] = set()  # a broken file named by a key is not reported again as a match candidate

    def named(key: str, name: str) -> InstrumentProfile | None:
        try:
            return load_profile(settings, name, key)
        except ConfigError as e:
            errors.extend(f"{src}: {line}" for line in e.errors)
            reported.add(profile_path(settings, name).resolve())
            return None

    base = settings.source_file.parent if settings.source_file else Path.cwd()
    incoming = [_norm(p) for p in settings.paths.incoming]
    folders = []
    for folder, name in settings.watch.profiles.items():
        key = f'watch.profiles."{folder}"'
        path = _norm(folder if folder.is_absolute() else base / folder)
        if not any(path == inc or inc in path.parents for inc in incoming):
            errors.append(f"{src}: {key}: {path} is not one of paths.incoming "
                          f"({', '.join(map(str, incoming))}) nor a folder inside one")
            continue
        prof = named(key, name)
        if prof is not None:
            folders.append((path, prof))
    default = named("pipeline.instrument", settings.pipeline.instrument) if settings.pipeline.instrument else None
    by_header = []
    for path in list_instruments(settings):
        try:
            prof = _load_checked(settings, path)
        except ConfigError as e:
            if path.resolve() not in reported:
                errors.extend(e.errors)
            continue
        if prof.match:
            by_header.append(prof)
    if errors:
        raise ConfigError(src, errors)
    folders.sort(key=lambda fp: len(fp[0].parts), reverse=True)
    return ProfileSet(folders=tuple(folders), by_header=tuple(by_header), default=default)


def load_profile(settings, name: str, key: str) -> InstrumentProfile:
    """The profile `name` (a name in `instruments_dir` or a .toml path) that the setting `key`
    names; ConfigError naming `key` when there is no such profile or it is invalid."""
    path = profile_path(settings, name)
    if not path.is_file():
        known = ", ".join(p.stem for p in list_instruments(settings)) or "none"
        raise ConfigError(str(path), [f"{key}: no instrument profile {name!r}: {path} does not exist "
                                      f"(profiles in {settings.instruments_dir}: {known})"])
    try:
        return _load_checked(settings, path)
    except ConfigError as e:
        raise ConfigError(e.source, [f"{key} = {name!r}: {line}" for line in e.errors]) from None


def profile_path(settings, name: str) -> Path:
    """`instruments_dir/<name>.toml`, or `name` itself when it is a path to a .toml file."""
    return Path(name) if Path(name).suffix else settings.instruments_dir / f"{name}.toml"


def _load_checked(settings, path: Path) -> InstrumentProfile:
    """A profile whose `[pipeline]` table, applied to the configured pipeline, is valid."""
    prof = load_instrument(settings, str(path))
    try:
        merge_profile_pipeline(settings.pipeline, prof)
    except ValidationError as e:
        raise ConfigError(str(path), [f"{path}: pipeline.{'.'.join(map(str, x['loc'])) or '(table)'}: {x['msg']}"
                                      for x in e.errors()]) from None
    return prof


def _norm(path: str | os.PathLike) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))



def profile_for_file(profiles: ProfileSet, path: str | os.PathLike,
                     explicit: InstrumentProfile | None = None) -> tuple[InstrumentProfile | None, ProfileSource]:
    """A file's profile outside a frame's chain (`stdd calib build`, the daemon's calibration
    job): the same precedence, its header read here when a header match is needed."""
    choice = profiles.choice_for(path, explicit)
    header = read_header(Path(path)) if choice.fixed is None and choice.by_header else None
    return choose(choice, header)

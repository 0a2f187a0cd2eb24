"""Choosing the instrument profile of a frame: by name, or by matching its header.

A profile's `match` table maps header keywords to shell-style globs (case-insensitive), e.g.
`match = { INSTRUME = "AspenCG16*" }`; a profile matches a frame when every entry does. Profiles
without a `match` table are chosen by name only (`--profile`, `pipeline.instrument`).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

from ..config.load import ConfigError, list_instruments, load_instrument
from ..config.settings import InstrumentProfile


def header_matches(profile: InstrumentProfile, header) -> bool:
    if not profile.match:
        return False
    for key, pattern in profile.match.items():
        if key not in header:
            return False
        if not fnmatch.fnmatch(str(header[key]).strip().lower(), str(pattern).strip().lower()):
            return False
    return True


def match_profile(settings, header) -> InstrumentProfile | None:
    """The first profile (in file-name order) under `settings.instruments_dir` matching `header`."""
    for path in list_instruments(settings):
        try:
            prof = load_instrument(settings, str(path))
        except ConfigError:
            continue  # `stdd config check` reports broken profiles
        if header_matches(prof, header):
            return prof
    return None


def read_header(path: Path):
    """Header of a frame's first image (for matching), or None when the file is not readable."""
    from .header import FrameError, load_first_image

    try:
        _, header, _ = load_first_image(Path(path), header_only=True)
    except FrameError:
        return None
    return header

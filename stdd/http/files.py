"""Serving a frame's files, and nothing outside its folder.

Design note: a requested name is checked twice. First as text: it must be a relative path of
plain parts (no empty part, no `.`/`..`, no backslash, no NUL, no leading `/` or `~`), after
aiohttp has percent-decoded it once — so `%2F` and `%2e%2e` arrive as `/` and `..` and are
judged as such, and a second level of encoding (`%252F`) stays a literal `%` in a name that
does not exist. Then as a file: the real path (every symlink resolved) must lie inside the real
path of the frame's folder and be a regular file. A symlink whose target stays inside the folder
is served; one pointing out is refused like `..` (403), before anything about the target is
looked at, so the answer reveals nothing about the rest of the disk. A name that is fine but
names no file is 404.
"""
from __future__ import annotations

import os
from pathlib import Path

MAX_PARTS = 8


class FileRefused(Exception):
    """The name is not a file inside the frame's folder: 403 (outside, unsafe) or 404 (missing)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def check_name(name: str) -> list[str]:
    """The parts of a safe relative name, or FileRefused saying what is wrong with it."""
    if not name:
        raise FileRefused("empty file name", 404)
    if "\x00" in name or "\\" in name:
        raise FileRefused("file name has a NUL or backslash")
    if name.startswith(("/", "~")):
        raise FileRefused("file name must be relative to the frame's folder")
    parts = name.split("/")
    if len(parts) > MAX_PARTS:
        raise FileRefused("file name is nested too deeply")
    for part in parts:
        if part in ("", ".", ".."):
            raise FileRefused("file name has an empty, '.' or '..' part")
    return parts


def resolve_in(folder: str | Path, name: str) -> Path:
    """The real path of `name` inside `folder`; FileRefused unless it is a regular file there."""
    parts = check_name(name)
    base = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(base.joinpath(*parts)))
    if target == base or not target.is_relative_to(base):
        raise FileRefused("file is outside the frame's folder")
    if not target.is_file():
        raise FileRefused("no such file in the frame's folder", 404)
    return target


def find_frame_file(folders: list[str | Path | None], name: str) -> Path:
    """The first folder (result folder, then work folder) that holds `name`, resolved safely."""
    check_name(name)
    last: FileRefused | None = None
    for folder in folders:
        if not folder or not Path(folder).is_dir():
            continue
        try:
            return resolve_in(folder, name)
        except FileRefused as e:
            if last is None or e.status == 403:
                last = e
    raise last or FileRefused("the frame has no folder yet", 404)


def tail(path: Path, lines: int, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `lines` lines of a text file, reading at most `max_bytes` from its end."""
    if lines <= 0:
        return []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read()
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line read is probably cut
    return text[-lines:]

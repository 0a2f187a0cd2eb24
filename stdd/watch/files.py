"""File names, stat snapshots and hashing.

Design note: the daemon never processes a file in place. When a settled file is taken, it is
copied once into the spool (`var/spool/<sha256><ext>`) while its SHA-256 is computed from the
same bytes, and the source's stat is compared before and after: if the file changed during the
copy, the copy is thrown away and the file watched again. The hash therefore always names the
exact bytes that will be processed, the source is only ever read, and a new version written
later at the same path cannot leak into a frame already queued.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime: float
    mtime_ns: int
    inode: int

    def same(self, other: "FileStat | None") -> bool:
        return other is not None and (self.size, self.mtime_ns, self.inode) == (other.size, other.mtime_ns, other.inode)


def file_stat(path: str | os.PathLike) -> FileStat | None:
    """A stat snapshot of a regular file, or None if it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return FileStat(st.st_size, st.st_mtime, st.st_mtime_ns, st.st_ino)


def matches(name: str, patterns: Iterable[str], ignore: Iterable[str] = ()) -> bool:
    """Does a file name (not a path) match one pattern and no ignore pattern? Case-insensitive."""
    low = name.lower()
    if any(fnmatch.fnmatchcase(low, p.lower()) for p in ignore):
        return False
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def fits_suffix(name: str) -> str:
    """The FITS extension of a name, lower case: '.fits', '.fits.fz', '.fit.gz', ... ('.fits' if none)."""
    low = name.lower()
    parts = low.split(".")
    if len(parts) >= 3 and parts[-1] in ("gz", "fz"):
        return "." + ".".join(parts[-2:])
    if len(parts) >= 2:
        return "." + parts[-1]
    return ".fits"


def frame_stem(name: str) -> str:
    """A file name without its FITS extension: 'm13_0001.fits.gz' -> 'm13_0001'."""
    suffix = fits_suffix(name)
    return name[: -len(suffix)] if name.lower().endswith(suffix) and len(name) > len(suffix) else name


def scan(folders: Iterable[Path], patterns: Iterable[str], ignore: Iterable[str] = (), recursive: bool = True,
         exclude: Iterable[Path] = ()) -> Iterator[Path]:
    """Every matching regular file under the folders (hidden folders and `exclude` trees skipped)."""
    patterns, ignore = list(patterns), list(ignore)
    excluded = {str(Path(e)) for e in exclude}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in excluded)
            if not recursive:
                dirs[:] = []
            for name in sorted(names):
                if matches(name, patterns, ignore):
                    path = Path(root) / name
                    if path.is_file() and not path.is_symlink():
                        yield path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class SourceChanged(Exception):
    """The source file changed while it was being copied."""


def copy_and_hash(source: str | os.PathLike, target: str | os.PathLike) -> tuple[str, FileStat]:
    """Copy `source` to `target` computing the SHA-256 of the bytes copied.

    Raises SourceChanged if the source's size, mtime or inode moved during the copy (the
    target is then removed), FileNotFoundError if it vanished.
    """
    before = file_stat(source)
    if before is None:
        raise FileNotFoundError(source)
    h = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        after = file_stat(source)
        if not before.same(after):
            raise SourceChanged(str(source))
    except BaseException:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise
    return h.hexdigest(), before

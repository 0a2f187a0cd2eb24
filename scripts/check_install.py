"""Is what the lock installed enough for pyproject.toml? Run by scripts/setup.sh in .venv after the install.

`python scripts/check_install.py [EXTRA ...]` checks every requirement of pyproject.toml's
[project].dependencies, of the named optional extras and of [build-system].requires against the
installed distributions (markers evaluated here, requested extras of a dependency followed, e.g.
dask[distributed]). It prints each requirement the environment does not meet and exits 1: the lock
files are older than pyproject.toml, and `make lock` refreshes them. Exit 0 and no output otherwise.
"""
from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def unmet(reqs: list[str], extra: str = "", seen: set | None = None) -> list[str]:
    """The requirements in `reqs` (evaluated with `extra`) that the installed distributions do not meet."""
    seen = set() if seen is None else seen
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append(f"{text}: not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            out.append(f"{text}: {version} installed")
            continue
        for ex in sorted(req.extras):  # dask[distributed]: what dask's `distributed` extra asks for
            key = (canonicalize_name(req.name), ex)
            if key not in seen:
                seen.add(key)
                out += unmet(metadata.requires(req.name) or [], ex, seen)
    return out


def main(argv: list[str]) -> int:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        py = tomllib.load(fh)
    reqs = list(py["project"]["dependencies"]) + list(py["build-system"]["requires"])
    optional = py["project"].get("optional-dependencies", {})
    for extra in argv:
        if extra not in optional:
            print(f"pyproject.toml has no extra {extra!r}", file=sys.stderr)
            return 2
        reqs += optional[extra]
    bad = unmet(reqs)
    for line in bad:
        print(f"  {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

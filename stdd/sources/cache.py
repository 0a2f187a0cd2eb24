"""On-disk cache for catalogue cones and templates, shared by all worker processes.

Design note: a cone is rounded before it is fetched — the centre to a grid whose step is a power
of two of degrees (about a quarter to a half of the radius), the radius up so that the rounded cone
still covers the requested one — so frames of a field seen before, with a slightly different
pointing, hit the same cache entry. Entries are written atomically (temporary name, then rename),
so concurrent workers never read a half-written file; the last writer wins, and both wrote the
same thing. Old entries are removed by the daemon's retention job (by age), not here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def round_cone(ra: float, dec: float, radius: float) -> tuple[float, float, float]:
    """A slightly larger cone, on a grid, that covers the cone (ra, dec, radius) in degrees."""
    radius = max(float(radius), 1.0 / 60)
    q = 2.0 ** math.ceil(math.log2(radius / 2))
    dec_c = max(-90.0, min(90.0, round(dec / q) * q))
    cosd = max(math.cos(math.radians(dec_c)), 1e-3)
    qa = q / cosd
    ra_c = (round((ra % 360.0) / qa) * qa) % 360.0
    # the rounded centre moves by at most the distance to the grid corner; cover that
    offset = math.degrees(math.acos(min(1.0, max(-1.0,
        math.sin(math.radians(dec)) * math.sin(math.radians(dec_c))
        + math.cos(math.radians(dec)) * math.cos(math.radians(dec_c)) * math.cos(math.radians(ra - ra_c))))))
    r_c = math.ceil((radius + offset) / q) * q
    return round(ra_c, 6), round(dec_c, 6), round(r_c, 6)


def key_of(*parts: Any) -> str:
    """A short stable file-name-safe key for anything JSON can describe."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class DiskCache:
    """Files under `root/namespace/`, named by key; written atomically."""

    def __init__(self, root: Path, namespace: str):
        self.dir = Path(root) / namespace

    def path(self, key: str, suffix: str) -> Path:
        return self.dir / f"{key}{suffix}"

    def get(self, key: str, suffix: str) -> Path | None:
        p = self.path(key, suffix)
        return p if p.is_file() and p.stat().st_size > 0 else None

    def write(self, key: str, suffix: str, writer) -> Path:
        """`writer(tmp_path)` writes the file; it is renamed into place when complete."""
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.path(key, suffix)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=self.dir)
        os.close(fd)
        try:
            writer(Path(tmp))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

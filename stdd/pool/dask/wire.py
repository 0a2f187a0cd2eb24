"""What crosses between the daemon and the Dask workers: paths as each side sees them, and
data made plain enough for Dask's event log (JSON-like values only)."""
from __future__ import annotations

import json
import re
from pathlib import Path


class PathMap:
    """Daemon-side path prefix → worker-side prefix, applied to every path in the strings of
    a job (and backwards to what comes back, error messages included). A prefix matches whole
    path components only."""

    def __init__(self, mapping: dict[str, str] | None = None):
        self.pairs = [(_norm(a), _norm(b)) for a, b in (mapping or {}).items() if _norm(a) != _norm(b)]
        for a, b in self.pairs:
            if not a.startswith("/") or not b.startswith("/"):
                raise ValueError(f"pool.dask_path_map: {a!r} -> {b!r}: both sides must be absolute paths")

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def to_worker(self, obj):
        return self._apply(obj, [(re.compile(_prefix_re(a)), b) for a, b in self.pairs])

    def to_daemon(self, obj):
        return self._apply(obj, [(re.compile(_prefix_re(b)), a) for a, b in self.pairs])

    def _apply(self, obj, rules):
        if not rules:
            return obj
        if isinstance(obj, str):
            for rx, repl in rules:
                obj = rx.sub(lambda m: repl, obj)
            return obj
        if isinstance(obj, dict):
            return {k: self._apply(v, rules) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._apply(v, rules) for v in obj)
        return obj


def _norm(p: str) -> str:
    p = str(p)
    return p.rstrip("/") or "/"


def _prefix_re(prefix: str) -> str:
    # the prefix as a path of its own: at the start, or after a space, quote, "local:"...
    # (paths also appear in messages), and not continued by more of a name ("/data2")
    return r"(?<![\w./~-])" + re.escape(prefix) + r"(?![\w.~-])"


def plain(obj):
    """JSON-like data (what Dask's event log can carry): numpy scalars, paths → plain values."""
    return json.loads(json.dumps(obj, default=_default))


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)

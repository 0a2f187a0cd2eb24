"""The benchmark's inputs: synthetic fields (stdd.synth) with their local catalogue and template.

A field of a given size is one patch of synthetic sky: `catalog.fits` (Vizier-style, deeper than
the frames), `templates/tmpl_<object>_r.fits` (a deeper epoch with other seeing and pointing, the
local template library the `local` template source reads) and as many frames as asked, each a
different night of the same sky (own noise, cosmic rays, two transients). Frames are distinct
files (the daemon never processes the same bytes twice). Star density is the generator's default
(1500 stars per 1024² at 1″/px), whatever the size. Made once per run and shared by the measures.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import Context

BAND = "r"
SUB_METHOD = "sfft"  # every measure but frame_2k_hotpants_s


@dataclass
class Field:
    size: int
    folder: Path
    catalog: Path
    templates: Path          # folder of the local template library
    template: Path           # the field's template in it
    frames: list[Path] = field(default_factory=list)

    @property
    def object_name(self) -> str:
        return f"BENCH-{self.size}"

    def stage_settings(self, cache_dir: Path, **pipeline: Any) -> dict[str, Any]:
        """StageSettings (as a dict) for this field: local catalogue and template library, offline;
        SFFT unless `sub_method` says otherwise (with a `hotpants` on PATH, "auto" would pick it)."""
        return {"offline": True, "cache_dir": str(cache_dir), "pipeline": {"sub_method": SUB_METHOD, **pipeline},
                "catalog": {"source": "local", "files": [str(self.catalog)]},
                "template": {"source": "local", "folder": str(self.templates)}}

    def config_toml(self) -> str:
        """The same as config sections for a daemon."""
        return (f"[pipeline]\nsub_method = \"{SUB_METHOD}\"\n"
                f"[catalog]\nsource = \"local\"\nfiles = [{json.dumps(str(self.catalog))}]\n"
                f"[template]\nsource = \"local\"\nfolder = {json.dumps(str(self.templates))}\n")


def _frame_kwargs(size: int) -> dict[str, Any]:
    return dict(width=size, height=size, ra=150.0, dec=30.0, band=BAND, field_seed=7000 + size,
                n_stars=int(round(1500 * (size / 1024) ** 2)), n_cosmics=int(round(20 * (size / 1024) ** 2)),
                n_transients=2, object_name=f"BENCH-{size}")


def field_of(ctx: Context, size: int, n_frames: int) -> Field:
    """The field of this size with at least `n_frames` frames (made on first use, then reused)."""
    from stdd.synth import make_field

    cache: dict[int, Field] = ctx.shared.setdefault("fields", {})
    f = cache.get(size)
    if f is None:
        folder = ctx.folder(f"fields/{size}")
        kw = _frame_kwargs(size)
        tmpl_name = f"templates/tmpl_{kw['object_name']}_{BAND}.fits"
        prod = make_field(folder, seed=1, template=True, template_name=tmpl_name, catalog_name="catalog.fits",
                          frame_name="frames/frame_000.fits", truth_name="truth/frame_000.json", **kw)
        f = Field(size, folder, prod.catalog, folder / "templates", prod.template, [prod.frame])
        cache[size] = f
    while len(f.frames) < n_frames:
        k = len(f.frames)
        prod = make_field(f.folder, seed=1 + k, template=False, catalog_name=None,
                          frame_name=f"frames/frame_{k:03d}.fits", truth_name=f"truth/frame_{k:03d}.json",
                          date_obs=f"2026-03-{1 + k % 28:02d}T03:00:00", **_frame_kwargs(size))
        f.frames.append(prod.frame)
    return f


def small_frames(ctx: Context, n: int, size: int = 256) -> list[Path]:
    """`n` distinct small frames (for intake timing: they only need to be whole, distinct FITS files)."""
    f = field_of(ctx, size, n)
    return f.frames[:n]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path

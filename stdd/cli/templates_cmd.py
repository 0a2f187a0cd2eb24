"""`stdd templates build`: templates from this observatory's own best frames, into the local library."""
from __future__ import annotations

from pathlib import Path

import click

from .common import EXIT_FAILURE, echo_json, fail, get_settings


@click.group("templates")
def templates_group() -> None:
    """Templates for subtraction built from this observatory's own frames."""


@templates_group.command("build")
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write (default: template.folder, the local library).")
@click.option("--band", help="Only this band (e.g. r).")
@click.option("--min-frames", type=click.IntRange(1),
              help="Fewest good frames a field needs (default template.own_min_frames, 3).")
@click.option("--max-frames", type=click.IntRange(1),
              help="Most frames combined per field (default template.own_max_frames, 7).")
@click.option("--max-fwhm-ratio", type=click.FloatRange(1.0),
              help="Keep frames at most this much blurrier than the field's sharpest "
                   "(default template.own_max_fwhm_ratio, 1.5).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def build(ctx: click.Context, folders: tuple[str, ...], out_dir: str | None, band: str | None,
          min_frames: int | None, max_frames: int | None, max_fwhm_ratio: float | None, as_json: bool) -> None:
    """Co-add the best frames of each field and band into a template.

    FOLDERS are frame folders (each with image.fits, mask.fits, image.wcs and result.json, as
    inspect and photometry leave them); default: the daemon's result folders (with
    pipeline.publish_images = true) and work folders that still hold their images. The templates
    go to the local library, where template.source = "local" picks them by footprint and band.
    The daemon does the same daily with template.own_build_hour_utc.
    """
    from ..daemon.jobs import template_source_folders
    from ..sources.own_templates import build_all

    s = get_settings(ctx)
    target = Path(out_dir) if out_dir else s.template.folder
    if target is None:
        fail("no --out and no template.folder configured", EXIT_FAILURE)
    paths = [Path(f) for f in folders] if folders else template_source_folders(s.paths.results, s.paths.work)
    if not paths:
        fail("no frame folders with images found (set pipeline.publish_images = true, or name folders)")
    lines: list[str] = []
    log = (lambda m: lines.append(m)) if as_json else (lambda m: click.echo(m, err=True))
    t = s.template
    built, skipped = build_all(paths, Path(target), min_frames=min_frames or t.own_min_frames,
                               max_frames=max_frames or t.own_max_frames,
                               max_fwhm_ratio=max_fwhm_ratio or t.own_max_fwhm_ratio, band=band, log=log)
    if as_json:
        echo_json({"built": [b.to_dict() for b in built], "skipped": skipped, "log": lines})
    else:
        for b in built:
            click.echo(f"{b.path}: {b.band}, {len(b.frames)} frames, FWHM {b.fwhm_arcsec:.2f}\", "
                       f"{100 * b.coverage:.0f}% covered")
        for why in skipped:
            click.echo(f"skipped {why}")
    if not built:
        raise SystemExit(EXIT_FAILURE)


def register(cli: click.Group) -> None:
    cli.add_command(templates_group)

"""`stdd calib build|list`: calibration masters from raw bias, dark and flat frames, into a library."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_USAGE, echo_json, settings_or_defaults


@click.group("calib")
def calib_group() -> None:
    """Calibration masters (bias, dark, flat, bad-pixel mask) and the calibration library."""


@calib_group.command("build")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The library folder (default: calibration.library).")
@click.option("--profile", help="Instrument profile for every file (default: chosen per file as for frames).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def build_cmd(ctx: click.Context, paths: tuple[Path, ...], out_dir: Path | None, profile: str | None,
              as_json: bool) -> None:
    """Build masters from the calibration frames among FILES_OR_FOLDERS (folders are searched for
    FITS files). Frames are grouped by instrument, binning, readout mode, temperature band (and band
    for flats, exposure time for darks), overscan-subtracted and trimmed per the instrument profile,
    combined with sigma clipping, checked, and written to the library with its index. Light frames
    are skipped. Exit 0 when at least one master was built, 1 when none."""
    from ..calib.build import build, expand
    from ..config import ConfigError
    from ..stages.profiles import load_profile, load_profiles, profile_for_file

    s = settings_or_defaults(ctx)
    library = out_dir or s.calibration.library
    if library is None:
        click.echo("error: no --out and no calibration.library configured", err=True)
        sys.exit(EXIT_USAGE)
    try:
        profiles = load_profiles(s)
        explicit = load_profile(s, profile, "--profile") if profile else None
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"config error: {line}", err=True)
        sys.exit(EXIT_USAGE)
    files = expand(list(paths))
    items = [(f, profile_for_file(profiles, f, explicit)[0]) for f in files]
    lines: list[str] = []
    log = lines.append if as_json else (lambda m: click.echo(m, err=True))
    report = build(items, library, s.calibration, log=log)
    if as_json:
        echo_json({**report, "log": lines})
    else:
        for m in report["masters"]:
            warn = f"; {len(m['warnings'])} warning(s)" if m.get("warnings") else ""
            click.echo(f"{m['kind']:4s} {m['file']}: {m.get('n_frames') or '-'} frame(s){warn}")
        for f in report["failed"]:
            click.echo(f"not built: {f['group']}: {f['reason']}")
        n_skip = len(report["skipped"])
        if n_skip:
            click.echo(f"{n_skip} file(s) skipped ({report['n_light_frames']} light frame(s))")
        click.echo(f"library {report['library']}: {len(report['masters'])} master(s) in {report['seconds']:.1f} s")
    if not report["masters"]:
        sys.exit(EXIT_FAILURE)


@calib_group.command("list")
@click.argument("library", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the index as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, library: Path | None, as_json: bool) -> None:
    """The masters in LIBRARY (default: calibration.library): kind, time, frames, validity."""
    from ..calib.library import Library

    s = settings_or_defaults(ctx)
    folder = library or s.calibration.library
    if folder is None:
        click.echo("error: no LIBRARY and no calibration.library configured", err=True)
        sys.exit(EXIT_USAGE)
    entries = Library(folder).entries()
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        extra = " ".join(x for x in (e.get("band") and f"band {e['band']}",
                                     e.get("exptime") is not None and f"{e['exptime']:g} s") if x)
        click.echo(f"{e['kind']:4s} {e.get('date_obs') or '-':23s} {e.get('n_frames') or '-':>3} {extra:14s} "
                   f"{e['file']}" + (f"  [{len(e['warnings'])} warning(s)]" if e.get("warnings") else ""))
    if not entries:
        click.echo(f"{folder}: no masters", err=True)
        sys.exit(EXIT_FAILURE)


def register(cli: click.Group) -> None:
    cli.add_command(calib_group)

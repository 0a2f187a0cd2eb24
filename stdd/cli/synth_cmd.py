"""`stdd synth field|demo` — write synthetic frames with exact truth, or the demo data set."""
from __future__ import annotations

import click

from .common import EXIT_FAILURE, EXIT_USAGE, echo_json


def register(cli: click.Group) -> None:
    cli.add_command(synth)


@click.group()
def synth() -> None:
    """Synthetic frames (with catalogue, template and truth) and the demo data set."""


@synth.command("field")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True, help="Random seed.")
@click.option("--size", type=click.IntRange(32, 16384), default=1024, show_default=True,
              help="Frame width and height in pixels.")
@click.option("--sip", is_flag=True, help="Write a TAN-SIP WCS with a small real distortion.")
@click.option("--transients", "n_transients", type=click.IntRange(min=0), default=2, show_default=True,
              help="Number of injected transients (S/N 20-50).")
@click.option("--wcs-error", "wcs_error", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Offset (arcsec) of the WCS written into the frame; the truth keeps the right one.")
@click.option("--cosmics", type=click.IntRange(min=0), default=20, show_default=True, help="Number of cosmic rays.")
@click.option("--band", type=click.Choice(["B", "V", "g", "r", "i"]), default="r", show_default=True)
@click.option("--no-template", is_flag=True, help="Do not write a template.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def field_cmd(out_dir, seed, size, sip, n_transients, wcs_error, cosmics, band, no_template, as_json) -> None:
    """Write frame.fits, catalog.fits, template.fits and truth.json into OUT_DIR."""
    from ..synth import make_field

    try:
        prod = make_field(out_dir, seed=seed, width=size, height=size, sip=sip, n_transients=n_transients,
                          wcs_error_arcsec=wcs_error, n_cosmics=cosmics, band=band, template=not no_template)
    except ValueError as e:
        raise click.exceptions.Exit(_fail(str(e), EXIT_USAGE))
    except OSError as e:
        raise click.exceptions.Exit(_fail(f"cannot write into {out_dir}: {e}", EXIT_FAILURE))
    t = prod.truth_data
    summary = {
        "frame": prod.frame, "catalog": prod.catalog, "template": prod.template, "truth": prod.truth,
        "n_stars": t["n_stars"], "n_saturated": t["n_saturated"], "transients": t["transients"],
        "mag_limit": t["mag_limit"], "zp": t["zp"], "fwhm_px": t["fwhm_px"],
    }
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"frame     {prod.frame}")
        click.echo(f"catalog   {prod.catalog}")
        click.echo(f"template  {prod.template}")
        click.echo(f"truth     {prod.truth}")
        click.echo(f"{t['n_stars']} stars ({t['n_saturated']} saturated), {len(t['transients'])} transients, "
                   f"5-sigma limit {t['mag_limit']:.2f} mag")


@synth.command("demo")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--frames", "n_frames", type=click.IntRange(min=3), default=4, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=2026, show_default=True)
@click.option("--size", type=click.IntRange(256, 4096), default=1024, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the demo manifest as JSON.")
def demo_cmd(out_dir, n_frames, seed, size, as_json) -> None:
    """Write the demo data set (catalogue, templates, frames, alert, truths) into OUT_DIR."""
    import json

    from ..synth.demo import make_demo

    try:
        prod = make_demo(out_dir, n_frames=n_frames, seed=seed, size=size)
    except ValueError as e:
        raise click.exceptions.Exit(_fail(str(e), EXIT_USAGE))
    except OSError as e:
        raise click.exceptions.Exit(_fail(f"cannot write into {out_dir}: {e}", EXIT_FAILURE))
    if as_json:
        echo_json(json.loads(prod.manifest.read_text(encoding="utf-8")))
    else:
        click.echo(f"demo data set in {prod.folder}: {len(prod.frames)} frames "
                   f"(transients in {prod.transient_frame.name}, {prod.broken_frame.name} is truncated), "
                   f"{len(prod.templates)} templates, alert {prod.alert.name}; manifest {prod.manifest.name}")


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {message}", err=True)
    return code

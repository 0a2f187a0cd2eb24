"""`stdd config check|show`."""
from __future__ import annotations

import sys

import click

from ..config import ConfigError, load_settings
from ..config.load import default_config_path, settings_as_json
from .common import EXIT_USAGE, config_path, echo_json


@click.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def check(ctx: click.Context, file: str | None) -> None:
    """Validate FILE (default: --config, $STDD_CONFIG or ./stdd.toml) and its instrument profiles."""
    path = file or config_path(ctx) or str(default_config_path())
    errors: list[str] = []
    try:
        settings = load_settings(path)
    except ConfigError as e:
        errors = e.errors
    else:
        from ..stages.profiles import load_profiles

        try:  # every profile in instruments_dir and those watch.profiles / pipeline.instrument name
            load_profiles(settings)
        except ConfigError as e:
            errors.extend(e.errors)
    if errors:
        for line in errors:
            click.echo(line, err=True)
        click.echo(f"{len(errors)} error(s) in {path}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"{path}: ok")


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration: defaults filled in, paths absolute."""
    from .common import get_settings

    settings = get_settings(ctx)
    data = settings_as_json(settings)
    data["source_file"] = str(settings.source_file)
    data["pool"]["effective_workers"] = settings.pool.effective_workers
    if as_json:
        echo_json(data)
        return
    _print_toml_like(data)


def _print_toml_like(data: dict, prefix: str = "") -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix:
        click.echo(f"\n[{prefix}]")
    for k, v in scalars.items():
        click.echo(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        _print_toml_like(v, f"{prefix}.{k}" if prefix else k)


def _toml_value(v) -> str:
    import json

    if v is None:
        return "# (unset)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def register(cli: click.Group) -> None:
    cli.add_command(config_group)

"""Helpers shared by the CLI modules: loading settings once, printing JSON, exit codes."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def config_path(ctx: click.Context) -> str | None:
    return (ctx.find_root().obj or {}).get("config_path")


def get_settings(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """The validated settings for this invocation, or exit 2 listing every config error."""
    try:
        return load_settings(config_path(ctx), overrides=overrides)
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"config error: {line}", err=True)
        sys.exit(EXIT_USAGE)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def settings_or_defaults(ctx: click.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from --config / $STDD_CONFIG / ./stdd.toml, or the defaults when there is no file
    (commands that work on files alone: `stdd calib build`)."""
    from ..config import settings_from_dict
    from ..config.load import apply_overrides, default_config_path

    path = config_path(ctx)
    try:
        if path or default_config_path().is_file():
            return load_settings(path, overrides=overrides)
        data = apply_overrides({}, overrides, "<defaults>") if overrides else {}
        return settings_from_dict(data, "<defaults>", Path.cwd())
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"config error: {line}", err=True)
        sys.exit(EXIT_USAGE)

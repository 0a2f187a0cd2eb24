"""The `stdd` command line. Each command group lives in its own module, registered here.

Exit codes: 0 ok, 1 a failure in the work, 2 a usage or config error.
"""
from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from .common import EXIT_USAGE

#: modules that add commands to the `stdd` group, each through a `register(group)` function
COMMAND_MODULES = (
    "config_cmd",   # stdd config check|show
    "process_cmd",  # stdd process
    "daemon_cmd",   # stdd run
    "demo_cmd",     # stdd demo
    "client_cmd",   # stdd status|frames|submit|cancel|retry|pause|resume|alerts
    "alert_cmd",    # stdd alert parse
    "synth_cmd",    # stdd synth
    "templates_cmd",  # stdd templates build
    "calib_cmd",    # stdd calib build|list
    "delivery_cmd",  # stdd delivery list|retry
    "store_cmd",    # stdd lightcurve, stdd candidates, stdd store reindex
    "stack_cmd",    # stdd stack
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stdd")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="STDD_CONFIG",
              help="Config file (default ./stdd.toml, or $STDD_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """stdd — the STDPipe daemon: photometry, transients and alerts for an observatory."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(cli)


def main() -> None:
    try:
        cli.main(prog_name="stdd", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["cli", "main", "EXIT_USAGE"]

"""`stdd run`: the daemon in the foreground (systemd runs exactly this)."""
from __future__ import annotations

import asyncio
import sys

import click

from .common import EXIT_FAILURE, EXIT_USAGE, get_settings


def services_for(settings) -> tuple[list, object | None]:
    """Services started and stopped with the daemon (the HTTP endpoint, the alert intakes),
    and the region provider that steers the queue by live alerts (None without alerts)."""
    services: list = []
    regions = None
    if settings.alerts.enabled:
        from ..alerts.link import AlertLink

        regions = AlertLink(settings)
        services.append(regions)
    if settings.delivery.enabled:
        from ..delivery.sender import DeliveryService

        services.append(DeliveryService())
    if settings.http.enabled:
        from ..http import HttpService

        services.append(HttpService())
    return services, regions


def register(cli: click.Group) -> None:
    @cli.command("run")
    @click.pass_context
    def run(ctx: click.Context) -> None:
        """Run the daemon in the foreground until SIGTERM or Ctrl-C (SIGHUP reloads the config)."""
        from ..config import ConfigError
        from ..daemon import Daemon, DaemonError
        from ..daemon.logs import setup_logging
        from ..store import StoreError

        settings = get_settings(ctx)
        setup_logging(settings.log_level)
        services, regions = services_for(settings)
        daemon = Daemon(settings, config_path=settings.source_file, services=services, region_provider=regions)
        try:
            code = asyncio.run(daemon.run())
        except (DaemonError, StoreError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_FAILURE)
        except ConfigError as e:  # found at start, e.g. an instrument profile the config names is missing
            for line in e.errors:
                click.echo(f"config error: {line}", err=True)
            sys.exit(EXIT_USAGE)
        sys.exit(code)

"""`stdd demo`: the daemon on a built-in demo field (see stdd/demo.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--dir", "folder", type=click.Path(file_okay=False), default="var/demo", show_default=True,
                  help="Where the demo data set and the demo daemon's state live.")
    @click.option("--workers", type=click.IntRange(0), default=0, help="Worker processes (0 = cores).")
    @click.option("--timeout", type=click.FloatRange(10), default=1200.0, show_default=True,
                  help="Seconds to wait for every frame to finish.")
    @click.option("--serve/--no-serve", default=None,
                  help="Keep the daemon running when the frames are done, to look at the results in a browser "
                       "(/ui/) until Ctrl-C (default: when run in a terminal, not under CI).")
    def demo(folder: str, workers: int, timeout: float, serve: bool | None) -> None:
        """Run the real daemon on synthetic frames of one field, a local catalogue and template
        library, a broken file and a sample GCN alert, and print what happened."""
        from ..demo import run_demo

        if serve is None:
            import os

            serve = sys.stdout.isatty() and sys.stdin.isatty() and not os.environ.get("CI")
        sys.exit(run_demo(Path(folder), workers=workers, timeout=timeout, echo=click.echo, serve=serve))

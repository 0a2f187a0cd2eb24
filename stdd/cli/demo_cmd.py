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
    def demo(folder: str, workers: int, timeout: float) -> None:
        """Run the real daemon on synthetic frames of one field, a local catalogue and template
        library, a broken file and a sample GCN alert, and print what happened."""
        from ..demo import run_demo

        sys.exit(run_demo(Path(folder), workers=workers, timeout=timeout, echo=click.echo))

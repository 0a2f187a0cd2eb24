"""`stdd lightcurve`, `stdd candidates`, `stdd store reindex`: what the measurement store holds
across frames and nights. They read the state file directly (WAL: never in the daemon's way);
`reindex` writes, so it refuses while a daemon runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import EXIT_USAGE, echo_json, fail, get_settings


def _db(settings, readonly: bool = True):
    from ..store import Database, StoreError

    try:
        return Database(settings.paths.database, readonly=readonly, migrate=not readonly)
    except StoreError as e:
        fail(f"cannot open the state {settings.paths.database}: {e}")


def register(cli: click.Group) -> None:
    @cli.command("lightcurve")
    @click.argument("ra", type=float)
    @click.argument("dec", type=float)
    @click.option("--radius", type=click.FloatRange(0.01, 300), default=2.0, show_default=True,
                  help="Match radius, arcsec.")
    @click.option("--forced", is_flag=True, help="Forced photometry at the position on every frame covering it, "
                                                 "with upper limits where it is not detected.")
    @click.option("--filter", "band", help="Only this filter.")
    @click.option("--json", "fmt", flag_value="json", help="JSON.")
    @click.option("--ecsv", "fmt", flag_value="ecsv", help="ECSV table.")
    @click.option("--votable", "fmt", flag_value="votable", help="VOTable.")
    @click.option("--plot", type=click.Path(dir_okay=False), help="Write the plot (PNG).")
    @click.pass_context
    def lightcurve_cmd(ctx, ra, dec, radius, forced, band, fmt, plot):
        """The light curve at RA DEC (degrees): matched detections from every frame, or --forced."""
        from ..lightcurves.query import as_ecsv, as_votable, lightcurve, plot_png

        if not (0 <= ra < 360 and -90 <= dec <= 90):
            fail("RA must be in [0, 360) and Dec in [-90, 90] degrees", EXIT_USAGE)
        settings = get_settings(ctx)
        db = _db(settings)
        try:
            lc = lightcurve(db, ra, dec, radius, forced=forced, band=band, sn=settings.pipeline.sn)
        finally:
            db.close()
        if plot:
            Path(plot).write_bytes(plot_png(lc))
        if fmt == "json":
            echo_json(lc)
        elif fmt == "ecsv":
            click.echo(as_ecsv(lc), nl=False)
        elif fmt == "votable":
            sys.stdout.buffer.write(as_votable(lc))
        else:
            click.echo(f"{len(lc['points'])} point(s) at {ra:.6f} {dec:+.6f} within {radius:g}\""
                       + (" (forced)" if forced else ""))
            for p in lc["points"]:
                val = (f"{p['mag']:.3f} ± {(p['mag_err'] or 0):.3f}" if p["detected"] else
                       (f"> {p['limit']:.2f}" if p["limit"] is not None else "-"))
                click.echo(f"  {p['time'] or '-':<23} {p['mjd'] or 0:12.5f} {p['filter'] or '-':>3} {val:>16}"
                           f"  frame {p['frame_id']} ({p['source']})")

    @cli.command("candidates")
    @click.option("--state", type=click.Choice(["confirmed", "moving", "known variable", "high proper motion",
                                                "single"]), help="Only candidates in this state.")
    @click.option("--limit", type=click.IntRange(1, 100000), default=200, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="JSON, each with its detections.")
    @click.pass_context
    def candidates_cmd(ctx, state, limit, as_json):
        """Candidates followed across frames: position, first/last seen, detections, state."""
        from ..candidates.history import CandidateHistory

        settings = get_settings(ctx)
        db = _db(settings)
        try:
            hist = CandidateHistory(db, settings)
            rows = hist.list(state, limit)
            for c in rows:
                c["detections"] = hist.detections(c["id"])
                if as_json:
                    c["non_detections"] = hist.non_detections(c)
        finally:
            db.close()
        if as_json:
            echo_json(rows)
            return
        for c in rows:
            mags = ", ".join(f"{b} {v['last']:.2f}" for b, v in (c.get("filters") or {}).items())
            click.echo(f"{c['id']:>6} {c['state']:<18} {c['ra']:11.6f} {c['dec']:+10.6f}  {c['n_det']} det.  {mags}")
        if not rows:
            click.echo("no candidates" + (f" in state {state}" if state else ""))

    @cli.group("store")
    def store_group():
        """The measurement store."""

    @store_group.command("reindex")
    @click.pass_context
    def reindex_cmd(ctx):
        """Record the measurements and candidates of every done frame again from its result folder
        (after an upgrade, or with new [store] settings). Refused while the daemon runs."""
        from ..store import FrameStore
        from ..store.ingest import record_frame
        from .client_cmd import daemon_info

        settings = get_settings(ctx)
        if daemon_info(settings):
            fail("the daemon is running: stop it first (it records every frame as it ends)")
        db = _db(settings, readonly=False)
        n = m = 0
        try:
            frames = db.query("SELECT id FROM frames WHERE state = 'done' ORDER BY id")
            for row in frames:
                f = FrameStore(db).get(row["id"])
                try:
                    result = json.loads((Path(f["result_dir"]) / "result.json").read_text())
                except (OSError, ValueError, TypeError):
                    continue
                with db.write():
                    m += record_frame(db, settings, f, result)["measurements"]
                n += 1
        finally:
            db.close()
        click.echo(f"{n} frame(s), {m} measurement(s) recorded")

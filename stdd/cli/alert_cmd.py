"""`stdd alert parse|inject|bench`: read a notice, feed one through the alert chain, time the chain."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import EXIT_FAILURE, EXIT_USAGE, echo_json, fail, get_settings


@click.group("alert")
def alert_group() -> None:
    """GCN notices: parse them, inject them, measure the alert latency."""


def _read(file: str) -> tuple[bytes, str | None]:
    if file == "-":
        return sys.stdin.buffer.read(), None
    path = Path(file)
    try:
        return path.read_bytes(), path.name
    except OSError as e:
        fail(f"cannot read {file}: {e.strerror or e}", EXIT_USAGE)
        raise  # unreachable


@alert_group.command("parse")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised alert as JSON.")
@click.option("--topic", help="Kafka topic the notice came from (helps notices that do not name themselves).")
def parse_cmd(file: str, as_json: bool, topic: str | None) -> None:
    """Parse the notice in FILE ('-' for stdin) and print the normalised alert.

    `actionable` says whether the default policy would act on it, ignoring visibility.
    """
    from ..alerts import NoticeError, parse_notice, screen

    raw, name = _read(file)
    try:
        alert = parse_notice(raw, topic, hint=name)
    except NoticeError as e:
        fail(f"{file}: not a readable notice: {e}", EXIT_FAILURE)
        return
    actionable, reason = screen(alert)
    data = alert.to_dict(actionable=actionable, ignore_reason=reason)
    if as_json:
        echo_json(data)
        return
    fmt = lambda v, d=4: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [
        ("id", data["id"]), ("mission", data["mission"]), ("instrument", data["instrument"]),
        ("notice type", data["notice_type"]), ("alert type", data["alert_type"]),
        ("role", data["role"] + (f" ({data['role_reason']})" if data["role_reason"] else "")),
        ("event", data["event_id"]), ("time", data["time"]),
        ("position", f"ra {fmt(data['ra'])}  dec {fmt(data['dec'])}" if data["ra"] is not None else "-"),
        ("error (90%)", f"{fmt(data['error_radius_deg'], 5)} deg" if data["error_radius_deg"] is not None else "-"),
        ("region", (data["region"] or {}).get("kind", "-")),
        ("skymap", (f"{data['skymap']['area_deg2']:.1f} deg2 at 90%" if data["has_skymap"] else "-")
         + (f"  url {data['skymap_url']}" if data["skymap_url"] else "")),
        ("retraction", f"yes, of {data['retracts']}" if data["retraction"] else "no"),
        ("class", data["most_likely_class"] or "-"),
        ("actionable", "yes" if actionable else f"no: {reason}"),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':13s} {value}")


@alert_group.command("inject")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--topic", help="Kafka topic to record the notices under.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the actions to finish.")
@click.pass_context
def inject_cmd(ctx: click.Context, files: tuple[str, ...], topic: str | None, wait: bool) -> None:
    """Feed notice FILES through the alert chain (store, policy, actions) in the configured database."""
    from ..alerts import AlertService, IntakeMessage
    from ..store import Database

    settings = get_settings(ctx)
    db = Database(settings.paths.database)
    service = AlertService(db, settings)
    results, failed = [], False
    try:
        for file in files:
            raw = Path(file).read_bytes()
            outcome = service.handle(IntakeMessage(raw, topic, hint=Path(file).name))
            if wait:
                outcome.wait(timeout=max(a.timeout_seconds * (a.retries + 1) for a in
                                         settings.alerts.actions.values()) + 60 if settings.alerts.actions else 60)
            d = outcome.to_dict()
            d["file"] = file
            d["actions"] = [service.store.get_action(i) for i in outcome.action_ids]
            failed |= outcome.state == "error"
            results.append(d)
    finally:
        service.close(wait=wait)
        db.close()
    echo_json(results)
    if failed:
        sys.exit(EXIT_FAILURE)


@alert_group.command("bench")
@click.option("--bootstrap", required=True, help="host:port of a Kafka broker (PLAINTEXT).")
@click.option("-n", "count", default=50, show_default=True, help="Notices to time.")
@click.option("--action", type=click.Choice(["request_file", "exec"]), default="request_file", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default="var/alert-bench", show_default=True)
def bench_cmd(bootstrap: str, count: int, action: str, workdir: str) -> None:
    """Time notice produced → action started against a broker (p50/p99)."""
    from ..alerts.latency import measure_latency

    try:
        echo_json(measure_latency(bootstrap, workdir, n=count, action=action))
    except Exception as e:  # a broker that is not there, mostly
        fail(f"bench failed: {type(e).__name__}: {e}")


@alert_group.command("report")
@click.argument("alert_id")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (frames, measurements, candidates).")
@click.option("--text", "as_text", is_flag=True, help="Only the draft GCN Circular.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the light curve against t - T0 (PNG).")
@click.pass_context
def report_cmd(ctx: click.Context, alert_id: str, as_json: bool, as_text: bool, plot: str | None) -> None:
    """The follow-up report of ALERT_ID: frames covering its region by time since T0, detections and
    limits at its position, candidates in the region, and a draft GCN Circular (read from the state;
    the daemon need not run)."""
    from ..reports.alert_report import ReportError, build_report, fmt_dt, lightcurve_png
    from ..reports.circular import circular_text
    from ..store import Database, StoreError

    settings = get_settings(ctx)
    try:
        db = Database(settings.paths.database, readonly=True)
    except StoreError as e:
        fail(f"cannot read the state {settings.paths.database}: {e}")
    try:
        report = build_report(db, alert_id, settings)
    except ReportError as e:
        fail(str(e))
    finally:
        db.close()
    if plot:
        Path(plot).write_bytes(lightcurve_png(report))
    report["circular"] = circular_text(report)
    if as_json:
        echo_json(report)
        return
    if as_text:
        click.echo(report["circular"])
        return
    a, sm = report["alert"], report["summary"]
    click.echo(f"alert {a['id']} ({a.get('mission') or '?'} {a.get('notice_type') or ''}), T0 {report['t0']} UT")
    click.echo(f"{sm['frames']} frame(s) covering the region, {sm['after_trigger']} done after T0; "
               f"{sm['detections_at_position']} detection(s) at the position; {sm['candidates_in_region']} "
               f"candidate(s) in the region")
    for r in report["frames"]:
        at = (f"{r['mag']:.2f}±{(r['mag_err'] or 0):.2f}" if r["detected"] else
              (f">{r['limit']:.2f}" if r["limit"] is not None else "-"))
        click.echo(f"  frame {r['frame_id']:>5} {fmt_dt(r['t_minus_t0_s']):>10} {(r['filter'] or '-'):>4} "
                   f"{r['state']:<8} {at}" + ("  (before the trigger)" if r["before_trigger"] else ""))
    click.echo("")
    click.echo(report["circular"])


def register(cli: click.Group) -> None:
    cli.add_command(alert_group)

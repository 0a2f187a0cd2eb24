"""`stdd delivery list|retry`: the delivery outbox (SkyPortal, TOM, notifications)."""
from __future__ import annotations

import datetime as _dt

import click

from .common import EXIT_FAILURE, echo_json, fail, get_settings


@click.group("delivery")
def delivery_group() -> None:
    """What was, and is to be, sent to SkyPortal, the TOM and the notification channels."""


def _outbox(ctx: click.Context, readonly: bool):
    from ..store import Database, Outbox, StoreError

    settings = get_settings(ctx)
    try:
        db = Database(settings.paths.database, readonly=readonly, migrate=not readonly)
    except StoreError as e:
        fail(str(e), EXIT_FAILURE)
        raise  # unreachable
    return db, Outbox(db)


def _when(t: float | None) -> str:
    return "-" if not t else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@delivery_group.command("list")
@click.option("--state", type=click.Choice(["pending", "sent", "failed", "held"]), help="Only items in this state.")
@click.option("--target", help="Only this target (skyportal, tom, notify:NAME; * matches any text).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None, target: str | None, limit: int, as_json: bool) -> None:
    """The newest delivery items, with their state, attempts and last error."""
    db, outbox = _outbox(ctx, readonly=True)
    with db:
        rows = outbox.list(state, target, limit)
        counts = outbox.counts()
    if as_json:
        echo_json({"counts": counts, "items": rows})
        return
    click.echo("counts: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    for r in rows:
        line = f"{r['id']:>6}  {r['state']:<8} {r['target']:<16} {r['kind']:<12} attempts {r['attempts']}"
        if r["state"] == "pending":
            line += f"  next {_when(r['next_try'])}"
        elif r["state"] == "sent":
            line += f"  sent {_when(r['sent_at'])}"
        if r.get("error"):
            line += f"  error: {r['error'][:120]}"
        click.echo(line)


@delivery_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def retry_cmd(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Queue failed items again (all, or the IDS given), due now; the daemon sends them."""
    db, outbox = _outbox(ctx, readonly=False)
    with db:
        n = outbox.retry(list(ids) or None)
    click.echo(f"{n} item(s) queued again")


@delivery_group.command("instruments")
@click.option("--json", "as_json", is_flag=True, help="Print SkyPortal's answer as JSON.")
@click.pass_context
def instruments_cmd(ctx: click.Context, as_json: bool) -> None:
    """SkyPortal's instruments (id, name, filters): what `[delivery.skyportal] instrument_id` names."""
    from ..delivery.common import DeliveryError
    from ..delivery.skyportal import SkyPortalClient

    settings = get_settings(ctx)
    if not settings.delivery.skyportal.url:
        fail("delivery.skyportal.url is not set", EXIT_FAILURE)
    try:
        rows = SkyPortalClient(settings.delivery.skyportal).instruments()
    except (DeliveryError, OSError) as e:
        fail(f"SkyPortal: {e}", EXIT_FAILURE)
        return
    except Exception as e:  # requests' errors: refused, timed out
        fail(f"SkyPortal: {type(e).__name__}: {e}", EXIT_FAILURE)
        return
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r.get('id'):>5}  {r.get('name')}  filters: {', '.join(r.get('filters') or [])}")


def register(cli: click.Group) -> None:
    cli.add_command(delivery_group)

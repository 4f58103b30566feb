"""`dunning report`: recovery figures from the store (the same data as `GET /api/reports`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from dunning.config import get_settings
from dunning.rendering import format_amount
from dunning.reports import (
    NO_KEY_LABELS,
    GroupBy,
    GroupFigures,
    Interval,
    RecoveryReport,
    ReportError,
    parse_since,
    recovery_report,
)
from dunning.store import Store

console = Console()
errors = Console(stderr=True)


def report(
    since: Annotated[
        str | None, typer.Option(help="only payments that failed from this UTC date (YYYY-MM-DD) or ISO datetime")
    ] = None,
    by: Annotated[GroupBy, typer.Option(help="how to group the journeys")] = GroupBy.decline_class,
    interval: Annotated[
        Interval | None, typer.Option(help="over-time buckets [default: day, week beyond ~3 months]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
) -> None:
    """Recovery report: rates (by count and by amount per currency), time to recover, funnel by step."""
    try:
        start = parse_since(since)
    except ReportError as exc:
        errors.print(f"[red]--since: {exc}[/red]")
        raise typer.Exit(2) from exc
    store = Store.from_settings(get_settings())
    try:
        result = recovery_report(store, since=start, by=by, interval=interval)
    except ReportError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except SQLAlchemyError as exc:
        errors.print(f"[red]cannot read the store: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}[/red]")
        errors.print("Is DATABASE_URL right, and has `dunning db upgrade` run?")
        raise typer.Exit(1) from exc
    finally:
        store.dispose()
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), sort_keys=False))
        return
    _print(result)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def _amounts(group: GroupFigures) -> str:
    return "\n".join(
        f"{format_amount(c.recovered_amount, cur, 'en')} / {format_amount(c.amount_due, cur, 'en')} ({_rate(c.recovery_rate_by_amount)})"
        for cur, c in group.currencies.items()
    ) or "—"


def _figures_table(title: str, first: str, groups: list[GroupFigures], by: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for name in ("journeys", "open", "recovered", "rate"):
        table.add_column(name, justify="right")
    table.add_column("recovered / due (by amount)", justify="right")
    for name in ("median days", "attempts/rec", "msgs sent", "msgs/rec"):
        table.add_column(name, justify="right")
    for g in groups:
        table.add_row(
            g.key if g.key is not None else f"({NO_KEY_LABELS.get(by, 'unknown')})",
            str(g.journeys), str(g.open), str(g.recovered), _rate(g.recovery_rate), _amounts(g),
            _num(g.median_days_to_recovery), _num(g.attempts_per_recovery), str(g.messages_sent),
            _num(g.messages_per_recovery),
        )
    return table


def _print(result: RecoveryReport) -> None:
    scope = f"payments failed since {result.since:%Y-%m-%d %H:%M} UTC" if result.since else "all payments"
    console.print(f"[bold]Recovery report[/bold] — {scope}")
    console.print(_figures_table("Totals", "", [result.totals.model_copy(update={"key": "all"})], "totals"))
    console.print(_figures_table(f"By {result.by.value.replace('_', ' ')}", result.by.value, result.groups, result.by.value))
    funnel = Table(title="Funnel by step", title_justify="left")
    for name, justify in (("step", "left"), ("reached", "right"), ("% of failed", "right"),
                          ("recovered here", "right"), ("rate at step", "right")):
        funnel.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.funnel:
        funnel.add_row(row.step or "(payment failed)", str(row.reached), _rate(row.reached_rate),
                       str(row.recovered), _rate(row.recovery_rate))
    console.print(funnel)
    over = Table(title=f"Over time (per {result.interval.value}, UTC)", title_justify="left")
    for name in ("period", "failed", "of those recovered", "rate", "recoveries", "recovered amount"):
        over.add_column(name, justify="left" if name == "period" else "right")
    for p in result.over_time:
        amounts = ", ".join(format_amount(a, cur, "en") for cur, a in p.recovered_amount.items()) or "—"
        over.add_row(str(p.period), str(p.journeys), str(p.recovered), _rate(p.recovery_rate), str(p.recoveries), amounts)
    console.print(over)

"""`dunning journeys`: find, inspect and steer journeys (Temporal and the store, via Settings).

Writes are audited with actor = --actor or $USER. Errors say what failed and how to fix it;
every failure exits non-zero.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client

from dunning import ops
from dunning.codec import CodecError
from dunning.config import Settings
from dunning.durations import parse_duration
from dunning.enums import Stage
from dunning.journey import JourneyStatus
from dunning.rendering import format_amount
from dunning.store import Store
from dunning.temporal import connect

CONNECT_TIMEOUT = 5.0

app = typer.Typer(help="Find, inspect and steer journeys.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

ActorOption = Annotated[str | None, typer.Option("--actor", help="who is acting, for the audit log (default: $USER)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (kept in the journey's timeline and the audit log)")]
JourneyArg = Annotated[str, typer.Argument(help="journey id, e.g. dunning-in_123")]


# --- shared by the journeys and policy commands ----------------------------------------------


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def actor_of(explicit: str | None) -> str:
    if explicit and explicit.strip():
        return explicit.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextmanager
def store_for(settings: Settings) -> Iterator[Store]:
    store = Store.from_settings(settings)
    try:
        yield store
    except SQLAlchemyError as exc:
        detail = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        fail(f"the store is unusable ({detail}); check DATABASE_URL and run `dunning db upgrade`")
    finally:
        store.dispose()


async def temporal(settings: Settings) -> Client:
    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except CodecError as exc:
        fail(f"payload encryption: {exc}")
    except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
        fail(
            f"Temporal at {settings.temporal_target} is unreachable ({exc or 'timed out'}); "
            "start it with `make up` or set TEMPORAL_ADDRESS"
        )


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; ops errors become a clear message and exit 1."""
    try:
        return asyncio.run(work())
    except ops.OpsError as exc:
        fail(str(exc))


def rollout_progress() -> Progress:
    return Progress(
        TextColumn("[bold]moving journeys"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,  # keep stdout for results
        transient=False,
    )


def _since(value: str | None) -> datetime | None:
    """`7d`-style look-back or an ISO date/time (UTC when no offset)."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since {value!r}: use a look-back like 7d / 12h or a date like 2026-11-01 or 2026-11-01T10:00Z", 2)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else ""


# --- commands --------------------------------------------------------------------------------


@app.command("list")
def list_journeys(
    stage: Annotated[Stage | None, typer.Option(help="only journeys in this stage")] = None,
    customer: Annotated[str | None, typer.Option(help="only this customer's journeys, e.g. cus_123")] = None,
    since: Annotated[str | None, typer.Option(help="started within (7d, 12h) or since a date (2026-11-01)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Journeys from Temporal visibility, with the policy and next action from the store."""
    settings = Settings()
    started_since = _since(since)

    async def work() -> list[ops.JourneySummary]:
        client = await temporal(settings)
        return await ops.find_journeys(client, stage=stage, customer=customer, since=started_since, limit=limit)

    found = run(work)
    with store_for(settings) as store:
        rows = [(journey, store.get_journey(journey.journey_id)) for journey in found]
    if as_json:
        out = []
        for journey, projection in rows:
            item = journey.model_dump(mode="json")
            item.update(
                policy_version=projection.policy_version if projection else None,
                segment=projection.segment if projection else None,
                next_action=projection.next_action if projection else None,
                next_action_at=_iso(projection.next_action_at) if projection else None,
                attempts=projection.attempts_count if projection else None,
            )
            out.append(item)
        typer.echo(json.dumps({"journeys": out}, indent=2))
        return
    if not rows:
        console.print("no journeys match")
        return
    table = Table(title=f"{len(rows)} journey(s)")
    for column in ("journey", "stage", "customer", "due", "decline", "policy", "next action", "started (UTC)"):
        table.add_column(column, overflow="fold")
    for journey, projection in rows:
        due = format_amount(journey.amount_due, journey.currency, "en") if journey.amount_due is not None and journey.currency else ""
        next_action = ""
        if projection and projection.next_action and journey.running:
            next_action = f"{projection.next_action} at {_when(projection.next_action_at)}"
        table.add_row(
            journey.journey_id,
            journey.stage or "",
            journey.customer_id or "",
            due,
            journey.decline_class or "",
            projection.policy_version if projection and projection.policy_version else "",
            next_action,
            _when(journey.started_at),
        )
    console.print(table)


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None


@app.command()
def show(
    journey_id: JourneyArg,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Stage, next action and why, attempts with decline fields, messages and the timeline."""
    settings = Settings()

    async def work():
        client = await temporal(settings)
        status = await ops.journey_status(client, journey_id)
        customer = None if as_json else await ops.journey_customer(client, journey_id)
        return status, customer

    status, customer = run(work)
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    with store_for(settings) as store:
        policy = ops.policy_of(store, status.policy_version)
    zone = ops.journey_zone(customer, policy)
    _print_status(status, zone)


def _print_status(status: JourneyStatus, zone) -> None:
    def local(at: datetime) -> str:
        return at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M")

    amount = format_amount(status.amount, status.currency, "en")
    console.print(f"[bold]{status.journey_id}[/bold]  {status.payment_kind} {status.payment_reference}")
    console.print(f"  stage       [bold]{status.stage.value}[/bold]" + ("  (paused)" if status.paused else "")
                  + ("  (access restricted)" if status.access_restricted else ""))
    console.print(f"  customer    {status.customer_id}, times in {zone.key} and UTC")
    console.print(f"  amount      {amount}" + (f", decline class {status.decline_class}" if status.decline_class else ""))
    variant = f", variant {status.variant}" if status.variant else ""
    console.print(f"  policy      {status.policy_version}, segment {status.segment}{variant}", highlight=False)
    console.print(f"  started     {local(status.started_at)} ({_when(status.started_at)})")
    if status.ended_at:
        console.print(f"  ended       {local(status.ended_at)} ({_when(status.ended_at)}): {status.end_reason}")
    if status.next_action:
        action = status.next_action
        what = " ".join(part for part in (action.kind, action.step_id, action.payment_method_id, action.channel, action.action) if part)
        console.print(f"  next        {what} at {local(action.at)} ({_when(action.at)})")
        console.print(f"  why         {action.reason}", highlight=False)

    attempts = Table(title="attempts")
    for column in ("#", f"local ({zone.key})", "UTC", "method", "step", "status", "decline_code",
                   "network code", "advice_code", "network advice", "class", "why"):
        attempts.add_column(column, overflow="fold")
    for attempt in status.attempts:
        decline = attempt.decline
        attempts.add_row(
            str(attempt.number), local(attempt.at), _when(attempt.at),
            f"{attempt.payment_method_id}" + (f" ({attempt.brand})" if attempt.brand else ""),
            attempt.step_id, attempt.status,
            (decline.decline_code if decline else None) or "", (decline.network_decline_code if decline else None) or "",
            (decline.advice_code if decline else None) or "", (decline.network_advice_code if decline else None) or "",
            attempt.decline_class.value if attempt.decline_class else "", attempt.reason,
        )
    console.print(attempts)

    messages = Table(title="messages")
    for column in ("step", "channel", f"local ({zone.key})", "UTC", "status", "detail"):
        messages.add_column(column, overflow="fold")
    for message in status.messages:
        messages.add_row(message.step_id, message.channel.value, local(message.at), _when(message.at), message.status, message.detail)
    console.print(messages if status.messages else "no messages yet")

    timeline = Table(title="timeline")
    for column in (f"local ({zone.key})", "UTC", "what", "detail"):
        timeline.add_column(column, overflow="fold")
    for entry in status.timeline:
        timeline.add_row(local(entry.at), _when(entry.at), entry.kind, entry.text)
    console.print(timeline)


def _steer(action: ops.SignalAction, journey_id: str, reason: str, actor: str | None) -> None:
    settings = Settings()
    acting = actor_of(actor)
    with store_for(settings) as store:

        async def work() -> ops.ActionResult:
            client = await temporal(settings)
            return await ops.signal_journey(client, store, journey_id, action, reason=reason, actor=acting)

        result = run(work)
    console.print(f"[green]{action}[/green] sent to {result.journey_id} by {result.actor}: {result.reason}", highlight=False)


@app.command()
def pause(journey_id: JourneyArg, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Stop retries and reminders until resumed (e.g. during a dispute)."""
    _steer("pause", journey_id, reason, actor)


@app.command()
def resume(journey_id: JourneyArg, reason: ReasonOption, actor: ActorOption = None) -> None:
    """Continue a paused journey; its remaining steps move later by the time paused."""
    _steer("resume", journey_id, reason, actor)


@app.command()
def cancel(journey_id: JourneyArg, reason: ReasonOption, actor: ActorOption = None) -> None:
    """End the journey as cancelled (no more retries or reminders)."""
    _steer("cancel", journey_id, reason, actor)


@app.command("retry-now")
def retry_now(
    journey_id: JourneyArg,
    reason: ReasonOption,
    actor: ActorOption = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="repeat safely: the same key retries once")
    ] = None,
) -> None:
    """Retry the payment promptly (within the network rules); prints what the journey plans next."""
    settings = Settings()
    acting = actor_of(actor)
    with store_for(settings) as store:

        async def work() -> ops.RetryNowResult:
            client = await temporal(settings)
            return await ops.retry_now(
                client, store, journey_id, reason=reason, actor=acting, idempotency_key=idempotency_key
            )

        result = run(work)
    console.print(f"[green]retry requested[/green] for {result.journey_id} (update {result.update_id})", highlight=False)
    action = result.next_action
    if action is None:
        console.print("the journey has nothing left to do")
    else:
        what = " ".join(part for part in (action.kind, action.step_id, action.payment_method_id) if part)
        console.print(f"next: {what} at {_when(action.at)}\nwhy:  {action.reason}", highlight=False)


def selection(all_open: bool, stage: Stage | None, segment: str | None) -> ops.RolloutSelection | None:
    """The rollout flags of `policy publish` as a selection (None: no rollout)."""
    if not all_open and stage is None and segment is None:
        return None
    try:
        return ops.RolloutSelection(all_open=all_open, stage=stage, segment=segment)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        fail(f"{message} (--rollout-all-open cannot be combined with --rollout-stage/--rollout-segment)", 2)

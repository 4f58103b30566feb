"""`dunning backfill | start | import`: journeys for failures the webhooks did not deliver.

All three start journeys the way the webhook does (signal-with-start, `dunning.triggers`) with
stable event ids — `backfill:<id>`, `manual:<id>`, `import:<reference>` — and skip payments that
already have a journey, so running a command twice starts nothing twice. docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import stripe
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dunning.codec import CodecError
from dunning.config import TASK_QUEUE, Settings, get_settings
from dunning.models import Customer, Decline, FailedPayment, PaymentMethod
from dunning.policies import policy_for_new_journeys
from dunning.store import Store
from dunning.stripe_events import (
    UnusableEvent,
    from_unix,
    id_of,
    invoice_of_payments,
    invoice_payments_query,
    payment_from_intent,
    payment_from_invoice,
)
from dunning.temporal import connect
from dunning.triggers import start_journey

CONNECT_TIMEOUT = 5.0
START_CONCURRENCY = 8
PAGE = 100
FUTURE_SLACK = timedelta(minutes=5)

console = Console()
errors = Console(stderr=True)

TaskQueueOption = Annotated[str, typer.Option("--task-queue", hidden=True, help="task queue of the worker")]


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


# --- starting, shared by the three commands --------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    payment: FailedPayment
    event_id: str


@dataclass(frozen=True)
class Outcome:
    reference: str
    result: str  # started | already open | already ended | failed
    detail: str = ""


async def _start_one(client: Client, candidate: Candidate, version: str, task_queue: str) -> Outcome:
    payment = candidate.payment
    handle = client.get_workflow_handle(payment.journey_id)
    try:
        described = await handle.describe()
    except RPCError as error:
        if error.status != RPCStatusCode.NOT_FOUND:
            return Outcome(payment.id, "failed", f"Temporal: {error.message}")
    else:
        running = described.status == WorkflowExecutionStatus.RUNNING
        return Outcome(payment.id, "already open" if running else "already ended", payment.journey_id)
    try:
        await start_journey(client, payment, policy_version=version, event_id=candidate.event_id, task_queue=task_queue)
    except WorkflowAlreadyStartedError:
        return Outcome(payment.id, "already ended", payment.journey_id)
    except RPCError as error:
        return Outcome(payment.id, "failed", f"Temporal: {error.message}")
    return Outcome(payment.id, "started", payment.journey_id)


async def start_all(
    settings: Settings, candidates: list[Candidate], *, task_queue: str, progress: Progress | None = None
) -> list[Outcome]:
    if not candidates:
        return []
    version = _policy_version(settings)
    client = await _temporal(settings)
    gate = asyncio.Semaphore(START_CONCURRENCY)
    task = progress.add_task("starting journeys", total=len(candidates)) if progress else None

    async def one(candidate: Candidate) -> Outcome:
        async with gate:
            outcome = await _start_one(client, candidate, version, task_queue)
        if progress is not None and task is not None:
            progress.advance(task)
        return outcome

    return list(await asyncio.gather(*(one(c) for c in candidates)))


def _policy_version(settings: Settings) -> str:
    store = Store.from_settings(settings)
    try:
        return policy_for_new_journeys(store).version
    except LookupError as error:
        fail(str(error))
    except SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).splitlines()[0]
        fail(f"the store is unusable ({detail}); check DATABASE_URL and run `dunning db upgrade`")
    finally:
        store.dispose()


async def _temporal(settings: Settings) -> Client:
    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except CodecError as error:
        fail(f"payload encryption: {error}")
    except (RuntimeError, OSError, asyncio.TimeoutError) as error:
        fail(f"Temporal at {settings.temporal_target} is unreachable ({error or 'timed out'}); start it (`make up`) or set TEMPORAL_ADDRESS")


def _summary(outcomes: list[Outcome], skipped: Iterable[tuple[str, str]] = ()) -> None:
    skipped = list(skipped)
    counts = Counter(o.result for o in outcomes)
    table = Table(title="summary", show_header=True)
    table.add_column("outcome")
    table.add_column("payments", justify="right")
    for result in ("started", "already open", "already ended", "failed"):
        table.add_row(result, str(counts.get(result, 0)))
    if skipped:
        table.add_row("skipped", str(len(skipped)))
    console.print(table)
    for outcome in outcomes:
        if outcome.result == "failed":
            errors.print(f"[red]failed[/red] {outcome.reference}: {outcome.detail}", highlight=False)
    for reference, reason in skipped:
        console.print(f"[dim]skipped {reference}: {reason}[/dim]", highlight=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _exit_for(outcomes: list[Outcome]) -> None:
    if any(o.result == "failed" for o in outcomes):
        raise typer.Exit(1)


# --- Stripe ----------------------------------------------------------------------------------------


def _stripe(settings: Settings, what: str) -> stripe.StripeClient:
    if not settings.stripe_api_key:
        fail(f"STRIPE_API_KEY is not set: {what} reads from Stripe (STRIPE_API_BASE points at an emulator)", 2)
    from activities.stripe_gateway import make_client

    return make_client(settings.stripe_api_key, settings.stripe_api_base)


def _attempted(invoice: dict[str, Any]) -> bool:
    return bool(invoice.get("attempted") or (invoice.get("attempt_count") or 0) > 0)


def invoice_failed_at(invoice: dict[str, Any], now: datetime) -> datetime:
    """When the invoice failed, as near as the invoice tells: finalized (the first attempt follows
    within the hour), or its due date for one that was never attempted."""
    due = from_unix(invoice.get("due_date"))
    if not _attempted(invoice) and due is not None and due <= now:
        return due
    finalized = from_unix((invoice.get("status_transitions") or {}).get("finalized_at"))
    return finalized or from_unix(invoice.get("created")) or now


def overdue_reason(invoice: dict[str, Any], now: datetime) -> str | None:
    """Why an invoice needs no journey, or None when it does (open, something due, failed or past due)."""
    if invoice.get("status") != "open":
        return f"invoice is {invoice.get('status')}"
    if (invoice.get("amount_remaining") or 0) <= 0:
        return "nothing remains due"
    due = from_unix(invoice.get("due_date"))
    if not _attempted(invoice) and (due is None or due > now):
        return "not attempted and not yet due"
    return None


def intent_skip_reason(client: stripe.StripeClient, intent: dict[str, Any]) -> str | None:
    """Why a PaymentIntent needs no journey, or None (failed, has a customer, belongs to no invoice)."""
    if intent.get("status") != "requires_payment_method" or not intent.get("last_payment_error"):
        return f"PaymentIntent is {intent.get('status')} without a failed attempt"
    if not intent.get("customer"):
        return "no customer: nothing can be retried off-session"
    invoice = _invoice_of(client, intent)
    if invoice:
        return f"belongs to invoice {invoice} (start that one)"
    return None


def _invoice_of(client: stripe.StripeClient, intent: dict[str, Any]) -> str | None:
    if "invoice" in intent:  # API versions before 2025-03-31 say it directly
        return id_of(intent["invoice"])
    listed = client.v1.invoice_payments.list(invoice_payments_query(intent["id"]))
    return invoice_of_payments(p.to_dict() for p in listed.data)


def intent_failed_at(intent: dict[str, Any]) -> datetime:
    charge = intent.get("latest_charge")
    created = charge.get("created") if isinstance(charge, dict) else None
    return from_unix(created) or from_unix(intent.get("created")) or datetime.now(UTC)


def _stripe_error(error: stripe.StripeError, what: str) -> NoReturn:
    fail(f"Stripe refused {what}: {error.user_message or error} (HTTP {error.http_status or '-'})")


def _parse_when(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date: use YYYY-MM-DD or an ISO-8601 time, e.g. 2026-11-01 or 2026-11-01T12:00:00Z")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # dates are UTC


def backfill(
    since: Annotated[str, typer.Option("--since", help="created on or after this date (YYYY-MM-DD, UTC) or ISO-8601 time")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would start; start nothing")] = False,
    task_queue: TaskQueueOption = TASK_QUEUE,
) -> None:
    """Start journeys whose webhooks were missed: open past-due invoices and failed PaymentIntents."""
    settings = get_settings()
    start = _parse_when(since, "--since")
    now = datetime.now(UTC)
    if start > now:
        fail(f"--since {since} is in the future")
    client = _stripe(settings, "backfill")
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    with _progress() as progress:
        listing = progress.add_task("listing Stripe invoices and PaymentIntents", total=None)
        created = {"gte": int(start.timestamp())}
        try:
            invoices = client.v1.invoices.list({"status": "open", "created": created, "limit": PAGE})
            for invoice in invoices.auto_paging_iter():
                progress.advance(listing)
                raw = invoice.to_dict()
                reason = overdue_reason(raw, now)
                if reason is None:
                    reason = _add(candidates, lambda: payment_from_invoice(raw, invoice_failed_at(raw, now)))
                if reason:
                    skipped.append((raw["id"], reason))
            intents = client.v1.payment_intents.list({"created": created, "limit": PAGE, "expand": ["data.latest_charge"]})
            for intent in intents.auto_paging_iter():
                progress.advance(listing)
                raw = intent.to_dict()
                if raw.get("status") != "requires_payment_method":
                    continue  # succeeded, processing, canceled…: not a failure
                reason = intent_skip_reason(client, raw)
                if reason is None:
                    reason = _add(candidates, lambda: payment_from_intent(raw, intent_failed_at(raw)))
                if reason:
                    skipped.append((raw["id"], reason))
        except stripe.StripeError as error:
            _stripe_error(error, "listing invoices and PaymentIntents")
        progress.update(listing, total=progress.tasks[listing].completed)
        if dry_run:
            for c in candidates:
                console.print(f"would start {c.payment.journey_id} ({c.payment.customer.id}, {c.payment.amount} {c.payment.currency})", highlight=False)
            outcomes: list[Outcome] = []
        else:
            outcomes = asyncio.run(start_all(settings, candidates, task_queue=task_queue, progress=progress))
    _summary(outcomes, skipped)
    _exit_for(outcomes)


def _add(candidates: list[Candidate], build: Callable[[], FailedPayment]) -> str | None:
    """Append the payment as a backfill candidate; why not, when Stripe's object cannot start a journey."""
    try:
        payment = build()
    except UnusableEvent as error:
        return str(error)
    candidates.append(Candidate(payment, f"backfill:{payment.id}"))
    return None


def start(
    invoice: Annotated[str | None, typer.Option("--invoice", help="a Stripe invoice id, in_…")] = None,
    payment_intent: Annotated[str | None, typer.Option("--payment-intent", help="a Stripe PaymentIntent id, pi_…")] = None,
    task_queue: TaskQueueOption = TASK_QUEUE,
) -> None:
    """Start the journey of one failed Stripe invoice or PaymentIntent (read from Stripe)."""
    if (invoice is None) == (payment_intent is None):
        fail("give exactly one of --invoice in_… or --payment-intent pi_…", 2)
    settings = get_settings()
    client = _stripe(settings, "start")
    now = datetime.now(UTC)
    try:
        if invoice is not None:
            raw = client.v1.invoices.retrieve(invoice).to_dict()
            reason = overdue_reason(raw, now)
        else:
            raw = client.v1.payment_intents.retrieve(payment_intent, {"expand": ["latest_charge"]}).to_dict()
            reason = intent_skip_reason(client, raw)
    except stripe.StripeError as error:
        _stripe_error(error, f"reading {invoice or payment_intent}")
    if reason:
        fail(f"{invoice or payment_intent}: {reason}; no journey started")
    try:
        if invoice is not None:
            payment = payment_from_invoice(raw, invoice_failed_at(raw, now))
        else:
            payment = payment_from_intent(raw, intent_failed_at(raw))
    except UnusableEvent as error:
        fail(str(error))
    outcomes = asyncio.run(start_all(settings, [Candidate(payment, f"manual:{payment.id}")], task_queue=task_queue))
    outcome = outcomes[0]
    colour = {"started": "green", "failed": "red"}.get(outcome.result, "yellow")
    console.print(f"[{colour}]{outcome.result}[/{colour}] {payment.journey_id} {outcome.detail if outcome.result == 'failed' else ''}", highlight=False)
    _exit_for(outcomes)


# --- CSV import ------------------------------------------------------------------------------------

COLUMNS: dict[str, str] = {
    "payment_reference": "required: the failed payment's id (in_…, pi_…, or your own), letters, digits, _-:.",
    "customer_id": "required: the customer's id",
    "amount": "required: amount due in minor units (1999 = 19.99)",
    "currency": "required: ISO 4217 code, e.g. usd",
    "failed_at": "required: ISO-8601 time with offset, e.g. 2026-11-01T10:00:00Z",
    "kind": "invoice or payment_intent (default: payment_intent for pi_…, else invoice)",
    "email": "the customer's email",
    "phone": "the customer's phone, E.164 (+14155550100)",
    "name": "the customer's name",
    "country": "ISO 3166-1 alpha-2, e.g. US",
    "timezone": "IANA zone, e.g. America/Chicago",
    "locale": "message language, e.g. en, ja, pt-BR",
    "tags": "segment tags, separated by ;",
    "payment_method_id": "the method that failed",
    "decline_code": "Stripe decline code, e.g. insufficient_funds",
    "network_decline_code": "the card network's code, e.g. 51",
    "advice_code": "Stripe advice code, e.g. try_again_later",
    "network_advice_code": "the network's advice code, e.g. 03",
    "subscription_id": "the subscription the payment belongs to",
    "plan": "plan or price id (segments match on it)",
    "due_date": "ISO-8601 time with offset",
}
REQUIRED = ("payment_reference", "customer_id", "amount", "currency", "failed_at")
_REFERENCE = re.compile(r"^[A-Za-z0-9_\-:.]{1,200}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class RowError:
    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f", {self.column}" if self.column else "") + f": {self.message}"


def _aware_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2026-11-01T10:00:00Z")
    return parsed.astimezone(UTC)  # the engine keeps UTC


def _row_payment(row: dict[str, str | None], now: datetime) -> tuple[FailedPayment | None, list[tuple[str | None, str]]]:
    problems: list[tuple[str | None, str]] = []
    value = {k: (v.strip() if isinstance(v, str) else None) or None for k, v in row.items()}
    for column in REQUIRED:
        if not value.get(column):
            problems.append((column, "is required"))
    reference = value.get("payment_reference")
    if reference and not _REFERENCE.match(reference):
        problems.append(("payment_reference", f"{reference!r} may only use letters, digits and _-:. (at most 200)"))
    amount: int | None = None
    if value.get("amount"):
        if not value["amount"].isdigit() or int(value["amount"]) <= 0:
            problems.append(("amount", f"{value['amount']!r} is not a positive whole number of minor units (1999 for 19.99)"))
        else:
            amount = int(value["amount"])
    currency = value.get("currency")
    if currency and not re.fullmatch(r"[A-Za-z]{3}", currency):
        problems.append(("currency", f"{currency!r} is not a 3-letter ISO 4217 code"))
    times: dict[str, datetime] = {}
    for column in ("failed_at", "due_date"):
        if value.get(column):
            try:
                times[column] = _aware_time(value[column])
            except ValueError as error:
                problems.append((column, f"{value[column]!r} is not an ISO-8601 time with offset ({error})"))
    if "failed_at" in times and times["failed_at"] > now + FUTURE_SLACK:
        problems.append(("failed_at", f"{value['failed_at']} is in the future"))
    kind = value.get("kind")
    if kind and kind not in ("invoice", "payment_intent"):
        problems.append(("kind", f"{kind!r} is neither invoice nor payment_intent"))
    email = value.get("email")
    if email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        problems.append(("email", f"{email!r} is not an email address"))
    phone = value.get("phone")
    if phone:
        try:
            parsed = phonenumbers.parse(phone, None)
            if not phonenumbers.is_valid_number(parsed):
                raise phonenumbers.NumberParseException(0, "not a valid number")
        except phonenumbers.NumberParseException:
            problems.append(("phone", f"{phone!r} is not a valid E.164 number (e.g. +14155550100)"))
    zone = value.get("timezone")
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(("timezone", f"{zone!r} is not an IANA time zone (e.g. Europe/Paris)"))
    locale = value.get("locale")
    if locale and not _LOCALE.match(locale):
        problems.append(("locale", f"{locale!r} is not a language tag (e.g. en, pt-BR)"))
    country = value.get("country")
    if country and not re.fullmatch(r"[A-Za-z]{2}", country):
        problems.append(("country", f"{country!r} is not a 2-letter ISO 3166 code"))
    if problems:
        return None, problems
    method = value.get("payment_method_id")
    try:
        payment = FailedPayment(
            id=reference,
            kind=kind,
            amount=amount,
            currency=currency,
            failed_at=times["failed_at"],
            due_date=times.get("due_date"),
            customer=Customer(
                id=value["customer_id"],
                name=value.get("name"),
                email=email,
                phone=phone,
                country=country.upper() if country else None,
                timezone=zone,
                locale=locale or "en",
                tags=tuple(t.strip() for t in (value.get("tags") or "").split(";") if t.strip()),
            ),
            payment_methods=(PaymentMethod(id=method, default=True),) if method else (),
            initial_decline=Decline(
                payment_method=method,
                decline_code=value.get("decline_code"),
                network_decline_code=value.get("network_decline_code"),
                advice_code=value.get("advice_code"),
                network_advice_code=value.get("network_advice_code"),
            ),
            subscription_id=value.get("subscription_id"),
            plan=value.get("plan"),
        )
    except ValidationError as error:
        return None, [(".".join(str(p) for p in e["loc"]) or None, e["msg"]) for e in error.errors()]
    return payment, []


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    """(first line of the row, row); raises ValueError for a bad header."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ValueError("the file is empty: the first line must name the columns")
        unknown = [h for h in header if h not in COLUMNS]
        missing = [c for c in REQUIRED if c not in header]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown column(s) {', '.join(unknown)}")
            if missing:
                parts.append(f"missing required column(s) {', '.join(missing)}")
            raise ValueError(f"line 1: {'; '.join(parts)}; the columns are: {', '.join(COLUMNS)}")
        reader.fieldnames = header
        line = reader.line_num + 1
        for row in reader:
            if None in row:
                extra = row.pop(None)
                yield line, {**row, "__extra__": f"{len(extra)} more value(s) than columns"}
            else:
                yield line, row
            line = reader.line_num + 1


def read_import(path: Path, now: datetime | None = None) -> tuple[list[FailedPayment], list[RowError]]:
    """Every row validated; all problems with their line numbers."""
    now = now or datetime.now(UTC)
    payments: list[FailedPayment] = []
    problems: list[RowError] = []
    seen: dict[str, int] = {}
    try:
        rows = list(_rows(path))
    except UnicodeDecodeError:
        return [], [RowError(1, None, f"{path} is not UTF-8 text")]
    except ValueError as error:
        return [], [RowError(1, None, str(error).removeprefix("line 1: "))]
    except csv.Error as error:
        return [], [RowError(1, None, f"not a readable CSV file ({error})")]
    if not rows:
        return [], [RowError(2, None, "no rows after the header")]
    for line, row in rows:
        extra = row.pop("__extra__", None)
        if extra:
            problems.append(RowError(line, None, extra))
            continue
        payment, row_problems = _row_payment(row, now)
        problems += [RowError(line, column, message) for column, message in row_problems]
        if payment is None:
            continue
        if payment.id in seen:
            problems.append(RowError(line, "payment_reference", f"{payment.id} repeats line {seen[payment.id]}"))
            continue
        seen[payment.id] = line
        payments.append(payment)
    return payments, problems


def import_file(
    file: Annotated[Path, typer.Argument(help="CSV with the columns in docs/webhooks.md", exists=True, dir_okay=False, readable=True)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate only; start nothing")] = False,
    task_queue: TaskQueueOption = TASK_QUEUE,
) -> None:
    """Start journeys for failed payments from elsewhere (CSV). Every row is checked first; one bad row starts nothing."""
    payments, problems = read_import(file)
    if problems:
        for problem in problems:
            errors.print(f"{file}: {problem}", highlight=False)
        fail(f"{len(problems)} problem(s) in {file}; nothing was started. Fix them and run again.")
    console.print(f"{file}: {len(payments)} valid row(s)", highlight=False)
    if dry_run:
        return
    settings = get_settings()
    candidates = [Candidate(p, f"import:{p.id}") for p in payments]
    with _progress() as progress:
        outcomes = asyncio.run(start_all(settings, candidates, task_queue=task_queue, progress=progress))
    _summary(outcomes)
    _exit_for(outcomes)


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill)
    app.command("start")(start)
    app.command("import")(import_file)



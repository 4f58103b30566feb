"""`dunning collections`: the collection partner's exports, recalls and reconciliation."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy

from dunning.collections import CollectionsConfigError, record_recall
from dunning.collections.config import parse_timezone
from dunning.collections.export import (
    WORKFLOW_NAME,
    ExportInput,
    ExportResult,
    business_date_for,
    export_workflow_id,
)
from dunning.collections.reconciliation import COLUMNS, ReconciliationError, import_file
from dunning.collections.schema import schema_text
from dunning.config import TASK_QUEUE, get_settings
from dunning.models import journey_id_for
from dunning.store import Store
from dunning.store.records import COLLECTION_STATUSES

app = typer.Typer(help="Exports for the collection partner, recalls and reconciliation.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.print(f"[red]--date: {value!r} is not a date; use YYYY-MM-DD, e.g. 2026-11-23[/red]")
        raise typer.Exit(2) from None


async def run_export(
    client: Client, business_date: date, *, task_queue: str = TASK_QUEUE, timeout: float = 900.0
) -> ExportResult:
    """Start `collections-export-<date>` (or join the run already going) and wait for its result."""
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        ExportInput(business_date=business_date),
        id=export_workflow_id(business_date),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=ExportResult,
    )
    return await asyncio.wait_for(handle.result(), timeout)


@app.command()
def export(
    day: Annotated[str | None, typer.Option("--date", help="business date YYYY-MM-DD [today, merchant zone]")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the delivery", min=1)] = 900.0,
) -> None:
    """Build and deliver one business date's batch now (a re-run re-delivers identical files)."""
    settings = get_settings()
    try:
        zone = parse_timezone(settings.dunning_merchant_timezone)
    except CollectionsConfigError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    business_date = _date(day) or business_date_for(datetime.now(UTC), zone)
    if business_date > business_date_for(datetime.now(UTC), zone):
        errors.print(f"[red]--date {business_date} is in the future (merchant zone {zone}); export today or earlier[/red]")
        raise typer.Exit(2)

    async def main() -> ExportResult:
        from dunning.temporal import connect

        return await run_export(await connect(settings), business_date, timeout=timeout)

    try:
        result = asyncio.run(main())
    except TimeoutError:
        errors.print(
            f"[yellow]still running after {timeout:.0f}s: workflow {export_workflow_id(business_date)} "
            "keeps retrying; follow it in the Temporal UI[/yellow]"
        )
        raise typer.Exit(2) from None
    except WorkflowFailureError as exc:
        cause = exc.cause
        errors.print(f"[red]export {business_date} failed: {getattr(cause, 'message', None) or cause or exc}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[green]delivered[/green] {result.export_id} ({result.business_date}): {result.placements} placement(s), "
        f"{result.recalls} recall(s) to {result.destination}"
    )
    for file in result.files:
        console.print(f"  {file.name}  {file.records} record(s)  sha256 {file.sha256}", highlight=False)


@app.command("import")
def import_(file: Annotated[Path, typer.Argument(help=f"partner report CSV: {','.join(COLUMNS)}")]) -> None:
    """Apply the partner's collection report; any bad row refuses the whole file (nothing applied)."""
    if not file.is_file():
        errors.print(f"[red]{file}: no such file[/red]")
        raise typer.Exit(2)
    store = Store.from_settings(get_settings())
    try:
        count = import_file(store, file, at=datetime.now(UTC))
    except ReconciliationError as exc:
        errors.print(f"[red]{file}: {len(exc.errors)} problem(s); nothing was applied[/red]")
        for problem in exc.errors:
            errors.print(f"  {file}:{problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[green]applied[/green] {count} row(s) from {file}")


@app.command()
def recall(
    payment_reference: Annotated[str, typer.Argument(help="Stripe invoice (in_…) or PaymentIntent (pi_…) id")],
    source: Annotated[str, typer.Option(help="where the payment was seen")] = "ops",
) -> None:
    """Recall a placement whose customer paid out of band; the next export carries the recall."""
    store = Store.from_settings(get_settings())
    try:
        recalled = record_recall(store, payment_reference, datetime.now(UTC), source)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if recalled:
        console.print(f"[green]recalled[/green] {payment_reference}: the next export tells the partner")
        return
    placement = store.placement_for_journey(journey_id_for(payment_reference.strip()))
    if placement is None:
        errors.print(f"[red]{payment_reference} was never placed with the collection partner[/red]")
        raise typer.Exit(1)
    console.print(f"{payment_reference} was already recalled at {placement.recalled_at:%Y-%m-%d %H:%M} UTC")


@app.command()
def report(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """Placed, recalled and collected amounts per currency, and the latest exports."""
    store = Store.from_settings(get_settings())
    summary, exports = store.collections_summary(), store.list_exports(limit=10)
    if as_json:
        data = {
            "currencies": summary,
            "exports": [e.model_dump(mode="json", include={"export_id", "business_date", "delivered_at", "destination"}) for e in exports],
        }
        console.print_json(json.dumps(data))
        return
    table = Table("currency", "placed", "amount", "recalled", "collected", *COLLECTION_STATUSES)
    for row in summary:
        statuses = row["statuses"]
        table.add_row(
            row["currency"], str(row["placements"]), str(row["placed_amount"]), str(row["recalled"]),
            str(row["collected_amount"]), *(str(statuses[s]) for s in COLLECTION_STATUSES),
        )
    console.print(table)
    for export_ in exports:
        state = f"delivered {export_.delivered_at:%Y-%m-%d %H:%M} UTC to {export_.destination}" if export_.delivered_at else "[yellow]NOT delivered[/yellow]"
        console.print(f"  {export_.export_id}: {state}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the exported records."""
    typer.echo(schema_text(), nl=False)

"""`dunning demo`: watch six compressed journeys on the sandbox gateway, start to finish."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from activities.payments import build_gateway
from activities.sandbox import SandboxGateway
from dunning import demo as stories
from dunning.config import TASK_QUEUE, get_settings
from dunning.policies import publish
from dunning.store import Store
from dunning.temporal import connect

DEMO_POLICY = Path(__file__).resolve().parents[2] / "policies" / "demo.yaml"
console = Console()


def demo(
    policy: Annotated[Path, typer.Option(help="compressed policy the demo journeys run on")] = DEMO_POLICY,
    wait: Annotated[bool, typer.Option(help="follow the journeys until they all end")] = True,
) -> None:
    """Start six journeys with different stories on the sandbox gateway and follow them live.

    Needs the running stack (`make up`). The demo journeys run on the compressed demo policy;
    journeys started by real failures keep using the active policy.
    """
    settings = get_settings()
    if settings.stripe_api_key:
        console.print("[red]the demo runs on the sandbox gateway: unset STRIPE_API_KEY for the stack and this command[/red]")
        raise typer.Exit(2)
    store = Store.from_settings(settings)
    store.upgrade()
    _, record = publish(store, policy, published_by="demo")
    gateway = build_gateway(settings)
    assert isinstance(gateway, SandboxGateway)
    asyncio.run(_run(settings, gateway, record.version, wait))


async def _run(settings, gateway: SandboxGateway, version: str, wait: bool) -> None:
    try:
        client = await connect(settings)
    except RuntimeError as exc:
        console.print(f"[red]cannot reach Temporal at {settings.temporal_target}: {exc}. Is `make up` running?[/red]")
        raise typer.Exit(1) from exc
    running = await stories.start(client, gateway, version, task_queue=TASK_QUEUE)
    console.print(f"started {len(running)} journeys on policy {version}; follow them in the Temporal UI or the dashboard")
    if not wait:
        for item in running:
            console.print(f"  {item.handle.id}: {item.story.title}")
        return
    with Live(_table(running), console=console, refresh_per_second=2) as live:
        await stories.wait_for_all(running, gateway, on_tick=lambda items: live.update(_table(items)))


def _table(running) -> Table:
    table = Table(title="dunning demo — sandbox gateway, outbox, demo policy (1 day = 4 s)")
    for column in ("journey", "story", "stage", "retries", "messages", "next"):
        table.add_column(column, overflow="fold")
    now = datetime.now(timezone.utc)
    for item in running:
        status = item.status
        if status is None:
            table.add_row(item.handle.id, item.story.title, "starting", "", "", "")
            continue
        retries = [a for a in status.attempts if a.number > 0]
        sent = sum(1 for m in status.messages if m.status == "sent")
        upcoming = ""
        if status.next_action is not None:
            seconds = max(0, int((status.next_action.at - now).total_seconds()))
            upcoming = f"{status.next_action.kind} {status.next_action.step_id or ''} in {seconds}s"
        stage_style = {"recovered": "green", "handed_off": "yellow", "cancelled": "red"}.get(status.stage.value, "cyan")
        table.add_row(
            item.handle.id,
            item.story.title,
            f"[{stage_style}]{status.stage.value}[/{stage_style}]",
            ", ".join(f"{a.payment_method_id.rsplit('_', 1)[0]}:{a.status}" for a in retries) or "—",
            str(sent),
            upcoming or (status.end_reason or ""),
        )
    return table

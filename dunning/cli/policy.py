"""`dunning policy`: check, explain and compare retry policies before they touch a customer."""

from __future__ import annotations

import json
from datetime import timezone
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dunning import offline, ops
from dunning.cli import journeys as shared
from dunning.config import Settings
from dunning.durations import format_duration
from dunning.enums import Stage
from dunning.models import FailedPayment
from dunning.policy import Policy, PolicyError, load_policy
from dunning.timing import customer_zone

app = typer.Typer(help="Check, explain and compare policies.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

EXPLAINED_KINDS = {"attempt": "attempt", "message": "message", "escalation": "escalation"}


def _load(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        errors.print(f"[red]{exc.source}: invalid policy[/red]")
        for problem in exc.problems:
            errors.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def check(file: Annotated[Path, typer.Argument(help="policy YAML file")]) -> None:
    """Validate a policy; exit 1 with errors naming the line, step, field and fix."""
    policy = _load(file)
    ladders = 1 + len(policy.segments)
    console.print(
        f"[green]ok[/green] {file}: policy {policy.version}, {len(policy.steps)} steps, "
        f"{ladders} ladder(s), window {format_duration(policy.window)}"
    )


def _failure(value: str) -> FailedPayment:
    """--failure takes inline JSON or the path of a JSON file (one scenario line)."""
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            errors.print(f"[red]--failure: {value!r} is neither JSON nor a readable file[/red]")
            raise typer.Exit(2)
        text = path.read_text(encoding="utf-8")
    try:
        return FailedPayment.model_validate_json(text)
    except ValidationError as exc:
        errors.print("[red]--failure is not a valid failed payment:[/red]")
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            errors.print(f"  - {where}: {error['msg']}", markup=False, highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="policy YAML file")],
    failure: Annotated[str, typer.Option("--failure", help="failed payment as JSON, or a JSON file")],
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Plan a whole journey for one failure, assuming every attempt declines like the first."""
    policy = _load(file)
    payment = _failure(failure)
    state, executed = offline.play(policy, payment, offline.decline_like_initial(payment))
    if as_json:
        actions = [
            {
                "at": e.at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
                "type": EXPLAINED_KINDS[e.decision.kind],
                "payment_method": e.decision.payment_method_id,
                "channel": e.decision.channel.value if e.decision.channel else None,
                "action": e.decision.action.value if e.decision.action else None,
                "step": e.decision.step_id,
                "reason": e.decision.reason,
            }
            for e in executed
            if e.decision.kind in EXPLAINED_KINDS
        ]
        typer.echo(json.dumps({"policy": policy.version, "segment": state.segment, "actions": actions}, indent=2))
        return
    zone = customer_zone(payment.customer, None, policy.timing.merchant_timezone)
    table = Table(title=f"{payment.id}: policy {policy.version}, segment {state.segment} (times in {zone.key})")
    for column in ("local time", "day", "what", "step", "on", "why"):
        table.add_column(column, overflow="fold")
    for e in executed:
        decision = e.decision
        if decision.kind == "finish":
            continue
        target = decision.payment_method_id or (decision.channel.value if decision.channel else "") or (
            decision.action.value if decision.action else ""
        )
        style = "dim" if decision.kind == "skip" else None
        table.add_row(
            e.at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M"),
            f"{(e.at - payment.failed_at).total_seconds() / 86400:.1f}",
            decision.kind,
            decision.step_id or "",
            target,
            decision.reason,
            style=style,
        )
    console.print(table)
    console.print(f"ends as [bold]{state.stage.value}[/bold]: {state.end_reason}")


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="current policy")],
    b: Annotated[Path, typer.Argument(help="proposed policy")],
) -> None:
    """Show what changes between two policies: settings and steps, by step id."""
    old, new = _load(a), _load(b)
    changes = _setting_changes(old, new) + _step_changes(old, new)
    if not changes:
        console.print(f"no differences in behaviour between {old.version} and {new.version}")
        return
    table = Table(title=f"{old.version} → {new.version}")
    for column in ("where", "before", "after"):
        table.add_column(column, overflow="fold")
    for where, before, after in changes:
        table.add_row(where, before, after)
    console.print(table)


def _flatten(value: object, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(value)}


def _setting_changes(old: Policy, new: Policy) -> list[tuple[str, str, str]]:
    skip = {"steps", "on_recovery", "segments", "version", "description"}
    before = _flatten(old.model_dump(mode="json", exclude=skip))
    after = _flatten(new.model_dump(mode="json", exclude=skip))
    return [
        (key, before.get(key, "—"), after.get(key, "—"))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def _step_changes(old: Policy, new: Policy) -> list[tuple[str, str, str]]:
    changes = []
    for label, old_steps, new_steps in (
        ("steps", old.steps, new.steps),
        ("on_recovery", old.on_recovery, new.on_recovery),
    ):
        before = {s.id: s.model_dump(mode="json", exclude={"why"}) for s in old_steps}
        after = {s.id: s.model_dump(mode="json", exclude={"why"}) for s in new_steps}
        for step_id in list(dict.fromkeys([*before, *after])):
            if before.get(step_id) != after.get(step_id):
                changes.append((f"{label}.{step_id}", _step_text(before.get(step_id)), _step_text(after.get(step_id))))
    old_segments = json.dumps(old.model_dump(mode="json")["segments"], sort_keys=True)
    new_segments = json.dumps(new.model_dump(mode="json")["segments"], sort_keys=True)
    if old_segments != new_segments:
        changes.append(("segments", f"{len(old.segments)} segment(s)", f"{len(new.segments)} segment(s), changed"))
    return changes


def _step_text(step: dict | None) -> str:
    if step is None:
        return "—"
    extras = [f"{k}={v}" for k, v in step.items() if k not in ("id", "at", "action") and v not in (None, [], "1d")]
    return f"{step['action']} at {step['at']}" + (f" ({', '.join(extras)})" if extras else "")


# --- publish / list: versions in the store (shared logic in dunning.ops) ----------------------


@app.command()
def publish(
    file: Annotated[Path, typer.Argument(help="policy YAML file")],
    reason: Annotated[str, typer.Option("--reason", help="why (audited; sent to journeys on rollout)")],
    activate: Annotated[bool, typer.Option("--activate", help="make it the version new journeys start on")] = False,
    rollout_all_open: Annotated[bool, typer.Option("--rollout-all-open", help="move every open journey onto it")] = False,
    rollout_stage: Annotated[Stage | None, typer.Option("--rollout-stage", help="move open journeys in this stage")] = None,
    rollout_segment: Annotated[str | None, typer.Option("--rollout-segment", help="move open journeys in this segment")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="who is acting (default: $USER)")] = None,
) -> None:
    """Validate and publish a policy version (the same text is the same version)."""
    scope = shared.selection(rollout_all_open, rollout_stage, rollout_segment)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        shared.fail(f"cannot read {file}: {exc}")
    settings, acting = Settings(), shared.actor_of(actor)
    with shared.store_for(settings) as store:
        try:
            result = ops.publish_policy(store, text, actor=acting, reason=reason, activate=activate, source=str(file))
        except PolicyError as exc:
            errors.print(f"[red]{exc.source}: invalid policy, nothing published[/red]")
            for problem in exc.problems:
                errors.print(f"  - {problem}", markup=False, highlight=False)
            raise typer.Exit(1) from exc
        except ops.OpsError as exc:
            shared.fail(str(exc))
        if result.created:
            console.print(f"[green]published[/green] {result.version} by {acting}", highlight=False)
        else:
            console.print(
                f"{result.version} is already published (same text, by {result.published_by}); no new version",
                highlight=False,
            )
        if result.activated:
            console.print(f"[green]activated[/green]: new journeys start on {result.version}", highlight=False)
        elif activate:
            console.print(f"{result.version} was already the version new journeys start on", highlight=False)
        if scope is None:
            return

        async def roll() -> ops.RolloutReport:
            client = await shared.temporal(settings)
            with shared.rollout_progress() as progress:
                task = progress.add_task("rollout", total=None)
                return await ops.rollout(
                    client, store, result.version, scope, reason=reason, actor=acting,
                    on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                )

        report = shared.run(roll)
    console.print(
        f"rollout to {report.version} ({report.selection}): matched {report.matched}, moved {len(report.moved)}, "
        f"already on it {len(report.already_on_version)}, ended meanwhile {len(report.ended)}, failed {len(report.failed)}",
        highlight=False,
    )
    for journey_id, why in sorted(report.failed.items()):
        errors.print(f"  - {journey_id}: {why}", markup=False, highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("list")
def list_versions(
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Published versions, newest first: who published them, when, and which one is active."""
    with shared.store_for(Settings()) as store:
        policies = ops.list_policies(store)
    if as_json:
        typer.echo(json.dumps({"policies": [p.model_dump(mode="json") for p in policies]}, indent=2))
        return
    if not policies:
        console.print("no policy is published yet: `dunning policy publish FILE --activate --reason ...`")
        return
    table = Table(title="policy versions (* = new journeys start on it)")
    for column in ("", "version", "published by", "published (UTC)", "last activated"):
        table.add_column(column, overflow="fold")
    for p in policies:
        last = p.activations[-1] if p.activations else None
        table.add_row(
            "*" if p.active else "",
            p.version,
            p.published_by,
            p.published_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            f"{last.at.astimezone(timezone.utc):%Y-%m-%d %H:%M} by {last.by}" if last else "",
        )
    console.print(table)

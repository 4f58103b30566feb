"""`dunning simulate` and `dunning scenarios generate`: backtest policies on scenario files."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dunning import generator
from dunning.cli.policy import _load as load_policy_or_exit
from dunning.scenarios import ScenarioError
from dunning.simulate import Simulation, minor_unit_exponent, simulate_file

console = Console()
errors = Console(stderr=True)
scenarios_app = typer.Typer(help="Make scenario files for `dunning simulate`.", no_args_is_help=True)


def simulate(
    policy: Annotated[Path, typer.Option("--policy", help="policy YAML to evaluate")],
    scenarios: Annotated[Path, typer.Option("--scenarios", help="scenario file (JSON Lines, docs/scenarios.md)")],
    baseline: Annotated[Path | None, typer.Option("--baseline", help="policy YAML to compare against")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="write every simulated event of --policy here (JSON Lines)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of cumulative recovery by day")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="processes (default: every core)")] = None,
) -> None:
    """Run every scenario through the policy engine (no Temporal) and report what it recovers.

    Exit status 1 when the evaluated policy breaks a network or messaging rule, 2 for bad input.
    """
    evaluated = load_policy_or_exit(policy)
    compared = load_policy_or_exit(baseline) if baseline is not None else None
    if not scenarios.is_file():
        typer.echo(f"--scenarios: {scenarios} is not a readable file", err=True)
        raise typer.Exit(2)
    sink = open(events, "w", encoding="utf-8") if events is not None else None
    try:
        result = _run(scenarios, evaluated, compared, sink, workers)
    except ScenarioError as error:
        typer.echo(f"invalid scenario: {error}", err=True)
        raise typer.Exit(2) from None
    finally:
        if sink is not None:
            sink.close()
    report = result.to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    if plot is not None:
        _plot(result, plot)
        if not as_json:
            console.print(f"cumulative recovery by day: {plot}")
    broken = report["policy"]["violations"]
    if broken["network"] or broken["messaging"]:
        raise typer.Exit(1)


def _run(scenarios: Path, evaluated, compared, sink, workers: int | None) -> Simulation:
    progress = Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("journeys"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=errors, transient=True,
    )
    task = progress.add_task("simulate", total=None)

    def started(total: int) -> None:
        # shown once the worker processes exist: its refresh thread must not be forked
        progress.update(task, total=total)
        progress.start()

    try:
        return simulate_file(
            scenarios,
            evaluated,
            baseline=compared,
            events=(lambda line: sink.write(line + "\n")) if sink is not None else None,
            workers=workers,
            progress=lambda n: progress.advance(task, n),
            on_start=started,
        )
    finally:
        progress.stop()


# --- the table ---------------------------------------------------------------------------------


def _money(minor: int, currency: str) -> str:
    exponent = minor_unit_exponent(currency)
    return f"{minor / 10 ** exponent:,.{exponent}f}"


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _signed(value: Any, kind: str = "num", currency: str | None = None) -> str:
    if value is None:
        return "—"
    sign = "+" if value > 0 else ""
    if kind == "pct":
        return f"{sign}{value * 100:.1f} pp"
    if kind == "money" and currency:
        return sign + _money(int(value), currency)
    return sign + _num(value)


def _rows(report: dict[str, Any]) -> list[tuple[str, str, Any, str]]:
    """(label, shown value, raw value for the delta, delta kind)."""
    rows: list[tuple[str, str, Any, str]] = [
        ("journeys", _num(report["journeys"]), report["journeys"], "num"),
        ("recovered", f"{_num(report['recovered']['count'])} ({_pct(report['recovered']['rate'])})", report["recovered"]["rate"], "pct"),
    ]
    for name in ("handed_off", "cancelled", "disputed"):
        rows.append((f"  {name.replace('_', ' ')}", _num(report["results"][name]), report["results"][name], "num"))
    for currency, money in report["recovered_amount"].items():
        rows.append((
            f"recovered {currency.upper()}",
            f"{_money(money['recovered'], currency)} of {_money(money['due'], currency)} ({_pct(money['rate'])})",
            money["rate"], "pct",
        ))
    rows += [
        ("charge attempts", _num(report["attempts"]["total"]), report["attempts"]["total"], "num"),
        ("  per recovery", _num(report["attempts"]["per_recovery"]), report["attempts"]["per_recovery"], "num"),
    ]
    for channel, count in report["messages"]["by_channel"].items():
        rows.append((f"messages {channel}", _num(count), count, "num"))
    rows += [
        ("  per journey", _num(report["messages"]["per_journey"]), report["messages"]["per_journey"], "num"),
        ("days to recovery, median", _num(report["days_to_recovery"]["median"]), report["days_to_recovery"]["median"], "num"),
        ("days to recovery, p90", _num(report["days_to_recovery"]["p90"]), report["days_to_recovery"]["p90"], "num"),
        ("network-rule violations", _num(report["violations"]["network"]), report["violations"]["network"], "num"),
        ("messaging-rule violations", _num(report["violations"]["messaging"]), report["violations"]["messaging"], "num"),
    ]
    return rows


def _table(title: str, reports: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=title)
    table.add_column("")
    for name, _ in reports:
        table.add_column(name, justify="right")
    if len(reports) == 2:
        table.add_column("Δ", justify="right")
    columns = [_rows(report) for _, report in reports]
    for index, (label, *_rest) in enumerate(columns[0]):
        cells = [label]
        for rows in columns:
            cells.append(rows[index][1] if index < len(rows) and rows[index][0] == label else "—")
        if len(columns) == 2 and index < len(columns[1]) and columns[1][index][0] == label:
            (_, _, a, kind), (_, _, b, _) = columns[0][index], columns[1][index]
            cells.append(_signed(a - b if a is not None and b is not None else None, kind))
        elif len(columns) == 2:
            cells.append("—")
        table.add_row(*cells)
    return table


def _print(report: dict[str, Any]) -> None:
    policy, baseline = report["policy"], report["baseline"]
    reports = [(policy["policy"], policy)] + ([(baseline["policy"], baseline)] if baseline else [])
    console.print(_table("simulated journeys", reports))
    for variant in report["variants"]:
        title = (
            f"segment {variant['segment']}, variant {variant['variant']} (weight {variant['weight']}; "
            f"{variant['assigned']} journeys assigned by the split; below: every journey of the segment on this variant)"
        )
        console.print(_table(title, [(variant["variant"], variant["report"])]))
    for name, data in reports:
        for example in data["violations"]["examples"]:
            errors.print(f"[red]{name}: {example}[/red]", highlight=False)


def _plot(result: Simulation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    for report in [result.policy] + ([result.baseline] if result.baseline else []):
        shares = report.cumulative_recovery()
        axes.step(range(len(shares)), [s * 100 for s in shares], where="post", label=report.policy)
    axes.set_xlabel("days since the failure")
    axes.set_ylabel("journeys recovered (%)")
    axes.set_title("cumulative recovery by day")
    axes.set_xlim(0, 60)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


# --- scenarios generate ----------------------------------------------------------------------------


@scenarios_app.command("generate")
def generate(
    count: Annotated[int, typer.Argument(min=0, help="how many scenarios")],
    seed: Annotated[int, typer.Option("--seed", help="the same seed always gives the same file")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: standard output)")] = None,
    start: Annotated[str, typer.Option("--start", help="first failure day, ISO-8601 with offset")] = generator.DEFAULT_START.isoformat(),
) -> None:
    """Write N plausible scenarios (mix documented in docs/scenarios.md) as JSON Lines."""
    try:
        first = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        typer.echo(f"--start: {start!r} is not an ISO-8601 date-time", err=True)
        raise typer.Exit(2) from None
    if first.tzinfo is None:
        typer.echo("--start must include a UTC offset, e.g. 2026-11-01T00:00:00Z", err=True)
        raise typer.Exit(2)
    if out is None:
        generator.write(count, seed, sys.stdout, first)
        return
    with open(out, "w", encoding="utf-8") as handle:
        written = generator.write(count, seed, handle, first)
    errors.print(f"wrote {written} scenarios to {out}")

"""The `dunning` command line."""

import typer

from dunning.cli import collections, db, policy
from dunning.cli import journeys
from dunning.cli import report
from dunning.cli import triggers
from dunning.cli import simulate
from dunning.cli import demo

app = typer.Typer(
    name="dunning",
    help="Open dunning and collections engine: policies, journeys, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(policy.app, name="policy")
app.add_typer(db.app, name="db")
app.add_typer(collections.app, name="collections")
app.command("report")(report.report)
app.add_typer(journeys.app, name="journeys")
triggers.register(app)  # backfill, start, import
app.command("simulate")(simulate.simulate)
app.add_typer(simulate.scenarios_app, name="scenarios")
app.command("demo")(demo.demo)

"""The `dunning` command line."""

import typer

from dunning.cli import db, policy

app = typer.Typer(
    name="dunning",
    help="Open dunning and collections engine: policies, journeys, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(policy.app, name="policy")
app.add_typer(db.app, name="db")

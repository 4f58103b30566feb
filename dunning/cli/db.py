"""`dunning db`: the store's schema."""

import typer
from rich.console import Console

from dunning.config import get_settings
from dunning.store import Store

app = typer.Typer(help="The store's database.", no_args_is_help=True)
console = Console()


@app.command()
def upgrade() -> None:
    """Create or migrate the store's tables (SQLite by default, DATABASE_URL for PostgreSQL)."""
    settings = get_settings()
    store = Store.from_settings(settings)
    store.upgrade()
    console.print(f"[green]store is at the latest schema[/green] ({_redacted(settings.store_url)})")


def _redacted(url: str) -> str:
    """Never print a database password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

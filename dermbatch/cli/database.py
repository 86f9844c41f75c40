"""`dermbatch db upgrade`: create or migrate the schema."""

from __future__ import annotations

import typer

from dermbatch.db.migrate import upgrade_database
from dermbatch.settings import get_settings

db_app = typer.Typer(help="Manage the results database.", no_args_is_help=True)


@db_app.command("upgrade")
def upgrade() -> None:
    """Create the schema or migrate it to the newest revision (safe to run again)."""
    settings = get_settings()
    upgrade_database(settings.database_url)
    typer.echo(f"database schema is up to date ({_redacted(settings.database_url)})")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")

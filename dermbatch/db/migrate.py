"""Schema migrations with Alembic, run from code so that no alembic.ini is needed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dermbatch.db.engine import get_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str | None = None) -> None:
    """Create or upgrade the schema to the newest revision (safe to repeat)."""
    engine = get_engine(url)
    config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_is_current(url: str | None = None) -> bool:
    """Return whether the database's schema revision is the newest one."""
    engine = get_engine(url)
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head


def require_schema(url: str | None = None) -> None:
    """Raise DermbatchError unless the database exists and has dermbatch's tables.

    A missing SQLite file is reported without being created, as a read command must not
    leave an empty database behind.
    """
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from dermbatch.errors import DermbatchError
    from dermbatch.settings import get_settings

    url = url or get_settings().database_url
    parsed = make_url(url)
    display_url = parsed.render_as_string(hide_password=True)
    advice = "run `dermbatch classify FOLDER` first, or set DERMBATCH_DATABASE_URL to the database of your jobs"
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).is_file():
            raise DermbatchError(f"database {display_url} does not exist (relative to {Path.cwd()}); {advice}")
    if not inspect(get_engine(url)).has_table("jobs"):
        raise DermbatchError(f"database {display_url} has no dermbatch tables; {advice}")

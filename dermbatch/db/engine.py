"""Engines and sessions, one engine per process and database URL.

An engine's connection pool must never cross a fork, so engines are keyed by process id:
a Celery child process that inherits its parent's engine gets a new one on first use.
SQLite runs in WAL mode with a busy timeout and takes its write lock when a transaction
begins, so several worker processes queue for the lock instead of failing with
"database is locked".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from dermbatch.settings import get_settings

#: Seconds a SQLite connection waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_S = 120

_engines: dict[tuple[int, str], Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """Return this process's engine for `url` (default: DERMBATCH_DATABASE_URL)."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _create_engine(url)
        _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Drop this process's engines; a forked child calls it before its first query."""
    for key in list(_engines):
        _engines.pop(key).dispose(close=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """Open a session in one transaction: commit on success, roll back on error."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself instead of pysqlite's lazy one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

"""Database access: the engine for a URL, the schema check, migrations.

URLs: ``sqlite+aiosqlite:///path/to/backend.db`` (the embedded default) or
``postgresql+asyncpg://user@host/db``; plain ``sqlite:///`` and ``postgresql://`` are
accepted and given their async driver.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from flashgate.errors import ConfigurationError
from flashgate.runnable import flashgate_command

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """Give a bare ``sqlite://``/``postgresql://`` URL its async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL may carry a password: show at most a well-formed scheme.
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]{0,30}(?=://)", url)
        shown = f" (scheme {scheme.group()!r})" if scheme else ""
        raise ConfigurationError(f"not a database URL{shown}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported database {backend!r}: use SQLite or PostgreSQL")
    return parsed.render_as_string(hide_password=False)


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` (``--db-password``/``FLASHGATE_DB_PASSWORD``) set in it,
    percent-encoded, so any password works (``p@ss/w:rd`` pasted into a URL would not)."""
    if password is None:
        return url
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError("--db is not a database URL") from None
    if parsed.get_backend_name() == "sqlite":
        raise ConfigurationError("--db-password applies to PostgreSQL only (--db is SQLite)")
    if parsed.password is not None:
        raise ConfigurationError(
            "--db already holds a password: give it in --db or in --db-password "
            "(FLASHGATE_DB_PASSWORD), not both"
        )
    return parsed.set(password=password).render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def apply_sqlite_pragmas(dbapi_connection: Any) -> None:
    """The settings of every connection to the backend's SQLite file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    apply_sqlite_pragmas(dbapi_connection)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = normalize_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    event.listen(engine.sync_engine.pool, "checkin", _remember_checkin)
    event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
    return engine


#: A pooled PostgreSQL connection idle for longer than this is pinged before it is used.
PING_IDLE_AFTER = 2.0


def _remember_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle a while.

    Its asyncpg ping is three round trips (``BEGIN``, ``;``, ``ROLLBACK``) at every
    check-out, more than the one-step secret write itself. A connection used moments ago
    is taken as it is; if it did break since (the server restarted), the statement fails,
    the broken connection is dropped (by SQLAlchemy, or by the PostgreSQL store for its
    raw one-step statement), and the command is delivered again."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_IDLE_AFTER:
        return  # just connected, or in use moments ago
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise DisconnectionError("a pooled connection failed its ping") from exc


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run on a schema that is not at the latest migration."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        state = "empty" if current is None else f"at revision {current}"
        raise ConfigurationError(
            f"the database schema is {state}, this version needs {head}: "
            f"run `{flashgate_command()} backend migrate` (with the same --db)"
        )


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (blocking; runs its own event loop)."""
    alembic_command.upgrade(alembic_config(url), revision)

"""Databases for tests: SQLite files, and fresh PostgreSQL databases (tier ``postgres``).

PostgreSQL is reached at ``FLASHGATE_TEST_PG`` (default: the local server, trust auth); when
it is not reachable its tests are SKIPPED and the session header says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_ADMIN_URL = os.environ.get("FLASHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_SKIP_REASON = f"PostgreSQL not reachable at {PG_ADMIN_URL}: PostgreSQL tests SKIPPED"


def pg_available() -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


#: Probed once, when this module is first imported.
PG_AVAILABLE = pg_available()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"fg_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

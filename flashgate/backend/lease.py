"""Who may run: one backend per SQLite file; one outbox relay at a time on PostgreSQL.

SQLite is a file on one machine; a second backend on it is refused at start with a clear
message (an exclusive ``flock`` on ``<db>.lock``, released by the kernel if the process
dies). On PostgreSQL any number of replicas apply commands concurrently (row locks and the
``processed_commands`` key keep each command applied once), while the outbox relay runs in
the one replica that holds a session-level advisory lock, so rows are published in order.
If that replica dies its connection closes, the lock is freed and another replica takes
over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    wait_fixed,
)

from flashgate.errors import ConfigurationError

log = structlog.get_logger("flashgate.backend.lease")


def _log_unavailable(state: RetryCallState) -> None:
    """A failed attempt is logged; a lock held by another replica is the normal wait."""
    if state.outcome is not None and state.outcome.failed:
        log.warning(
            "outbox relay lease: database unavailable; retrying",
            error=type(state.outcome.exception()).__name__,
        )


#: Advisory lock key of the outbox relay: "fgrelay" as a 64-bit integer.
RELAY_LOCK_KEY = int.from_bytes(b"fgrelay\x00", "big") >> 1


class SqliteSingleton:
    """Holds ``<db>.lock`` exclusively for the life of the process."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the process lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise ConfigurationError(
                f"another backend already runs on the SQLite database {self.path.with_suffix('')}"
                ": SQLite allows one backend replica; use PostgreSQL (--db postgresql://...) "
                "for more"
            ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class PostgresRelayLease:
    """A session-level advisory lock held on a dedicated connection."""

    def __init__(self, engine: AsyncEngine, *, retry_interval: float = 1.0) -> None:
        self._engine = engine
        self._retry = retry_interval
        self._connection: AsyncConnection | None = None

    async def wait(self) -> None:
        """Block until this replica holds the relay lock (also while the database is
        away: a supervisor sees that in the backend's health, not in a dead relay)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception) | retry_if_result(lambda c: c is None),
            wait=wait_fixed(self._retry),
            before_sleep=_log_unavailable,
        )
        self._connection = await retrying(self._try_lock)
        log.info("outbox relay lease acquired")

    async def _try_lock(self) -> AsyncConnection | None:
        """The connection holding the lock; None while another replica holds it."""
        connection = await self._engine.connect()
        try:
            held = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY}
            )
            await connection.commit()
        except Exception:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        if held:
            return connection
        await connection.close()
        return None

    async def still_held(self) -> bool:
        """False once the lock connection is gone (then the lock is gone too)."""
        if self._connection is None:
            return False
        try:
            await self._connection.scalar(text("SELECT 1"))
            await self._connection.commit()
            return True
        except Exception:
            return False

    async def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": RELAY_LOCK_KEY}
                )
                await self._connection.commit()
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

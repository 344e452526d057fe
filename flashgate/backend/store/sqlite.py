"""The SQLite store: one writer at a time, one backend per file, and the common secret write
in one transaction on a thread of its own.

SQLite allows one writer at a time: every write transaction of the process (commands, the
outbox relay marking rows, re-wraps, the one-step write) is taken under one asyncio lock
(:meth:`SqliteStore.writing`), so that writers queue in the process instead of meeting in
SQLite's busy handler, which sleeps. A second backend on the same file is refused
(:class:`~flashgate.backend.lease.SqliteSingleton`).

Through SQLAlchemy and aiosqlite every statement of a transaction is several hops between
the event loop and aiosqlite's thread (cursor, execute, fetch, close), which made a write
cost about 4 ms of the loop's time. The one-step write runs the whole transaction of a
new secret or the next version of one as one function on a thread of its own, on a
``sqlite3`` connection of its own (``BEGIN IMMEDIATE`` ... ``COMMIT``), and the loop
awaits it once. Values are stored exactly as SQLAlchemy stores them (its SQLite type
processors), so the rows are the general path's (a test compares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Column, DateTime, Table
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from flashgate.backend.db import apply_sqlite_pragmas
from flashgate.backend.lease import SqliteSingleton
from flashgate.backend.store.base import SecretWrite, Store

_DIALECT = sqlite_dialect.dialect()
_TIME = DateTime(timezone=True).dialect_impl(_DIALECT).bind_processor(_DIALECT)


def _time(value: Any) -> Any:
    return _TIME(value) if _TIME is not None else value


class _NotTheCommonCase(Exception):
    """Raised inside the transaction to roll it back: nothing is written."""


def _write(connection: sqlite3.Connection, write: SecretWrite, rotate: bool) -> bool:
    at = _time(write.at)
    connection.execute("BEGIN IMMEDIATE")
    try:
        fleet = connection.execute(
            "SELECT epoch, rotating_to FROM fleets WHERE id = ?", (write.fleet_id,)
        ).fetchone()
        if fleet != (write.epoch, write.rotating_to):
            raise _NotTheCommonCase
        seen = connection.execute(
            "SELECT 1 FROM processed_commands WHERE command_id = ?", (write.command_id,)
        ).fetchone()
        if seen is not None:
            raise _NotTheCommonCase
        if rotate:
            row = connection.execute(
                "SELECT id FROM secrets WHERE repository_id = ? AND name = ? AND kind = ? "
                "AND current_version = ? AND NOT deleted",
                (write.repository_id, write.name, write.kind, write.version - 1),
            ).fetchone()
            if row is None:
                raise _NotTheCommonCase
            secret_id = row[0]
            connection.execute(
                "UPDATE secrets SET current_version = ?, updated_at = ? WHERE id = ?",
                (write.version, at, secret_id),
            )
        else:
            if write.version != 1:
                raise _NotTheCommonCase
            created = connection.execute(
                "INSERT INTO secrets (repository_id, name, kind, current_version, deleted, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?) "
                "ON CONFLICT (repository_id, name) DO NOTHING",
                (write.repository_id, write.name, write.kind, write.version, at, at),
            )
            if created.rowcount != 1:
                raise _NotTheCommonCase
            secret_id = created.lastrowid
        connection.execute(
            "INSERT INTO secret_versions (secret_id, version, epoch, jwe, command_id, "
            "created_at, provenance) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                secret_id,
                write.version,
                write.envelope_epoch,
                write.jwe,
                write.command_id,
                at,
                write.provenance,
            ),
        )
        connection.execute(
            "INSERT INTO processed_commands (command_id, command_type, result, reason, "
            "outcome_msg_id, processed_at) VALUES (?, ?, 'applied', NULL, ?, ?)",
            (write.command_id, write.command_type, write.outcome_msg_id, at),
        )
        connection.executemany(  # ids in list order
            "INSERT INTO outbox (created_at, subject, msg_id, operation, payload, "
            "published_at, attempts) VALUES (?, ?, ?, ?, ?, NULL, 0)",
            [
                (at, row["subject"], row["msg_id"], row["operation"], row["payload"])
                for row in write.outbox
            ],
        )
        connection.execute(
            "INSERT INTO audit_events (at, fleet, actor, command_id, command_type, target, "
            "result) VALUES (?, ?, ?, ?, ?, ?, 'applied')",
            (at, write.fleet, write.actor, write.command_id, write.command_type, write.target),
        )
        connection.execute("COMMIT")
    except (_NotTheCommonCase, sqlite3.IntegrityError):
        return False  # nothing written: the general path decides (and words) it
    finally:
        # Whatever failed, COMMIT included (a full disk, an I/O error), the connection is
        # left outside a transaction: one held open would block every writer.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
    return True


class SqliteStore(Store):
    """:class:`~flashgate.backend.store.base.Store` on an SQLite file (or in memory).

    ``path`` is the file of the one-step write; None (in memory, or a URL with options
    such as ``uri=true`` that a plain connection of its own would not honour): the
    general path only."""

    shared: ClassVar[bool] = False
    default_concurrency: ClassVar[int] = 1

    def __init__(self, engine: AsyncEngine, path: Path | None, *, one_step: bool = True) -> None:
        super().__init__(engine)
        self.path = path
        self._one_step = one_step and path is not None
        self._write_lock = asyncio.Lock()
        self._singleton: SqliteSingleton | None = None
        # One thread: the connection is used only there (sqlite3's default check).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fg-sqlite-write")
        self._connection: sqlite3.Connection | None = None

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._write_lock

    def _insert_new(self, table: Table, keys: list[Column[Any]]) -> Insert:
        return sqlite_dialect.insert(table).on_conflict_do_nothing(index_elements=keys)

    def lock_out_other_backends(self) -> None:
        if self.path is not None and self._singleton is None:
            singleton = SqliteSingleton(self.path)
            singleton.acquire()
            self._singleton = singleton

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            assert self.path is not None
            connection = sqlite3.connect(self.path, isolation_level=None)
            apply_sqlite_pragmas(connection)
            self._connection = connection
        return self._connection

    def _run(self, write: SecretWrite, rotate: bool) -> bool:
        return _write(self._connect(), write, rotate)

    async def write_secret(self, write: SecretWrite, *, rotate: bool) -> bool:
        if not self._one_step:
            return False
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            done = loop.run_in_executor(self._thread, self._run, write, rotate)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                # The thread cannot be stopped: keep the lock until its transaction ends
                # (committed or not, a redelivery of the command decides).
                with contextlib.suppress(Exception):
                    await done
                raise

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)
        await super().close()
        if self._singleton is not None:
            self._singleton.release()
            self._singleton = None

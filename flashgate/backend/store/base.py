"""The backend's storage seam: what differs between PostgreSQL and SQLite, behind one interface.

Everything above this package (the command processor, the handlers, the outbox relay,
re-wraps, queries) speaks SQLAlchemy through a :class:`Store` and never asks which
database it runs on. What differs lives in the two implementations:

* **Writers at once.** PostgreSQL takes any number (row locks decide). SQLite allows one
  writer at a time: its store holds an asyncio lock around every write transaction
  (:meth:`Store.transaction`), so that the process's writers queue in the process instead
  of meeting in SQLite's busy handler, which sleeps.
* **Insert unless present** (:meth:`Store.insert_new`): each dialect's
  ``INSERT ... ON CONFLICT DO NOTHING``.
* **The common secret write in one step** (:meth:`Store.write_secret`). Nearly every
  command is ``secret.put`` of a new secret or ``secret.rotate`` to the next version of a
  live one. The general path (:mod:`flashgate.backend.handlers.secrets`) takes about eight
  database round trips, each an await on the event loop; a store applies that common
  case in one step instead: PostgreSQL in one statement of data-modifying CTEs
  (:mod:`.postgres`), SQLite in one short transaction on a thread and connection of its
  own (:mod:`.sqlite`). Measured with ``bench/backend.py``, the general path alone
  reaches about a third to a half of the throughput, so both stay. A one-step write
  writes nothing unless every condition of the common case holds (the fleet's epochs are
  those this backend holds, the command id was never processed, the secret is new, or
  live, of the command's kind and at the version before); then it writes exactly the rows
  the general path would (tests compare the two on both databases). Otherwise it reports
  that nothing was written and the general path decides, with the words of its refusals.
* **Replicas** (:attr:`Store.shared`): several backends may share a PostgreSQL database;
  an SQLite file has one backend (:meth:`Store.lock_out_other_backends`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Column, Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.dml import Insert

from flashgate.backend import db


@dataclass(frozen=True, slots=True)
class SecretWrite:
    """Everything a one-step secret write stores, computed (and the envelope checked)
    beforehand."""

    fleet_id: int
    epoch: int  # the fleet's current epoch, as this backend holds it
    rotating_to: int | None  # ... and the epoch it is rotating to
    command_id: str
    command_type: str
    outcome_msg_id: str
    repository_id: int
    name: str
    kind: str
    version: int
    envelope_epoch: int
    jwe: str
    provenance: str  # JSON of the envelope's Provenance
    at: datetime
    outbox: Sequence[dict[str, Any]]  # in order: subject, msg_id, operation, payload
    fleet: str
    actor: str
    target: str


class Store(ABC):
    """A backend's database: its engine and sessions, and what differs between dialects."""

    #: Several backends may use the database at once (each command is still applied once).
    shared: ClassVar[bool]
    #: Commands a backend applies at once unless told otherwise.
    default_concurrency: ClassVar[int]

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = db.sessionmaker(engine)
        self._inserts: dict[tuple[str, ...], Insert] = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Held around a write transaction: the one-writer lock of SQLite, else nothing."""
        return contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def transaction(self, *, writes: bool = True) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed at the end (rolled back on an error).
        ``writes=False``: a transaction that only reads, which never waits for writers."""
        async with (
            self.writing() if writes else contextlib.nullcontext(),
            self.sessions() as session,
            session.begin(),
        ):
            yield session

    def insert_new(self, table: Table, *keys: Column[Any]) -> Insert:
        """``INSERT`` into ``table`` that inserts nothing when a row with the same
        ``keys`` (a unique index) exists. Built once per table and keys (a statement
        caches its compiled form's key)."""
        index = (table.name, *(key.name for key in keys))
        statement = self._inserts.get(index)
        if statement is None:
            statement = self._inserts[index] = self._insert_new(table, list(keys))
        return statement

    @abstractmethod
    def _insert_new(self, table: Table, keys: list[Column[Any]]) -> Insert: ...

    async def write_secret(self, write: SecretWrite, *, rotate: bool) -> bool:
        """Apply the common secret write in one step: True if applied; False if nothing
        was written (not the common case after all, or this store has no one-step write).
        Raises on a database failure, having written nothing."""
        return False

    def lock_out_other_backends(self) -> None:  # noqa: B027 - most stores allow replicas
        """Refuse a second backend on this database, where it may not have one."""

    async def close(self) -> None:
        """Release what the store holds, the engine's pool included."""
        await self.engine.dispose()

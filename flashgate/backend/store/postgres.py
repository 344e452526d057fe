"""The PostgreSQL store: any number of writers (row locks decide), replicas welcome, and the
common secret write in one statement, one round trip.

The general path takes about eight round trips for a write: ``BEGIN``, the command-id
claim, the fleet's epochs, the secret, its version, the outbox rows, the audit row,
``COMMIT``. Here a new secret (``secret.put`` at version 1) or the next version of a
live one (``secret.rotate``) is applied by one statement of data-modifying CTEs, run
outside an explicit transaction (a single statement is atomic on its own).

The statement is all or nothing by construction: every row it inserts (version, claim,
outbox, audit) is selected from the secret row it created or advanced, and that row is
written only when

* the fleet row, share-locked (``FOR KEY SHARE``, as the general path takes it, so that a
  rotation's finish waits for this write), still has the epochs this backend holds;
* the command id was not processed before (in the statement's snapshot; a concurrent
  claim of the same id makes the claim's insert fail, which aborts the whole statement);
* for a put: no secret of that name exists, live or deleted (``ON CONFLICT DO NOTHING``);
  for a rotate: the secret is live, of the command's kind, at version ``version - 1``.

When it writes nothing, or fails on a unique key or a deadlock, nothing was written and
the caller runs the general path, which decides (and words) any refusal. The rows written
are the same as the general path's (a test compares them); the outbox rows get
their ids in list order (``ORDER BY`` below the insert).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol

from sqlalchemy import Column, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from flashgate.backend.store.base import SecretWrite, Store

# SQLSTATEs after which the statement wrote nothing and the general path decides.
UNIQUE_VIOLATION = "23505"
DEADLOCK_DETECTED = "40P01"
FALLBACK_STATES = frozenset({UNIQUE_VIOLATION, DEADLOCK_DETECTED})

_GATE = """
WITH fleet AS (
    SELECT 1 FROM fleets
    WHERE id = $1::integer AND epoch = $2::integer
      AND rotating_to IS NOT DISTINCT FROM $3::integer
    FOR KEY SHARE
), fresh AS (
    SELECT 1 FROM fleet
    WHERE NOT EXISTS (SELECT 1 FROM processed_commands WHERE command_id = $4::varchar)
)"""

_CREATE = """, written AS (
    INSERT INTO secrets
        (repository_id, name, kind, current_version, deleted, created_at, updated_at)
    SELECT $5::integer, $6::varchar, $7::varchar, $8::integer, false, $9::timestamptz,
           $9::timestamptz
    FROM fresh WHERE $8::integer = 1
    ON CONFLICT (repository_id, name) DO NOTHING
    RETURNING id
)"""

_ADVANCE = """, written AS (
    UPDATE secrets SET current_version = $8::integer, updated_at = $9::timestamptz
    WHERE repository_id = $5::integer AND name = $6::varchar AND kind = $7::varchar
      AND current_version = $8::integer - 1 AND NOT deleted
      AND EXISTS (SELECT 1 FROM fresh)
    RETURNING id
)"""

_ROWS = """, version AS (
    INSERT INTO secret_versions
        (secret_id, version, epoch, jwe, command_id, created_at, provenance)
    SELECT id, $8::integer, $10::integer, $11::text, $4::varchar, $9::timestamptz, $21::text
    FROM written
), claim AS (
    INSERT INTO processed_commands
        (command_id, command_type, result, reason, outcome_msg_id, processed_at)
    SELECT $4::varchar, $12::varchar, 'applied', NULL, $13::varchar, $9::timestamptz
    FROM written
), messages AS (
    INSERT INTO outbox (created_at, subject, msg_id, operation, payload, published_at, attempts)
    SELECT $9::timestamptz, m.subject, m.msg_id, m.operation, m.payload, NULL, 0
    FROM written,
         unnest($14::varchar[], $15::varchar[], $16::varchar[], $17::bytea[])
             WITH ORDINALITY AS m(subject, msg_id, operation, payload, position)
    ORDER BY m.position
), audit AS (
    INSERT INTO audit_events (at, fleet, actor, command_id, command_type, target, result)
    SELECT $9::timestamptz, $18::varchar, $19::varchar, $4::varchar, $12::varchar,
           $20::varchar, 'applied'
    FROM written
)
SELECT count(*) FROM written
"""

CREATE_SECRET = _GATE + _CREATE + _ROWS
ADVANCE_SECRET = _GATE + _ADVANCE + _ROWS


class Fetchval(Protocol):
    """The one asyncpg ``Connection`` method used (a protocol keeps asyncpg optional)."""

    async def fetchval(self, query: str, *args: Any) -> Any: ...


async def write_secret(connection: Fetchval, write: SecretWrite, *, rotate: bool) -> bool:
    """Apply ``write`` in one statement; True if it was applied, False if nothing was
    written (the general path decides). Raises what the driver raises otherwise."""
    written = await connection.fetchval(
        ADVANCE_SECRET if rotate else CREATE_SECRET,
        write.fleet_id,
        write.epoch,
        write.rotating_to,
        write.command_id,
        write.repository_id,
        write.name,
        write.kind,
        write.version,
        write.at,
        write.envelope_epoch,
        write.jwe,
        write.command_type,
        write.outcome_msg_id,
        [row["subject"] for row in write.outbox],
        [row["msg_id"] for row in write.outbox],
        [row["operation"] for row in write.outbox],
        [row["payload"] for row in write.outbox],
        write.fleet,
        write.actor,
        write.target,
        write.provenance,
    )
    return bool(written)


class PostgresStore(Store):
    """:class:`~flashgate.backend.store.base.Store` on a PostgreSQL engine's pool."""

    shared: ClassVar[bool] = True
    default_concurrency: ClassVar[int] = 8

    def __init__(self, engine: AsyncEngine, *, one_step: bool = True) -> None:
        super().__init__(engine)
        self._one_step = one_step

    def _insert_new(self, table: Table, keys: list[Column[Any]]) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)

    async def write_secret(self, write: SecretWrite, *, rotate: bool) -> bool:
        if not self._one_step:
            return False
        async with self.engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None  # asyncpg's connection, checked out for this write
            try:
                return await write_secret(driver, write, rotate=rotate)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) in FALLBACK_STATES:
                    return False  # the statement was aborted: nothing written
                # SQLAlchemy did not see this error: drop the connection rather than
                # return one that may be broken or mid-statement to the pool.
                await connection.invalidate()
                raise
            except asyncio.CancelledError:
                await connection.invalidate()
                raise

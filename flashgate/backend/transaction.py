"""One command's transaction, as the handlers (:mod:`flashgate.backend.handlers`) see it:
the session, the fleet state, and helpers for the outbox, events and envelope checks.

A handler adds the outbox rows of what it changed through this object; the processor
(:mod:`flashgate.backend.processor`) appends the outcome event, writes the rows after any
the ORM holds (:func:`flashgate.backend.outbox.insert_rows`, ids in the order added), and
writes the audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from flashgate.backend import outbox
from flashgate.backend.fleet_state import FleetState
from flashgate.backend.models import Fleet, Repository
from flashgate.backend.store import Store
from flashgate.crypto import jwe
from flashgate.crypto.context import SecretContext, check_context
from flashgate.errors import NotFound, SignatureInvalid, StaleEpoch, Unproven
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import (
    EnvelopeStatement,
    ProvenApiKey,
    SecretEnvelope,
    check_statement,
)
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames

FLEETS: Table = Fleet.__table__  # type: ignore[assignment]
REPOSITORIES: Table = Repository.__table__  # type: ignore[assignment]

_FLEET_EPOCHS = (
    select(FLEETS.c.epoch, FLEETS.c.rotating_to)
    .where(FLEETS.c.id == bindparam("b_fleet_id"))
    .with_for_update(read=True, key_share=True)
)
_REPOSITORY_ID = select(REPOSITORIES.c.id).where(
    REPOSITORIES.c.fleet_id == bindparam("b_fleet_id"), REPOSITORIES.c.name == bindparam("b_name")
)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def command_event(
    command: cmd.Command, data: ev.EventData, subject: str | None, *, source: str
) -> ev.DomainEvent:
    """The event ``command`` ends in, with an id derived from the command's (stable across
    a redelivery)."""
    return ev.make_event(
        data,
        event_id=f"{command.command_id}.{data.event_type}",
        source=source,
        subject=subject,
    )


def check_envelope(
    state: FleetState,
    token: str,
    context: SecretContext,
    epoch: int,
    statement: EnvelopeStatement | None,
    api_key: ProvenApiKey | None = None,
) -> None:
    """The envelope's epoch is writable, its header binds ``context`` and its wrapped
    key fits that epoch's fleet key (the epochs as this backend holds them), and the
    admin's statement for the nodes is about this very envelope and verifies (the nodes
    check it again: an honest backend refuses at once what they would never load)."""
    if statement is None:
        raise Unproven(
            "the command carries no admin statement over its envelope; "
            "write it with a flashgate CLI that signs one"
        )
    check_statement(statement, context, api_key=api_key, token=token, epoch=epoch)
    try:
        verify(statement, state.admin)
    except SignatureInvalid:
        raise Unproven("the admin's statement over the envelope does not verify") from None
    if epoch not in state.writable_epochs():
        raise StaleEpoch(
            f"envelope is for epoch {epoch}; the fleet writes epoch "
            f"{sorted(state.writable_epochs())}"
        )
    parsed = jwe.parse(token)
    check_context(parsed.context, context)
    parsed.wrapped_key(state.keys[epoch])  # size and range under that epoch's key


@dataclass
class Transaction:
    """The open transaction of one command."""

    session: AsyncSession
    connection: AsyncConnection
    store: Store
    state: FleetState
    command: cmd.Command
    source: str
    now: datetime
    #: Outbox rows, in order (written after any the ORM holds, before the outcome event).
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> FleetNames:
        return self.state.names

    def event(self, data: ev.EventData, subject: str | None) -> ev.DomainEvent:
        return command_event(self.command, data, subject, source=self.source)

    # --- the outbox ----------------------------------------------------------------------

    def put_envelope(self, envelope: SecretEnvelope) -> None:
        self.rows.append(outbox.kv_put_row(self.names, envelope))

    def delete_envelope(self, key: str, last_version: int) -> None:
        self.rows.append(outbox.kv_delete_row(self.names, key, last_version))

    def compact_envelope(self, envelope: SecretEnvelope, tag: str) -> None:
        """Put ``envelope`` again as the only revision its key keeps in the bucket."""
        self.rows.append(outbox.kv_rollup_row(self.names, envelope, tag=tag))

    def purge_envelope(self, key: str, msg_id: str) -> None:
        """Purge ``key`` (a deleted secret or revoked API key) with every revision it had."""
        self.rows.append(outbox.kv_purge_row(self.names, key, msg_id))

    def put_fleet_document(self, key: str, payload: bytes, msg_id: str) -> None:
        self.rows.append(outbox.fleet_document_row(self.names, key, payload, msg_id))

    def purge_fleet_document(self, key: str, msg_id: str) -> None:
        self.rows.append(outbox.fleet_purge_row(self.names, key, msg_id))

    # --- reads ---------------------------------------------------------------------------

    async def locked_fleet(self) -> Fleet:
        """The fleet row, locked for update (orders fleet-wide changes)."""
        fleet = await self.session.get(Fleet, self.state.fleet_id, with_for_update=True)
        assert fleet is not None
        return fleet

    async def check_envelope(
        self,
        token: str,
        context: SecretContext,
        epoch: int,
        statement: EnvelopeStatement | None,
        api_key: ProvenApiKey | None = None,
    ) -> None:
        """:func:`check_envelope` against the epochs as committed, read in this transaction
        and share-locked (PostgreSQL: FOR KEY SHARE), so that a replica that missed a
        rotation's start or finish never writes under a retired epoch, and
        fleet.rotation.finish (FOR UPDATE on the same row) cannot count the envelopes while
        this write is uncommitted."""
        state = self.state
        current, rotating_to = (
            await self.connection.execute(_FLEET_EPOCHS, {"b_fleet_id": state.fleet_id})
        ).one()
        if (current, rotating_to) != (state.epoch, state.rotating_to) or (
            epoch not in state.keys and epoch in (current, rotating_to)
        ):
            await state.refresh(self.session)
        check_envelope(state, token, context, epoch, statement, api_key)

    async def repository(self, name: str, *, create: bool) -> Repository:
        repo = await self.session.scalar(
            select(Repository).where(
                Repository.fleet_id == self.state.fleet_id, Repository.name == name
            )
        )
        if repo is None:
            if not create:
                raise NotFound(f"repository {name!r} does not exist")
            repo = Repository(fleet_id=self.state.fleet_id, name=name)
            self.session.add(repo)
            await self.session.flush()
        return repo

    async def repository_id(self, name: str) -> int:
        """The id of repository ``name``, created if need be. An id read from a committed
        row is cached; one created in this transaction is not (it may yet roll back)."""
        cached = self.state.repository_ids.get(name)
        if cached is not None:
            return cached
        found = (
            await self.connection.execute(
                _REPOSITORY_ID, {"b_fleet_id": self.state.fleet_id, "b_name": name}
            )
        ).scalar()
        if found is not None:
            self.state.repository_ids[name] = found
            return int(found)
        return (await self.repository(name, create=True)).id

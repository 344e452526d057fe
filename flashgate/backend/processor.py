"""Applying admin commands: decode, verify, claim, retry, and dispatch to a handler
(:mod:`flashgate.backend.handlers`) that changes the database; the outbox and audit rows
commit in the same transaction.

Checks run cheapest first: size and schema (the codec), fleet, admin signature, then the
command against the current state inside the transaction (versions, epochs, existence).
Every refusal is a typed :class:`FlashgateError` whose ``code`` becomes the ``reason`` of a
``command rejected`` event and of the audit row; the service keeps running.

A command id is processed once: its row in ``processed_commands`` is written in the same
transaction. Seeing it again repeats the original outcome (the outcome event is published
again under its original ``Nats-Msg-Id``) and changes nothing.

The backend sees envelopes only. It parses a JWE's header to check the bound context and
the wrapped key's size, with the encrypt-side modules; it cannot decrypt anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import structlog
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flashgate import failpoints
from flashgate.backend import outbox
from flashgate.backend.fleet_state import FleetState
from flashgate.backend.handlers import HANDLERS, Handler
from flashgate.backend.models import AuditEvent, OutboxMessage, ProcessedCommand
from flashgate.backend.store import Store
from flashgate.backend.transaction import Transaction, now_ms
from flashgate.errors import FlashgateError, FleetMismatch, MalformedMessage
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.signing import verify

log = structlog.get_logger("flashgate.backend.processor")

MAX_APPLY_ATTEMPTS = 3

AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]
PROCESSED: Table = ProcessedCommand.__table__  # type: ignore[assignment]
_AUDIT_INSERT = insert(AUDIT)

# SQLSTATEs of a transaction that PostgreSQL aborted for a concurrent one: retried.
_RETRY_STATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure

# A rejection with one of these codes is not remembered: the message may not be the
# admin's, and a forged id in it must not block the real command later.
_UNAUTHENTIC = ("bad_signature", "fleet_mismatch")


@dataclass(frozen=True)
class Outcome:
    command_id: str | None
    command_type: str | None
    result: str  # applied | rejected | duplicate
    reason: str | None = None
    detail: str | None = None


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.orig, "sqlstate", None) in _RETRY_STATES


def _peek_id(raw: bytes) -> tuple[str | None, str | None]:
    """Best-effort command id and type of an undecodable command, for the rejection."""
    try:
        doc = msgspec.json.decode(raw[:65536]) if len(raw) <= 65536 else None
    except msgspec.DecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    cid, ctype = doc.get("command_id"), doc.get("type")
    ok_id = cid if isinstance(cid, str) and 16 <= len(cid) <= 64 and cid.isascii() else None
    ok_type = ctype if isinstance(ctype, str) and len(ctype) <= 64 and ctype.isascii() else None
    if ok_id is not None and not all(ch.isalnum() or ch in "_-" for ch in ok_id):
        ok_id = None
    return ok_id, ok_type


def _outcome_msg_id(handler: Handler, command: cmd.Command) -> str:
    return outbox.event_msg_id(f"{command.command_id}.{handler.event_type}")


def _applied(command: cmd.Command, target: str) -> Outcome:
    log.info("command applied", target=target)
    return Outcome(command.command_id, command.command_type, "applied")


class CommandProcessor:
    def __init__(
        self,
        store: Store,
        state: FleetState,
        *,
        source: str,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self._source = source
        self._on_commit = on_commit

    # --- entry points --------------------------------------------------------------------

    async def process(self, raw: bytes) -> Outcome:
        """Handle one command message end to end. Never raises for a bad command."""
        try:
            command = cmd.COMMAND_CODEC.decode(raw)
        except FlashgateError as exc:
            command_id, command_type = _peek_id(raw)
            with structlog.contextvars.bound_contextvars(
                command_id=command_id, command_type=command_type
            ):
                return await self._reject(
                    None, exc, command_id=command_id, command_type=command_type
                )
        return await self.process_command(command)

    async def process_earlier(self, raw: bytes) -> Outcome | None:
        """A command read from the stream, ahead of a later one of its target
        (:mod:`flashgate.backend.ordering`): applied or rejected like any, unless it was
        processed already, or is not a command of this fleet's admin (whoever holds its
        delivery rejects that one). None: nothing was done."""
        try:
            command = cmd.COMMAND_CODEC.decode(raw)
            self._check_origin(command)
        except FlashgateError:
            return None
        async with self.store.sessions() as session:
            if await session.get(ProcessedCommand, command.command_id) is not None:
                return None
        return await self.process_command(command)

    async def process_command(self, command: cmd.Command) -> Outcome:
        """Apply a decoded command (its admin signature is checked first)."""
        with structlog.contextvars.bound_contextvars(
            command_id=command.command_id, command_type=command.command_type
        ):
            try:
                self._check_origin(command)
            except FlashgateError as exc:
                return await self._reject(command, exc)
            failpoints.hit("backend.before_apply")
            for attempt in range(MAX_APPLY_ATTEMPTS):
                try:
                    outcome = await self._apply(command)
                    failpoints.hit("backend.after_commit")
                    break
                except FlashgateError as exc:
                    return await self._reject(command, exc)
                except DBAPIError as exc:
                    # A concurrent replica committed the same command id or created the
                    # same row first, or PostgreSQL broke a deadlock with it by aborting
                    # this transaction: retry, and the state checks decide.
                    if not _retryable(exc) or attempt == MAX_APPLY_ATTEMPTS - 1:
                        raise
            if self._on_commit is not None:
                self._on_commit()
            return outcome

    def _check_origin(self, command: cmd.Command) -> None:
        """Stateless checks: fleet and signature (cheap before expensive)."""
        if command.fleet != self.state.names.fleet:
            raise FleetMismatch(
                f"command for fleet {command.fleet!r}, this backend serves "
                f"{self.state.names.fleet!r}"
            )
        verify(command, self.state.admin)

    # --- the transaction -----------------------------------------------------------------

    async def _apply(self, command: cmd.Command) -> Outcome:
        handler = HANDLERS.get(type(command))
        if handler is None:
            raise MalformedMessage(f"unsupported command type {command.command_type}")
        expected = _outcome_msg_id(handler, command)
        if handler.one_step is not None:
            target = await handler.one_step(
                self.store, self.state, command, source=self._source, outcome_msg_id=expected
            )
            if target is not None:
                return _applied(command, target)
        # Core statements, not the ORM's unit of work, on this hot path: the ORM's
        # per-object bookkeeping was most of a write's CPU time.
        async with self.store.transaction() as session:
            connection = await session.connection()
            now = datetime.now(UTC)
            # Claims the command id: nothing is inserted if it was processed before, and a
            # concurrent replica's uncommitted claim makes this wait for its outcome.
            claimed = await connection.execute(
                self.store.insert_new(PROCESSED, PROCESSED.c.command_id),
                {
                    "command_id": command.command_id,
                    "command_type": command.command_type,
                    "result": "applied",
                    "outcome_msg_id": expected,
                    "processed_at": now,
                },
            )
            if claimed.rowcount == 0:
                seen = await session.get(ProcessedCommand, command.command_id)
                assert seen is not None
                return await self._repeat(session, command, seen)
            tx = Transaction(
                session, connection, self.store, self.state, command, self._source, now
            )
            target, event = await handler.apply(tx, command)
            tx.rows.append(outbox.event_row(self.state.names, event))
            await outbox.insert_rows(session, tx.rows)  # after the rows the ORM holds
            if tx.rows[-1]["msg_id"] != expected:
                await connection.execute(
                    update(PROCESSED)
                    .where(PROCESSED.c.command_id == command.command_id)
                    .values(outcome_msg_id=tx.rows[-1]["msg_id"])
                )
            await connection.execute(
                _AUDIT_INSERT,
                {
                    "at": now,
                    "fleet": self.state.names.fleet,
                    "actor": command.actor,
                    "command_id": command.command_id,
                    "command_type": command.command_type,
                    "target": target,
                    "result": "applied",
                },
            )
        return _applied(command, target)

    async def _repeat(
        self, session: AsyncSession, command: cmd.Command, seen: ProcessedCommand
    ) -> Outcome:
        """A command id seen before: repeat its original outcome event, change nothing."""
        if seen.outcome_msg_id:
            original = await session.scalar(
                select(OutboxMessage).where(OutboxMessage.msg_id == seen.outcome_msg_id)
            )
            if original is not None and original.published_at is not None:
                original.published_at = None  # publish again (same Nats-Msg-Id)
        session.add(
            AuditEvent(
                fleet=self.state.names.fleet,
                actor=command.actor,
                command_id=command.command_id,
                command_type=command.command_type,
                result="duplicate",
                reason=seen.reason,
            )
        )
        return Outcome(command.command_id, command.command_type, "duplicate", seen.reason)

    async def _reject(
        self,
        command: cmd.Command | None,
        exc: FlashgateError,
        *,
        command_id: str | None = None,
        command_type: str | None = None,
    ) -> Outcome:
        if command is not None:
            command_id, command_type = command.command_id, command.command_type
        detail = exc.message[:500]
        actor = command.actor if command is not None else None
        remembered = command is not None and exc.code not in _UNAUTHENTIC
        event = ev.make_event(
            ev.CommandRejected(
                command_id=command_id,
                command_type=command_type,
                reason=exc.code,
                detail=detail,
            ),
            # A remembered rejection has a stable id (a re-delivery repeats it); any other
            # (unreadable, unsigned, foreign) gets a fresh one each time it is seen.
            event_id=(
                f"{command_id}.rejected"
                if remembered
                else f"{command_id or 'unreadable'}.rejected.{now_ms()}.{secrets.token_hex(4)}"
            ),
            source=self._source,
        )
        try:
            async with self.store.transaction() as session:
                if command_id is not None:
                    seen = await session.get(ProcessedCommand, command_id)
                    if seen is not None and command is not None:
                        return await self._repeat(session, command, seen)
                row = outbox.add_event(session, self.state.names, event)
                if remembered:
                    session.add(
                        ProcessedCommand(
                            command_id=command_id,
                            command_type=command_type,
                            result="rejected",
                            reason=exc.code,
                            outcome_msg_id=row.msg_id,
                        )
                    )
                session.add(
                    AuditEvent(
                        fleet=self.state.names.fleet,
                        actor=actor,
                        command_id=command_id,
                        command_type=command_type,
                        result="rejected",
                        reason=exc.code,
                        detail=detail,
                    )
                )
        except IntegrityError:
            pass  # a concurrent replica recorded this command id first: its outcome stands
        log.warning("command rejected", reason=exc.code, detail=detail)
        if self._on_commit is not None:
            self._on_commit()
        return Outcome(command_id, command_type, "rejected", exc.code, detail)

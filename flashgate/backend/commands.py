"""Applying admin commands: validate, then change the database, the outbox and the audit
log in one transaction.

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

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flashgate import failpoints
from flashgate.backend import db, outbox
from flashgate.backend.fastwrite import FastWriter, SecretWrite
from flashgate.backend.models import (
    ApiKey,
    AuditEvent,
    Fleet,
    FleetEpoch,
    OutboxMessage,
    ProcessedCommand,
    Repository,
    RewrapOrigin,
    Secret,
    SecretVersion,
)
from flashgate.crypto import jwe
from flashgate.crypto.context import SecretContext, check_context
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import (
    AlreadyExists,
    ConfigurationError,
    FlashgateError,
    FleetMismatch,
    MalformedMessage,
    NotFound,
    StaleEpoch,
    StaleRoster,
    StaleVersion,
)
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import ApiKeyInfo, SecretEnvelope
from flashgate.events.fleet import ROSTER_CODEC, decode_descriptor, encode_descriptor
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames, secret_key
from flashgate.fleet.descriptor import check_sealed_shares, fleet_public_key, verify_descriptor
from flashgate.fleet.signing import load_ed25519_public

log = structlog.get_logger("flashgate.backend.commands")

API_KEY_PREFIX = "fgk_"
STORAGE_ACCESS = frozenset({"read", "write", "admin"})
SECRET_KINDS = frozenset({"storage", "ai", "integration", "generic"})
MAX_APPLY_ATTEMPTS = 3


# The tables of the hot path, for Core statements.
AUDIT: Table = AuditEvent.__table__  # type: ignore[assignment]
FLEETS: Table = Fleet.__table__  # type: ignore[assignment]
PROCESSED: Table = ProcessedCommand.__table__  # type: ignore[assignment]
REPOSITORIES: Table = Repository.__table__  # type: ignore[assignment]
SECRETS: Table = Secret.__table__  # type: ignore[assignment]
VERSIONS: Table = SecretVersion.__table__  # type: ignore[assignment]

# Statements of the hot path, built once (a statement caches its compiled form's key).
_CLAIM = {
    "postgresql": postgresql.insert(PROCESSED).on_conflict_do_nothing(
        index_elements=[PROCESSED.c.command_id]
    ),
    "sqlite": sqlite.insert(PROCESSED).on_conflict_do_nothing(
        index_elements=[PROCESSED.c.command_id]
    ),
}
_AUDIT_INSERT = insert(AUDIT)
_FLEET_EPOCHS = (
    select(FLEETS.c.epoch, FLEETS.c.rotating_to)
    .where(FLEETS.c.id == bindparam("b_fleet_id"))
    .with_for_update(read=True, key_share=True)
)
_REPOSITORY_ID = select(REPOSITORIES.c.id).where(
    REPOSITORIES.c.fleet_id == bindparam("b_fleet_id"), REPOSITORIES.c.name == bindparam("b_name")
)
_SECRET_FOR_UPDATE = (
    select(SECRETS.c.id, SECRETS.c.kind, SECRETS.c.current_version, SECRETS.c.deleted)
    .where(
        SECRETS.c.repository_id == bindparam("b_repository_id"),
        SECRETS.c.name == bindparam("b_name"),
    )
    .with_for_update()
)
_SECRET_INSERT = insert(SECRETS)
_SECRET_CREATE = {
    "postgresql": postgresql.insert(SECRETS).on_conflict_do_nothing(
        index_elements=[SECRETS.c.repository_id, SECRETS.c.name]
    ),
    "sqlite": sqlite.insert(SECRETS).on_conflict_do_nothing(
        index_elements=[SECRETS.c.repository_id, SECRETS.c.name]
    ),
}
_SECRET_UPDATE = update(SECRETS).where(SECRETS.c.id == bindparam("b_id"))
_VERSION_INSERT = insert(VERSIONS)

# The event each command type ends in when applied (its outbox msg id is written with the
# command's claim; a command that ends otherwise gets its claim updated).
_APPLIED_EVENT: dict[type[cmd.Command], str] = {
    cmd.PutSecret: ev.SecretCreated.event_type,
    cmd.RotateSecret: ev.SecretRotated.event_type,
    cmd.DeleteSecret: ev.SecretDeleted.event_type,
    cmd.CreateApiKey: ev.ApiKeyCreated.event_type,
    cmd.RenameApiKey: ev.ApiKeyRenamed.event_type,
    cmd.RevokeApiKey: ev.ApiKeyRevoked.event_type,
    cmd.RevokeNode: ev.NodeRevoked.event_type,
    cmd.StartKeyRotation: ev.KeyRotationStarted.event_type,
    cmd.FinishKeyRotation: ev.KeyRotationCompleted.event_type,
}


def _outcome_msg_id(command: cmd.Command) -> str | None:
    event_type = _APPLIED_EVENT.get(type(command))
    if event_type is None:
        return None
    return outbox.event_msg_id(f"{command.command_id}.{event_type}")


@dataclass
class FleetState:
    """What the backend pins and tracks for its fleet."""

    names: FleetNames
    fleet_id: int
    admin_key: str
    epoch: int
    keys: dict[int, FleetPublicKey]  # epoch -> fleet public key
    roster_serial: int = 0
    rotating_to: int | None = None
    _admin: Ed25519PublicKey | None = field(default=None, repr=False)

    @property
    def admin(self) -> Ed25519PublicKey:
        if self._admin is None:
            self._admin = load_ed25519_public(self.admin_key, "admin key")
        return self._admin

    def writable_epochs(self) -> set[int]:
        """New envelopes may be under the current epoch or, during a rotation, the next."""
        return {self.epoch} | ({self.rotating_to} if self.rotating_to else set())


@dataclass(frozen=True)
class Outcome:
    command_id: str | None
    command_type: str | None
    result: str  # applied | rejected | duplicate
    reason: str | None = None
    detail: str | None = None


# SQLSTATEs of a transaction that PostgreSQL aborted for a concurrent one: retried.
_RETRY_STATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.orig, "sqlstate", None) in _RETRY_STATES


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


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


def _applied(command: cmd.Command, target: str) -> Outcome:
    log.info(
        "command applied",
        command_id=command.command_id,
        command_type=command.command_type,
        target=target,
    )
    return Outcome(command.command_id, command.command_type, "applied")


def _secret_context(command: cmd.PutSecret | cmd.RotateSecret) -> SecretContext:
    """The context a secret write's envelope must bind; refuses reserved kinds and names."""
    if command.kind not in SECRET_KINDS:
        raise ConfigurationError(f"secret kind {command.kind!r} is reserved")
    if command.name.startswith(API_KEY_PREFIX):
        raise ConfigurationError(f"secret names starting {API_KEY_PREFIX!r} are reserved")
    return SecretContext(
        fleet=command.fleet,
        repo=command.repo,
        name=command.name,
        kind=command.kind,
        version=command.version,
    )


class CommandProcessor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        state: FleetState,
        *,
        source: str,
        on_commit: Callable[[], None] | None = None,
        fast_writer: FastWriter | None = None,
        write_lock: asyncio.Lock | None = None,
    ) -> None:
        self._sessions = sessions
        self._fast_writer = fast_writer  # the common secret writes in one step
        # SQLite: the process's writers take this lock around their write transactions.
        self._write_lock = write_lock
        self.state = state
        self._source = source
        self._on_commit = on_commit
        self._repository_ids: dict[str, int] = {}

    # --- entry point ---------------------------------------------------------------------

    async def process(self, raw: bytes) -> Outcome:
        """Handle one command message end to end. Never raises for a bad command."""
        try:
            command = cmd.COMMAND_CODEC.decode(raw)
        except FlashgateError as exc:
            command_id, command_type = _peek_id(raw)
            return await self._reject(None, exc, command_id=command_id, command_type=command_type)
        return await self.process_command(command)

    async def process_earlier(self, raw: bytes) -> Outcome | None:
        """A command read from the stream, ahead of a later one of its target
        (:mod:`flashgate.backend.ordering`): applied or rejected like any, unless it was
        processed already, or is not a command of this fleet's admin (whoever holds its
        delivery rejects that one). None: nothing was done."""
        try:
            command = cmd.COMMAND_CODEC.decode(raw)
            self._check_envelope_of_command(command)
        except FlashgateError:
            return None
        async with self._sessions() as session:
            if await session.get(ProcessedCommand, command.command_id) is not None:
                return None
        return await self.process_command(command)

    async def process_command(self, command: cmd.Command, *, trusted: bool = False) -> Outcome:
        """Apply a decoded command. ``trusted`` skips the admin signature: only for the
        backend's own in-process API (server-side API keys), never for broker input."""
        try:
            self._check_envelope_of_command(command, verify_signature=not trusted)
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
                # A concurrent replica committed the same command id or created the same
                # row first, or PostgreSQL broke a deadlock with it by aborting this
                # transaction: retry, and the state checks decide.
                if not _retryable(exc) or attempt == MAX_APPLY_ATTEMPTS - 1:
                    raise
        if self._on_commit is not None:
            self._on_commit()
        return outcome

    def _check_envelope_of_command(
        self, command: cmd.Command, *, verify_signature: bool = True
    ) -> None:
        """Stateless checks: fleet and signature (cheap before expensive)."""
        if command.fleet != self.state.names.fleet:
            raise FleetMismatch(
                f"command for fleet {command.fleet!r}, this backend serves "
                f"{self.state.names.fleet!r}"
            )
        if verify_signature:
            verify(command, self.state.admin)

    # --- the transaction -----------------------------------------------------------------

    async def _apply(self, command: cmd.Command) -> Outcome:
        if self._fast_writer is not None and isinstance(command, cmd.PutSecret | cmd.RotateSecret):
            applied = await self._write_secret_fast(self._fast_writer, command)
            if applied is not None:
                return applied
        # Core statements, not the ORM's unit of work, on this hot path: the ORM's
        # per-object bookkeeping was most of a write's CPU time.
        async with (
            self.writing(),
            self._sessions() as session,
            session.begin(),
        ):
            connection = await session.connection()
            now = datetime.now(UTC)
            expected = _outcome_msg_id(command)
            # Claims the command id: nothing is inserted if it was processed before, and a
            # concurrent replica's uncommitted claim makes this wait for its outcome.
            claimed = await connection.execute(
                _CLAIM[connection.dialect.name],
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
            rows: list[dict[str, Any]] = []
            target, event = await self._dispatch(session, command, rows)
            rows.append(outbox.event_row(self.state.names, event))
            await outbox.insert_rows(session, rows)  # after the rows the ORM holds
            if rows[-1]["msg_id"] != expected:
                await connection.execute(
                    update(PROCESSED)
                    .where(PROCESSED.c.command_id == command.command_id)
                    .values(outcome_msg_id=rows[-1]["msg_id"])
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

    def writing(self) -> contextlib.AbstractAsyncContextManager[object]:
        """The write lock (SQLite), around a write transaction of the general path."""
        return db.holding(self._write_lock)

    async def _write_secret_fast(
        self, writer: FastWriter, command: cmd.PutSecret | cmd.RotateSecret
    ) -> Outcome | None:
        """A new secret or the next version of one, in one step
        (:mod:`flashgate.backend.fastwrite`). None, having written nothing, when this is
        not that common case as far as this backend knows (an unknown repository, a deleted
        secret, epochs changed elsewhere, a command seen before, anything to refuse): the
        general path then decides."""
        rotate = isinstance(command, cmd.RotateSecret)
        repository_id = self._repository_ids.get(command.repo)
        if repository_id is None or (not rotate and command.version != 1):
            return None
        if command.epoch not in self.state.keys:
            return None  # the general path re-reads the epochs first
        try:
            self._check_jwe_against_state(command.jwe, _secret_context(command), command.epoch)
        except FlashgateError:
            return None  # refused by the general path, with fresh epochs
        key = secret_key(command.repo, command.name)
        event = self._secret_written_event(command, command.version - 1, key)
        expected = _outcome_msg_id(command)
        assert expected is not None
        write = SecretWrite(
            fleet_id=self.state.fleet_id,
            epoch=self.state.epoch,
            rotating_to=self.state.rotating_to,
            command_id=command.command_id,
            command_type=command.command_type,
            outcome_msg_id=expected,
            repository_id=repository_id,
            name=command.name,
            kind=command.kind,
            version=command.version,
            envelope_epoch=command.epoch,
            jwe=command.jwe,
            at=datetime.now(UTC),
            outbox=[self._secret_put_row(command), outbox.event_row(self.state.names, event)],
            fleet=self.state.names.fleet,
            actor=command.actor,
            target=key,
        )
        if not await writer.write_secret(write, rotate=rotate):
            return None
        return _applied(command, key)

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
                if command is not None and exc.code not in ("bad_signature", "fleet_mismatch")
                else f"{command_id or 'unreadable'}.rejected.{_now_ms()}.{secrets.token_hex(4)}"
            ),
            source=self._source,
        )
        try:
            async with self.writing(), self._sessions() as session, session.begin():
                if command_id is not None:
                    seen = await session.get(ProcessedCommand, command_id)
                    if seen is not None and command is not None:
                        return await self._repeat(session, command, seen)
                row = outbox.add_event(session, self.state.names, event)
                # Only a command that decoded and was signed by the admin is remembered: a
                # forged id in a broken message must not block the real command later.
                if command is not None and exc.code not in ("bad_signature", "fleet_mismatch"):
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
        log.warning(
            "command rejected",
            command_id=command_id,
            command_type=command_type,
            reason=exc.code,
            detail=detail,
        )
        if self._on_commit is not None:
            self._on_commit()
        return Outcome(command_id, command_type, "rejected", exc.code, detail)

    # --- per command type ------------------------------------------------------------------

    async def _dispatch(
        self, session: AsyncSession, command: cmd.Command, rows: list[dict[str, Any]]
    ) -> tuple[str, ev.DomainEvent]:
        """Apply ``command``; outbox rows go to ``rows`` (written after any the ORM holds)
        or straight into the session."""
        match command:
            case cmd.PutSecret() | cmd.RotateSecret():
                return await self._write_secret(session, command, rows)
            case cmd.DeleteSecret():
                return await self._delete_secret(session, command)
            case cmd.CreateApiKey():
                return await self._create_api_key(session, command)
            case cmd.RenameApiKey():
                return await self._rename_api_key(session, command)
            case cmd.RevokeApiKey():
                return await self._revoke_api_key(session, command)
            case cmd.RevokeNode():
                return await self._revoke_node(session, command)
            case cmd.StartKeyRotation():
                return await self._start_rotation(session, command)
            case cmd.FinishKeyRotation():
                return await self._finish_rotation(session, command)
        raise MalformedMessage(f"unsupported command type {command.command_type}")

    def _event(
        self, command: cmd.Command, data: ev.EventData, subject: str | None
    ) -> ev.DomainEvent:
        return ev.make_event(
            data,
            event_id=f"{command.command_id}.{data.event_type}",
            source=self._source,
            subject=subject,
        )

    async def _check_jwe(
        self, session: AsyncSession, token: str, context: SecretContext, epoch: int
    ) -> None:
        # The epochs as committed, read in this transaction and share-locked (PostgreSQL:
        # FOR KEY SHARE), so that a replica that missed a rotation's start or finish never
        # writes under a retired epoch, and fleet.rotation.finish (FOR UPDATE on the same
        # row) cannot count the envelopes while this write is uncommitted.
        connection = await session.connection()
        current, rotating_to = (
            await connection.execute(_FLEET_EPOCHS, {"b_fleet_id": self.state.fleet_id})
        ).one()
        if (current, rotating_to) != (self.state.epoch, self.state.rotating_to) or (
            epoch not in self.state.keys and epoch in (current, rotating_to)
        ):
            await self.refresh_state(session)
        self._check_jwe_against_state(token, context, epoch)

    def _check_jwe_against_state(self, token: str, context: SecretContext, epoch: int) -> None:
        """The envelope's epoch is writable, its header binds ``context`` and its wrapped
        key fits that epoch's fleet key (the epochs as this backend holds them)."""
        if epoch not in self.state.writable_epochs():
            raise StaleEpoch(
                f"envelope is for epoch {epoch}; the fleet writes epoch "
                f"{sorted(self.state.writable_epochs())}"
            )
        parsed = jwe.parse(token)
        check_context(parsed.context, context)
        parsed.wrapped_key(self.state.keys[epoch])  # size and range under that epoch's key

    async def _repository(self, session: AsyncSession, name: str, *, create: bool) -> Repository:
        repo = await session.scalar(
            select(Repository).where(
                Repository.fleet_id == self.state.fleet_id, Repository.name == name
            )
        )
        if repo is None:
            if not create:
                raise NotFound(f"repository {name!r} does not exist")
            repo = Repository(fleet_id=self.state.fleet_id, name=name)
            session.add(repo)
            await session.flush()
        return repo

    async def _repository_id(self, session: AsyncSession, name: str) -> int:
        """The id of repository ``name``, created if need be. Repositories are never
        deleted, so an id read from a committed row is cached; one created in this
        transaction is not (the transaction may yet roll back)."""
        cached = self._repository_ids.get(name)
        if cached is not None:
            return cached
        connection = await session.connection()
        found = (
            await connection.execute(
                _REPOSITORY_ID, {"b_fleet_id": self.state.fleet_id, "b_name": name}
            )
        ).scalar()
        if found is not None:
            self._repository_ids[name] = found
            return int(found)
        return (await self._repository(session, name, create=True)).id

    async def _secret(self, session: AsyncSession, repo: Repository, name: str) -> Secret | None:
        return await session.scalar(
            select(Secret)
            .where(Secret.repository_id == repo.id, Secret.name == name)
            .with_for_update(of=Secret)
        )

    async def _write_secret(
        self,
        session: AsyncSession,
        command: cmd.PutSecret | cmd.RotateSecret,
        rows: list[dict[str, Any]],
    ) -> tuple[str, ev.DomainEvent]:
        context = _secret_context(command)
        await self._check_jwe(session, command.jwe, context, command.epoch)
        repository_id = await self._repository_id(session, command.repo)
        connection = await session.connection()
        key = secret_key(command.repo, command.name)
        shown = f"{command.repo}/{command.name}"  # as people write it (the CLI's REPO/NAME)
        rotate = isinstance(command, cmd.RotateSecret)
        now = datetime.now(UTC)
        values = {
            "repository_id": repository_id,
            "name": command.name,
            "kind": command.kind,
            "current_version": command.version,
            "deleted": False,
            "created_at": now,
            "updated_at": now,
        }
        current = 0
        secret_id: int | None = None
        if not rotate and command.version == 1:
            # The common put, of a new secret: one statement. A row that exists (live or
            # deleted) makes it a no-op, and the checks below decide as for any write.
            created = await connection.execute(_SECRET_CREATE[connection.dialect.name], values)
            if created.rowcount == 1:
                assert created.inserted_primary_key is not None
                secret_id = created.inserted_primary_key[0]
        if secret_id is None:
            secret = (
                await connection.execute(
                    _SECRET_FOR_UPDATE, {"b_repository_id": repository_id, "b_name": command.name}
                )
            ).first()
            if rotate and (secret is None or secret.deleted):
                raise NotFound(f"secret {shown} does not exist; use put to create it")
            if not rotate and secret is not None and not secret.deleted:
                raise AlreadyExists(
                    f"secret {shown} exists (version {secret.current_version}); "
                    "use rotate for a new version"
                )
            current = secret.current_version if secret is not None else 0
            if command.version != current + 1:
                raise StaleVersion(
                    f"secret {shown} is at version {current}; the next version is "
                    f"{current + 1}, not {command.version}"
                )
            if rotate and secret is not None and secret.kind != command.kind:
                raise ConfigurationError(
                    f"secret {shown} is of kind {secret.kind}, not {command.kind}; "
                    "a rotation keeps the kind"
                )
            if secret is None:
                inserted = await connection.execute(_SECRET_INSERT, values)
                assert inserted.inserted_primary_key is not None
                secret_id = inserted.inserted_primary_key[0]
            else:
                secret_id = secret.id
                await connection.execute(
                    _SECRET_UPDATE,
                    {
                        "b_id": secret_id,
                        "current_version": command.version,
                        "kind": command.kind,
                        "deleted": False,
                        "updated_at": now,
                    },
                )
        await connection.execute(
            _VERSION_INSERT,
            {
                "secret_id": secret_id,
                "version": command.version,
                "epoch": command.epoch,
                "jwe": command.jwe,
                "command_id": command.command_id,
                "created_at": now,
            },
        )
        rows.append(self._secret_put_row(command))
        return key, self._secret_written_event(command, current, key)

    def _secret_put_row(self, command: cmd.PutSecret | cmd.RotateSecret) -> dict[str, Any]:
        """The outbox row that puts a written secret's envelope into the bucket."""
        envelope = SecretEnvelope(
            fleet=command.fleet,
            repo=command.repo,
            name=command.name,
            kind=command.kind,
            version=command.version,
            epoch=command.epoch,
            jwe=command.jwe,
            written_at=_now_ms(),
            command_id=command.command_id,
        )
        return outbox.kv_put_row(self.state.names, envelope)

    def _secret_written_event(
        self, command: cmd.PutSecret | cmd.RotateSecret, previous: int, key: str
    ) -> ev.DomainEvent:
        data: ev.EventData
        if isinstance(command, cmd.RotateSecret):
            data = ev.SecretRotated(
                repo=command.repo,
                name=command.name,
                kind=command.kind,
                version=command.version,
                previous_version=previous,
                epoch=command.epoch,
                command_id=command.command_id,
            )
        else:
            data = ev.SecretCreated(
                repo=command.repo,
                name=command.name,
                kind=command.kind,
                version=command.version,
                epoch=command.epoch,
                command_id=command.command_id,
            )
        return self._event(command, data, key)

    async def _delete_secret(
        self, session: AsyncSession, command: cmd.DeleteSecret
    ) -> tuple[str, ev.DomainEvent]:
        key = secret_key(command.repo, command.name)
        repo = await self._repository(session, command.repo, create=False)
        secret = await self._secret(session, repo, command.name)
        if secret is None or secret.deleted:
            raise NotFound(f"secret {command.repo}/{command.name} does not exist")
        secret.deleted = True
        secret.updated_at = datetime.now(UTC)
        outbox.add_kv_delete(session, self.state.names, key, secret.current_version)
        data = ev.SecretDeleted(
            repo=command.repo,
            name=command.name,
            last_version=secret.current_version,
            command_id=command.command_id,
        )
        return key, self._event(command, data, key)

    async def _create_api_key(
        self, session: AsyncSession, command: cmd.CreateApiKey
    ) -> tuple[str, ev.DomainEvent]:
        if not command.key_id.startswith(API_KEY_PREFIX):
            raise ConfigurationError(f"API key ids start with {API_KEY_PREFIX!r}")
        if command.scope == "storage" and command.access not in STORAGE_ACCESS:
            raise ConfigurationError(
                f"storage API keys have access read, write or admin, not {command.access!r}"
            )
        context = SecretContext(
            fleet=command.fleet, repo=command.repo, name=command.key_id, kind="apikey", version=1
        )
        await self._check_jwe(session, command.jwe, context, command.epoch)
        existing = await session.scalar(select(ApiKey).where(ApiKey.key_id == command.key_id))
        if existing is not None:
            raise AlreadyExists(f"API key {command.key_id} exists")
        repo = await self._repository(session, command.repo, create=True)
        session.add(
            ApiKey(
                key_id=command.key_id,
                repository_id=repo.id,
                scope=command.scope,
                access=command.access,
                label=command.label,
                epoch=command.epoch,
                jwe=command.jwe,
                command_id=command.command_id,
            )
        )
        envelope = SecretEnvelope(
            fleet=command.fleet,
            repo=command.repo,
            name=command.key_id,
            kind="apikey",
            version=1,
            epoch=command.epoch,
            jwe=command.jwe,
            written_at=_now_ms(),
            command_id=command.command_id,
            api_key=ApiKeyInfo(
                key_id=command.key_id,
                scope=command.scope,
                access=command.access,
                label=command.label,
            ),
        )
        outbox.add_kv_put(session, self.state.names, envelope)
        data = ev.ApiKeyCreated(
            key_id=command.key_id,
            repo=command.repo,
            scope=command.scope,
            access=command.access,
            label=command.label,
            command_id=command.command_id,
        )
        return command.key_id, self._event(command, data, envelope.key)

    async def _live_api_key(self, session: AsyncSession, key_id: str) -> ApiKey:
        key = await session.scalar(
            select(ApiKey).where(ApiKey.key_id == key_id).with_for_update(of=ApiKey)
        )
        if key is None or key.revoked_at is not None:
            raise NotFound(f"API key {key_id} does not exist or is revoked")
        return key

    async def _rename_api_key(
        self, session: AsyncSession, command: cmd.RenameApiKey
    ) -> tuple[str, ev.DomainEvent]:
        key = await self._live_api_key(session, command.key_id)
        key.label = command.label
        data = ev.ApiKeyRenamed(
            key_id=key.key_id,
            repo=key.repository.name,
            label=command.label,
            command_id=command.command_id,
        )
        return key.key_id, self._event(command, data, None)

    async def _revoke_api_key(
        self, session: AsyncSession, command: cmd.RevokeApiKey
    ) -> tuple[str, ev.DomainEvent]:
        key = await self._live_api_key(session, command.key_id)
        key.revoked_at = datetime.now(UTC)  # soft: the row stays for audit
        kv_key = secret_key(key.repository.name, key.key_id)
        outbox.add_kv_delete(session, self.state.names, kv_key, 1)
        data = ev.ApiKeyRevoked(
            key_id=key.key_id, repo=key.repository.name, command_id=command.command_id
        )
        return key.key_id, self._event(command, data, kv_key)

    async def _revoke_node(
        self, session: AsyncSession, command: cmd.RevokeNode
    ) -> tuple[str, ev.DomainEvent]:
        roster = command.roster
        verify(roster, self.state.admin)
        if roster.fleet != self.state.names.fleet:
            raise FleetMismatch("the roster is for another fleet")
        fleet = await session.get(Fleet, self.state.fleet_id, with_for_update=True)
        assert fleet is not None
        if roster.serial <= fleet.roster_serial:
            raise StaleRoster(
                f"roster serial {roster.serial} is not above the current {fleet.roster_serial}"
            )
        entry = roster.node(command.node_id)
        if entry is None or entry.status != "revoked":
            raise ConfigurationError(f"the new roster does not revoke node {command.node_id}")
        raw = ROSTER_CODEC.encode(roster)
        fleet.roster = raw.decode()
        fleet.roster_serial = roster.serial
        self.state.roster_serial = roster.serial
        outbox.add_fleet_document(
            session, self.state.names, FleetNames.ROSTER_KEY, raw, f"roster:{roster.serial}"
        )
        data = ev.NodeRevoked(
            node_id=command.node_id, roster_serial=roster.serial, command_id=command.command_id
        )
        return command.node_id, self._event(command, data, command.node_id)

    async def refresh_state(self, session: AsyncSession) -> None:
        """Re-read the epochs from the database: with several replicas, another one may have
        started or finished a rotation since this one last looked."""
        fleet = await session.get(Fleet, self.state.fleet_id, populate_existing=True)
        assert fleet is not None
        rows = (
            await session.scalars(
                select(FleetEpoch).where(
                    FleetEpoch.fleet_id == fleet.id, FleetEpoch.retired_at.is_(None)
                )
            )
        ).all()
        self.state.keys = {
            r.epoch: fleet_public_key(decode_descriptor(r.descriptor.encode())) for r in rows
        }
        self.state.epoch, self.state.rotating_to = fleet.epoch, fleet.rotating_to
        self.state.roster_serial = fleet.roster_serial

    async def _start_rotation(
        self, session: AsyncSession, command: cmd.StartKeyRotation
    ) -> tuple[str, ev.DomainEvent]:
        descriptor = command.descriptor
        public = verify_descriptor(descriptor, self.state.admin_key)
        if descriptor.fleet != self.state.names.fleet:
            raise FleetMismatch("the descriptor is for another fleet")
        check_sealed_shares(descriptor, command.shares)
        fleet = await session.get(Fleet, self.state.fleet_id, with_for_update=True)
        assert fleet is not None
        if fleet.rotating_to is not None:
            raise AlreadyExists(f"a rotation to epoch {fleet.rotating_to} is in progress")
        if command.from_epoch != fleet.epoch or descriptor.epoch != fleet.epoch + 1:
            raise StaleEpoch(
                f"rotation {command.from_epoch} -> {descriptor.epoch} does not start from "
                f"the current epoch {fleet.epoch}"
            )
        if fleet.roster:  # the new epoch goes to exactly the active nodes, revoked ones never
            roster = ROSTER_CODEC.decode(fleet.roster.encode())
            active = {n.id for n in roster.nodes if n.status == "active"}
            dealt = {n.id for n in descriptor.nodes}
            if dealt != active:
                raise StaleRoster(
                    f"the new epoch is dealt to {sorted(dealt)}, but the active nodes of roster "
                    f"serial {roster.serial} are {sorted(active)}: update the home's roster.json "
                    "and deal again"
                )
        fleet.rotating_to = descriptor.epoch
        signed = cmd.COMMAND_CODEC.encode(command)
        session.add(
            FleetEpoch(
                fleet_id=fleet.id,
                epoch=descriptor.epoch,
                descriptor=encode_descriptor(descriptor).decode(),
                dealt_by=signed.decode(),
            )
        )
        names = self.state.names
        outbox.add_fleet_document(
            session,
            names,
            names.descriptor_key(descriptor.epoch),
            encode_descriptor(descriptor),
            f"descriptor:{descriptor.epoch}",
        )
        outbox.add_fleet_document(
            session,
            names,
            names.rotation_key(descriptor.epoch),
            signed,
            f"rotation:{descriptor.epoch}",
        )
        total = await count_live_envelopes(session, self.state.fleet_id)
        self.state.epoch, self.state.rotating_to = fleet.epoch, descriptor.epoch
        self.state.keys[descriptor.epoch] = public
        data = ev.KeyRotationStarted(
            from_epoch=command.from_epoch,
            to_epoch=descriptor.epoch,
            total=total,
            command_id=command.command_id,
        )
        return f"epoch {descriptor.epoch}", self._event(command, data, None)

    async def _finish_rotation(
        self, session: AsyncSession, command: cmd.FinishKeyRotation
    ) -> tuple[str, ev.DomainEvent]:
        fleet = await session.get(Fleet, self.state.fleet_id, with_for_update=True)
        assert fleet is not None
        if fleet.rotating_to is None or command.retired_epoch != fleet.epoch:
            raise StaleEpoch(f"no rotation away from epoch {command.retired_epoch} is running")
        remaining = await count_live_envelopes(session, fleet.id, epoch=fleet.epoch)
        if remaining:
            raise ConfigurationError(
                f"{remaining} envelope(s) still use epoch {fleet.epoch}; re-wrap them first"
            )
        retired = await session.scalar(
            select(FleetEpoch).where(
                FleetEpoch.fleet_id == fleet.id, FleetEpoch.epoch == fleet.epoch
            )
        )
        names = self.state.names
        signed = cmd.COMMAND_CODEC.encode(command)
        if retired is not None:
            retired.retired_at = datetime.now(UTC)
            retired.retired_by = signed.decode()
            if retired.dealt_by is not None:  # its sealed shares go with it
                retired.dealt_by = None
                outbox.add_fleet_purge(
                    session, names, names.rotation_key(fleet.epoch), f"rotation-purge:{fleet.epoch}"
                )
        # The originals kept for reverts are under the retired epoch: nothing can use them.
        await session.execute(
            delete(RewrapOrigin).where(
                RewrapOrigin.fleet_id == fleet.id, RewrapOrigin.to_epoch <= fleet.rotating_to
            )
        )
        fleet.epoch, fleet.rotating_to = fleet.rotating_to, None
        outbox.add_fleet_document(
            session,
            names,
            names.retirement_key(command.retired_epoch),
            signed,
            f"retired:{command.retired_epoch}",
        )
        outbox.add_fleet_document(
            session,
            names,
            FleetNames.CURRENT_EPOCH_KEY,
            str(fleet.epoch).encode(),
            f"epoch:{fleet.epoch}",
        )
        self.state.epoch, self.state.rotating_to = fleet.epoch, None
        self.state.keys.pop(command.retired_epoch, None)
        data = ev.KeyRotationCompleted(
            retired_epoch=command.retired_epoch,
            current_epoch=fleet.epoch,
            command_id=command.command_id,
        )
        return f"epoch {command.retired_epoch}", self._event(command, data, None)


async def count_live_envelopes(
    session: AsyncSession, fleet_id: int, *, epoch: int | None = None
) -> int:
    """Current versions of live secrets plus live API keys (optionally of one epoch)."""
    from sqlalchemy import and_, func

    secrets_q = (
        select(func.count())
        .select_from(SecretVersion)
        .join(
            Secret,
            and_(
                Secret.id == SecretVersion.secret_id,
                Secret.current_version == SecretVersion.version,
            ),
        )
        .join(Repository, Repository.id == Secret.repository_id)
        .where(Repository.fleet_id == fleet_id, Secret.deleted.is_(False))
    )
    keys_q = (
        select(func.count())
        .select_from(ApiKey)
        .join(Repository, Repository.id == ApiKey.repository_id)
        .where(Repository.fleet_id == fleet_id, ApiKey.revoked_at.is_(None))
    )
    if epoch is not None:
        secrets_q = secrets_q.where(SecretVersion.epoch == epoch)
        keys_q = keys_q.where(ApiKey.epoch == epoch)
    return int(await session.scalar(secrets_q) or 0) + int(await session.scalar(keys_q) or 0)

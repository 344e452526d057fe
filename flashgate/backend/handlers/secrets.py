"""Secret commands: ``secret.put``, ``secret.rotate`` and ``secret.delete``.

A put or rotate is tried first in one step (:func:`write_in_one_step`, the store's
:meth:`~flashgate.backend.store.base.Store.write_secret`); when that writes nothing, the
general path (:func:`write_secret`) applies it or refuses it, with words.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

from sqlalchemy import Table, bindparam, insert, select, update

from flashgate.backend import outbox
from flashgate.backend.fleet_state import FleetState
from flashgate.backend.models import Secret, SecretVersion
from flashgate.backend.store import SecretWrite, Store
from flashgate.backend.transaction import Transaction, check_envelope, command_event, now_ms
from flashgate.crypto.api_key_tokens import KEY_ID_PREFIX
from flashgate.crypto.context import SecretContext
from flashgate.errors import (
    AlreadyExists,
    ConfigurationError,
    FlashgateError,
    KindChange,
    NotFound,
    StaleVersion,
    VersionConflict,
)
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import Provenance, SecretEnvelope, provenance_text
from flashgate.events.subjects import secret_key
from flashgate.events.types import WritableSecretKind

WRITABLE_KINDS = frozenset(get_args(WritableSecretKind))

SECRETS: Table = Secret.__table__  # type: ignore[assignment]
VERSIONS: Table = SecretVersion.__table__  # type: ignore[assignment]

# Statements of the hot path, built once (a statement caches its compiled form's key).
_SECRET_FOR_UPDATE = (
    select(SECRETS.c.id, SECRETS.c.kind, SECRETS.c.current_version, SECRETS.c.deleted)
    .where(
        SECRETS.c.repository_id == bindparam("b_repository_id"),
        SECRETS.c.name == bindparam("b_name"),
    )
    .with_for_update()
)
_SECRET_INSERT = insert(SECRETS)
_SECRET_UPDATE = update(SECRETS).where(SECRETS.c.id == bindparam("b_id"))
_VERSION_INSERT = insert(VERSIONS)
_VERSION_JWE = select(VERSIONS.c.jwe).where(
    VERSIONS.c.secret_id == bindparam("b_secret_id"), VERSIONS.c.version == bindparam("b_version")
)


def secret_context(command: cmd.PutSecret | cmd.RotateSecret) -> SecretContext:
    """The context a secret write's envelope must bind; refuses reserved kinds and names."""
    if command.kind not in WRITABLE_KINDS:
        raise ConfigurationError(f"secret kind {command.kind!r} is reserved")
    if command.name.startswith(KEY_ID_PREFIX):
        raise ConfigurationError(f"secret names starting {KEY_ID_PREFIX!r} are reserved")
    return SecretContext(
        fleet=command.fleet,
        repo=command.repo,
        name=command.name,
        kind=command.kind,
        version=command.version,
    )


def _envelope(command: cmd.PutSecret | cmd.RotateSecret) -> SecretEnvelope:
    """The envelope a written secret puts into the bucket."""
    return SecretEnvelope(
        fleet=command.fleet,
        repo=command.repo,
        name=command.name,
        kind=command.kind,
        version=command.version,
        epoch=command.epoch,
        jwe=command.jwe,
        written_at=now_ms(),
        command_id=command.command_id,
        provenance=None if command.statement is None else Provenance(statement=command.statement),
    )


def _written(
    command: cmd.PutSecret | cmd.RotateSecret, previous: int
) -> ev.SecretRotated | ev.SecretCreated:
    if isinstance(command, cmd.RotateSecret):
        return ev.SecretRotated(
            repo=command.repo,
            name=command.name,
            kind=command.kind,
            version=command.version,
            previous_version=previous,
            epoch=command.epoch,
            command_id=command.command_id,
        )
    return ev.SecretCreated(
        repo=command.repo,
        name=command.name,
        kind=command.kind,
        version=command.version,
        epoch=command.epoch,
        command_id=command.command_id,
    )


async def write_in_one_step(
    store: Store,
    state: FleetState,
    command: cmd.PutSecret | cmd.RotateSecret,
    *,
    source: str,
    outcome_msg_id: str,
) -> str | None:
    """A new secret or the next version of one, in one step: the target written, or None,
    having written nothing, when this is not that common case as far as this backend
    knows (an unknown repository, a deleted secret, epochs changed elsewhere, a command
    seen before, anything to refuse): the general path then decides."""
    rotate = isinstance(command, cmd.RotateSecret)
    repository_id = state.repository_ids.get(command.repo)
    if repository_id is None or (not rotate and command.version != 1):
        return None
    if command.epoch not in state.keys:
        return None  # the general path re-reads the epochs first
    try:
        context = secret_context(command)
        check_envelope(state, command.jwe, context, command.epoch, command.statement)
    except FlashgateError:
        return None  # refused by the general path, with fresh epochs
    key = secret_key(command.repo, command.name)
    event = command_event(command, _written(command, command.version - 1), key, source=source)
    envelope = _envelope(command)
    assert envelope.provenance is not None
    write = SecretWrite(
        fleet_id=state.fleet_id,
        epoch=state.epoch,
        rotating_to=state.rotating_to,
        command_id=command.command_id,
        command_type=command.command_type,
        outcome_msg_id=outcome_msg_id,
        repository_id=repository_id,
        name=command.name,
        kind=command.kind,
        version=command.version,
        envelope_epoch=command.epoch,
        jwe=command.jwe,
        provenance=provenance_text(envelope.provenance),
        at=datetime.now(UTC),
        outbox=[
            outbox.kv_put_row(state.names, envelope),
            outbox.event_row(state.names, event),
        ],
        fleet=state.names.fleet,
        actor=command.actor,
        target=key,
    )
    if not await store.write_secret(write, rotate=rotate):
        return None
    return key


async def write_secret(
    tx: Transaction, command: cmd.PutSecret | cmd.RotateSecret
) -> tuple[str, ev.DomainEvent]:
    """The general path of a put or rotate: every check, and the refusals' words."""
    await tx.check_envelope(command.jwe, secret_context(command), command.epoch, command.statement)
    envelope = _envelope(command)
    assert envelope.provenance is not None
    repository_id = await tx.repository_id(command.repo)
    connection = tx.connection
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
        create = tx.store.insert_new(SECRETS, SECRETS.c.repository_id, SECRETS.c.name)
        created = await connection.execute(create, values)
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
        if secret is not None and command.version <= secret.current_version:
            held = await connection.scalar(
                _VERSION_JWE, {"b_secret_id": secret.id, "b_version": command.version}
            )
            if held is not None and held != command.jwe:
                # A version names one value for good (nodes holding it keep it).
                raise VersionConflict(
                    f"secret {shown} already has version {command.version} with another "
                    f"value; the next version is {secret.current_version + 1}"
                )
        current = secret.current_version if secret is not None else 0
        if command.version != current + 1:
            raise StaleVersion(
                f"secret {shown} is at version {current}; the next version is "
                f"{current + 1}, not {command.version}"
            )
        if rotate and secret is not None and secret.kind != command.kind:
            raise KindChange(
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
            "provenance": provenance_text(envelope.provenance),
        },
    )
    tx.put_envelope(envelope)
    return key, tx.event(_written(command, current), key)


async def delete_secret(tx: Transaction, command: cmd.DeleteSecret) -> tuple[str, ev.DomainEvent]:
    key = secret_key(command.repo, command.name)
    repo = await tx.repository(command.repo, create=False)
    secret = await tx.session.scalar(
        select(Secret)
        .where(Secret.repository_id == repo.id, Secret.name == command.name)
        .with_for_update(of=Secret)
    )
    if secret is None or secret.deleted:
        raise NotFound(f"secret {command.repo}/{command.name} does not exist")
    secret.deleted = True
    secret.updated_at = datetime.now(UTC)
    tx.delete_envelope(key, secret.current_version)
    # the admin-signed command, as signed, is the tombstone nodes keep for good: writing
    # the envelope back into the bucket does not bring the secret back
    tx.put_fleet_document(
        tx.names.secret_tombstone_key(command.repo, command.name),
        cmd.COMMAND_CODEC.encode(command),
        f"tombstone:{command.command_id}",
    )
    data = ev.SecretDeleted(
        repo=command.repo,
        name=command.name,
        last_version=secret.current_version,
        command_id=command.command_id,
    )
    return key, tx.event(data, key)

"""API key commands: ``apikey.create``, ``apikey.rename`` and ``apikey.revoke``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import get_args

from sqlalchemy import select

from flashgate.backend.models import ApiKey
from flashgate.backend.transaction import Transaction, now_ms
from flashgate.crypto.api_key_tokens import KEY_ID_PREFIX
from flashgate.crypto.context import SecretContext
from flashgate.errors import AlreadyExists, ConfigurationError, NotFound
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import (
    ApiKeyInfo,
    Provenance,
    ProvenApiKey,
    SecretEnvelope,
    provenance_text,
)
from flashgate.events.subjects import secret_key
from flashgate.events.types import StorageAccess

STORAGE_ACCESS = frozenset(get_args(StorageAccess))


async def create_api_key(tx: Transaction, command: cmd.CreateApiKey) -> tuple[str, ev.DomainEvent]:
    if not command.key_id.startswith(KEY_ID_PREFIX):
        raise ConfigurationError(f"API key ids start with {KEY_ID_PREFIX!r}")
    if command.scope == "storage" and command.access not in STORAGE_ACCESS:
        raise ConfigurationError(
            f"storage API keys have access read, write or admin, not {command.access!r}"
        )
    context = SecretContext(
        fleet=command.fleet, repo=command.repo, name=command.key_id, kind="apikey", version=1
    )
    proven = ProvenApiKey(key_id=command.key_id, scope=command.scope, access=command.access)
    await tx.check_envelope(command.jwe, context, command.epoch, command.statement, proven)
    assert command.statement is not None  # checked just above
    provenance = Provenance(statement=command.statement)
    existing = await tx.session.scalar(select(ApiKey).where(ApiKey.key_id == command.key_id))
    if existing is not None:
        raise AlreadyExists(f"API key {command.key_id} exists")
    repo = await tx.repository(command.repo, create=True)
    tx.session.add(
        ApiKey(
            key_id=command.key_id,
            repository_id=repo.id,
            scope=command.scope,
            access=command.access,
            label=command.label,
            epoch=command.epoch,
            jwe=command.jwe,
            command_id=command.command_id,
            provenance=provenance_text(provenance),
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
        written_at=now_ms(),
        command_id=command.command_id,
        api_key=ApiKeyInfo(
            key_id=command.key_id,
            scope=command.scope,
            access=command.access,
            label=command.label,
        ),
        provenance=provenance,
    )
    tx.put_envelope(envelope)
    data = ev.ApiKeyCreated(
        key_id=command.key_id,
        repo=command.repo,
        scope=command.scope,
        access=command.access,
        label=command.label,
        command_id=command.command_id,
    )
    return command.key_id, tx.event(data, envelope.key)


async def _live_api_key(tx: Transaction, key_id: str) -> ApiKey:
    key = await tx.session.scalar(
        select(ApiKey).where(ApiKey.key_id == key_id).with_for_update(of=ApiKey)
    )
    if key is None or key.revoked_at is not None:
        raise NotFound(f"API key {key_id} does not exist or is revoked")
    return key


async def rename_api_key(tx: Transaction, command: cmd.RenameApiKey) -> tuple[str, ev.DomainEvent]:
    key = await _live_api_key(tx, command.key_id)
    key.label = command.label
    data = ev.ApiKeyRenamed(
        key_id=key.key_id,
        repo=key.repository.name,
        label=command.label,
        command_id=command.command_id,
    )
    return key.key_id, tx.event(data, None)


async def revoke_api_key(tx: Transaction, command: cmd.RevokeApiKey) -> tuple[str, ev.DomainEvent]:
    key = await _live_api_key(tx, command.key_id)
    key.revoked_at = datetime.now(UTC)  # soft: the row stays for audit
    kv_key = secret_key(key.repository.name, key.key_id)
    tx.delete_envelope(kv_key, 1)
    tx.put_fleet_document(  # the tombstone nodes keep for good (the signed command)
        tx.names.api_key_tombstone_key(key.key_id),
        cmd.COMMAND_CODEC.encode(command),
        f"tombstone:{command.command_id}",
    )
    data = ev.ApiKeyRevoked(
        key_id=key.key_id, repo=key.repository.name, command_id=command.command_id
    )
    return key.key_id, tx.event(data, kv_key)

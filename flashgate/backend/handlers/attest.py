"""``envelope.attest``: the admin adopts envelopes written before provenance existed.

Each statement names one live envelope as the admin read it from the bucket (its context,
epoch, JWE digest and API key). It is put into that envelope only if the database still
holds exactly that envelope; otherwise the whole command is refused (the admin reads the
bucket again). The republished envelope then carries the statement, and the nodes load it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import select

from flashgate.backend import outbox
from flashgate.backend.models import ApiKey, Repository, Secret, SecretVersion
from flashgate.backend.reconcile import api_key_envelope, secret_envelope
from flashgate.backend.transaction import Transaction
from flashgate.errors import NotFound, SignatureInvalid, StaleVersion, Unproven
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import (
    EnvelopeStatement,
    Provenance,
    SecretEnvelope,
    check_statement,
    proven_api_key,
    provenance_text,
)
from flashgate.events.signing import verify
from flashgate.events.subjects import secret_key


async def _current(tx: Transaction, statement: EnvelopeStatement) -> tuple[Any, SecretEnvelope]:
    """The row holding the live envelope the statement names, and that envelope."""
    shown = f"{statement.repo}/{statement.name}"
    names = tx.names
    if statement.kind == "apikey":
        key = await tx.session.scalar(
            select(ApiKey)
            .join(Repository, Repository.id == ApiKey.repository_id)
            .where(
                Repository.fleet_id == tx.state.fleet_id,
                Repository.name == statement.repo,
                ApiKey.key_id == statement.name,
                ApiKey.revoked_at.is_(None),
            )
            .with_for_update(of=ApiKey)
        )
        if key is None:
            raise NotFound(f"API key {shown} does not exist or is revoked")
        return key, api_key_envelope(names, statement.repo, key)
    row = (
        await tx.session.execute(
            select(Secret, SecretVersion)
            .join(Repository, Repository.id == Secret.repository_id)
            .join(
                SecretVersion,
                (SecretVersion.secret_id == Secret.id)
                & (SecretVersion.version == Secret.current_version),
            )
            .where(
                Repository.fleet_id == tx.state.fleet_id,
                Repository.name == statement.repo,
                Secret.name == statement.name,
                Secret.deleted.is_(False),
            )
            .with_for_update(of=SecretVersion)
        )
    ).first()
    if row is None:
        raise NotFound(f"secret {shown} does not exist")
    secret, version = row
    return version, secret_envelope(names, statement.repo, secret, version)


async def attest_envelopes(
    tx: Transaction, command: cmd.AttestEnvelopes
) -> tuple[str, ev.DomainEvent]:
    for statement in command.statements:
        if statement.fleet != command.fleet or statement.command_id != command.command_id:
            raise Unproven("a statement of another fleet or command")
        try:
            verify(statement, tx.state.admin)
        except SignatureInvalid:
            raise Unproven("a statement that is not the admin's") from None
        row, envelope = await _current(tx, statement)
        try:
            check_statement(
                statement,
                envelope.context,
                api_key=proven_api_key(envelope.api_key),
                token=envelope.jwe,
                epoch=envelope.epoch,
            )
        except Unproven as exc:
            raise StaleVersion(
                f"{exc.message}: it changed since it was read; run the attestation again"
            ) from None
        provenance = Provenance(statement=statement)
        row.provenance = provenance_text(provenance)
        proven = msgspec.structs.replace(envelope, provenance=provenance)
        # the same version and epoch as the envelope's first put: a message id of its own
        tx.rows.append(outbox.kv_put_row(tx.names, proven, tag=f":at:{command.command_id}"))
    data = ev.EnvelopesAttested(count=len(command.statements), command_id=command.command_id)
    first = command.statements[0]
    return secret_key(first.repo, first.name), tx.event(data, None)

"""What each admin command does to the database, per domain, as plain functions of a
:class:`~flashgate.backend.transaction.Transaction` and the command: secrets
(:mod:`.secrets`), API keys (:mod:`.api_keys`), the fleet's roster and key rotation
(:mod:`.fleet`). :data:`HANDLERS` is the processor's table from command type to handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from flashgate.backend.handlers import api_keys, attest, fleet_admin, secrets
from flashgate.events import commands as cmd
from flashgate.events import domain as ev

Apply = Callable[[Any, Any], Awaitable[tuple[str, ev.DomainEvent]]]
"""apply(transaction, command) -> (the audit row's target, the outcome event)."""
OneStep = Callable[..., Awaitable[str | None]]
"""one_step(store, state, command, *, source, outcome_msg_id) -> the target written, or
None having written nothing (then ``apply`` decides)."""


@dataclass(frozen=True, slots=True)
class Handler:
    apply: Apply
    #: The event the command ends in when applied (its outbox msg id is written with the
    #: command's claim; a command that ends otherwise gets its claim updated).
    event_type: str
    #: The common case in one step, tried before the transaction (secret writes).
    one_step: OneStep | None = None


HANDLERS: dict[type[cmd.Command], Handler] = {
    cmd.PutSecret: Handler(
        secrets.write_secret, ev.SecretCreated.event_type, one_step=secrets.write_in_one_step
    ),
    cmd.RotateSecret: Handler(
        secrets.write_secret, ev.SecretRotated.event_type, one_step=secrets.write_in_one_step
    ),
    cmd.DeleteSecret: Handler(secrets.delete_secret, ev.SecretDeleted.event_type),
    cmd.CreateApiKey: Handler(api_keys.create_api_key, ev.ApiKeyCreated.event_type),
    cmd.AttestEnvelopes: Handler(attest.attest_envelopes, ev.EnvelopesAttested.event_type),
    cmd.RenameApiKey: Handler(api_keys.rename_api_key, ev.ApiKeyRenamed.event_type),
    cmd.RevokeApiKey: Handler(api_keys.revoke_api_key, ev.ApiKeyRevoked.event_type),
    cmd.RevokeNode: Handler(fleet_admin.revoke_node, ev.NodeRevoked.event_type),
    cmd.StartKeyRotation: Handler(fleet_admin.start_rotation, ev.KeyRotationStarted.event_type),
    cmd.FinishKeyRotation: Handler(fleet_admin.finish_rotation, ev.KeyRotationCompleted.event_type),
}

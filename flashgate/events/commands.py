"""Admin commands: signed, idempotent requests on ``fg.<f>.cmd.<type>``.

Every command carries a command id (also its ``Nats-Msg-Id``, so a re-publish is dropped
by JetStream and a re-delivery is a no-op for the backend), the actor, the issue time and
the admin's Ed25519 signature over its canonical bytes (domain ``command``; the ``type``
tag is signed too). A command that writes an envelope also carries the admin's signed
:class:`~flashgate.events.envelope.EnvelopeStatement` over it, which the backend puts into
the envelope for the nodes to check (DESIGN §8). A command never carries a plaintext
secret: secret values travel only as envelopes (JWEs under the fleet key), written
client-side.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.envelope import EnvelopeStatement, JweText
from flashgate.events.fleet import FleetDescriptor, Roster
from flashgate.events.rotation import SealedShare
from flashgate.events.types import (
    Actor,
    ApiKeyScope,
    CommandId,
    Ed25519Sig,
    Epoch,
    Label,
    Name,
    SecretKind,
    UnixMillis,
    Version,
)

MAX_COMMAND_BYTES = 384 * 1024


class Command(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    tag_field="type",
):
    signing_domain: ClassVar[str] = "command"

    command_id: CommandId
    fleet: Name
    actor: Actor
    issued_at: UnixMillis

    @property
    def command_type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


class SecretWriteCommand(Command, frozen=True):
    """The fields of a command that writes a secret version (an envelope)."""

    repo: Name
    name: Name
    kind: SecretKind
    version: Version
    epoch: Epoch
    jwe: JweText
    # the admin's statement over the envelope, for the nodes (DESIGN §8); a command without
    # one (an older tool) decodes, and the backend rejects it ``unproven``
    statement: EnvelopeStatement | None = None
    signature: Ed25519Sig = ""


class PutSecret(SecretWriteCommand, tag="secret.put", frozen=True):
    """Create a secret (version 1), or re-create a deleted one at its next version."""


class RotateSecret(SecretWriteCommand, tag="secret.rotate", frozen=True):
    """Replace an existing secret's value: version must be current + 1."""


class DeleteSecret(Command, tag="secret.delete", frozen=True):
    repo: Name
    name: Name
    signature: Ed25519Sig = ""


class CreateApiKey(Command, tag="apikey.create", frozen=True):
    """A repository API key; its secret, made client-side, travels as a JWE (kind apikey)."""

    key_id: Name
    repo: Name
    scope: ApiKeyScope
    access: Name
    label: Label
    epoch: Epoch
    jwe: JweText
    # the admin's statement over the envelope, for the nodes (DESIGN §8); a command without
    # one (an older tool) decodes, and the backend rejects it ``unproven``
    statement: EnvelopeStatement | None = None
    signature: Ed25519Sig = ""


#: Statements per ``envelope.attest`` command (the CLI sends as many commands as needed).
MAX_ATTESTED = 256


class AttestEnvelopes(Command, tag="envelope.attest", frozen=True):
    """The admin's statements over envelopes written before provenance existed, read from
    the bucket as they stand (trust on first use, docs/security-model.md): the backend puts
    each into its envelope if the envelope is still exactly the one stated."""

    statements: Annotated[list[EnvelopeStatement], Meta(min_length=1, max_length=MAX_ATTESTED)]
    signature: Ed25519Sig = ""


class RenameApiKey(Command, tag="apikey.rename", frozen=True):
    key_id: Name
    label: Label
    signature: Ed25519Sig = ""


class RevokeApiKey(Command, tag="apikey.revoke", frozen=True):
    key_id: Name
    signature: Ed25519Sig = ""


class RevokeNode(Command, tag="node.revoke", frozen=True):
    """Revoke a node: carries the new admin-signed roster (higher serial, node revoked)."""

    node_id: Name
    roster: Roster
    signature: Ed25519Sig = ""


class StartKeyRotation(Command, tag="fleet.rotation.start", frozen=True):
    """Start re-wrapping every envelope from ``from_epoch`` to the new descriptor's epoch.

    ``shares`` holds each node's new key share sealed to that node's X25519 identity key
    (:mod:`flashgate.events.rotation`); the backend stores this signed command in the
    fleet bucket for the nodes, and cannot open a share itself."""

    from_epoch: Epoch
    descriptor: FleetDescriptor
    shares: Annotated[list[SealedShare], Meta(max_length=64)] = []
    signature: Ed25519Sig = ""


class FinishKeyRotation(Command, tag="fleet.rotation.finish", frozen=True):
    """Retire ``retired_epoch`` once no envelope references it."""

    retired_epoch: Epoch
    signature: Ed25519Sig = ""


AnyCommand = (
    PutSecret
    | RotateSecret
    | DeleteSecret
    | CreateApiKey
    | AttestEnvelopes
    | RenameApiKey
    | RevokeApiKey
    | RevokeNode
    | StartKeyRotation
    | FinishKeyRotation
)
COMMAND_TYPES: tuple[type[Command], ...] = (
    PutSecret,
    RotateSecret,
    DeleteSecret,
    CreateApiKey,
    AttestEnvelopes,
    RenameApiKey,
    RevokeApiKey,
    RevokeNode,
    StartKeyRotation,
    FinishKeyRotation,
)
COMMAND_CODEC: Codec[AnyCommand] = Codec(AnyCommand, max_bytes=MAX_COMMAND_BYTES, what="command")

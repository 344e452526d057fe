"""The secret envelope: the value stored under ``<repo>.<name>`` in ``fg-<f>-secrets``.

JSON: metadata + the JWE (compact serialization). The JWE's protected header repeats the
context (fleet, repo, name, kind, version) and binds it cryptographically; a reader checks
that the two agree and match the key the envelope was found under
(:func:`check_envelope_location`). The fleet key epoch is here, not in the JWE header, so
a fleet key rotation only replaces ``jwe``'s encrypted-key part and ``epoch``.

Deletion is a KV delete marker, not an envelope.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from flashgate.crypto import jwe
from flashgate.crypto.context import SecretContext
from flashgate.errors import ContextMismatch
from flashgate.events.codec import Codec
from flashgate.events.subjects import secret_key, split_secret_key
from flashgate.events.types import (
    ApiKeyScope,
    CommandId,
    Epoch,
    Label,
    Name,
    SecretKind,
    UnixMillis,
    Version,
)

ENVELOPE_FORMAT = 1
MAX_ENVELOPE_BYTES = jwe.MAX_TOKEN_BYTES + 4096
JweText = Annotated[str, Meta(min_length=1, max_length=jwe.MAX_TOKEN_BYTES)]


class ApiKeyInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Public metadata of a repository API key whose secret is the envelope's payload."""

    key_id: Name
    scope: ApiKeyScope
    access: Name  # read|write|admin for storage; the provider type for ai
    label: Label


class SecretEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Annotated[int, Meta(ge=1, le=1)] = ENVELOPE_FORMAT
    fleet: Name
    repo: Name
    name: Name
    kind: SecretKind
    version: Version
    epoch: Epoch
    jwe: JweText
    written_at: UnixMillis
    command_id: CommandId | None = None
    api_key: ApiKeyInfo | None = None

    @property
    def key(self) -> str:
        return secret_key(self.repo, self.name)

    @property
    def context(self) -> SecretContext:
        return SecretContext(
            fleet=self.fleet, repo=self.repo, name=self.name, kind=self.kind, version=self.version
        )

    def __repr__(self) -> str:  # the JWE is not secret, but it is long
        return (
            f"SecretEnvelope({self.fleet}/{self.key} kind={self.kind} v{self.version} "
            f"epoch={self.epoch})"
        )


ENVELOPE_CODEC: Codec[SecretEnvelope] = Codec(
    SecretEnvelope, max_bytes=MAX_ENVELOPE_BYTES, what="secret envelope"
)


def check_envelope_location(envelope: SecretEnvelope, fleet: str, key: str) -> jwe.ParsedJWE:
    """Parse the envelope's JWE and check that it belongs where it was found.

    Raises :class:`ContextMismatch` when the KV key, the envelope metadata and the JWE's
    bound context disagree, and the JWE parser's typed errors for a bad JWE.
    """
    repo, name = split_secret_key(key)
    if (envelope.fleet, envelope.repo, envelope.name) != (fleet, repo, name):
        raise ContextMismatch(
            f"envelope for {envelope.fleet}/{envelope.repo}.{envelope.name} found at {fleet}/{key}"
        )
    parsed = jwe.parse(envelope.jwe)
    if parsed.context != envelope.context:
        raise ContextMismatch("the JWE's bound context differs from the envelope metadata")
    return parsed

"""The secret envelope: the value stored under ``<repo>.<name>`` in ``fg-<f>-secrets``.

JSON: metadata + the JWE (compact serialization). The JWE's protected header repeats the
context (fleet, repo, name, kind, version) and binds it cryptographically; a reader checks
that the two agree and match the key the envelope was found under
(:func:`check_envelope_location`). The fleet key epoch is here, not in the JWE header, so
a fleet key rotation only replaces ``jwe``'s encrypted-key part and ``epoch``.

Deletion is a KV delete marker, not an envelope.

Provenance (DESIGN §8): every envelope carries the proof of who wrote it
(:class:`Provenance`): the admin's signed :class:`EnvelopeStatement` over its context, the
SHA-256 of its JWE (whole, and without the wrapped key) and the API key's public metadata,
made by the CLI and carried in the signed command; for an envelope re-wrapped in a fleet
key rotation, also the re-wrapping node's :class:`RewrapAttestation` binding the new JWE to
that statement. Nodes check it (:func:`flashgate.bridge.provenance.check_provenance`) before
they load an envelope or compute a partial for it.

The types a node keeps one of per secret are declared ``gc=False``: they hold only
strings, numbers, bytes and each other (frozen: no cycle can form), and a node holding
100k envelopes spent a quarter of its start-up in the cycle collector walking them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from flashgate.crypto import jwe
from flashgate.crypto.context import ContextFields, SecretContext
from flashgate.crypto.encoding import b64url_encode
from flashgate.errors import ContextMismatch, FlashgateError, Unproven
from flashgate.events.codec import Codec
from flashgate.events.subjects import secret_key, split_secret_key
from flashgate.events.types import (
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

ENVELOPE_FORMAT = 1
MAX_ENVELOPE_BYTES = jwe.MAX_TOKEN_BYTES + 4096
JweText = Annotated[str, Meta(min_length=1, max_length=jwe.MAX_TOKEN_BYTES)]
Sha256Text = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$", description="SHA-256, unpadded base64url")
]


def jwe_sha256(token: str) -> str:
    """SHA-256 of the compact JWE as written (unpadded base64url)."""
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


def jwe_body_sha256(token: str) -> str:
    """SHA-256 of the compact JWE with its encrypted-key part left empty: what a fleet key
    rotation's re-wrap keeps byte for byte (header, IV, ciphertext, tag)."""
    header, _, rest = token.partition(".")
    _, _, rest = rest.partition(".")
    return b64url_encode(hashlib.sha256(f"{header}..{rest}".encode("ascii")).digest())


class ApiKeyInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Public metadata of a repository API key whose secret is the envelope's payload."""

    key_id: Name
    scope: ApiKeyScope
    access: Name  # read|write|admin for storage; the provider type for ai
    label: Label


class ProvenApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """What the admin's statement proves of an API key: its id, scope and access. The label
    is not proven (``apikey.rename`` changes it; nothing is authorized by it)."""

    key_id: Name
    scope: ApiKeyScope
    access: Name


class EnvelopeStatement(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False
):
    """The admin's signed statement that it wrote one envelope (domain ``envelope``)."""

    signing_domain: ClassVar[str] = "envelope"

    fleet: Name
    repo: Name
    name: Name
    kind: SecretKind
    version: Version
    epoch: Epoch
    jwe_sha256: Sha256Text
    body_sha256: Sha256Text
    api_key: ProvenApiKey | None = None
    command_id: CommandId
    issued_at: UnixMillis
    signature: Ed25519Sig = ""


class RewrapAttestation(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False
):
    """A node's signed statement that it re-wrapped the admin-stated envelope to ``epoch``
    (domain ``envelope-rewrap``): binds the new JWE's digest to the statement's signature."""

    signing_domain: ClassVar[str] = "envelope-rewrap"

    node_id: Name
    epoch: Epoch
    jwe_sha256: Sha256Text
    statement_signature: Ed25519Sig
    signature: Ed25519Sig = ""


class Provenance(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    statement: EnvelopeStatement
    rewrap: RewrapAttestation | None = None


def proven_api_key(info: ApiKeyInfo | None) -> ProvenApiKey | None:
    if info is None:
        return None
    return ProvenApiKey(key_id=info.key_id, scope=info.scope, access=info.access)


class SecretEnvelope(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False
):
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
    provenance: Provenance | None = None

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


PROVENANCE_CODEC: Codec[Provenance] = Codec(Provenance, max_bytes=4096, what="provenance")


def provenance_text(provenance: Provenance) -> str:
    """As the backend stores it (a database column)."""
    return PROVENANCE_CODEC.encode(provenance).decode()


def provenance_of(text: str | None) -> Provenance | None:
    """From the backend's column; None when absent or unreadable (the nodes refuse the
    envelope then, so nothing is lost by not failing here)."""
    if text is None:
        return None
    try:
        return PROVENANCE_CODEC.decode(text.encode())
    except FlashgateError:
        return None


#: ``decode_accepted`` (a value a node proved before) makes the API key types exactly as
#: ``decode`` does: a statement's key is compared with the envelope's, and the vault keeps it.
ENVELOPE_CODEC: Codec[SecretEnvelope] = Codec(
    SecretEnvelope,
    max_bytes=MAX_ENVELOPE_BYTES,
    what="secret envelope",
    keep_exact=(ApiKeyInfo, ProvenApiKey),
)


def check_envelope_location(
    envelope: SecretEnvelope, fleet: str, key: str, *, proven: bool = False
) -> jwe.ParsedJWE:
    """Parse the envelope's JWE and check that it belongs where it was found.

    Raises :class:`ContextMismatch` when the KV key, the envelope metadata and the JWE's
    bound context disagree, and the JWE parser's typed errors for a bad JWE. ``proven``:
    this very value was checked here before (a node's memo,
    :mod:`flashgate.bridge.verified_statements`): the location is checked again, the JWE
    only split (:func:`flashgate.crypto.jwe.parse_proven`).
    """
    if proven:  # its names were found valid (no dot in either): the key is the two joined
        if envelope.fleet != fleet or key != f"{envelope.repo}.{envelope.name}":
            raise _misplaced(envelope, fleet, key)
        return jwe.parse_proven(envelope.jwe, envelope.context)
    repo, name = split_secret_key(key)
    if (envelope.fleet, envelope.repo, envelope.name) != (fleet, repo, name):
        raise _misplaced(envelope, fleet, key)
    parsed = jwe.parse(envelope.jwe)
    bound = parsed.context
    if bound is None or (bound.fleet, bound.repo, bound.name, bound.kind, bound.version) != (
        envelope.fleet,
        envelope.repo,
        envelope.name,
        envelope.kind,
        envelope.version,
    ):
        raise ContextMismatch("the JWE's bound context differs from the envelope metadata")
    return parsed


def _misplaced(envelope: SecretEnvelope, fleet: str, key: str) -> ContextMismatch:
    return ContextMismatch(
        f"envelope for {envelope.fleet}/{envelope.repo}.{envelope.name} found at {fleet}/{key}"
    )


def make_statement(
    envelope_fields: SecretContext,
    *,
    epoch: int,
    token: str,
    api_key: ProvenApiKey | None,
    command_id: str,
    issued_at: int,
) -> EnvelopeStatement:
    """The (unsigned) statement over an envelope the admin is about to write."""
    return EnvelopeStatement(
        fleet=envelope_fields.fleet,
        repo=envelope_fields.repo,
        name=envelope_fields.name,
        kind=envelope_fields.kind,  # type: ignore[arg-type]
        version=envelope_fields.version,
        epoch=epoch,
        jwe_sha256=jwe_sha256(token),
        body_sha256=jwe_body_sha256(token),
        api_key=api_key,
        command_id=command_id,
        issued_at=issued_at,
    )


def check_statement(
    statement: EnvelopeStatement,
    context: ContextFields,
    *,
    api_key: ProvenApiKey | None,
    token: str,
    epoch: int | None,
) -> None:
    """The statement is about this envelope: context, API key and JWE body (and, with
    ``epoch``, the JWE as written under that epoch). Raises :class:`Unproven`. The
    signature is checked by the caller, who knows the admin key."""
    stated = (statement.fleet, statement.repo, statement.name, statement.kind, statement.version)
    if stated != (context.fleet, context.repo, context.name, context.kind, context.version):
        raise Unproven(
            f"the statement is about another envelope than {context.repo}.{context.name}"
        )
    if statement.api_key != api_key:
        raise Unproven(f"{context.repo}.{context.name}: the API key differs from the statement")
    if api_key is not None and (context.kind != "apikey" or api_key.key_id != context.name):
        raise Unproven(f"{context.repo}.{context.name}: API key id and envelope name differ")
    if context.kind == "apikey" and api_key is None:
        raise Unproven(f"{context.repo}.{context.name}: an apikey envelope without its key")
    if statement.body_sha256 != jwe_body_sha256(token):
        raise Unproven(f"{context.repo}.{context.name}: the JWE differs from the statement")
    if epoch is not None and (
        statement.epoch != epoch or statement.jwe_sha256 != jwe_sha256(token)
    ):
        raise Unproven(f"{context.repo}.{context.name}: the JWE differs from the statement")


def statement_for(
    envelope: SecretEnvelope, *, command_id: str, issued_at: int
) -> EnvelopeStatement:
    """The (unsigned) statement over an envelope as it stands: what the admin signs to
    adopt an envelope written before provenance existed (``flashgate fleet attest``)."""
    return make_statement(
        envelope.context,
        epoch=envelope.epoch,
        token=envelope.jwe,
        api_key=proven_api_key(envelope.api_key),
        command_id=command_id,
        issued_at=issued_at,
    )

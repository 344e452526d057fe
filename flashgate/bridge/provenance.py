"""Checking who wrote an envelope before it is loaded or a partial is computed for it
(DESIGN §8).

An envelope is proven by the admin's signed
:class:`~flashgate.events.envelope.EnvelopeStatement` about its context, its API key's id,
scope and access, and its JWE (whole, under the stated epoch; and its body, which a re-wrap
keeps). A JWE re-wrapped in a fleet key rotation is under another epoch than the statement:
it is proven by the statement (its body unchanged) plus the
:class:`~flashgate.events.envelope.RewrapAttestation` of the node that re-wrapped it, which
must be active in this node's roster and a member of the envelope's epoch. Anything else
is :class:`~flashgate.errors.Unproven`: never loaded, and no partial is computed for it, so
whoever can write the bucket can neither plant a value nor use the fleet to decrypt a
ciphertext of its choosing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flashgate.bridge.signatures import Signature, settle
from flashgate.bridge.store import Entry
from flashgate.bridge.value_proof import raw_signature, statement_proof
from flashgate.bridge.verified_statements import StatementVerifier
from flashgate.errors import FlashgateError, Unproven
from flashgate.events.envelope import SecretEnvelope, jwe_sha256
from flashgate.events.fleet import Roster
from flashgate.events.signing import signing_bytes
from flashgate.fleet.identity_keys import load_ed25519_public


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def provenance_signatures(
    envelope: SecretEnvelope,
    admin: Ed25519PublicKey,
    rewrapper_key: Callable[[str, int], Ed25519PublicKey | None],
    statements: StatementVerifier | None = None,
    *,
    statement_proven: bool = False,
) -> list[Signature]:
    """Every check of :func:`check_provenance` but the Ed25519 verifications, which are
    returned (none for a statement ``statements`` remembers as verified). Raises
    :class:`Unproven` for anything else wrong. ``statement_proven``: this very envelope
    value was proven before (:meth:`StatementVerifier.proven_value`): its statement is not
    checked again; a re-wrap attestation is (it rests on the roster). The statement's
    checks are :func:`~flashgate.bridge.value_proof.statement_proof`."""
    where = envelope.key
    provenance = envelope.provenance
    if provenance is None:
        raise Unproven(f"{where}: the envelope carries no proof of its writer")
    statement, rewrap = provenance.statement, provenance.rewrap
    signatures: list[Signature] = []
    if not statement_proven:
        signature, message, refusal = statement_proof(envelope)
        if statements is None:
            signatures.append(Signature(_raw_public(admin), signature, message, refusal))
        else:
            job = statements.pending(signature, message, refusal)
            if job is not None:
                signatures.append(job)
    if rewrap is None:
        return signatures
    if (
        rewrap.epoch != envelope.epoch
        or rewrap.epoch <= statement.epoch
        or rewrap.jwe_sha256 != jwe_sha256(envelope.jwe)
        or rewrap.statement_signature != statement.signature
    ):
        raise Unproven(f"{where}: the re-wrap attestation is about another envelope")
    key = rewrapper_key(rewrap.node_id, envelope.epoch)
    if key is None:
        raise Unproven(f"{where}: re-wrapped by {rewrap.node_id}, not an active member")
    refusal = f"{where}: the re-wrap attestation does not verify"
    public, signature, signed = (
        _raw_public(key),
        raw_signature(rewrap, refusal),
        signing_bytes(rewrap),
    )
    if statements is None:
        signatures.append(Signature(public, signature, signed, refusal))
    else:  # remembered once verified (by the node's key: re-keyed, it is verified again)
        job = statements.pending(signature, signed, refusal, signer=public)
        if job is not None:
            signatures.append(job)
    return signatures


def check_provenance(
    envelope: SecretEnvelope,
    admin: Ed25519PublicKey,
    rewrapper_key: Callable[[str, int], Ed25519PublicKey | None],
    statements: StatementVerifier | None = None,
) -> None:
    """Raise :class:`Unproven` unless ``envelope`` is proven. ``rewrapper_key(node, epoch)``
    is the signing key of ``node`` if it may have re-wrapped an envelope to ``epoch``.
    ``statements`` remembers verified admin statements (None: verify every time)."""
    signatures = provenance_signatures(envelope, admin, rewrapper_key, statements)
    settle(signatures, [s.verify() for s in signatures])


@dataclass
class ProvenanceCheck:
    """:func:`check_provenance` with this node's pinned admin key, roster and epochs."""

    admin: Ed25519PublicKey
    roster: Callable[[], Roster]
    members: Callable[[int], Mapping[str, int] | None]
    #: Remembers verified admin statements (None: every one is verified).
    statements: StatementVerifier | None = None
    _keys: dict[str, tuple[str, Ed25519PublicKey]] = field(default_factory=dict, repr=False)

    def __call__(self, envelope: SecretEnvelope) -> None:
        check_provenance(envelope, self.admin, self.rewrapper_key, self.statements)

    def signatures(
        self, envelope: SecretEnvelope, *, statement_proven: bool = False
    ) -> list[Signature]:
        """:meth:`__call__` but for the signature verifications, which are returned."""
        return provenance_signatures(
            envelope,
            self.admin,
            self.rewrapper_key,
            self.statements,
            statement_proven=statement_proven,
        )

    def rewrap_revoked(self, entry: Entry) -> bool:
        """Whether ``entry`` was re-wrapped by a node that is no longer an active member
        of its epoch (revoked since): its attestation no longer proves it."""
        if entry.rewrapped_by is None:
            return False
        return self.rewrapper_key(entry.rewrapped_by, entry.epoch) is None

    def rewrapper_key(self, node_id: str, epoch: int) -> Ed25519PublicKey | None:
        node = self.roster().node(node_id)
        members = self.members(epoch)
        if node is None or node.status != "active" or members is None or node_id not in members:
            return None
        cached = self._keys.get(node_id)
        if cached is None or cached[0] != node.signing_key:
            try:
                cached = (node.signing_key, load_ed25519_public(node.signing_key, "node key"))
            except FlashgateError:
                return None
            self._keys[node_id] = cached
        return cached[1]

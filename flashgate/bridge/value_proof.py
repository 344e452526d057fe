"""The part of an envelope value's proof that is a pure function of the value.

A node proves every envelope before it loads it (:mod:`flashgate.bridge.provenance`).
Part of that proof rests only on the value's bytes, where it was found and the pinned
admin key: the decode, the JWE's profile, its bound context equal to the envelope's
metadata, the admin's statement about this very envelope, and the statement's signature.
That part is what a node's proven-value fingerprint stands for
(:mod:`flashgate.bridge.verified_statements`), and it is written once, here:

- :func:`statement_proof`: every check of the admin's statement but its signature (the
  node's own check, :func:`~flashgate.bridge.provenance.provenance_signatures`, uses it);
- :func:`value_proven`: the whole stateless part, signature included. The signature
  worker (:mod:`flashgate.bridge.signature_worker`) runs it on another core for a node's
  initial values; a value it finds proven is then checked in the node only against the
  node's state (location, epoch and key fit, tombstones, a re-wrap attestation), as a
  value proven at an earlier start is.

Nothing here depends on a node's state (roster, epochs, tombstones) or does I/O, and this
module imports only the wire types and the crypto: the worker starts quickly.
"""

from __future__ import annotations

import msgspec

from flashgate import __version__
from flashgate.crypto import ed25519
from flashgate.crypto.encoding import b64url_decode
from flashgate.errors import FlashgateError, Unproven
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    EnvelopeStatement,
    RewrapAttestation,
    SecretEnvelope,
    check_envelope_location,
    check_statement,
    proven_api_key,
)
from flashgate.events.signing import signing_bytes

#: Raised whenever what a value must pass here changes (a test pins a digest of these
#: checks' sources, ``tests/bridge/test_unit_proven_values.py``): every value proven under
#: older rules is then checked in full once.
CHECKS_VERSION = 3
#: What a proven value's fingerprint is made under (:mod:`~flashgate.bridge.verified_statements`).
#: The checks also rest on msgspec (the envelope's decoder, the header's quick reader):
#: another release of it, or of flashgate, checks every value in full once. The signature
#: worker proves a value only for a node whose tag is its own (a worker started from
#: another release on disk than its node's proves nothing).
VALUE_TAG = b"flashgate proven envelope value v%d %s %s\x00" % (
    CHECKS_VERSION,
    __version__.encode(),
    msgspec.__version__.encode(),
)


def raw_signature(struct: EnvelopeStatement | RewrapAttestation, refusal: str) -> bytes:
    """The signature of ``struct`` as 64 raw bytes; :class:`Unproven` (``refusal``) if it
    is not one."""
    raw = struct.signature
    try:
        value = raw if isinstance(raw, bytes) else b64url_decode(raw, "signature")
    except FlashgateError:
        raise Unproven(refusal) from None
    if len(value) != ed25519.SIGNATURE_BYTES:
        raise Unproven(refusal)
    return value


def statement_proof(envelope: SecretEnvelope) -> tuple[bytes, bytes, str]:
    """Every check of the admin's statement about ``envelope`` but its signature: returns
    (the raw signature, the signed bytes, the refusal if it does not verify). Raises
    :class:`Unproven` for anything else wrong."""
    where = envelope.key
    provenance = envelope.provenance
    if provenance is None:
        raise Unproven(f"{where}: the envelope carries no proof of its writer")
    statement = provenance.statement
    check_statement(
        statement,
        envelope,  # its own fields (the JWE's bound context is checked against them)
        api_key=proven_api_key(envelope.api_key),
        token=envelope.jwe,
        epoch=envelope.epoch if provenance.rewrap is None else None,
    )
    refusal = f"{where}: the admin's statement does not verify"
    return raw_signature(statement, refusal), signing_bytes(statement), refusal


def value_proven(admin: bytes, fleet: str, key: str, raw: bytes) -> bool:
    """Whether the bucket value ``raw``, found under ``key`` of ``fleet``, passes every
    stateless check of its proof under the raw admin public key ``admin`` (module docs).
    False says only "not proven here": the node then checks the value in full itself."""
    try:
        envelope = ENVELOPE_CODEC.decode(raw)
        check_envelope_location(envelope, fleet, key)
        signature, message, _ = statement_proof(envelope)
    except FlashgateError:
        return False
    return ed25519.verify(admin, signature, message)

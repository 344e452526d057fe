"""Frozen vectors (tests/vectors/, INSECURE test material) decrypt on every run.

If one of these fails, a change has made old envelopes, bundles or proofs unreadable.
"""

from __future__ import annotations

import msgspec
import pytest

from flashgate.bridge.provenance import check_provenance
from flashgate.crypto.context import SecretContext
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.crypto.rng import DeterministicRng
from flashgate.crypto.threshold import (
    KeyShare,
    Proof,
    ThresholdPublicKey,
    combine,
    partial_decrypt,
    prove,
    verify_proof,
)
from flashgate.errors import Unproven
from flashgate.events.envelope import ENVELOPE_CODEC, Provenance, SecretEnvelope, statement_for
from flashgate.events.signing import sign
from flashgate.fleet.bundle import open_admin_key
from flashgate.fleet.directory import read_bundle
from flashgate.fleet.files import load_descriptor
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.fleet.recovery import recover
from tests.support.material import VECTORS, load_vectors

JWE_VECTORS = load_vectors("jwe-v1.json")
KAT = load_vectors("threshold-kat-v1.json")


@pytest.fixture(scope="module")
def fleet():
    fleet_dir = VECTORS / JWE_VECTORS["fleet_dir"]
    descriptor = load_descriptor(fleet_dir)
    bundles = [
        read_bundle(fleet_dir / "nodes" / f"node-{i}.bundle", JWE_VECTORS["passphrase"])
        for i in range(1, 6)
    ]
    return descriptor, bundles


@pytest.mark.parametrize("vector", JWE_VECTORS["vectors"], ids=lambda v: v["description"])
def test_frozen_jwe_decrypts(fleet, vector) -> None:
    descriptor, bundles = fleet
    expected = (
        SecretContext.from_header(vector["context"]) if vector["context"] is not None else None
    )
    for subset in (bundles[:3], bundles[2:], [bundles[0], bundles[2], bundles[4]]):
        result = recover(descriptor, subset, vector["jwe"], expected=expected)
        assert result.secret.plaintext == bytes.fromhex(vector["plaintext_hex"])
        assert result.secret.context == expected


@pytest.mark.parametrize(
    "vector",
    [v for v in JWE_VECTORS["vectors"] if v["context"] is not None],
    ids=lambda v: v["description"],
)
def test_frozen_envelopes_are_readable_after_the_admin_attests_them(fleet, vector) -> None:
    """An envelope of a frozen JWE, as written before provenance existed (none), is refused
    by the nodes' check; the admin's statement over it as it stands (``fleet attest``)
    makes it proven, and it decrypts as before (issue 14 §2)."""
    descriptor, bundles = fleet
    context = SecretContext.from_header(vector["context"])
    old = SecretEnvelope(
        fleet=context.fleet,
        repo=context.repo,
        name=context.name,
        kind=context.kind,  # type: ignore[arg-type]
        version=context.version,
        epoch=descriptor.epoch,
        jwe=vector["jwe"],
        written_at=0,
    )
    admin_public = load_ed25519_public(descriptor.admin_key, "admin key")
    with pytest.raises(Unproven):
        check_provenance(old, admin_public, lambda _node, _epoch: None)
    blob = (VECTORS / JWE_VECTORS["fleet_dir"] / "admin.key").read_bytes()
    admin = open_admin_key(blob, JWE_VECTORS["passphrase"], descriptor)
    statement = statement_for(old, command_id="attest-vectors-0001", issued_at=0)
    attested = msgspec.structs.replace(old, provenance=Provenance(statement=sign(statement, admin)))
    attested = ENVELOPE_CODEC.decode(ENVELOPE_CODEC.encode(attested))  # as the bucket holds it
    check_provenance(attested, admin_public, lambda _node, _epoch: None)
    result = recover(descriptor, bundles[:3], attested.jwe, expected=attested.context)
    assert result.secret.plaintext == bytes.fromhex(vector["plaintext_hex"])


def _kat_public() -> ThresholdPublicKey:
    return ThresholdPublicKey(
        key=FleetPublicKey(int(KAT["modulus"], 16), KAT["exponent"]),
        threshold=KAT["threshold"],
        parties=KAT["parties"],
        verification_base=int(KAT["verification_base"], 16),
        verification_keys={int(i): int(v, 16) for i, v in KAT["verification_keys"].items()},
    )


def test_threshold_known_answers() -> None:
    public = _kat_public()
    c = int(KAT["ciphertext"], 16)
    shares = {int(i): KeyShare(int(i), int(s, 16), public) for i, s in KAT["shares"].items()}
    partials = {i: partial_decrypt(s, public, c) for i, s in shares.items()}
    assert partials == {int(i): int(x, 16) for i, x in KAT["partials"].items()}
    y = combine(public, c, {i: partials[i] for i in KAT["combined_from"]})
    assert y == int(KAT["combined"], 16)
    rng = DeterministicRng(b"flashgate threshold kat v1 proofs")
    for i in sorted(shares):
        recorded = KAT["proofs"][str(i)]
        proof = Proof(int(recorded["challenge"], 16), int(recorded["response"], 16))
        verify_proof(public, i, c, partials[i], proof)
        assert prove(shares[i], public, c, partials[i], rng=rng) == proof

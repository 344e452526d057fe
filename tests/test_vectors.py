"""Frozen vectors (tests/vectors/, INSECURE test material) decrypt on every run.

If one of these fails, a change has made old envelopes, bundles or proofs unreadable.
"""

from __future__ import annotations

import pytest

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
from flashgate.fleet.directory import read_bundle
from flashgate.fleet.files import load_descriptor
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

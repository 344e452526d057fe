"""Shoup threshold RSA (Protocol 1, trusted dealer): dealing, partials, proofs, combining."""

from flashgate.crypto.threshold.combine import (
    combine,
    combine_robust,
    identify_faulty,
    lagrange_coefficient,
    verify_proof,
)
from flashgate.crypto.threshold.dealing import Dealing, deal, generate_primes
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import (
    Proof,
    partial_decrypt,
    proof_random_bits,
    prove,
    share_matches,
)

__all__ = [
    "Dealing",
    "KeyShare",
    "Proof",
    "ThresholdPublicKey",
    "combine",
    "combine_robust",
    "deal",
    "generate_primes",
    "identify_faulty",
    "lagrange_coefficient",
    "partial_decrypt",
    "proof_random_bits",
    "prove",
    "share_matches",
    "verify_proof",
]

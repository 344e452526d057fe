"""Share side: partial decryptions and their proofs of correctness (DESIGN §2.1).

Partial decryption of c by share i:  x_i = c^(2·Delta·s_i) mod N.

Proof (Shoup §2.4, Fiat-Shamir, on demand):
    x~ = c^(4·Delta)
    r  uniform in [0, 2^(L(N) + 2·L1)),  L1 = 256
    v' = v^r,  x' = x~^r
    ch = SHA-256(tag, v, x~, v_i, x_i^2, v', x')   each value as k bytes, big-endian
    z  = s_i·ch + r                                  over the integers
A verifier recomputes v' = v^z · v_i^(-ch) and x' = x~^z · x_i^(-2ch) and the hash.
r must be the full L(N) + 2·L1 bits: a short r leaks s_i through z.

Every exponentiation with a secret exponent (s_i, r) uses GMP's mpz_powm_sec.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import gmpy2

from flashgate.crypto.encoding import int_to_bytes
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.errors import InvalidCiphertext, InvalidKey

#: Statistical hiding parameter: the length of the hash output in bits.
L1 = 256
PROOF_TAG = b"flashgate/shoup-proof/v1"


@dataclass(frozen=True, slots=True)
class Proof:
    challenge: int
    response: int


def proof_random_bits(public: ThresholdPublicKey) -> int:
    """The bit length of the proof's random r: L(N) + 2·L1."""
    return public.modulus.bit_length() + 2 * L1


def check_ciphertext(public: ThresholdPublicKey, c: int) -> None:
    n = public.modulus
    if not isinstance(c, int) or not 1 < c < n or math.gcd(c, n) != 1:
        raise InvalidCiphertext("RSA ciphertext is out of range or not a unit mod N")


def partial_decrypt(share: KeyShare, public: ThresholdPublicKey, c: int) -> int:
    """x_i = c^(2·Delta·s_i) mod N, in constant time with respect to the share."""
    check_ciphertext(public, c)
    return int(gmpy2.powmod_sec(c, share.partial_exponent, public.modulus))


def share_matches(share: KeyShare, public: ThresholdPublicKey) -> bool:
    """Whether v^(s_i) = v_i: catches a share that does not belong to this key."""
    expected = public.verification_keys.get(share.index)
    actual = gmpy2.powmod_sec(public.verification_base, share.secret_value, public.modulus)
    return expected is not None and int(actual) == expected


def challenge_hash(
    public: ThresholdPublicKey, x_tilde: int, vk: int, x_sq: int, v_prime: int, x_prime: int
) -> int:
    k = public.key.byte_length
    h = hashlib.sha256()
    h.update(len(PROOF_TAG).to_bytes(2, "big") + PROOF_TAG)
    for value in (public.verification_base, x_tilde, vk, x_sq, v_prime, x_prime):
        h.update(int_to_bytes(value, k))
    return int.from_bytes(h.digest(), "big")


def prove(
    share: KeyShare, public: ThresholdPublicKey, c: int, x: int, rng: Rng = SYSTEM_RNG
) -> Proof:
    """Prove that x = c^(2·Delta·s_i) for the s_i behind v_i."""
    check_ciphertext(public, c)
    n = public.modulus
    if not 0 < x < n:
        raise InvalidKey("partial decryption is out of range")
    vk = public.verification_keys[share.index]
    x_tilde = gmpy2.powmod(c, 4 * public.delta, n)  # public exponent
    r = gmpy2.mpz(rng.randbits(proof_random_bits(public)))
    v_prime = gmpy2.powmod_sec(public.verification_base, r, n)
    x_prime = gmpy2.powmod_sec(x_tilde, r, n)
    x_sq = gmpy2.powmod(x, 2, n)
    ch = challenge_hash(public, int(x_tilde), vk, int(x_sq), int(v_prime), int(x_prime))
    z = gmpy2.mpz(share.secret_value) * ch + r
    return Proof(challenge=ch, response=int(z))

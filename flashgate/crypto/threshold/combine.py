"""Combine side: Lagrange interpolation in the exponent, the y^e = c check, proof checks.

For t partials from index set S:
    lambda_j = Delta · prod_{j' in S, j' != j} (0 - j') / (j - j')     (an integer)
    w  = prod_j x_j^(2·lambda_j)                    (negative lambda: inverse base)
    e' = 4·Delta^2;  a·e' + b·e = 1                 (extended Euclid; gcd = 1 as e > n is prime)
    y  = w^a · c^b mod N,  and y^e must equal c.

Verification is optimistic (DESIGN §2.1): combine, check y^e = c, and only when that fails
ask for proofs and use :func:`identify_faulty` to name the bad shares. All exponents here
are public, so plain (variable-time) powmod is used.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

import gmpy2

from flashgate.crypto.encoding import int_to_bytes
from flashgate.crypto.threshold.keys import ThresholdPublicKey
from flashgate.crypto.threshold.partial import Proof, challenge_hash, check_ciphertext
from flashgate.errors import (
    CombineCheckFailed,
    DuplicateShares,
    FaultyShares,
    InvalidKey,
    InvalidProof,
    NotEnoughShares,
)


def lagrange_coefficient(delta: int, indices: Iterable[int], j: int) -> int:
    """Delta times the Lagrange basis polynomial for j over ``indices``, evaluated at 0."""
    numerator, denominator = delta, 1
    for other in indices:
        if other != j:
            numerator *= -other
            denominator *= j - other
    quotient, remainder = divmod(numerator, denominator)
    if remainder:
        raise ArithmeticError("Lagrange coefficient is not an integer")  # cannot happen
    return quotient


def _select(
    public: ThresholdPublicKey, partials: Mapping[int, int] | Iterable[tuple[int, int]]
) -> dict[int, int]:
    items = list(partials.items()) if isinstance(partials, Mapping) else list(partials)
    indices = [i for i, _ in items]
    if len(set(indices)) != len(indices):
        raise DuplicateShares("the same share index was supplied more than once")
    for i, x in items:
        if not 1 <= i <= public.parties:
            raise InvalidKey(f"share index {i} is outside 1..{public.parties}")
        if not 0 < x < public.modulus:
            raise InvalidKey(f"partial decryption from share {i} is out of range")
    if len(items) < public.threshold:
        raise NotEnoughShares(
            f"{len(items)} partial decryption(s) given, threshold is {public.threshold}"
        )
    return dict(sorted(items)[: public.threshold])


def combine(
    public: ThresholdPublicKey,
    c: int,
    partials: Mapping[int, int] | Iterable[tuple[int, int]],
) -> int:
    """Combine t partial decryptions of c into y = c^d mod N, checked by y^e = c.

    Uses the t lowest indices when more are given. Raises :class:`CombineCheckFailed` when
    the check fails (some partial is wrong: fetch proofs and call :func:`identify_faulty`).
    """
    check_ciphertext(public, c)
    chosen = _select(public, partials)
    n, e, delta = public.modulus, public.exponent, public.delta
    w = gmpy2.mpz(1)
    for j, x in chosen.items():
        lam = lagrange_coefficient(delta, chosen, j)
        w = w * gmpy2.powmod(x, 2 * lam, n) % n  # gmpy2 inverts the base when lam < 0
    e_prime = 4 * delta * delta
    g, a, b = gmpy2.gcdext(e_prime, e)
    if g != 1:
        raise InvalidKey("public exponent is not coprime to 4·Delta^2")
    y = gmpy2.powmod(w, a, n) * gmpy2.powmod(c, b, n) % n
    if gmpy2.powmod(y, e, n) != c:
        raise CombineCheckFailed(f"combined value fails y^e = c for share indices {sorted(chosen)}")
    return int(y)


def verify_proof(public: ThresholdPublicKey, index: int, c: int, x: int, proof: Proof) -> None:
    """Raise :class:`InvalidProof` unless ``proof`` shows x = c^(2·Delta·s_index)."""
    check_ciphertext(public, c)
    n = public.modulus
    vk = public.verification_keys.get(index)
    if vk is None:
        raise InvalidProof(f"no verification key for share index {index}")
    if not 0 < x < n or gmpy2.gcd(x, n) != 1:
        raise InvalidProof(f"partial from share {index} is out of range")
    ch, z = proof.challenge, proof.response
    if not 0 <= ch < 1 << 256 or z < 0 or z.bit_length() > 2 * n.bit_length() + 1024:
        raise InvalidProof(f"proof from share {index} is malformed")
    x_tilde = gmpy2.powmod(c, 4 * public.delta, n)
    x_sq = gmpy2.powmod(x, 2, n)
    v_prime = gmpy2.powmod(public.verification_base, z, n) * gmpy2.powmod(vk, -ch, n) % n
    x_prime = gmpy2.powmod(x_tilde, z, n) * gmpy2.powmod(x_sq, -ch, n) % n
    expected = challenge_hash(public, int(x_tilde), vk, int(x_sq), int(v_prime), int(x_prime))
    if not hmac.compare_digest(int_to_bytes(expected, 32), int_to_bytes(ch, 32)):
        raise InvalidProof(f"proof from share {index} does not verify")


def identify_faulty(
    public: ThresholdPublicKey,
    c: int,
    partials: Mapping[int, int],
    proofs: Mapping[int, Proof],
) -> list[int]:
    """The share indices whose partial has a missing or failing proof."""
    faulty = []
    for index, x in sorted(partials.items()):
        proof = proofs.get(index)
        try:
            if proof is None:
                raise InvalidProof(f"no proof from share {index}")
            verify_proof(public, index, c, x, proof)
        except (InvalidProof, InvalidKey):
            faulty.append(index)
    return faulty


def combine_robust(
    public: ThresholdPublicKey,
    c: int,
    partials: Mapping[int, int],
    proofs: Mapping[int, Proof],
) -> tuple[int, list[int]]:
    """Combine after dropping every partial whose proof fails; returns (y, faulty indices).

    Raises :class:`FaultyShares` (naming them) when fewer than t honest partials remain.
    """
    faulty = identify_faulty(public, c, partials, proofs)
    honest = {i: x for i, x in partials.items() if i not in faulty}
    if len(honest) < public.threshold:
        raise FaultyShares(
            faulty,
            f"faulty partial decryption from share index(es) {faulty}; "
            f"{len(honest)} honest partial(s) left, threshold is {public.threshold}",
        )
    return combine(public, c, honest), faulty

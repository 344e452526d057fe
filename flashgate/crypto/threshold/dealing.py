"""Trusted-dealer key generation (Shoup Protocol 1, DESIGN §2.1).

``deal`` returns only the public key and the shares. The primes, d, m and the polynomial
live in this function's locals and are dropped when it returns. (CPython cannot promise
to overwrite integer memory; the ceremony runs in a short-lived process for that reason.)

Everything here runs in the calling thread: the two safe-prime searches are sequential in
:func:`generate_primes`. The ceremony and the rotation run them in two processes at their
edge (:mod:`flashgate.fleet.prime_search`) and pass the primes in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gmpy2

from flashgate.crypto.publickey import MAX_BITS, MIN_INSECURE_BITS, MIN_SECURE_BITS, FleetPublicKey
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.keys import MAX_PARTIES, KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.primes import generate_safe_prime, is_safe_prime
from flashgate.errors import ConfigurationError

DEFAULT_BITS = 3072
DEFAULT_EXPONENT = 65537


@dataclass(frozen=True, slots=True)
class Dealing:
    public: ThresholdPublicKey
    shares: tuple[KeyShare, ...]

    def __repr__(self) -> str:
        return f"Dealing(public={self.public!r}, shares=<{len(self.shares)} redacted>)"


def check_parameters(bits: int, parties: int, threshold: int, *, allow_insecure: bool) -> None:
    """Raise :class:`ConfigurationError` for parameters the fleet must not run with."""
    if not 1 <= parties <= MAX_PARTIES:
        raise ConfigurationError(f"the number of nodes must be between 1 and {MAX_PARTIES}")
    if threshold < 1:
        raise ConfigurationError("the threshold must be at least 1")
    if threshold > parties:
        raise ConfigurationError(
            f"the threshold ({threshold}) cannot exceed the number of nodes ({parties})"
        )
    if bits % 2 or bits > MAX_BITS:
        raise ConfigurationError(f"key size must be an even number of bits up to {MAX_BITS}")
    if bits < MIN_SECURE_BITS:
        if not allow_insecure:
            raise ConfigurationError(
                f"key size {bits} is under the {MIN_SECURE_BITS}-bit minimum "
                "(test keys need the explicit insecure-test option, --insecure-test-key)"
            )
        if bits < MIN_INSECURE_BITS:
            raise ConfigurationError(f"key size must be at least {MIN_INSECURE_BITS} bits")


def generate_primes(
    bits: int,
    rng: Rng = SYSTEM_RNG,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Two distinct safe primes of ``bits // 2`` bits each, one after the other.

    ``progress`` receives the candidates examined by the current search after each sieve
    window (see :func:`generate_safe_prime`)."""
    half = bits // 2
    p = generate_safe_prime(half, rng, progress)
    q = generate_safe_prime(half, rng, progress)
    return p, distinct_from(p, q, half, rng)


def distinct_from(p: int, q: int, half: int, rng: Rng = SYSTEM_RNG) -> int:
    """``q``, or a fresh safe prime of ``half`` bits if it equals ``p`` (astronomically
    unlikely, but the design requires p != q)."""
    while p == q:
        q = generate_safe_prime(half, rng)
    return q


def deal(
    *,
    bits: int,
    parties: int,
    threshold: int,
    rng: Rng = SYSTEM_RNG,
    primes: tuple[int, int] | None = None,
    exponent: int = DEFAULT_EXPONENT,
    allow_insecure: bool = False,
) -> Dealing:
    """Deal a fresh t-of-n threshold RSA key.

    ``primes`` (two safe primes of ``bits // 2`` bits) may be passed in: searched in
    parallel by the caller, or reused by tests and benchmarks; otherwise
    :func:`generate_primes` searches them here, one after the other.
    """
    check_parameters(bits, parties, threshold, allow_insecure=allow_insecure)
    if primes is None:
        primes = generate_primes(bits, rng)
    p, q = (gmpy2.mpz(x) for x in primes)
    if p == q or not (is_safe_prime(int(p)) and is_safe_prime(int(q))):
        raise ConfigurationError("dealing needs two distinct safe primes")
    n = p * q
    if n.bit_length() != bits:
        raise ConfigurationError(f"the primes give a {n.bit_length()}-bit modulus, not {bits}")
    if not gmpy2.is_prime(exponent) or exponent <= parties:
        raise ConfigurationError("the public exponent must be a prime larger than n")
    m = ((p - 1) // 2) * ((q - 1) // 2)
    if math.gcd(exponent, int(m)) != 1:
        raise ConfigurationError("the public exponent divides p'q'; pick other primes")
    d = gmpy2.invert(exponent, m)

    # f(X) = d + a_1 X + ... + a_{t-1} X^{t-1} over Z_m
    coefficients = [d] + [gmpy2.mpz(rng.randbelow(int(m))) for _ in range(threshold - 1)]
    share_values = [_evaluate(coefficients, i, m) for i in range(1, parties + 1)]

    # v: a random square of a unit; v_i = v^{s_i} (secret exponent: constant time)
    while True:
        r = gmpy2.mpz(rng.randbelow(int(n) - 2) + 2)
        if math.gcd(int(r), int(n)) == 1:
            break
    v = gmpy2.powmod(r, 2, n)
    verification_keys = {
        i: int(gmpy2.powmod_sec(v, s, n)) for i, s in enumerate(share_values, start=1)
    }
    public = ThresholdPublicKey(
        key=FleetPublicKey(int(n), exponent),
        threshold=threshold,
        parties=parties,
        verification_base=int(v),
        verification_keys=verification_keys,
    )
    shares = tuple(KeyShare(i, int(s), public) for i, s in enumerate(share_values, start=1))
    del p, q, d, m, coefficients, share_values, r
    return Dealing(public=public, shares=shares)


def _evaluate(coefficients: list[gmpy2.mpz], x: int, modulus: gmpy2.mpz) -> gmpy2.mpz:
    acc = gmpy2.mpz(0)
    for coefficient in reversed(coefficients):  # Horner
        acc = (acc * x + coefficient) % modulus
    return acc

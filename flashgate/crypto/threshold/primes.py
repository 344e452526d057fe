"""Safe-prime search: p = 2p' + 1 with p and p' both prime.

The search draws a random odd p' of ``bits - 1`` bits whose top two bits are set (so that
p has its top two bits set and a product of two such primes has exactly twice the bits),
then sieves a window of candidates p' + 2k: for each small odd prime r it strikes every k
where r divides p' or 2p' + 1. Survivors get a base-2 Fermat test on p' and then on p, and
a candidate that passes both is confirmed with gmpy2's BPSW plus Miller-Rabin rounds.

Why our own code and not OpenSSL's safe-prime generator (reachable through
``cryptography``'s DH parameter generation): that path fixes p mod 24 for its generator,
sets only the top bit (so N could come out one bit short), cannot take injected randomness
for reproducible vectors, and gives no progress hook for the ceremony's progress display.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import gmpy2

from flashgate.crypto.rng import Rng
from flashgate.errors import ConfigurationError

#: Strike candidates divisible by odd primes up to this bound before any exponentiation.
SIEVE_BOUND = 1 << 17
#: Candidates p' + 2k examined per sieve window.
WINDOW = 1 << 14
#: Miller-Rabin rounds on top of BPSW for the final confirmation.
MR_ROUNDS = 32

ProgressFn = Callable[[int], None]
"""Called after each sieve window with the number of candidates examined so far."""


@lru_cache(maxsize=1)
def _small_primes() -> tuple[int, ...]:
    limit = SIEVE_BOUND
    flags = bytearray([1]) * (limit + 1)
    flags[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
    return tuple(i for i in range(3, limit + 1) if flags[i])


def is_safe_prime(p: int) -> bool:
    """True when p and (p - 1) / 2 are both (probable) primes."""
    p = int(p)
    if p < 7 or p % 2 == 0:
        return p == 5
    q = (p - 1) // 2
    return bool(gmpy2.is_prime(q, MR_ROUNDS) and gmpy2.is_prime(p, MR_ROUNDS))


def generate_safe_prime(bits: int, rng: Rng, progress: ProgressFn | None = None) -> int:
    """A random safe prime of exactly ``bits`` bits with its top two bits set."""
    if bits < 16:
        raise ConfigurationError("safe primes under 16 bits are not supported")
    qbits = bits - 1
    primes = _small_primes()
    examined = 0
    while True:
        start = rng.randbits(qbits) | (3 << (qbits - 2)) | 1
        sieve = _sieve_window(start, primes)
        for k in range(WINDOW):
            if not sieve[k]:
                continue
            q = gmpy2.mpz(start + 2 * k)
            if q.bit_length() != qbits:
                break  # ran past the top of the range: draw a new start
            if gmpy2.powmod(2, q - 1, q) != 1:
                continue
            p = 2 * q + 1
            if gmpy2.powmod(2, p - 1, p) != 1:
                continue
            if gmpy2.is_prime(q, MR_ROUNDS) and gmpy2.is_prime(p, MR_ROUNDS):
                if progress is not None:
                    progress(examined + k + 1)
                return int(p)
        examined += WINDOW
        if progress is not None:
            progress(examined)


def _sieve_window(start: int, primes: tuple[int, ...]) -> bytearray:
    """flags[k] = 1 when no small prime divides start + 2k or 2(start + 2k) + 1."""
    flags = bytearray([1]) * WINDOW
    for r in primes:
        inv2 = (r + 1) // 2  # 2^-1 mod r
        rem = start % r
        # start + 2k = 0 (mod r)  <=>  k = -start * inv2 (mod r)
        k0 = (-rem * inv2) % r
        flags[k0::r] = bytes(len(range(k0, WINDOW, r)))
        # 2(start + 2k) + 1 = 0 (mod r)  <=>  start + 2k = (r - 1)/2  (mod r)
        k1 = (((r - 1) // 2 - rem) * inv2) % r
        flags[k1::r] = bytes(len(range(k1, WINDOW, r)))
    return flags

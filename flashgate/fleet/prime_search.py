"""The safe-prime search of a dealing, in two processes: the process pool crypto stays without.

The search (:func:`flashgate.crypto.threshold.primes.generate_safe_prime`) is CPU-bound Python,
so the ceremony and the key rotation run the two searches of a dealing in two processes at
once and pass the primes to :func:`flashgate.crypto.threshold.dealing.deal`. Both searches
draw from the system CSPRNG in their own process; an injected (seeded) RNG searches in the
calling thread instead, so that tests and vectors stay reproducible.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.dealing import distinct_from, generate_primes
from flashgate.crypto.threshold.primes import generate_safe_prime


def search_primes(bits: int, rng: Rng = SYSTEM_RNG) -> tuple[int, int]:
    """Two distinct safe primes of ``bits // 2`` bits: two processes with the system RNG,
    the calling thread with any other ``rng``."""
    if rng is not SYSTEM_RNG:
        return generate_primes(bits, rng)
    half = bits // 2
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(generate_safe_prime, half, SYSTEM_RNG) for _ in range(2)]
        p, q = (future.result() for future in futures)
    return p, distinct_from(p, q, half)

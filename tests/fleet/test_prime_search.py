"""The ceremony's safe-prime search at the edge: two processes, or the caller's thread with a
seeded RNG."""

from __future__ import annotations

from flashgate.crypto.rng import SYSTEM_RNG, DeterministicRng
from flashgate.crypto.threshold.dealing import generate_primes
from flashgate.crypto.threshold.primes import is_safe_prime
from flashgate.fleet.prime_search import search_primes


def test_two_processes_give_two_distinct_safe_primes_of_half_the_bits() -> None:
    p, q = search_primes(256, SYSTEM_RNG)
    assert p != q
    assert all(is_safe_prime(x) and x.bit_length() == 128 for x in (p, q))


def test_a_seeded_rng_searches_in_this_thread_reproducibly() -> None:
    assert search_primes(256, DeterministicRng(b"seed")) == generate_primes(
        256, DeterministicRng(b"seed")
    )

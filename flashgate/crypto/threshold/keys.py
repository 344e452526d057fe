"""Threshold key material: the public side (modulus, verification keys) and one key share.

Notation follows Shoup, "Practical Threshold Signatures" (Eurocrypt 2000), Protocol 1, and
../shared/DESIGN.md §2.1: N = pq with p = 2p'+1, q = 2q'+1; m = p'q'; Delta = n!; share
s_i = f(i) mod m; v a random square mod N; v_i = v^{s_i} mod N.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import gmpy2

from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import InvalidKey

#: Upper bound on n. Delta = n! grows every exponent by log2(n!) bits; 64 nodes adds
#: about 296 bits to a partial's exponent, a few per cent of its cost.
MAX_PARTIES = 64


@dataclass(frozen=True, slots=True)
class ThresholdPublicKey:
    """Everything a verifier or combiner needs; no secret."""

    key: FleetPublicKey
    threshold: int
    parties: int
    verification_base: int = field(repr=False)
    verification_keys: Mapping[int, int] = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.parties <= MAX_PARTIES:
            raise InvalidKey(f"the number of shares must be 1..{MAX_PARTIES}")
        if not 1 <= self.threshold <= self.parties:
            raise InvalidKey("the threshold must be between 1 and the number of shares")
        if self.key.exponent <= self.parties or not gmpy2.is_prime(self.key.exponent):
            raise InvalidKey("the public exponent must be a prime larger than n")
        n = self.key.modulus
        if sorted(self.verification_keys) != list(range(1, self.parties + 1)):
            raise InvalidKey("there must be exactly one verification key per share index")
        for value in (self.verification_base, *self.verification_keys.values()):
            if not 1 < value < n or math.gcd(value, n) != 1:
                raise InvalidKey("a verification key is out of range")
        object.__setattr__(
            self, "verification_keys", MappingProxyType(dict(self.verification_keys))
        )

    @property
    def modulus(self) -> int:
        return self.key.modulus

    @property
    def exponent(self) -> int:
        return self.key.exponent

    @property
    def delta(self) -> int:
        return math.factorial(self.parties)


class KeyShare:
    """One node's share s_i. Its value never appears in a repr, str or exception."""

    __slots__ = ("_exponent", "_value", "index")

    def __init__(self, index: int, value: int, public: ThresholdPublicKey) -> None:
        if not 1 <= index <= public.parties:
            raise InvalidKey(f"share index {index} is outside 1..{public.parties}")
        if not 0 < value < public.modulus:
            raise InvalidKey(f"share {index} is out of range")
        self.index = index
        self._value = gmpy2.mpz(value)
        # The partial-decryption exponent 2 * Delta * s_i, computed once.
        self._exponent = 2 * public.delta * self._value

    @property
    def secret_value(self) -> int:
        """s_i itself: for sealing the bundle and nothing else."""
        return int(self._value)

    @property
    def partial_exponent(self) -> gmpy2.mpz:
        return self._exponent

    def __repr__(self) -> str:
        return f"KeyShare(index={self.index}, value=<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("KeyShare cannot be pickled")

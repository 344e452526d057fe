"""Randomness is passed in: every function that draws random numbers takes an ``Rng``.

Production code uses :data:`SYSTEM_RNG` (the ``secrets`` module, i.e. the OS CSPRNG).
:class:`DeterministicRng` exists only so that test vectors can be regenerated bit for bit;
nothing outside tests and ``tests/vectors/generate.py`` may use it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Protocol


class Rng(Protocol):
    def randbits(self, k: int) -> int:
        """A uniform integer in [0, 2**k)."""

    def randbelow(self, n: int) -> int:
        """A uniform integer in [0, n)."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` uniform bytes."""


class SystemRng:
    """The OS CSPRNG through :mod:`secrets`."""

    def randbits(self, k: int) -> int:
        return secrets.randbits(k)

    def randbelow(self, n: int) -> int:
        return secrets.randbelow(n)

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def __repr__(self) -> str:
        return "SystemRng()"


SYSTEM_RNG: Rng = SystemRng()


class DeterministicRng:
    """SHAKE-256 keyed stream. INSECURE: for reproducible test vectors only."""

    def __init__(self, seed: bytes) -> None:
        self._seed = bytes(seed)
        self._counter = 0

    def token_bytes(self, n: int) -> bytes:
        block = hashlib.shake_256(
            b"flashgate-test-drbg" + self._seed + self._counter.to_bytes(8, "big")
        ).digest(n)
        self._counter += 1
        return block

    def randbits(self, k: int) -> int:
        if k <= 0:
            return 0
        value = int.from_bytes(self.token_bytes((k + 7) // 8), "big")
        return value >> (-k % 8)

    def randbelow(self, n: int) -> int:
        if n <= 0:
            raise ValueError("randbelow needs n > 0")
        k = n.bit_length()
        while True:  # rejection sampling keeps it uniform
            value = self.randbits(k)
            if value < n:
                return value

    def __repr__(self) -> str:
        return "DeterministicRng(<seed>)"

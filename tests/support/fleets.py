"""A fleet directory for tests: dealt from the fixed 1024-bit test primes (INSECURE, fast),
sealed with :data:`~tests.support.material.FAST_KDF` and the test passphrase."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.publickey import FleetPublicKey
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import write_fleet_dir
from tests.support.material import FAST_KDF, TEST_BITS, TEST_PASSPHRASE, fixed_primes


@dataclass
class FleetFixture:
    dir: Path
    ceremony: Ceremony

    @property
    def name(self) -> str:
        return self.ceremony.descriptor.fleet

    @property
    def names(self) -> FleetNames:
        return FleetNames(self.name)

    @property
    def admin(self) -> Ed25519PrivateKey:
        return self.ceremony.admin_key

    @property
    def key(self) -> FleetPublicKey:
        return fleet_public_key(self.ceremony.descriptor)


def make_fleet(
    base: Path, name: str | None = None, *, nodes: int = 3, threshold: int = 2
) -> FleetFixture:
    """A ``threshold``-of-``nodes`` fleet (node-1 .. node-N) written under ``base/NAME``
    (a fresh random name by default)."""
    fleet_name = name or f"t{uuid.uuid4().hex[:10]}"
    cer = run_ceremony(
        fleet=fleet_name,
        node_ids=[f"node-{i}" for i in range(1, nodes + 1)],
        threshold=threshold,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
    )
    out = base / fleet_name
    write_fleet_dir(out, cer, TEST_PASSPHRASE, params=FAST_KDF)
    return FleetFixture(dir=out, ceremony=cer)

"""The key ceremony: deal a fleet key epoch and make every node's identity and bundle.

Pure: takes randomness, the clock value and (optionally) pre-generated primes; returns the
public descriptor, the admin signing key and one :class:`NodeBundle` per node. Writing them
out is :mod:`flashgate.fleet.files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.dealing import check_parameters, deal
from flashgate.errors import ConfigurationError
from flashgate.events.fleet import FleetDescriptor, NodeEntry, Roster, RosterNode
from flashgate.events.signing import sign
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.identity_keys import new_ed25519, new_x25519, public_b64
from flashgate.fleet.nats_identity import new_seed as new_nats_seed
from flashgate.fleet.prime_search import search_primes
from flashgate.fleet.threshold_key import build_descriptor
from flashgate.names import validate_name


@dataclass(frozen=True, eq=False)
class Ceremony:
    descriptor: FleetDescriptor
    roster: Roster
    admin_key: Ed25519PrivateKey
    bundles: tuple[NodeBundle, ...]

    def __repr__(self) -> str:
        return (
            f"Ceremony(fleet={self.descriptor.fleet!r}, epoch={self.descriptor.epoch}, "
            f"nodes={len(self.bundles)}, secrets=<redacted>)"
        )


def default_node_ids(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def check_ceremony(
    *, fleet: str, node_ids: Sequence[str], threshold: int, bits: int, allow_insecure: bool
) -> None:
    """Every cheap check, so bad parameters fail before the prime search."""
    validate_name(fleet, "fleet name")
    for node_id in node_ids:
        validate_name(node_id, "node id")
    if len(set(node_ids)) != len(node_ids):
        raise ConfigurationError("node ids must be distinct")
    check_parameters(bits, len(node_ids), threshold, allow_insecure=allow_insecure)


def run_ceremony(
    *,
    fleet: str,
    node_ids: Sequence[str],
    threshold: int,
    bits: int,
    epoch: int = 1,
    rng: Rng = SYSTEM_RNG,
    primes: tuple[int, int] | None = None,
    allow_insecure: bool = False,
    now: datetime | None = None,
    admin_key: Ed25519PrivateKey | None = None,
) -> Ceremony:
    """Deal epoch ``epoch``. A later epoch passes the fleet's existing ``admin_key``."""
    check_ceremony(
        fleet=fleet,
        node_ids=node_ids,
        threshold=threshold,
        bits=bits,
        allow_insecure=allow_insecure,
    )
    if epoch < 1:
        raise ConfigurationError("epoch must be >= 1")
    if primes is None:  # after every cheap check
        primes = search_primes(bits, rng)
    dealing = deal(
        bits=bits,
        parties=len(node_ids),
        threshold=threshold,
        rng=rng,
        primes=primes,
        allow_insecure=allow_insecure,
    )
    admin = admin_key or new_ed25519(rng)
    identities = [(new_ed25519(rng), new_x25519(rng)) for _ in node_ids]
    entries = [
        NodeEntry(id=node_id, index=i, signing_key=public_b64(sk), exchange_key=public_b64(xk))
        for i, (node_id, (sk, xk)) in enumerate(zip(node_ids, identities, strict=True), start=1)
    ]
    stamp_time = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = stamp_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    descriptor = build_descriptor(
        fleet=fleet,
        epoch=epoch,
        public=dealing.public,
        nodes=entries,
        admin=admin,
        created_at=stamp,
    )
    bundles = tuple(
        NodeBundle(
            node_id=node_id,
            share=share,
            signing_key=sk,
            exchange_key=xk,
            admin_key=descriptor.admin_key,
            descriptor=descriptor,
            public=dealing.public,
            nats_seed=new_nats_seed(rng),
        )
        for node_id, share, (sk, xk) in zip(node_ids, dealing.shares, identities, strict=True)
    )
    roster = initial_roster(descriptor, admin, issued_at=int(stamp_time.timestamp() * 1000))
    return Ceremony(descriptor=descriptor, roster=roster, admin_key=admin, bundles=bundles)


def initial_roster(
    descriptor: FleetDescriptor, admin: Ed25519PrivateKey, *, issued_at: int, serial: int = 1
) -> Roster:
    """Every node of the descriptor, active, admin-signed."""
    nodes = [
        RosterNode(
            id=n.id,
            index=n.index,
            signing_key=n.signing_key,
            exchange_key=n.exchange_key,
            status="active",
        )
        for n in descriptor.nodes
    ]
    return sign(
        Roster(
            fleet=descriptor.fleet,
            epoch=descriptor.epoch,
            serial=serial,
            issued_at=issued_at,
            nodes=nodes,
        ),
        admin,
    )

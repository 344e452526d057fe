"""Fleet key rotation, the key material part: deal epoch k+1 to the active roster, seal each
node's new share to its X25519 identity key, and (on the node) open and check it.

Pure like :mod:`flashgate.fleet.ceremony`: randomness and the clock come in as arguments,
nothing is written. The new epoch keeps the threshold; its nodes are the roster's active
nodes, re-indexed 1..m in their old order, with the identity keys they already have (their
bundles stay valid). The admin signs the new descriptor and, through the
``fleet.rotation.start`` command, the sealed shares; a node accepts a share only from an
admin-signed command, and only if ``v^{s_i} = v_i`` under the new descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.crypto import box
from flashgate.crypto.encoding import b64url_decode, b64url_encode, int_to_bytes
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.threshold.dealing import check_parameters, deal
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import share_matches
from flashgate.errors import (
    ConfigurationError,
    DecryptionError,
    FleetMismatch,
    InvalidKey,
    MalformedDocument,
)
from flashgate.events.commands import StartKeyRotation
from flashgate.events.fleet import FleetDescriptor, NodeEntry, Roster
from flashgate.events.rotation import SealedShare, share_aad
from flashgate.events.signing import verify
from flashgate.fleet.descriptor import check_sealed_shares, fleet_public_key, node_entry
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.fleet.prime_search import search_primes
from flashgate.fleet.threshold_key import build_descriptor, verified_threshold_key


@dataclass(frozen=True, eq=False)
class NextEpoch:
    """The public result of dealing epoch k+1: nothing in it opens without a node's key."""

    descriptor: FleetDescriptor
    shares: tuple[SealedShare, ...]

    def __repr__(self) -> str:
        return (
            f"NextEpoch(fleet={self.descriptor.fleet!r}, epoch={self.descriptor.epoch}, "
            f"nodes={len(self.shares)})"
        )


@dataclass(frozen=True, eq=False)
class EpochKey:
    """One epoch of a node's key material: its share and the epoch's public side."""

    descriptor: FleetDescriptor
    public: ThresholdPublicKey
    share: KeyShare

    @property
    def epoch(self) -> int:
        return self.descriptor.epoch

    @property
    def members(self) -> dict[str, int]:
        """Node id -> share index in this epoch."""
        return {n.id: n.index for n in self.descriptor.nodes}

    def __repr__(self) -> str:
        return f"EpochKey(epoch={self.epoch}, index={self.share.index}, share=<redacted>)"


def active_nodes(roster: Roster) -> list[NodeEntry]:
    """The roster's active nodes, re-indexed 1..m in their old index order."""
    active = sorted((n for n in roster.nodes if n.status == "active"), key=lambda n: n.index)
    return [
        NodeEntry(id=n.id, index=i, signing_key=n.signing_key, exchange_key=n.exchange_key)
        for i, n in enumerate(active, start=1)
    ]


def deal_next_epoch(
    *,
    current: FleetDescriptor,
    roster: Roster,
    admin: Ed25519PrivateKey,
    rng: Rng = SYSTEM_RNG,
    primes: tuple[int, int] | None = None,
    allow_insecure: bool = False,
    now: datetime | None = None,
) -> NextEpoch:
    """Deal epoch ``current.epoch + 1`` (same size, same threshold) to the active roster and
    seal each share to its node. The plaintext shares do not leave this function."""
    if roster.fleet != current.fleet:
        raise FleetMismatch("the roster and the descriptor name different fleets")
    verify(roster, load_ed25519_public(current.admin_key, "admin key"))
    nodes = active_nodes(roster)
    if len(nodes) < current.threshold:
        raise ConfigurationError(
            f"only {len(nodes)} active node(s); the fleet's threshold is {current.threshold}. "
            "A new epoch needs at least t active nodes (run a new ceremony otherwise)"
        )
    bits = fleet_public_key(current).bits
    check_parameters(bits, len(nodes), current.threshold, allow_insecure=allow_insecure)
    if primes is None:  # after every cheap check
        primes = search_primes(bits, rng)
    dealing = deal(
        bits=bits,
        parties=len(nodes),
        threshold=current.threshold,
        rng=rng,
        primes=primes,
        allow_insecure=allow_insecure,
    )
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    descriptor = build_descriptor(
        fleet=current.fleet,
        epoch=current.epoch + 1,
        public=dealing.public,
        nodes=nodes,
        admin=admin,
        created_at=stamp,
    )
    sealed = tuple(
        seal_share(descriptor, node, share, rng)
        for node, share in zip(nodes, dealing.shares, strict=True)
    )
    return NextEpoch(descriptor=descriptor, shares=sealed)


def seal_share(
    descriptor: FleetDescriptor, node: NodeEntry, share: KeyShare, rng: Rng = SYSTEM_RNG
) -> SealedShare:
    k = fleet_public_key(descriptor).byte_length
    sealed = box.seal(
        b64url_decode(node.exchange_key, "exchange key"),
        int_to_bytes(share.secret_value, k),
        share_aad(descriptor.fleet, descriptor.epoch, node.id, node.index),
        rng,
    )
    return SealedShare(
        node_id=node.id,
        index=node.index,
        sender_key=b64url_encode(sealed.sender_key),
        nonce=b64url_encode(sealed.nonce),
        ciphertext=b64url_encode(sealed.ciphertext),
    )


def check_rotation_command(command: StartKeyRotation, admin_key: str) -> ThresholdPublicKey:
    """An admin-signed rotation command, read from the fleet bucket: the command signature,
    the new descriptor under the pinned admin key, and one sealed share per node of it."""
    admin = load_ed25519_public(admin_key, "admin key")
    verify(command, admin)
    descriptor = command.descriptor
    public = verified_threshold_key(descriptor, admin_key)
    if descriptor.fleet != command.fleet or descriptor.epoch != command.from_epoch + 1:
        raise MalformedDocument("the rotation command and its descriptor do not agree")
    check_sealed_shares(descriptor, command.shares)
    return public


def open_share(
    command: StartKeyRotation, admin_key: str, node_id: str, exchange_key: X25519PrivateKey
) -> EpochKey:
    """This node's key of the new epoch, from an admin-signed rotation command."""
    public = check_rotation_command(command, admin_key)
    descriptor = command.descriptor
    entry = node_entry(descriptor, node_id)  # FleetMismatch: not a member of the new epoch
    sealed = next(s for s in command.shares if s.node_id == node_id)
    try:
        raw = box.open_sealed(
            exchange_key,
            box.Sealed(
                sender_key=b64url_decode(sealed.sender_key, "sender key"),
                nonce=b64url_decode(sealed.nonce, "nonce"),
                ciphertext=b64url_decode(sealed.ciphertext, "sealed share"),
            ),
            share_aad(descriptor.fleet, descriptor.epoch, node_id, entry.index),
        )
    except DecryptionError as exc:
        raise InvalidKey(f"the sealed share for {node_id} does not open with its key") from exc
    share = KeyShare(entry.index, int.from_bytes(raw, "big"), public)
    del raw
    if not share_matches(share, public):
        raise InvalidKey(f"the new share of {node_id} does not match its verification key")
    return EpochKey(descriptor=descriptor, public=public, share=share)

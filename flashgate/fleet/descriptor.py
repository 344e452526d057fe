"""Building, signing and checking the fleet descriptor.

:func:`verify_descriptor` needs only public-key code, so the backend can pin and check
descriptors without loading any share or combine code. The threshold view of a descriptor
(verification keys) is :mod:`flashgate.fleet.threshold_key`, for nodes and recovery.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.encoding import b64url_decode
from flashgate.crypto.publickey import FleetPublicKey, fleet_kid
from flashgate.errors import FleetMismatch, InvalidKey, MalformedDocument, MalformedEnvelope
from flashgate.events.fleet import DESCRIPTOR_FORMAT, FleetDescriptor, NodeEntry
from flashgate.events.rotation import SealedShare
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.names import validate_name


def sign_descriptor(unsigned: FleetDescriptor, admin: Ed25519PrivateKey) -> FleetDescriptor:
    return sign(unsigned, admin)


def verify_descriptor(descriptor: FleetDescriptor, pinned_admin_key: str) -> FleetPublicKey:
    """Check the admin signature against the pinned key, then the document's consistency.

    Returns the fleet public key it describes. Raises :class:`SignatureInvalid`,
    :class:`FleetMismatch` (signed by another admin) or :class:`MalformedDocument`.
    """
    if not hmac.compare_digest(descriptor.admin_key.encode(), pinned_admin_key.encode()):
        raise FleetMismatch("fleet descriptor names another admin key than the pinned one")
    verify(descriptor, load_ed25519_public(pinned_admin_key, "admin key"))
    return fleet_public_key(descriptor)


def fleet_public_key(descriptor: FleetDescriptor) -> FleetPublicKey:
    """The fleet RSA public key of a descriptor, after its structural checks."""
    if descriptor.format != DESCRIPTOR_FORMAT:
        raise MalformedDocument(f"unsupported fleet descriptor format {descriptor.format}")
    try:
        validate_name(descriptor.fleet, "fleet name")
        key = FleetPublicKey.from_jwk(msgspec.to_builtins(descriptor.public_key_jwk))
        if FleetPublicKey.from_pem(descriptor.public_key_pem) != key:
            raise MalformedDocument("the PEM and JWK forms of the fleet key differ")
        if descriptor.public_key_jwk.kid != fleet_kid(descriptor.fleet, descriptor.epoch):
            raise MalformedDocument("the JWK kid does not name this fleet and epoch")
        ids = [n.id for n in descriptor.nodes]
        for node_id in ids:
            validate_name(node_id, "node id")
        if len(set(ids)) != len(ids):
            raise MalformedDocument("duplicate node id in the fleet descriptor")
        indices = sorted(n.index for n in descriptor.nodes)
        if indices != list(range(1, len(indices) + 1)):
            raise MalformedDocument("node indices must be 1..n, each once")
        if not 1 <= descriptor.threshold <= len(indices):
            raise MalformedDocument("the threshold must be between 1 and the number of nodes")
        return key
    except (InvalidKey, MalformedEnvelope) as exc:
        raise MalformedDocument(f"invalid fleet descriptor: {exc}") from exc


def group_element(value: str) -> int:
    return int.from_bytes(b64url_decode(value, "group element"), "big")


def node_entry(descriptor: FleetDescriptor, node_id: str) -> NodeEntry:
    for node in descriptor.nodes:
        if node.id == node_id:
            return node
    raise FleetMismatch(f"node {node_id!r} is not in fleet {descriptor.fleet!r}")


def check_sealed_shares(descriptor: FleetDescriptor, shares: Sequence[SealedShare]) -> None:
    """A rotation carries exactly one sealed share per node of its new descriptor (checked
    by structure only: the backend cannot open a share, each node checks its own)."""
    expected = {(n.id, n.index) for n in descriptor.nodes}
    got = [(s.node_id, s.index) for s in shares]
    if len(got) != len(set(got)) or set(got) != expected:
        raise MalformedDocument("the rotation must carry exactly one sealed share per node")

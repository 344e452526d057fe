"""Building, signing and checking the fleet descriptor, and the keys it describes."""

from __future__ import annotations

import hmac

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.encoding import b64url_decode, b64url_encode, int_to_bytes
from flashgate.crypto.publickey import FleetPublicKey, fleet_kid
from flashgate.crypto.threshold.keys import ThresholdPublicKey
from flashgate.errors import FleetMismatch, InvalidKey, MalformedDocument, MalformedEnvelope
from flashgate.events.fleet import (
    DESCRIPTOR_FORMAT,
    FleetDescriptor,
    NodeEntry,
    PublicJwk,
    VerificationKey,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.signing import load_ed25519_public
from flashgate.names import validate_name


def build_descriptor(
    *,
    fleet: str,
    epoch: int,
    public: ThresholdPublicKey,
    nodes: list[NodeEntry],
    admin: Ed25519PrivateKey,
    created_at: str,
) -> FleetDescriptor:
    k = public.key.byte_length
    admin_key = b64url_encode(admin.public_key().public_bytes_raw())
    unsigned = FleetDescriptor(
        format=DESCRIPTOR_FORMAT,
        fleet=fleet,
        epoch=epoch,
        threshold=public.threshold,
        created_at=created_at,
        public_key_pem=public.key.to_pem(),
        public_key_jwk=PublicJwk(**public.key.to_jwk(fleet_kid(fleet, epoch))),
        verification_base=b64url_encode(int_to_bytes(public.verification_base, k)),
        verification_keys=[
            VerificationKey(index=i, value=b64url_encode(int_to_bytes(v, k)))
            for i, v in sorted(public.verification_keys.items())
        ],
        nodes=nodes,
        admin_key=admin_key,
    )
    return sign(unsigned, admin)


def verify_descriptor(descriptor: FleetDescriptor, pinned_admin_key: str) -> ThresholdPublicKey:
    """Check the admin signature against the pinned key, then the document's consistency.

    Returns the threshold public key it describes. Raises :class:`SignatureInvalid`,
    :class:`FleetMismatch` (signed by another admin) or :class:`MalformedDocument`.
    """
    if not hmac.compare_digest(descriptor.admin_key.encode(), pinned_admin_key.encode()):
        raise FleetMismatch("fleet descriptor names another admin key than the pinned one")
    verify(descriptor, load_ed25519_public(pinned_admin_key, "admin key"))
    return threshold_public_key(descriptor)


def threshold_public_key(descriptor: FleetDescriptor) -> ThresholdPublicKey:
    """The ThresholdPublicKey a (signature-checked) descriptor describes."""
    if descriptor.format != DESCRIPTOR_FORMAT:
        raise MalformedDocument(f"unsupported fleet descriptor format {descriptor.format}")
    try:
        validate_name(descriptor.fleet, "fleet name")
        if descriptor.epoch < 1:
            raise MalformedDocument("epoch must be >= 1")
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
        return ThresholdPublicKey(
            key=key,
            threshold=descriptor.threshold,
            parties=len(descriptor.nodes),
            verification_base=_group_element(descriptor.verification_base),
            verification_keys={
                vk.index: _group_element(vk.value) for vk in descriptor.verification_keys
            },
        )
    except (InvalidKey, MalformedEnvelope) as exc:
        raise MalformedDocument(f"invalid fleet descriptor: {exc}") from exc


def _group_element(value: str) -> int:
    return int.from_bytes(b64url_decode(value, "group element"), "big")


def node_entry(descriptor: FleetDescriptor, node_id: str) -> NodeEntry:
    for node in descriptor.nodes:
        if node.id == node_id:
            return node
    raise FleetMismatch(f"node {node_id!r} is not in fleet {descriptor.fleet!r}")

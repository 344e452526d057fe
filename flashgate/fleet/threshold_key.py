"""The threshold view of a fleet descriptor: modulus plus verification keys.

For nodes, the ceremony and offline recovery. The backend never imports this module.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.encoding import b64url_encode, int_to_bytes
from flashgate.crypto.publickey import fleet_kid
from flashgate.crypto.threshold.keys import ThresholdPublicKey
from flashgate.errors import InvalidKey, MalformedDocument, MalformedEnvelope
from flashgate.events.fleet import (
    DESCRIPTOR_FORMAT,
    FleetDescriptor,
    NodeEntry,
    PublicJwk,
    VerificationKey,
)
from flashgate.fleet.descriptor import (
    fleet_public_key,
    group_element,
    sign_descriptor,
    verify_descriptor,
)


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
        admin_key=b64url_encode(admin.public_key().public_bytes_raw()),
    )
    return sign_descriptor(unsigned, admin)


def threshold_public_key(descriptor: FleetDescriptor) -> ThresholdPublicKey:
    """The ThresholdPublicKey a descriptor describes (structure checked, not the signature)."""
    key = fleet_public_key(descriptor)
    try:
        return ThresholdPublicKey(
            key=key,
            threshold=descriptor.threshold,
            parties=len(descriptor.nodes),
            verification_base=group_element(descriptor.verification_base),
            verification_keys={
                vk.index: group_element(vk.value) for vk in descriptor.verification_keys
            },
        )
    except (InvalidKey, MalformedEnvelope) as exc:
        raise MalformedDocument(f"invalid fleet descriptor: {exc}") from exc


def verified_threshold_key(
    descriptor: FleetDescriptor, pinned_admin_key: str
) -> ThresholdPublicKey:
    """Signature under the pinned admin key, then the threshold public key."""
    verify_descriptor(descriptor, pinned_admin_key)
    return threshold_public_key(descriptor)

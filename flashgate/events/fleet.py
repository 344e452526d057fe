"""The fleet descriptor and the roster: admin-signed documents in the fleet KV bucket.

The descriptor describes one fleet key epoch (``fleet.json``, ``descriptor.<epoch>``); the
roster lists the nodes and their status (key ``roster``) and is accepted only with a
higher serial than the one held. Byte strings are unpadded base64url; group elements are
k bytes big-endian.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.types import (
    B64Url,
    Ed25519Key,
    Ed25519Sig,
    Epoch,
    Name,
    NodeStatusValue,
    Serial,
    UnixMillis,
)

DESCRIPTOR_FORMAT = 1
MAX_DESCRIPTOR_BYTES = 256 * 1024
MAX_ROSTER_BYTES = 64 * 1024
ShareIndex = Annotated[int, Meta(ge=1, le=64)]


class NodeEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: Name
    index: ShareIndex
    signing_key: Ed25519Key  # Ed25519 public key
    exchange_key: Ed25519Key  # X25519 public key (same 32-byte encoding)


class VerificationKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    index: ShareIndex
    value: B64Url  # v_i = v^{s_i} mod N


class PublicJwk(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kty: str
    kid: str
    use: str
    alg: str
    n: B64Url
    e: B64Url


class FleetDescriptor(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "fleet-descriptor"

    format: Annotated[int, Meta(ge=1, le=1)] = DESCRIPTOR_FORMAT
    fleet: Name
    epoch: Epoch
    threshold: ShareIndex
    created_at: str  # RFC 3339, UTC
    public_key_pem: Annotated[str, Meta(max_length=16384)]
    public_key_jwk: PublicJwk
    verification_base: B64Url
    verification_keys: Annotated[list[VerificationKey], Meta(min_length=1, max_length=64)]
    nodes: Annotated[list[NodeEntry], Meta(min_length=1, max_length=64)]
    admin_key: Ed25519Key  # Ed25519 public key of the fleet admin
    signature: Ed25519Sig = ""  # over canonical.signed_bytes("fleet-descriptor", self)


class RosterNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: Name
    index: ShareIndex
    signing_key: Ed25519Key
    exchange_key: Ed25519Key
    status: NodeStatusValue = "active"


class Roster(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "roster"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    epoch: Epoch
    serial: Serial
    issued_at: UnixMillis
    nodes: Annotated[list[RosterNode], Meta(min_length=1, max_length=64)]
    signature: Ed25519Sig = ""  # over canonical.signed_bytes("roster", self)

    def node(self, node_id: str) -> RosterNode | None:
        for entry in self.nodes:
            if entry.id == node_id:
                return entry
        return None


class BackendKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Admin-signed ``backend.json``: the Ed25519 key the backend signs its events with
    (outcomes above all). Whoever pins the admin key can check it; see
    :mod:`flashgate.fleet.backend_key`."""

    signing_domain: ClassVar[str] = "backend-key"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    signing_key: Ed25519Key
    issued_at: UnixMillis
    signature: Ed25519Sig = ""  # over canonical.signed_bytes("backend-key", self)


DESCRIPTOR_CODEC: Codec[FleetDescriptor] = Codec(
    FleetDescriptor, max_bytes=MAX_DESCRIPTOR_BYTES, what="fleet descriptor"
)
ROSTER_CODEC: Codec[Roster] = Codec(Roster, max_bytes=MAX_ROSTER_BYTES, what="roster")
BACKEND_KEY_CODEC: Codec[BackendKey] = Codec(BackendKey, max_bytes=4 * 1024, what="backend key")


def decode_descriptor(data: bytes) -> FleetDescriptor:
    return DESCRIPTOR_CODEC.decode(data)


def encode_descriptor(descriptor: FleetDescriptor) -> bytes:
    return msgspec.json.format(DESCRIPTOR_CODEC.encode(descriptor), indent=2) + b"\n"


def encode_roster(roster: Roster) -> bytes:
    return msgspec.json.format(ROSTER_CODEC.encode(roster), indent=2) + b"\n"

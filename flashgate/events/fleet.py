"""The fleet descriptor: the public, admin-signed description of one fleet key epoch.

Written by the ceremony as ``fleet.json``, stored in the fleet KV bucket, embedded in every
node bundle. Byte strings are unpadded base64url; group elements are k bytes big-endian.
"""

from __future__ import annotations

import msgspec

from flashgate.errors import MalformedDocument, OversizedInput

DESCRIPTOR_DOMAIN = "fleet-descriptor"
DESCRIPTOR_FORMAT = 1
MAX_DESCRIPTOR_BYTES = 256 * 1024


class NodeEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    id: str
    index: int
    signing_key: str  # Ed25519 public key, 32 bytes
    exchange_key: str  # X25519 public key, 32 bytes


class VerificationKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    index: int
    value: str  # v_i = v^{s_i} mod N


class PublicJwk(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kty: str
    kid: str
    use: str
    alg: str
    n: str
    e: str


class FleetDescriptor(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: int = DESCRIPTOR_FORMAT
    fleet: str
    epoch: int
    threshold: int
    created_at: str  # RFC 3339, UTC
    public_key_pem: str
    public_key_jwk: PublicJwk
    verification_base: str
    verification_keys: list[VerificationKey]
    nodes: list[NodeEntry]
    admin_key: str  # Ed25519 public key of the fleet admin, 32 bytes
    signature: str = ""  # Ed25519 over canonical.signed_bytes(DESCRIPTOR_DOMAIN, self)


_decoder = msgspec.json.Decoder(FleetDescriptor)


def decode_descriptor(data: bytes) -> FleetDescriptor:
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise OversizedInput(f"fleet descriptor over {MAX_DESCRIPTOR_BYTES} bytes")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedDocument(f"invalid fleet descriptor: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise MalformedDocument(f"fleet descriptor is not JSON: {exc}") from exc


def encode_descriptor(descriptor: FleetDescriptor) -> bytes:
    return msgspec.json.format(msgspec.json.encode(descriptor), indent=2) + b"\n"

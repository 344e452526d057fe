"""Sign and verify wire Structs with Ed25519 over their canonical bytes.

Each signed Struct type names its domain in a ``signing_domain`` class variable and has a
``signature`` field as its last member: a base64url string in JSON documents, raw bytes in
msgpack messages. See :mod:`flashgate.events.canonical` for the signed bytes.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flashgate.crypto.encoding import b64url_decode, b64url_encode
from flashgate.errors import MalformedEnvelope, SignatureInvalid
from flashgate.events.canonical import signed_bytes

S = TypeVar("S", bound=msgspec.Struct)


def domain_of(struct: msgspec.Struct) -> str:
    domain = getattr(type(struct), "signing_domain", None)
    if not isinstance(domain, str):
        raise TypeError(f"{type(struct).__name__} is not a signed type")
    return domain


def signing_bytes(struct: msgspec.Struct) -> bytes:
    return signed_bytes(domain_of(struct), struct)


def sign(struct: S, key: Ed25519PrivateKey) -> S:
    """A copy of ``struct`` with its ``signature`` set."""
    raw = key.sign(signing_bytes(struct))
    current = struct.signature  # type: ignore[attr-defined]
    value: str | bytes = raw if isinstance(current, bytes) else b64url_encode(raw)
    return msgspec.structs.replace(struct, signature=value)


def verify(struct: msgspec.Struct, public: Ed25519PublicKey) -> None:
    """Raise :class:`SignatureInvalid` unless ``struct.signature`` verifies under ``public``."""
    signature = struct.signature  # type: ignore[attr-defined]
    try:
        raw = signature if isinstance(signature, bytes) else b64url_decode(signature)
        public.verify(raw, signing_bytes(struct))
    except (InvalidSignature, MalformedEnvelope, ValueError) as exc:
        raise SignatureInvalid(f"{domain_of(struct)} signature does not verify") from exc

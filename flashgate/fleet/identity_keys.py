"""Ed25519 / X25519 identity keys: generation from injected randomness, raw base64url forms."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.crypto.encoding import b64url_decode, b64url_encode
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import InvalidKey, MalformedEnvelope

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_ed25519(rng: Rng = SYSTEM_RNG) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.token_bytes(32))


def new_x25519(rng: Rng = SYSTEM_RNG) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(rng.token_bytes(32))


def public_b64(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    return b64url_encode(key.public_key().public_bytes(*_RAW))


def private_raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def load_ed25519_public(value: str, what: str = "Ed25519 public key") -> Ed25519PublicKey:
    try:
        raw = b64url_decode(value, what)
        if len(raw) != 32:
            raise InvalidKey(f"{what} must be 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (MalformedEnvelope, ValueError) as exc:
        raise InvalidKey(f"{what} is malformed") from exc

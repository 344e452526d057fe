"""Sealing a message to a one-time X25519 key (share responses, DESIGN §2.4).

    sender_key = X25519 public key of a fresh key pair e
    k          = HKDF-SHA256(ikm = X25519(e, recipient),
                             salt = empty,
                             info = "flashgate/box/v1" || sender_key || recipient_key,
                             length = 32)
    sealed     = AES-256-GCM(k, nonce, plaintext, aad)

The requester makes a fresh key pair per request and sends its public half; the responder
seals its results to it. Only the requester can open them; the responder's Ed25519
signature over the whole response (which includes ``sender_key``, ``nonce`` and
``sealed``) says who sealed them. ``aad`` binds the sealed bytes to the response header.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import DecryptionError, InvalidKey

INFO = b"flashgate/box/v1"
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Sealed:
    sender_key: bytes
    nonce: bytes
    ciphertext: bytes


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key(shared: bytes, sender: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=INFO + sender + recipient
    ).derive(shared)


def _public(raw: bytes) -> X25519PublicKey:
    if len(raw) != 32:
        raise InvalidKey("X25519 public keys are 32 bytes")
    return X25519PublicKey.from_public_bytes(raw)


def new_keypair(rng: Rng = SYSTEM_RNG) -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.from_private_bytes(rng.token_bytes(32))
    return private, _raw(private.public_key())


def seal(recipient_key: bytes, plaintext: bytes, aad: bytes, rng: Rng = SYSTEM_RNG) -> Sealed:
    recipient = _public(recipient_key)
    ephemeral, sender_key = new_keypair(rng)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise InvalidKey("unusable X25519 public key") from exc
    nonce = rng.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(_key(shared, sender_key, recipient_key)).encrypt(nonce, plaintext, aad)
    return Sealed(sender_key=sender_key, nonce=nonce, ciphertext=ciphertext)


def open_sealed(private: X25519PrivateKey, sealed: Sealed, aad: bytes) -> bytes:
    recipient_key = _raw(private.public_key())
    try:
        shared = private.exchange(_public(sealed.sender_key))
        key = _key(shared, sealed.sender_key, recipient_key)
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except (InvalidTag, ValueError, InvalidKey) as exc:
        raise DecryptionError("sealed share results do not open") from exc

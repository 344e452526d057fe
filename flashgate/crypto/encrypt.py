"""Encrypt side: write a secret under the fleet public key as a JWE (public key only).

This is all the backend and the CLI's client-side writes need. It imports nothing from
the threshold (share/combine) side.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flashgate.crypto import jwe
from flashgate.crypto.context import HEADER_PARAM, SecretContext
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import InvalidKey, OversizedInput

OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def wrap_key(key: FleetPublicKey, cek: bytes) -> bytes:
    """RSA-OAEP-256 encryption of a content key (via ``cryptography``)."""
    if len(cek) != jwe.CEK_BYTES:
        raise InvalidKey(f"content key must be {jwe.CEK_BYTES} bytes")
    return key.to_cryptography().encrypt(cek, OAEP_SHA256)


def protected_header(context: SecretContext | None) -> str:
    header: dict[str, object] = {"alg": jwe.ALG, "enc": jwe.ENC}
    if context is not None:
        header[HEADER_PARAM] = context.to_header()
    return jwe.encode_header(header)


def encrypt_secret(
    key: FleetPublicKey,
    context: SecretContext | None,
    plaintext: bytes,
    *,
    rng: Rng = SYSTEM_RNG,
) -> str:
    """A compact JWE of ``plaintext``, bound to ``context``, readable only by the fleet."""
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > jwe.MAX_PLAINTEXT_BYTES:
        raise OversizedInput(f"secret values are limited to {jwe.MAX_PLAINTEXT_BYTES} bytes")
    protected = protected_header(context)
    cek = rng.token_bytes(jwe.CEK_BYTES)
    iv = rng.token_bytes(jwe.IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, bytes(plaintext), protected.encode("ascii"))
    encrypted_key = wrap_key(key, cek)
    del cek
    return jwe.serialize(
        protected, encrypted_key, iv, sealed[: -jwe.TAG_BYTES], sealed[-jwe.TAG_BYTES :]
    )

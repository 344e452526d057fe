"""Open side: finish a JWE once the threshold path has produced y = c^d mod N.

    parsed = jwe.parse(token)                    # strict format checks
    check_context(parsed.context, expected)      # before spending a threshold decryption
    c = parsed.wrapped_key(public_key)
    y = <combine t partial decryptions of c>     # flashgate.crypto.threshold
    plaintext = open_jwe(parsed, y, public_key, expected)

Every failure after parsing (bad OAEP encoding, wrong content key length, wrong tag) is
the same opaque :class:`DecryptionError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flashgate.crypto import jwe
from flashgate.crypto.context import SecretContext, check_context
from flashgate.crypto.encrypt import wrap_key
from flashgate.crypto.oaep import oaep_decode
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import DecryptionError, MissingContext


@dataclass(frozen=True, slots=True)
class OpenedSecret:
    plaintext: bytes
    context: SecretContext | None

    def __repr__(self) -> str:
        return f"OpenedSecret(context={self.context!r}, plaintext=<{len(self.plaintext)} bytes>)"


def unwrap_content_key(parsed: jwe.ParsedJWE, y: int, key: FleetPublicKey) -> bytes:
    """The content key from the combined RSA result y."""
    cek = oaep_decode(y, key.byte_length)
    if len(cek) != jwe.CEK_BYTES:
        raise DecryptionError("decryption failed")
    return cek


def _open_payload(parsed: jwe.ParsedJWE, cek: bytes) -> bytes:
    try:
        return AESGCM(cek).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.aad)
    except InvalidTag as exc:
        raise DecryptionError("decryption failed") from exc


def open_jwe(
    parsed: jwe.ParsedJWE,
    y: int,
    key: FleetPublicKey,
    expected: SecretContext | None,
    *,
    require_context: bool = True,
) -> OpenedSecret:
    """Decrypt the payload. Services pass ``expected``; offline recovery may pass None and
    ``require_context=False`` to also open a third-party JWE with no flashgate context."""
    if expected is not None:
        check_context(parsed.context, expected)
    elif require_context and parsed.context is None:
        raise MissingContext("the envelope carries no flashgate context")
    cek = unwrap_content_key(parsed, y, key)
    plaintext = _open_payload(parsed, cek)
    return OpenedSecret(plaintext=plaintext, context=parsed.context)


def rewrap(parsed: jwe.ParsedJWE, y: int, old: FleetPublicKey, new: FleetPublicKey) -> str:
    """Re-wrap the content key under ``new`` (fleet key rotation).

    The payload must open with the unwrapped key first (so a corrupt envelope is never
    re-issued under the new epoch); the header, IV, ciphertext and tag stay byte for byte.
    """
    cek = unwrap_content_key(parsed, y, old)
    _open_payload(parsed, cek)
    encrypted_key = wrap_key(new, cek)
    return jwe.serialize(parsed.protected, encrypted_key, parsed.iv, parsed.ciphertext, parsed.tag)

"""Passphrase sealing of files at rest (node bundles, the admin signing key).

Format, version 1 (all integers big-endian):

    offset  size  field
    0       6     magic  b"FGSEAL"
    6       1     format version  0x01
    7       1     purpose length P (1..32)
    8       P     purpose, ASCII  (b"node-bundle", b"admin-key", ...)
    8+P     1     KDF id  0x01 = Argon2id (RFC 9106)
    9+P     4     Argon2 memory cost, KiB
    13+P    4     Argon2 iterations
    17+P    4     Argon2 lanes
    21+P    16    salt
    37+P    12    AES-GCM nonce
    49+P    ...   AES-256-GCM ciphertext || 16-byte tag

The key is Argon2id(passphrase, salt) with the recorded parameters; everything before the
ciphertext is the GCM additional data, so a file cannot be relabelled (a bundle opened as
an admin key) or have its parameters edited. A wrong passphrase and a damaged file are the
same error: the tag does not verify.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import ConfigurationError, MalformedSealedFile, OversizedInput, UnsealError

MAGIC = b"FGSEAL"
VERSION = 1
KDF_ARGON2ID = 1
SALT_BYTES = 16
NONCE_BYTES = 12
MIN_PASSPHRASE_CHARS = 8
MAX_SEALED_BYTES = 1 << 20
_PARAMS = struct.Struct(">III")


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost. The default follows RFC 9106's second recommendation (64 MiB, t=3)."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def check(self) -> None:
        # Bounds on what we will *open*: a file cannot make us burn unbounded memory or time.
        if not 8 * 1024 <= self.memory_kib <= 1024 * 1024:
            raise MalformedSealedFile("sealed file asks for an unsupported Argon2 memory cost")
        if not 1 <= self.iterations <= 20 or not 1 <= self.lanes <= 16:
            raise MalformedSealedFile("sealed file asks for unsupported Argon2 parameters")


DEFAULT_KDF = KdfParams()


def _derive(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    return Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    ).derive(passphrase.encode("utf-8"))


def _header(purpose: bytes, params: KdfParams, salt: bytes, nonce: bytes) -> bytes:
    return (
        MAGIC
        + bytes([VERSION, len(purpose)])
        + purpose
        + bytes([KDF_ARGON2ID])
        + _PARAMS.pack(params.memory_kib, params.iterations, params.lanes)
        + salt
        + nonce
    )


def _check_purpose(purpose: str) -> bytes:
    try:
        raw = purpose.encode("ascii")
    except UnicodeEncodeError:
        raw = b""
    if not 1 <= len(raw) <= 32:
        raise ConfigurationError("seal purpose must be 1 to 32 ASCII characters")
    return raw


def check_passphrase(passphrase: str) -> None:
    """Raise :class:`ConfigurationError` for a passphrase :func:`seal` would refuse."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise ConfigurationError(
            f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters"
        )


def seal(
    data: bytes,
    passphrase: str,
    purpose: str,
    *,
    params: KdfParams = DEFAULT_KDF,
    rng: Rng = SYSTEM_RNG,
) -> bytes:
    check_passphrase(passphrase)
    try:
        params.check()
    except MalformedSealedFile as exc:  # the same bounds, reported as a write-side error
        raise ConfigurationError(exc.message) from exc
    raw_purpose = _check_purpose(purpose)
    sealed_size = 8 + len(raw_purpose) + 1 + _PARAMS.size + SALT_BYTES + NONCE_BYTES
    sealed_size += len(data) + 16
    if sealed_size > MAX_SEALED_BYTES:  # never write a file that unseal() would refuse
        raise OversizedInput(f"sealed file would be {sealed_size} bytes, over {MAX_SEALED_BYTES}")
    salt = rng.token_bytes(SALT_BYTES)
    nonce = rng.token_bytes(NONCE_BYTES)
    header = _header(raw_purpose, params, salt, nonce)
    key = _derive(passphrase, salt, params)
    return header + AESGCM(key).encrypt(nonce, data, header)


def sealed_purpose(blob: bytes) -> str:
    """The purpose a sealed file names (``node-bundle``, ``admin-key``, ...), from its
    header alone (no passphrase). Raises :class:`MalformedSealedFile` for a blob that is not
    a whole sealed file of this format."""
    if len(blob) > MAX_SEALED_BYTES:
        raise OversizedInput(f"sealed file over {MAX_SEALED_BYTES} bytes")
    if len(blob) < 8 or blob[:6] != MAGIC:
        raise MalformedSealedFile("not a flashgate sealed file")
    if blob[6] != VERSION:
        raise MalformedSealedFile(f"unsupported sealed file version {blob[6]}")
    plen = blob[7]
    fixed = 8 + plen + 1 + _PARAMS.size + SALT_BYTES + NONCE_BYTES
    if len(blob) < fixed + 16:
        raise MalformedSealedFile("sealed file is truncated")
    return blob[8 : 8 + plen].decode("ascii", "replace")


def check_sealed(blob: bytes, purpose: str) -> None:
    """Raise :class:`MalformedSealedFile` unless ``blob`` is a sealed file of ``purpose``."""
    found = sealed_purpose(blob)
    if found != purpose:
        raise MalformedSealedFile(f"sealed file holds a {found!r}, not a {purpose!r}")


def unseal(blob: bytes, passphrase: str, purpose: str) -> bytes:
    """Open a sealed file of the given purpose. Raises :class:`UnsealError` (or its child
    :class:`MalformedSealedFile` when the file is not a sealed file of that purpose)."""
    _check_purpose(purpose)
    check_sealed(blob, purpose)
    plen = blob[7]
    fixed = 8 + plen + 1 + _PARAMS.size + SALT_BYTES + NONCE_BYTES
    pos = 8 + plen
    if blob[pos] != KDF_ARGON2ID:
        raise MalformedSealedFile("sealed file uses an unknown key derivation")
    params = KdfParams(*_PARAMS.unpack_from(blob, pos + 1))
    params.check()
    pos += 1 + _PARAMS.size
    salt = blob[pos : pos + SALT_BYTES]
    nonce = blob[pos + SALT_BYTES : pos + SALT_BYTES + NONCE_BYTES]
    key = _derive(passphrase, salt, params)
    try:
        return AESGCM(key).decrypt(nonce, blob[fixed:], blob[:fixed])
    except InvalidTag as exc:
        raise UnsealError(
            "cannot open sealed file: wrong passphrase, or the file was altered"
        ) from exc

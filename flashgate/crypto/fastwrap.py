"""The fast path's cryptography (DESIGN §6): ring terms and fast wraps. Pure: no I/O.

A **ring term** is a 256-bit AES key. It is kept (in the ring bucket) as a JWE of the fleet
profile under the fleet public key of an epoch, with the content type
:data:`TERM_CTY` and no secret context, so opening it takes one threshold decryption,
exactly like an envelope: :func:`seal_term` (public key only) and :func:`open_term` (given
the combined RSA result y).

A **fast wrap** is an envelope's content key (the JWE's CEK) sealed under a term with
AES-256-GCM (:func:`wrap_cek`, :func:`unwrap_cek`, with the term's key or its
:class:`TermCipher`, built once per term), whose additional data
(:func:`wrap_aad`) binds::

    "flashgate/fast-wrap/v1" || for each field: u16be(len) || field
    fields: fleet, envelope key (<repo>.<name>), u32be(version), u32be(epoch),
            SHA-256 of the JWE's RSA-wrapped key (32 bytes), term id, writer node id

so a wrap moved to another secret, version, epoch, wrapped key, term or writer fails.
Whatever a wrap yields is only a candidate: :func:`open_payload` opens the JWE's payload
with it under the JWE's own AES-GCM tag and protected header (the envelope's context),
so a wrong content key can only fail (:class:`~flashgate.errors.DecryptionError`), never
open to another value: the payload's ciphertext and tag are the admin's (proven by the
envelope's provenance) and nobody holding a term can choose them.

Content keys and term keys travel as ``bytearray`` so callers can wipe them
(:func:`wipe`).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flashgate.crypto import jwe
from flashgate.crypto.context import ContextFields, check_context
from flashgate.crypto.encrypt import wrap_key
from flashgate.crypto.oaep import oaep_decode
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.crypto.rng import Rng
from flashgate.errors import DecryptionError, InvalidKey, MalformedEnvelope

TERM_KEY_BYTES = 32
NONCE_BYTES = 12
#: A sealed content key: 32 bytes and the 16-byte GCM tag.
SEALED_CEK_BYTES = jwe.CEK_BYTES + jwe.TAG_BYTES
#: The content type of a term's JWE: a term is never mistaken for a secret's envelope
#: (those carry a ``flashgate`` context and no ``cty``), nor the other way round.
TERM_CTY = "flashgate/ring-term"
_WRAP_DOMAIN = b"flashgate/fast-wrap/v1"
#: The fixed-length middle of the additional data: u16be(4) u32be(version), u16be(4)
#: u32be(epoch), u16be(32) (the wrapped key's digest follows).
_NUMBERS = struct.Struct(">HIHIH")


def _field(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("field too long")
    return struct.pack(">H", len(value)) + value


def wrap_aad(
    *,
    fleet: str,
    key: str,
    version: int,
    epoch: int,
    wrapped_key_sha256: bytes,
    term_id: str,
    writer: str,
) -> bytes:
    """The additional data of a fast wrap (layout in the module docstring)."""
    if len(wrapped_key_sha256) != 32:
        raise ValueError("wrapped_key_sha256 must be 32 bytes")
    return b"".join(
        (
            _WRAP_DOMAIN,
            _field(fleet.encode("ascii")),
            _field(key.encode("ascii")),
            _NUMBERS.pack(4, version, 4, epoch, 32),
            wrapped_key_sha256,
            _field(term_id.encode("ascii")),
            _field(writer.encode("ascii")),
        )
    )


def wrapped_key_sha256(parsed: jwe.ParsedJWE) -> bytes:
    """SHA-256 of the JWE's RSA-wrapped key (what a share request names, too)."""
    return hashlib.sha256(parsed.encrypted_key).digest()


class TermCipher:
    """A term's key as AES-256-GCM, set up once for every wrap under the term (not once
    per wrap: a node starting with 100k wraps set up the same key 100k times, and left
    as many unwiped copies of it in freed memory). The key schedule inside cannot be
    wiped; it goes when the cipher is dropped, with the term."""

    __slots__ = ("_aead",)

    def __init__(self, term_key: bytes | bytearray) -> None:
        if len(term_key) != TERM_KEY_BYTES:
            raise InvalidKey(f"a term key is {TERM_KEY_BYTES} bytes")
        self._aead = AESGCM(bytes(term_key))

    def __repr__(self) -> str:
        return "TermCipher(<key not shown>)"


def _cipher(term: bytes | bytearray | TermCipher) -> TermCipher:
    return term if isinstance(term, TermCipher) else TermCipher(term)


def wrap_cek(
    term: bytes | bytearray | TermCipher, cek: bytes | bytearray, aad: bytes, rng: Rng
) -> tuple[bytes, bytes]:
    """(nonce, sealed content key) under the term (its key, or its :class:`TermCipher`).
    A fresh random 96-bit nonce per wrap: a term is retired long before 2^32 wraps (its
    use limit)."""
    cipher = _cipher(term)
    if len(cek) != jwe.CEK_BYTES:
        raise InvalidKey(f"a content key is {jwe.CEK_BYTES} bytes")
    nonce = rng.token_bytes(NONCE_BYTES)
    return nonce, cipher._aead.encrypt(nonce, bytes(cek), aad)


def unwrap_cek(
    term: bytes | bytearray | TermCipher, nonce: bytes, sealed: bytes, aad: bytes
) -> bytearray:
    """The content key of a fast wrap under the term (its key, or its
    :class:`TermCipher`); :class:`DecryptionError` for anything wrong."""
    cipher = _cipher(term)
    if len(nonce) != NONCE_BYTES or len(sealed) != SEALED_CEK_BYTES:
        raise DecryptionError("decryption failed")
    try:
        return bytearray(cipher._aead.decrypt(nonce, sealed, aad))
    except InvalidTag as exc:
        raise DecryptionError("decryption failed") from exc


def open_payload(
    parsed: jwe.ParsedJWE, cek: bytes | bytearray, expected: ContextFields
) -> bytearray:
    """The JWE's payload opened with ``cek`` (its own AES-GCM tag, its protected header as
    additional data), after checking its bound context against ``expected``."""
    check_context(parsed.context, expected)
    if len(cek) != jwe.CEK_BYTES:
        raise DecryptionError("decryption failed")
    try:
        return bytearray(
            AESGCM(bytes(cek)).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.aad)
        )
    except InvalidTag as exc:
        raise DecryptionError("decryption failed") from exc


def content_key(parsed: jwe.ParsedJWE, y: int, key: FleetPublicKey) -> bytearray:
    """The content key from the combined RSA result y (OAEP-decoded, 32 bytes)."""
    cek = oaep_decode(y, key.byte_length)
    if len(cek) != jwe.CEK_BYTES:
        raise DecryptionError("decryption failed")
    return bytearray(cek)


# --- terms ------------------------------------------------------------------------------


def term_header() -> str:
    return jwe.encode_header({"alg": jwe.ALG, "enc": jwe.ENC, "cty": TERM_CTY})


def seal_term(key: FleetPublicKey, term_key: bytes | bytearray, rng: Rng) -> str:
    """The JWE of a term key under the fleet public key ``key`` (public key only)."""
    if len(term_key) != TERM_KEY_BYTES:
        raise InvalidKey(f"a term key is {TERM_KEY_BYTES} bytes")
    protected = term_header()
    cek = bytearray(rng.token_bytes(jwe.CEK_BYTES))
    try:
        iv = rng.token_bytes(jwe.IV_BYTES)
        sealed = AESGCM(bytes(cek)).encrypt(iv, bytes(term_key), protected.encode("ascii"))
        encrypted_key = wrap_key(key, bytes(cek))
    finally:
        wipe(cek)
    return jwe.serialize(
        protected, encrypted_key, iv, sealed[: -jwe.TAG_BYTES], sealed[-jwe.TAG_BYTES :]
    )


def parse_term(token: str) -> jwe.ParsedJWE:
    """Parse a term's JWE: the fleet profile, content type :data:`TERM_CTY`, no context."""
    parsed = jwe.parse(token)
    if parsed.header.get("cty") != TERM_CTY or parsed.context is not None:
        raise MalformedEnvelope("not a ring term's JWE")
    if len(parsed.ciphertext) != TERM_KEY_BYTES:
        raise MalformedEnvelope("a ring term's JWE holds a 32-byte key")
    return parsed


def open_term(parsed: jwe.ParsedJWE, y: int, key: FleetPublicKey) -> bytearray:
    """The term key, from its JWE and the combined RSA result y."""
    cek = content_key(parsed, y, key)
    try:
        term = bytearray(
            AESGCM(bytes(cek)).decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.aad)
        )
    except InvalidTag as exc:
        raise DecryptionError("decryption failed") from exc
    finally:
        wipe(cek)
    if len(term) != TERM_KEY_BYTES:
        wipe(term)
        raise DecryptionError("decryption failed")
    return term


def wipe(buffer: bytearray) -> None:
    """Overwrite ``buffer`` with zeros (CPython's ``bytes`` copies cannot be wiped)."""
    buffer[:] = bytes(len(buffer))

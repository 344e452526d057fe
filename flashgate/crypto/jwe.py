"""The envelope format: a JWE in compact serialization (RFC 7516 §7.1), one profile only.

    BASE64URL(protected header) . BASE64URL(encrypted key) . BASE64URL(IV)
        . BASE64URL(ciphertext) . BASE64URL(tag)

Profile (DESIGN §2.2):
- ``alg`` is exactly ``RSA-OAEP-256`` (RFC 7518 §4.3), ``enc`` exactly ``A256GCM`` (§5.3);
- the encrypted key is exactly k bytes (k = the modulus length), the IV 12 bytes, the tag
  16 bytes; the whole token is at most :data:`MAX_TOKEN_BYTES`;
- the protected header may hold ``alg``, ``enc``, ``kid``, ``typ``, ``cty`` and the private
  parameter ``flashgate`` (the secret context, see :mod:`flashgate.crypto.context`);
  ``zip``, ``crit`` and every other parameter are refused;
- the header is the GCM additional data (ASCII of its base64url form, RFC 7516 §5.1 step 14).

The fleet key epoch is deliberately *not* in the protected header: a fleet key rotation
re-wraps the content key under the new epoch's key and must leave the header, IV,
ciphertext and tag untouched (DESIGN §5); the envelope record carries the epoch.

This module only parses and serializes. Encryption (public key) is in
:mod:`flashgate.crypto.encrypt`; opening (after a threshold decryption) in
:mod:`flashgate.crypto.decrypt`.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from flashgate.crypto.context import HEADER_PARAM, SecretContext
from flashgate.crypto.encoding import b64url_decode, b64url_decode_checked, b64url_encode
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import (
    InvalidCiphertext,
    MalformedEnvelope,
    OversizedInput,
    UnsupportedAlgorithm,
    UnsupportedHeader,
)

ALG = "RSA-OAEP-256"
ENC = "A256GCM"
IV_BYTES = 12
TAG_BYTES = 16
CEK_BYTES = 32
#: Largest secret value accepted (credentials and keys are far smaller).
MAX_PLAINTEXT_BYTES = 64 * 1024
#: Largest protected header, base64url-encoded.
MAX_HEADER_CHARS = 4096
#: Largest encrypted key: an 8192-bit modulus.
MAX_ENCRYPTED_KEY_BYTES = 1024
#: Largest token: every part at its maximum, plus the separators.
MAX_TOKEN_BYTES = (
    MAX_HEADER_CHARS
    + (4 * (MAX_ENCRYPTED_KEY_BYTES + IV_BYTES + MAX_PLAINTEXT_BYTES + TAG_BYTES) + 11) // 3
    + 4
)
_ALLOWED_PARAMS = frozenset({"alg", "enc", "kid", "typ", "cty", HEADER_PARAM})


class ParsedJWE(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A compact JWE split into its parts (:func:`parse`, :func:`parse_proven`). A struct
    out of the cycle collector (it holds no container): a node makes one per envelope at a
    start, and a frozen dataclass took ten times as long to make."""

    protected: str  # the base64url header exactly as received: the GCM AAD
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes
    tag: bytes
    context: SecretContext | None

    @property
    def header(self) -> dict[str, Any]:
        """The protected header's parameters, read from ``protected`` (:func:`parse`
        checked them; only ring terms and the CLI ask)."""
        return parse_header(self.protected)

    @property
    def aad(self) -> bytes:
        return self.protected.encode("ascii")

    def wrapped_key(self, key: FleetPublicKey) -> int:
        """The encrypted key as the RSA ciphertext integer c, checked against ``key``."""
        if len(self.encrypted_key) != key.byte_length:
            raise MalformedEnvelope(
                f"encrypted key is {len(self.encrypted_key)} bytes; this fleet key "
                f"needs {key.byte_length}"
            )
        c = int.from_bytes(self.encrypted_key, "big")
        if not 1 < c < key.modulus:
            raise InvalidCiphertext("encrypted key is out of range for the fleet key")
        return c

    def serialize(self) -> str:
        return serialize(self.protected, self.encrypted_key, self.iv, self.ciphertext, self.tag)

    def __repr__(self) -> str:
        return f"ParsedJWE(context={self.context!r}, ciphertext_bytes={len(self.ciphertext)})"


def serialize(
    protected: str, encrypted_key: bytes, iv: bytes, ciphertext: bytes, tag: bytes
) -> str:
    return ".".join(
        [protected, *(b64url_encode(part) for part in (encrypted_key, iv, ciphertext, tag))]
    )


def encode_header(header: dict[str, Any]) -> str:
    """Compact, key-sorted JSON, base64url-encoded."""
    text = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    return b64url_encode(text.encode("ascii"))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedEnvelope(f"duplicate header parameter {key!r}")
            seen.add(key)
    return out


def _reject_constant(name: str) -> None:
    raise MalformedEnvelope(f"non-standard JSON constant {name} in header")


#: Built once (``json.loads`` with hooks builds a decoder per call).
_HEADER_JSON = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
)
#: A header exactly as :func:`encode_header` writes it (compact, keys sorted, ASCII) is
#: read by msgspec; any other form by the strict decoder above.
_QUICK_JSON = msgspec.json.Decoder()
_SORTED_JSON = msgspec.json.Encoder(order="sorted")


def _header_json(raw: bytes) -> Any:
    """The header's JSON value. The quick way is taken only when encoding what it read
    gives back the very bytes (so one key each, no constant, nothing to normalize: a
    canonical header, as every flashgate writer makes); anything else goes through the
    strict decoder, which names what is wrong."""
    try:
        quick = _QUICK_JSON.decode(raw)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        quick = None
    if isinstance(quick, dict) and _SORTED_JSON.encode(quick) == raw:
        return quick
    return _HEADER_JSON.decode(raw.decode("utf-8"))


def parse_header(protected: str) -> dict[str, Any]:
    if len(protected) > MAX_HEADER_CHARS:
        raise OversizedInput(f"protected header over {MAX_HEADER_CHARS} characters")
    raw = b64url_decode(protected, "protected header")
    try:
        header = _header_json(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedEnvelope("protected header is not JSON") from exc
    if not isinstance(header, dict):
        raise MalformedEnvelope("protected header is not a JSON object")
    if "zip" in header:
        raise UnsupportedHeader("compressed JWE ('zip') is refused")
    if "crit" in header:
        raise UnsupportedHeader("critical header extensions ('crit') are not supported")
    if header.get("alg") != ALG:
        raise UnsupportedAlgorithm(f"alg must be {ALG}, got {_shown(header.get('alg'))}")
    if header.get("enc") != ENC:
        raise UnsupportedAlgorithm(f"enc must be {ENC}, got {_shown(header.get('enc'))}")
    unknown = sorted(set(header) - _ALLOWED_PARAMS)
    if unknown:
        raise UnsupportedHeader(f"unsupported header parameter(s) {unknown[:5]}")
    for name in ("kid", "typ", "cty"):
        if name in header and (not isinstance(header[name], str) or len(header[name]) > 256):
            raise MalformedEnvelope(f"header parameter {name!r} must be a short string")
    return header


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, str) else type(value).__name__


def parse(token: str | bytes) -> ParsedJWE:
    """Parse and validate a compact JWE of the fleet profile. Cheapest checks first."""
    if len(token) > MAX_TOKEN_BYTES:
        raise OversizedInput(f"JWE over {MAX_TOKEN_BYTES} bytes")
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MalformedEnvelope("JWE is not ASCII") from exc
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 5:
        raise MalformedEnvelope(f"a compact JWE has 5 dot-separated parts, this has {len(parts)}")
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = parts
    header = parse_header(protected)
    encrypted_key = b64url_decode(ek_b64, "encrypted key")
    if not encrypted_key or len(encrypted_key) > MAX_ENCRYPTED_KEY_BYTES:
        raise MalformedEnvelope("encrypted key is empty or too long")
    iv = b64url_decode(iv_b64, "IV")
    if len(iv) != IV_BYTES:
        raise MalformedEnvelope(f"IV must be {IV_BYTES} bytes")
    ciphertext = b64url_decode(ct_b64, "ciphertext")
    if len(ciphertext) > MAX_PLAINTEXT_BYTES:
        raise OversizedInput(f"ciphertext over {MAX_PLAINTEXT_BYTES} bytes")
    tag = b64url_decode(tag_b64, "authentication tag")
    if len(tag) != TAG_BYTES:
        raise MalformedEnvelope(f"authentication tag must be {TAG_BYTES} bytes")
    context = SecretContext.from_header(header[HEADER_PARAM]) if HEADER_PARAM in header else None
    return ParsedJWE(
        protected=protected,
        encrypted_key=encrypted_key,
        iv=iv,
        ciphertext=ciphertext,
        tag=tag,
        context=context,
    )


def parse_proven(token: str, context: SecretContext) -> ParsedJWE:
    """A JWE whose very bytes :func:`parse` accepted before, its bound context found equal
    to ``context`` (a node remembers the envelope values it proved,
    :mod:`flashgate.bridge.verified_statements`): split and decoded, neither the profile
    nor the encoding checked again (:func:`parse` found every part canonical base64url),
    the header not read until asked for. The payload still opens only with the JWE's own
    tag, under the header exactly as received."""
    parts = token.strip().split(".")
    if len(parts) != 5:
        raise MalformedEnvelope(f"a compact JWE has 5 dot-separated parts, this has {len(parts)}")
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = parts
    try:
        return ParsedJWE(
            protected=protected,
            encrypted_key=b64url_decode_checked(ek_b64),
            iv=b64url_decode_checked(iv_b64),
            ciphertext=b64url_decode_checked(ct_b64),
            tag=b64url_decode_checked(tag_b64),
            context=context,
        )
    except (ValueError, UnicodeEncodeError) as exc:  # not from bytes parse accepted
        raise MalformedEnvelope("a JWE part is not base64url") from exc

"""Byte encodings shared by the crypto modules: strict base64url and fixed-length integers."""

from __future__ import annotations

import base64
import binascii
import re

from flashgate.errors import MalformedEnvelope

_B64URL_RE = re.compile(rb"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes, what: str = "value") -> bytes:
    """Strict unpadded base64url: no padding, no whitespace, canonical trailing bits."""
    try:
        raw = text.encode("ascii", "strict") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:
        raise MalformedEnvelope(f"{what} is not unpadded base64url") from exc
    if _B64URL_RE.fullmatch(raw) is None or len(raw) % 4 == 1:
        raise MalformedEnvelope(f"{what} is not unpadded base64url")
    try:
        out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedEnvelope(f"{what} is not unpadded base64url") from exc
    if b64url_encode(out).encode("ascii") != raw:  # non-canonical trailing bits
        raise MalformedEnvelope(f"{what} is not canonical base64url")
    return out


def int_to_bytes(value: int, length: int) -> bytes:
    """I2OSP (RFC 8017 §4.1): big-endian, exactly ``length`` bytes."""
    return int(value).to_bytes(length, "big")


def byte_length(n: int) -> int:
    return (int(n).bit_length() + 7) // 8

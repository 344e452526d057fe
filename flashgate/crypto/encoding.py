"""Byte encodings shared by the crypto modules: strict base64url and fixed-length integers."""

from __future__ import annotations

import base64
import binascii

from flashgate.errors import MalformedEnvelope

_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
#: Each character's 6-bit value (the canonical check of the last one's unused bits).
_VALUE = {char: value for value, char in enumerate(_B64URL_ALPHABET)}
#: Unused low bits of the last character, by the length modulo 4 (2: 4 bits, 3: 2 bits).
_UNUSED_BITS = {2: 0x0F, 3: 0x03}


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes, what: str = "value") -> bytes:
    """Strict unpadded base64url: no padding, no whitespace, canonical trailing bits.

    Every character must be of the base64url alphabet (checked whole, before decoding,
    so neither ``+``/``/`` nor ``=`` nor whitespace gets through), the length must not be
    1 modulo 4, and the unused low bits of the last character must be zero (one encoding
    per value: RFC 4648 §3.5)."""
    try:
        raw = text.encode("ascii", "strict") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:
        raise MalformedEnvelope(f"{what} is not unpadded base64url") from exc
    rest = len(raw) % 4
    if rest == 1 or raw.translate(None, _B64URL_ALPHABET):
        raise MalformedEnvelope(f"{what} is not unpadded base64url")
    if rest and _VALUE[raw[-1]] & _UNUSED_BITS[rest]:
        raise MalformedEnvelope(f"{what} is not canonical base64url")
    try:
        return binascii.a2b_base64(
            raw.translate(_TO_STANDARD) + b"=" * (-rest % 4), strict_mode=True
        )
    except (binascii.Error, ValueError) as exc:  # not reached: the checks above are whole
        raise MalformedEnvelope(f"{what} is not unpadded base64url") from exc


def b64url_decode_checked(text: str) -> bytes:
    """Unpadded base64url that :func:`b64url_decode` accepted before, these very
    characters: decoded without its checks (about a third faster). Anything else may
    decode leniently or raise ``ValueError``: never the way to read an untrusted value."""
    raw = text.encode("ascii").translate(_TO_STANDARD)
    return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))


def int_to_bytes(value: int, length: int) -> bytes:
    """I2OSP (RFC 8017 §4.1): big-endian, exactly ``length`` bytes."""
    return int(value).to_bytes(length, "big")


def byte_length(n: int) -> int:
    return (int(n).bit_length() + 7) // 8

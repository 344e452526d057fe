"""Repository API keys: identifiers and secrets (encrypt side; no decryption here).

    key id:  fgk_<24 base32 characters>   public, 120 random bits; a valid name
    secret:  fgs_<43 base64url characters> 256 random bits; shown once, then only its
                                          envelope (a JWE of kind ``apikey``) exists

A gateway client presents both; a bridge compares the secret with the one it holds, in
constant time (:func:`secrets_match`).
"""

from __future__ import annotations

import base64
import hmac

from flashgate.crypto.encoding import b64url_encode
from flashgate.crypto.rng import SYSTEM_RNG, Rng

KEY_ID_PREFIX = "fgk_"
SECRET_PREFIX = "fgs_"  # noqa: S105 - a format prefix, not a secret
KEY_ID_RANDOM_BYTES = 15
SECRET_RANDOM_BYTES = 32


def new_key_id(rng: Rng = SYSTEM_RNG) -> str:
    raw = base64.b32encode(rng.token_bytes(KEY_ID_RANDOM_BYTES)).decode("ascii").lower()
    return KEY_ID_PREFIX + raw


def new_key_secret(rng: Rng = SYSTEM_RNG) -> bytes:
    return (SECRET_PREFIX + b64url_encode(rng.token_bytes(SECRET_RANDOM_BYTES))).encode("ascii")


def is_key_id(value: str) -> bool:
    body = value[len(KEY_ID_PREFIX) :]
    return (
        value.startswith(KEY_ID_PREFIX)
        and len(body) == 24
        and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in body)
    )


def secrets_match(held: bytes | bytearray | memoryview, presented: bytes) -> bool:
    """Constant-time comparison (length leaks, as for any MAC check)."""
    return hmac.compare_digest(bytes(held), presented)

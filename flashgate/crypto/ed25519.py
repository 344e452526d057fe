"""Ed25519 verification with libsodium (PyNaCl): the nodes' bulk signature check.

libsodium accepts a subset of what OpenSSL accepts (both check ``[S]B = R + [k]A``
without the cofactor on the encodings as given; libsodium also refuses small-order and
non-canonical points), so no signature is accepted here that
:func:`flashgate.events.signing.verify` (OpenSSL, through ``cryptography``) refuses. It is
about half OpenSSL's time on the machines measured (59 µs against 108 µs).
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under the raw public key."""
    if len(public_raw) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, public_raw)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True

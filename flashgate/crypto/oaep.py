"""EME-OAEP decoding, RFC 8017 §7.1.2, with SHA-256, MGF1-SHA-256 and an empty label.

The threshold path yields the raw RSA result y = c^d mod N; this turns it into the message
(the JWE content key). Every check is computed and folded into one flag before the single
failure point, so the error does not say which check failed (Manger's attack needs that
distinction). Python cannot promise constant time; the code avoids data-dependent early
exits and branches on secret bytes, which is what is in our control.
"""

from __future__ import annotations

import hashlib
import hmac

from flashgate.crypto.encoding import int_to_bytes
from flashgate.errors import DecryptionError

HASH_LEN = 32
_EMPTY_LABEL_HASH = hashlib.sha256(b"").digest()


def mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def oaep_decode(y: int, k: int) -> bytes:
    """Decode the integer y (< 256^k) as an OAEP-encoded message of k bytes."""
    if k < 2 * HASH_LEN + 2 or not 0 <= y < 1 << (8 * k):
        raise DecryptionError("decryption failed")
    em = int_to_bytes(y, k)
    first = em[0]
    masked_seed, masked_db = em[1 : 1 + HASH_LEN], em[1 + HASH_LEN :]
    seed = _xor(masked_seed, mgf1_sha256(masked_db, HASH_LEN))
    db = _xor(masked_db, mgf1_sha256(seed, k - HASH_LEN - 1))

    good = int(hmac.compare_digest(db[:HASH_LEN], _EMPTY_LABEL_HASH))
    good &= int(first == 0)
    # Find the 0x01 separator after the zero padding, scanning every byte.
    looking, index, invalid = 1, 0, 0
    for i, byte in enumerate(db[HASH_LEN:]):
        is_one = int(byte == 1)
        is_zero = int(byte == 0)
        take = looking & is_one
        index = take * i + (1 - take) * index
        invalid |= looking & (1 - is_one) & (1 - is_zero)
        looking &= 1 - is_one
    good &= (1 - looking) & (1 - invalid)
    if not good:
        raise DecryptionError("decryption failed")
    return db[HASH_LEN + index + 1 :]

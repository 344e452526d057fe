"""The signature worker: a child process of a Bridge Node that verifies Ed25519 signatures
and proves envelope values in bulk (:class:`flashgate.bridge.signatures.SignatureWorker`
starts it and speaks to it).

A node joining a fleet of 100k secrets checks 100k admin signatures (about 60 µs each
here) before it can hold them; done in the node's process they take a core the event loop
needs for everything else, and a thread cannot help (PyNaCl gives the GIL back during a
verification, but the thread then waits for the event loop to give it back). This process
does them on another core while the node decodes and checks the rest. For a node's
initial values it does more: it proves each value's stateless part
(:func:`flashgate.bridge.value_proof.value_proven`: the decode, the JWE's profile and
bound context, the admin's statement and its signature), so that the node checks those
values only against its own state, as it does a value proven at an earlier start.

It is given only public data (public keys, signatures, signed bytes, envelope values,
which are ciphertexts) and answers only valid or not valid: nothing secret ever reaches
it. It reads batches from its stdin and writes one answer per batch to its stdout, in
order, until its stdin closes (the node stopped, or was killed):

    batch:  u32be length, then that many bytes: one kind byte, then its items
      kind 0 (signatures), each item:
            32-byte public key, 64-byte signature, u32be message length, message
      kind 1 (envelope values): 32-byte admin public key, u16be fleet length, fleet,
            u16be tag length, the node's VALUE_TAG (a worker whose own differs, started
            from another release on disk, proves nothing), then each item:
            u16be key length, key, u32be value length, value
    answer: u32be count, then one byte per item (1 valid or proven, 0 not)

A batch that does not parse ends the process (the node then verifies in its own).
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from flashgate.bridge.value_proof import VALUE_TAG, value_proven
from flashgate.crypto import ed25519

#: The largest batch accepted (the node sends at most its batch size of statements).
MAX_BATCH_BYTES = 16 * 1024 * 1024
_HEAD = struct.Struct(">I")
_SHORT = struct.Struct(">H")
_ITEM_HEAD = ed25519.PUBLIC_KEY_BYTES + ed25519.SIGNATURE_BYTES + _HEAD.size
#: The kinds of batch (the first byte of a batch's body).
SIGNATURES = 0
VALUES = 1


def answer_batch(body: bytes) -> bytes:
    """The answer to one batch (its kind byte first). ValueError if malformed."""
    if not body:
        raise ValueError("empty batch")
    if body[0] == SIGNATURES:
        return verify_batch(body, 1)
    if body[0] == VALUES:
        return prove_batch(body, 1)
    raise ValueError("unknown kind of batch")


def _field(body: bytes, at: int) -> tuple[bytes, int]:
    if len(body) - at < _SHORT.size:
        raise ValueError("truncated field")
    (length,) = _SHORT.unpack_from(body, at)
    at += _SHORT.size
    if len(body) - at < length:
        raise ValueError("truncated field")
    return body[at : at + length], at + length


def _text(body: bytes, at: int) -> tuple[str, int]:
    raw, at = _field(body, at)
    return raw.decode("ascii"), at


def prove_batch(body: bytes, at: int = 0) -> bytes:
    """One byte per envelope value of ``body`` (1: proven,
    :func:`~flashgate.bridge.value_proof.value_proven`). ValueError if malformed."""
    end = len(body)
    if end - at < ed25519.PUBLIC_KEY_BYTES:
        raise ValueError("truncated admin key")
    admin = body[at : at + ed25519.PUBLIC_KEY_BYTES]
    fleet, at = _text(body, at + ed25519.PUBLIC_KEY_BYTES)
    tag, at = _field(body, at)
    same_rules = tag == VALUE_TAG
    out = bytearray()
    while at < end:
        key, at = _text(body, at)
        if end - at < _HEAD.size:
            raise ValueError("truncated value")
        (length,) = _HEAD.unpack_from(body, at)
        at += _HEAD.size
        if end - at < length:
            raise ValueError("truncated value")
        proven = same_rules and value_proven(admin, fleet, key, body[at : at + length])
        out.append(1 if proven else 0)
        at += length
    return bytes(out)


def verify_batch(body: bytes, at: int = 0) -> bytes:
    """One byte per item of ``body`` (1: the signature verifies). ValueError if malformed."""
    out = bytearray()
    end = len(body)
    while at < end:
        if end - at < _ITEM_HEAD:
            raise ValueError("truncated item")
        public = body[at : at + 32]
        signature = body[at + 32 : at + 96]
        (length,) = _HEAD.unpack_from(body, at + 96)
        at += _ITEM_HEAD
        if end - at < length:
            raise ValueError("truncated message")
        out.append(1 if ed25519.verify(public, signature, body[at : at + length]) else 0)
        at += length
    return bytes(out)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    while True:
        head = _read_exactly(stdin, _HEAD.size)
        if head is None:
            return 0  # the node closed its end
        (length,) = _HEAD.unpack(head)
        if length > MAX_BATCH_BYTES:
            return 2
        body = _read_exactly(stdin, length)
        if body is None:
            return 0
        try:
            answer = answer_batch(body)
        except ValueError:
            return 2
        stdout.write(_HEAD.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))

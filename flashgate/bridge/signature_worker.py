"""The signature worker: a child process of a Bridge Node that verifies Ed25519 signatures
in bulk (:class:`flashgate.bridge.signatures.SignatureWorker` starts it and speaks to it).

A node joining a fleet of 100k secrets checks 100k admin signatures (about 60 µs each
here) before it can hold them; done in the node's process they take a core the event loop
needs for everything else, and a thread cannot help (PyNaCl gives the GIL back during a
verification, but the thread then waits for the event loop to give it back). This process
does them on another core while the node decodes and checks the rest.

It is given only public data (public keys, signatures and the signed bytes) and answers
only valid or not valid: nothing secret ever reaches it. It reads batches from its stdin
and writes one answer per batch to its stdout, in order, until its stdin closes (the node
stopped, or was killed):

    batch:  u32be length, then that many bytes of items:
            32-byte public key, 64-byte signature, u32be message length, message
    answer: u32be count, then one byte per item (1 valid, 0 not)

A batch that does not parse ends the process (the node then verifies in its own).
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from flashgate.crypto import ed25519

#: The largest batch accepted (the node sends at most its batch size of statements).
MAX_BATCH_BYTES = 16 * 1024 * 1024
_HEAD = struct.Struct(">I")
_ITEM_HEAD = ed25519.PUBLIC_KEY_BYTES + ed25519.SIGNATURE_BYTES + _HEAD.size


def verify_batch(body: bytes) -> bytes:
    """One byte per item of ``body`` (1: the signature verifies). ValueError if malformed."""
    out = bytearray()
    at, end = 0, len(body)
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
            answer = verify_batch(body)
        except ValueError:
            return 2
        stdout.write(_HEAD.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))

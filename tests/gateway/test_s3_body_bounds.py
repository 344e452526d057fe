"""The bounds of an aws-chunked body (review finding: a signed chunk's bytes went upstream
before its signature was checked, and a chunk could be longer than the declared length),
and the idle deadline of every read from the client."""

from __future__ import annotations

import asyncio
import base64
import hashlib

from flashgate.gateway.s3 import body, sigv4
from tests.gateway.test_s3_sigv4 import (
    DATA,
    DATE,
    SCOPE,
    SEED,
    SKEY,
    _Stream,
    code_of,
    signed_chunks,
    spec,
    unsigned_trailer,
)


def consume(reader: body.RequestBody, seen: list[bytes]) -> None:
    async def run() -> None:
        async for piece in reader.pieces():
            seen.append(piece)

    asyncio.run(run())


def test_a_signed_chunk_is_not_let_through_before_its_signature_verified() -> None:
    """One chunk of many reads, with a wrong signature: not one of its bytes goes out."""
    data = DATA * 5  # one chunk of two reads and more
    encoded = signed_chunks(data, SKEY, DATE, SCOPE, SEED, len(data))
    forged = encoded.replace(data[:1000], bytes(1000), 1)
    large = body.Spec(
        mode=sigv4.STREAMING_SIGNED, length=len(data), key=SKEY, amz_date=DATE,
        scope=SCOPE, seed=SEED,
    )  # fmt: skip
    reader = body.RequestBody(_Stream(forged), large)
    seen: list[bytes] = []
    assert code_of(lambda: consume(reader, seen)) == "SignatureDoesNotMatch"
    assert seen == []


def test_a_chunk_longer_than_the_declared_length_is_refused_before_it_is_read() -> None:
    """The captured-request replay: declared length 10, one large chunk, a bogus signature."""
    evil = b"EVIL-BYTES" + b"x" * (256 * 1024 + 10)
    encoded = b"%x;chunk-signature=%s\r\n%s\r\n" % (len(evil), b"0" * 64, evil)
    encoded += b"0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n"
    declared = body.Spec(
        mode=sigv4.STREAMING_SIGNED, length=10, key=SKEY, amz_date=DATE, scope=SCOPE, seed=SEED
    )
    reader = body.RequestBody(_Stream(encoded), declared)
    seen: list[bytes] = []
    assert code_of(lambda: consume(reader, seen)) == "IncompleteBody"
    assert seen == []
    assert reader.bytes_in < 10_000  # the chunk itself was never read


def test_unsigned_chunks_never_yield_more_than_the_declared_length() -> None:
    name = "x-amz-checksum-crc32"
    encoded = unsigned_trailer(DATA + b"more", name, "AAAAAA==", 8192)
    reader = body.RequestBody(
        _Stream(encoded), spec(sigv4.STREAMING_UNSIGNED_TRAILER, trailer=name)
    )
    seen: list[bytes] = []
    assert code_of(lambda: consume(reader, seen)) == "IncompleteBody"
    assert sum(map(len, seen)) <= len(DATA)


def test_a_chunk_over_the_size_cap_is_refused() -> None:
    size = body.MAX_CHUNK + 1
    encoded = b"%x;chunk-signature=%s\r\n" % (size, b"0" * 64) + b"x" * 1000
    large = body.Spec(
        mode=sigv4.STREAMING_SIGNED, length=5 * 1024**3, key=SKEY, amz_date=DATE,
        scope=SCOPE, seed=SEED,
    )  # fmt: skip
    reader = body.RequestBody(_Stream(encoded), large)
    seen: list[bytes] = []
    assert code_of(lambda: consume(reader, seen)) == "InvalidChunkSizeError"
    assert seen == []


class _Stalled:
    """A client that sends a first piece and then nothing."""

    def __init__(self, first: bytes) -> None:
        self._first: bytes | None = first

    async def readany(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        await asyncio.Event().wait()
        return b""


def test_a_client_that_stops_sending_is_refused_after_the_idle_timeout() -> None:
    data = b"x" * 1000
    plain = body.Spec(mode=hashlib.sha256(data).hexdigest(), length=len(data))
    reader = body.RequestBody(_Stalled(data[:10]), plain, idle_timeout=0.05)
    seen: list[bytes] = []
    assert code_of(lambda: consume(reader, seen)) == "RequestTimeout"
    assert reader.failure is not None and reader.failure.status == 400


def test_a_stalled_trailer_is_refused_after_the_idle_timeout() -> None:
    name = "x-amz-checksum-crc32"
    value = base64.b64encode(b"\0\0\0\0").decode()
    encoded = unsigned_trailer(b"abc", name, value)
    reader = body.RequestBody(
        _Stalled(encoded[:-2]),
        body.Spec(mode=sigv4.STREAMING_UNSIGNED_TRAILER, length=3, trailer=name),
        idle_timeout=0.05,
    )
    assert code_of(lambda: consume(reader, [])) == "RequestTimeout"

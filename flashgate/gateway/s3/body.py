"""A client's request body, read as it streams and checked before its end is let through.

The body modes ``x-amz-content-sha256`` names:

- a hex SHA-256: the body must hash to it (else ``XAmzContentSHA256Mismatch``);
- ``UNSIGNED-PAYLOAD``: not signed (TLS carries it);
- ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: aws-chunked, each chunk signed, the signatures
  chained from the request's own (``<hex>;chunk-signature=<sig>\\r\\n<data>\\r\\n``);
- ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: aws-chunked, unsigned chunks, a checksum trailer
  (what boto3 >= 1.36 sends for PutObject and UploadPart over HTTPS);
- ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``: signed chunks and a signed trailer.

A checksum (``x-amz-checksum-<alg>`` header, or the trailer that ``x-amz-trailer`` names)
is computed and compared too (else ``BadDigest``); a streamed length must be the declared
``x-amz-decoded-content-length`` (else ``IncompleteBody``).

Nothing is buffered whole: :meth:`RequestBody.pieces` yields the decoded bytes as they come
but holds the last piece back until every check has passed. The upstream stores an object
(or a part) only once it has the whole body, so a body that fails a check never lands: the
upstream request is cut short instead. For that to hold in every form:

- the bytes yielded never exceed the declared length (the upstream request's
  Content-Length): a chunk that would go past it is refused from its header, before it is
  read (``IncompleteBody``), and no chunk may be over :data:`MAX_CHUNK`
  (``InvalidChunkSizeError``; S3's clients send 8 KiB to 1 MiB);
- a signed chunk is held back whole until its signature verified (so a chunk costs up to
  :data:`MAX_CHUNK` of memory while it is read);
- every read from the client has an idle deadline (``idle_timeout``: a client that sends
  nothing for that long is refused ``RequestTimeout``, and the upstream request cut).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from flashgate.errors import S3Refused
from flashgate.gateway.s3 import checksums, sigv4

#: The longest chunk header or trailer line we read (a chunk header is ~90 bytes).
MAX_LINE = 4096
#: The most trailer lines an aws-chunked body may carry.
MAX_TRAILERS = 4
#: What one read takes from the client at most.
READ_SIZE = 256 * 1024
#: The largest aws-chunked chunk taken (a signed one is held in memory until verified).
MAX_CHUNK = 8 * 1024 * 1024
#: How long a read from the client may wait for a byte (the server's body_timeout_s).
IDLE_TIMEOUT_S = 60.0


class Stream(Protocol):
    """What :class:`aiohttp.StreamReader` offers and this module uses."""

    async def readany(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Spec:
    """How a request's body is to be read and checked (from its verified headers)."""

    mode: str
    #: The decoded length: Content-Length, or x-amz-decoded-content-length when streamed.
    length: int | None
    #: (algorithm, base64 value) of an ``x-amz-checksum-*`` header.
    checksum: tuple[str, str] | None = None
    #: The trailer header an aws-chunked body ends with (``x-amz-checksum-crc32``).
    trailer: str | None = None
    #: For signed chunks: the signing key, request time, scope and the seed signature.
    key: bytes | None = None
    amz_date: str = ""
    scope: sigv4.Scope | None = None
    seed: str = ""

    def __repr__(self) -> str:  # holds a signing key
        return f"Spec(mode={self.mode!r}, length={self.length})"

    @property
    def chunked(self) -> bool:
        return self.mode in sigv4.STREAMING_MODES

    @property
    def signed_chunks(self) -> bool:
        return self.mode in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER)


def _refuse(code: str, message: str, status: int = 400) -> S3Refused:
    return S3Refused(code, status, message)


class _Lines:
    """A small buffer over the stream: lines (``\\r\\n``) and up-to-n reads."""

    def __init__(self, stream: Stream, idle_timeout: float) -> None:
        self._stream = stream
        self._idle_timeout = idle_timeout
        self._buf = bytearray()
        self.count = 0

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await self._stream.readany()
        except TimeoutError:
            raise _refuse(
                "RequestTimeout",
                "your socket connection to the server was not read from or written to "
                "within the timeout period",
            ) from None

    async def _fill(self) -> None:
        data = await self._read()
        if not data:
            raise _refuse("IncompleteBody", "the body ended early")
        self.count += len(data)
        self._buf += data

    async def line(self) -> bytes:
        start = 0
        while True:
            end = self._buf.find(b"\r\n", start)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > MAX_LINE:
                raise _refuse("InvalidChunkSizeError", "an aws-chunked line is too long")
            start = max(0, len(self._buf) - 1)
            await self._fill()

    async def take(self, n: int) -> bytes:
        """Up to ``n`` bytes: what has arrived, gathered up to :data:`READ_SIZE` (fewer,
        larger pieces cost less on the way to the upstream)."""
        want = min(n, READ_SIZE)
        while len(self._buf) < want:
            await self._fill()
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        return piece

    async def at_end(self) -> bool:
        if self._buf:
            return False
        data = await self._read()
        self.count += len(data)
        self._buf += data
        return not data


class RequestBody:
    """The decoded, checked body of one request (read once)."""

    def __init__(self, stream: Stream, spec: Spec, *, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self._spec = spec
        self._lines = _Lines(stream, idle_timeout)
        self.decoded = 0
        #: The trailer's checksum (``name``, base64 value), once the body is through.
        self.trailer_value: tuple[str, str] | None = None
        #: Why the body was refused, if it was (the upstream request was cut short).
        self.failure: S3Refused | None = None
        #: The client's connection failed while its body was read (not the upstream's).
        self.client_failed = False
        self._sha = hashlib.sha256() if _is_hex(spec.mode) else None
        self._header_sum = checksums.new(spec.checksum[0]) if spec.checksum else None
        self._trailer_sum = (
            checksums.new(checksums.algorithm_of(spec.trailer)) if spec.trailer else None
        )

    @property
    def bytes_in(self) -> int:
        """Bytes read from the client (the encoded body)."""
        return self._lines.count

    def _account(self, data: bytes) -> None:
        self.decoded += len(data)
        if self._sha is not None:
            self._sha.update(data)
        if self._header_sum is not None:
            self._header_sum.update(data)
        if self._trailer_sum is not None:
            self._trailer_sum.update(data)

    async def pieces(self) -> AsyncIterator[bytes]:
        """The decoded bytes; the last piece only after every check passed."""
        held: bytes | None = None
        try:
            source = self._chunked() if self._spec.chunked else self._plain()
            async for piece in source:
                if held:
                    yield held
                held = piece
            self._finish()
        except S3Refused as refused:
            self.failure = refused
            raise
        except Exception:
            self.client_failed = True
            raise
        if held:
            yield held

    async def _plain(self) -> AsyncIterator[bytes]:
        remaining = self._spec.length
        if remaining is None:
            raise _refuse("MissingContentLength", "a Content-Length is required", 411)
        while remaining > 0:
            piece = await self._lines.take(remaining)
            remaining -= len(piece)
            self._account(piece)
            yield piece

    async def _chunked(self) -> AsyncIterator[bytes]:
        spec = self._spec
        previous = spec.seed
        while True:
            header = (await self._lines.line()).decode("latin-1")
            size_text, _, extension = header.partition(";")
            size = _chunk_size(size_text)
            if size > MAX_CHUNK:
                raise _refuse("InvalidChunkSizeError", "a chunk is larger than allowed")
            if spec.length is None or self.decoded + size > spec.length:
                raise _refuse(
                    "IncompleteBody", "the chunks are longer than x-amz-decoded-content-length"
                )
            chunk_sha = hashlib.sha256() if spec.signed_chunks else None
            held: list[bytes] = []  # a signed chunk's pieces, until its signature verified
            remaining = size
            while remaining:
                piece = await self._lines.take(min(remaining, READ_SIZE))
                remaining -= len(piece)
                self._account(piece)
                if chunk_sha is not None:
                    chunk_sha.update(piece)
                    held.append(piece)
                else:
                    yield piece
            if spec.signed_chunks:
                assert chunk_sha is not None and spec.key is not None and spec.scope
                presented = _chunk_signature(extension)
                expected = sigv4.sign(
                    spec.key,
                    sigv4.chunk_string_to_sign(
                        spec.amz_date, spec.scope, previous, chunk_sha.hexdigest()
                    ),
                )
                if not sigv4.matches(expected, presented):
                    raise _refuse("SignatureDoesNotMatch", "a chunk signature does not match", 403)
                previous = presented
                for piece in held:
                    yield piece
            elif extension:
                raise _refuse("InvalidChunkSizeError", "an unsigned chunk carries a signature")
            if size == 0:
                break
            if await self._lines.line() != b"":
                raise _refuse("InvalidChunkSizeError", "a chunk is longer than its size")
        await self._trailers(previous)

    async def _trailers(self, previous: str) -> None:
        spec = self._spec
        lines: list[tuple[str, str]] = []
        while True:
            line = (await self._lines.line()).decode("latin-1")
            if not line:
                break
            if len(lines) > MAX_TRAILERS:
                raise _refuse("MalformedTrailerError", "too many trailer lines")
            name, sep, value = line.partition(":")
            if not sep:
                raise _refuse("MalformedTrailerError", "a trailer line is malformed")
            lines.append((name.strip().lower(), value.strip()))
        if not await self._lines.at_end():
            raise _refuse("IncompleteBody", "data after the final chunk")
        signature = [v for n, v in lines if n == "x-amz-trailer-signature"]
        fields = [(n, v) for n, v in lines if n != "x-amz-trailer-signature"]
        if spec.trailer is None:
            if lines:
                raise _refuse("MalformedTrailerError", "a trailer no x-amz-trailer announced")
            return
        if [n for n, _ in fields] != [spec.trailer]:
            raise _refuse("MalformedTrailerError", "the trailer is not the announced one")
        self.trailer_value = fields[0]
        if spec.mode == sigv4.STREAMING_SIGNED_TRAILER:
            assert spec.key is not None and spec.scope is not None
            canonical = "".join(f"{n}:{v}\n" for n, v in fields).encode()
            expected = sigv4.sign(
                spec.key,
                sigv4.trailer_string_to_sign(spec.amz_date, spec.scope, previous, canonical),
            )
            if len(signature) != 1 or not sigv4.matches(expected, signature[0]):
                raise _refuse("SignatureDoesNotMatch", "the trailer signature does not match", 403)
        elif signature:
            raise _refuse("MalformedTrailerError", "an unsigned trailer carries a signature")

    def _finish(self) -> None:
        spec = self._spec
        if spec.length is not None and self.decoded != spec.length:
            raise _refuse("IncompleteBody", "the body is not as long as declared")
        if self._sha is not None and not hmac.compare_digest(
            self._sha.hexdigest().encode(), spec.mode.encode()
        ):
            raise _refuse(
                "XAmzContentSHA256Mismatch",
                "the provided x-amz-content-sha256 does not match what was computed",
            )
        if self._header_sum is not None and spec.checksum is not None:
            _compare(spec.checksum[0], spec.checksum[1], self._header_sum)
        if self._trailer_sum is not None and self.trailer_value is not None:
            _compare(
                checksums.algorithm_of(spec.trailer or ""), self.trailer_value[1], self._trailer_sum
            )
        elif self._trailer_sum is not None:
            raise _refuse("MalformedTrailerError", "the announced trailer is missing")


def _is_hex(mode: str) -> bool:
    return len(mode) == 64 and sigv4.is_payload_hash(mode) and mode not in sigv4.STREAMING_MODES


def _compare(algorithm: str, presented: str, digest: checksums.Digest) -> None:
    computed = checksums.encode(digest.digest())
    if not hmac.compare_digest(computed.encode(), presented.encode()):
        raise _refuse(
            "BadDigest",
            f"the {algorithm.upper()} you specified did not match the calculated checksum",
        )


def _chunk_size(text: str) -> int:
    if not text or len(text) > 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise _refuse("InvalidChunkSizeError", "a chunk size is malformed")
    return int(text, 16)


def _chunk_signature(extension: str) -> str:
    name, _, value = extension.partition("=")
    if name != "chunk-signature" or len(value) != 64:
        raise _refuse("SignatureDoesNotMatch", "a chunk signature is missing or malformed", 403)
    return value

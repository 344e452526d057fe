"""The S3-compatible endpoint (DESIGN §7): verify, authorise, re-sign, relay.

One request: the node must be loaded (else 503 with ``Retry-After``); the SigV4 claims are
checked (:mod:`.sigv4`: scope, time, what is signed), the key id must be a live API key
(``Authority.grant``) and the signature must verify with its secret
(``Authority.key_secret``); the key must be a storage key whose access level allows the
operation (:mod:`.operations`); the bucket must be one of the repository's storage secrets.
Then the request is re-signed for the real bucket with the stored credential (botocore's
signer, :mod:`.upstream`), its body streamed through the checks of :mod:`.body`, and the
answer streamed back, listings rewritten to the virtual bucket (:mod:`.documents`).

Bounds (a key holder may be hostile too): a slot of the key's concurrency limit is taken
right after authentication (:func:`flashgate.gateway.concurrency.admit`; ``SlowDown`` when
none is left); every read of the body has an idle deadline (``body_timeout_s``, in
:mod:`.body`) and so has every write of a streamed answer (the connection is closed when
it passes). A client that goes away mid-request is logged at info and answered nothing
(status 499 in the access log).

Accounting for the server core: ``request["fg.grant"]`` once authenticated,
``request["fg.bytes_in"]`` and ``request["fg.bytes_out"]`` (body bytes), and
``request["fg.upstream_error"]`` when the upstream failed or refused the stored credential.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from flashgate.errors import S3Refused, SecretNotHeld
from flashgate.gateway import concurrency
from flashgate.gateway.authority import Authority, Grant
from flashgate.gateway.s3 import body, checksums, documents, operations, sigv4, upstream

#: The largest single PutObject / UploadPart S3 takes (5 GiB); other bodies much less.
MAX_OBJECT_BODY = 5 * 1024**3
MAX_OTHER_BODY = 16 * 1024**2
#: The largest listing (or other XML answer naming the bucket) read whole to be rewritten.
MAX_REWRITTEN = 16 * 1024**2
#: What an upstream error document is read up to (only its Code is kept).
MAX_ERROR_BODY = 64 * 1024
RELAY_CHUNK = 256 * 1024
#: An answer up to this size is read whole and sent in one write (headers and body).
SMALL_ANSWER = 64 * 1024
RETRY_AFTER_SECONDS = 5
#: The status logged for a request whose client went away (nginx's; never sent).
CLIENT_GONE = 499
#: Upstream error codes meaning the stored credential or endpoint is wrong (a 502 here,
#: never relayed: the client's own key is fine).
CREDENTIAL_CODES = frozenset(
    {
        "AuthorizationHeaderMalformed",
        "AuthorizationQueryParametersError",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "PermanentRedirect",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
        "TemporaryRedirect",
    }
)
_BODY_OPERATIONS = frozenset({"PutObject", "UploadPart"})
_UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
log = structlog.get_logger("flashgate.gateway.s3")


def claims(request: web.Request) -> bool:
    """Does the request carry AWS authentication (this gateway's to answer)? SigV4, and
    SigV2 too so that its client gets an S3 error saying to sign with SigV4."""
    authorization = request.headers.get("Authorization", "")
    query = request.query
    return (
        authorization.startswith((sigv4.ALGORITHM, "AWS "))
        or "X-Amz-Algorithm" in query
        or ("AWSAccessKeyId" in query and "Signature" in query)
    )


@dataclass(frozen=True, slots=True)
class _Request:
    """The parts of a request SigV4 and the routing need, decoded once."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]

    @classmethod
    def of(cls, request: web.Request) -> _Request:
        raw_path, _, raw_query = request.raw_path.partition("?")
        return cls(
            method=request.method,
            path=unquote(raw_path),
            query=sigv4.split_query(raw_query),
            headers=list(request.headers.items()),
        )

    def header(self, name: str) -> str | None:
        found = [v for n, v in self.headers if n.lower() == name]
        if len(found) > 1:
            raise S3Refused("InvalidRequest", 400, f"the {name} header is repeated")
        return found[0] if found else None


class S3Gateway:
    """Answers the S3 requests :func:`claims` recognises, with ``authority``'s grants and
    lent credentials; ``session`` reaches the upstreams."""

    def __init__(
        self,
        authority: Authority,
        session: aiohttp.ClientSession,
        *,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
        body_timeout_s: float = body.IDLE_TIMEOUT_S,
    ) -> None:
        self._authority = authority
        self._session = session
        self._region = region
        self._clock = clock
        #: How long a read of the client's body, or a write of an answer, may wait.
        self._io_timeout_s = body_timeout_s

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        request["fg.bytes_in"] = 0
        request["fg.bytes_out"] = 0
        try:
            return await self._handle(request, request_id)
        except S3Refused as refused:
            return self._error(request, refused, request_id)
        except (ConnectionError, aiohttp.ClientPayloadError) as gone:
            # the client went away: nothing to answer, and nothing wrong with the gateway
            log.info("s3 client went away", request_id=request_id, error=type(gone).__name__)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=CLIENT_GONE)
        except Exception as failed:  # a defect: an S3 error, never a traceback to the client
            log.error("s3 request failed", request_id=request_id, error=type(failed).__name__)
            internal = S3Refused("InternalError", 500, "we encountered an internal error")
            return self._error(request, internal, request_id)

    # ------------------------------------------------------------------ authentication

    def _authenticate(self, req: _Request) -> tuple[Grant, sigv4.Authorization, bytes]:
        authorization = req.header("authorization")
        presigned = any(n == "X-Amz-Algorithm" for n, _ in req.query)
        if (authorization or "").startswith("AWS ") or any(
            n == "AWSAccessKeyId" for n, _ in req.query
        ):
            raise S3Refused(
                "InvalidRequest",
                400,
                "Signature Version 2 is not supported; sign with AWS4-HMAC-SHA256 (s3v4)",
            )
        if authorization is not None and presigned:
            raise S3Refused("InvalidArgument", 400, "only one authentication mechanism is allowed")
        if authorization is not None:
            auth = sigv4.parse_header_auth(authorization, req.headers)
        elif presigned:
            auth = sigv4.parse_presigned(req.query, req.headers)
        else:
            raise S3Refused("AccessDenied", 403, "anonymous requests are not allowed")
        sigv4.check_claims(auth, req.headers, region=self._region, now=self._clock())
        key_id = auth.scope.key_id
        grant = self._authority.grant(key_id)
        if grant is None:
            raise _invalid_key()
        try:
            with self._authority.key_secret(key_id) as secret:
                key = sigv4.verify(auth, secret, req.method, req.path, req.query, req.headers)
        except SecretNotHeld:
            raise _invalid_key() from None
        return grant, auth, key

    # ------------------------------------------------------------------ the request

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        if not self._authority.ready():
            raise S3Refused("ServiceUnavailable", 503, "the node is still loading; retry")
        req = _Request.of(request)
        grant, auth, key = self._authenticate(req)
        request["fg.grant"] = grant
        try:
            concurrency.admit(grant)
        except concurrency.KeyBusy:
            raise S3Refused(
                "SlowDown", 503, "this access key has too many requests in flight; reduce your rate"
            ) from None
        if grant.scope != "storage":
            raise _denied()
        query = [
            (n, v)
            for n, v in req.query
            if not (auth.presigned and n.lower().startswith("x-amz-")) and n != "x-id"
        ]
        copy_source = req.header("x-amz-copy-source")
        op = operations.classify(req.method, req.path, query, copy_source is not None)
        if not operations.allows(grant.access, op.access):
            raise _denied()
        if op.name == "ListBuckets":
            names = self._authority.storage_names(grant.repo)
            return self._xml(request, documents.list_buckets(grant.repo, names), request_id)
        assert op.bucket is not None
        if op.bucket not in self._authority.storage_names(grant.repo):
            raise _denied()
        if op.name == "GetBucketLocation":
            return self._xml(request, documents.location(self._region), request_id)
        spec = self._body_spec(req, op, auth, key)
        streamed = spec is not None and spec.trailer is not None  # the checksum is in it
        headers = upstream.relayed_request_headers(
            req.headers, streamed=streamed, admin=grant.access == "admin"
        )
        try:
            with self._authority.storage(grant.repo, op.bucket) as storage:
                endpoint, signing_region = upstream.endpoint_of(storage)
                real_bucket = storage.bucket
                if copy_source is not None:
                    headers.append(
                        ("x-amz-copy-source", _copy_source(copy_source, op, real_bucket))
                    )
                trailer = spec is not None and spec.trailer is not None
                payload = upstream.payload_mode(spec.mode if spec else auth.payload_hash, trailer)
                if spec is not None and spec.trailer is not None:
                    encoding = _with_aws_chunked(headers)
                    headers = [(n, v) for n, v in headers if n != "content-encoding"]
                    headers += [
                        ("content-encoding", encoding),
                        ("x-amz-trailer", spec.trailer),
                        ("x-amz-decoded-content-length", str(spec.length)),
                        ("content-length", str(aws_chunked_length(spec.length or 0, spec.trailer))),
                    ]
                elif spec is not None:
                    headers.append(("content-length", str(spec.length)))
                url = upstream.url_of(endpoint, real_bucket, op.key, query)
                signed = upstream.sign(storage, req.method, url, headers, payload, signing_region)
        except SecretNotHeld:
            raise _denied() from None
        reader = (
            body.RequestBody(request.content, spec, idle_timeout=self._io_timeout_s)
            if spec is not None
            else None
        )
        return await self._relay(request, request_id, op, url, signed, reader, real_bucket, trailer)

    def _body_spec(
        self, req: _Request, op: operations.Operation, auth: sigv4.Authorization, key: bytes
    ) -> body.Spec | None:
        """How the body is read and checked; None for a request without one."""
        mode = auth.payload_hash
        length_text = req.header("content-length")
        chunked = mode in sigv4.STREAMING_MODES
        if req.method not in ("PUT", "POST") or op.name in ("CopyObject", "UploadPartCopy"):
            if chunked or (length_text not in (None, "0")):
                raise S3Refused("InvalidRequest", 400, f"{op.name} takes no body")
            if len(mode) == 64 and mode != sigv4.EMPTY_SHA256:
                raise S3Refused("XAmzContentSHA256Mismatch", 400, "the body is empty")
            return None
        limit = MAX_OBJECT_BODY if op.name in _BODY_OPERATIONS else MAX_OTHER_BODY
        if chunked:
            length_text = req.header("x-amz-decoded-content-length")
            if length_text is None:
                raise S3Refused(
                    "MissingContentLength", 411, "x-amz-decoded-content-length is required"
                )
        length = _length(length_text)
        if length is not None and length > limit:
            raise S3Refused("EntityTooLarge", 400, "the body is larger than allowed")
        if length is None and not chunked:
            raise S3Refused("MissingContentLength", 411, "a Content-Length is required")
        trailer = req.header("x-amz-trailer")
        if mode in (sigv4.STREAMING_UNSIGNED_TRAILER, sigv4.STREAMING_SIGNED_TRAILER):
            if trailer is None:
                raise S3Refused("InvalidRequest", 400, "x-amz-trailer is required")
            trailer = trailer.strip().lower()
            checksums.algorithm_of(trailer)
        elif trailer is not None:
            raise S3Refused("InvalidRequest", 400, "x-amz-trailer without a trailer mode")
        sums = [
            (checksums.algorithm_of(n), v.strip())
            for n, v in req.headers
            if n.lower().startswith(checksums.PREFIX)
            and n.lower()
            not in ("x-amz-checksum-algorithm", "x-amz-checksum-mode", "x-amz-checksum-type")
        ]
        if len(sums) > 1:
            raise S3Refused("InvalidRequest", 400, "more than one checksum header")
        return body.Spec(
            mode=mode,
            length=length,
            checksum=sums[0] if sums else None,
            trailer=trailer,
            key=key,
            amz_date=auth.amz_date,
            scope=auth.scope,
            seed=auth.signature,
        )

    # ------------------------------------------------------------------ relaying

    async def _relay(
        self,
        request: web.Request,
        request_id: str,
        op: operations.Operation,
        url: str,
        signed: dict[str, str],
        reader: body.RequestBody | None,
        real_bucket: str,
        trailer: bool,
    ) -> web.StreamResponse:
        data: AsyncIterator[bytes] | None = None
        if reader is not None:
            data = reader.pieces()
            if trailer:
                data = _aws_chunked(reader, data)
        try:
            async with self._session.request(
                request.method,
                URL(url, encoded=True),
                headers=signed,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding"),
                timeout=_UPSTREAM_TIMEOUT,
                read_bufsize=RELAY_CHUNK,
            ) as answer:
                if reader is not None:
                    request["fg.bytes_in"] = reader.bytes_in
                    if reader.failure is not None:
                        raise reader.failure
                return await self._answer(request, request_id, op, answer, real_bucket)
        except (aiohttp.ClientError, OSError, TimeoutError) as failed:
            if reader is not None:
                request["fg.bytes_in"] = reader.bytes_in
                if reader.failure is not None:
                    raise reader.failure from None
                if reader.client_failed:  # answered by handle(): the client went away
                    raise ConnectionResetError("the client's body ended early") from None
            request["fg.upstream_error"] = True
            raise S3Refused(
                "InternalError", 502, "the storage provider could not be reached"
            ) from failed

    async def _answer(
        self,
        request: web.Request,
        request_id: str,
        op: operations.Operation,
        answer: aiohttp.ClientResponse,
        real_bucket: str,
    ) -> web.StreamResponse:
        status = answer.status
        if status >= 300 and status != 304:
            raw = b"" if request.method == "HEAD" else await _read_all(answer, MAX_ERROR_BODY)
            code = documents.upstream_code(raw)
            if code in CREDENTIAL_CODES or status in (301, 302, 307, 308):
                request["fg.upstream_error"] = True
                raise S3Refused(
                    "InternalError", 502, "the storage provider refused the stored credential"
                )
            if status >= 500:
                request["fg.upstream_error"] = True
            if request.method == "HEAD":
                return web.Response(status=status, headers=self._base_headers(request_id))
            raise S3Refused(code or "InternalError", status, _generic_message(code, status))
        headers = CIMultiDict(upstream.relayed_response_headers(answer.headers.items()))
        if status == 200 and "Content-Range" in headers:
            status = 206  # some S3-compatible servers answer a range with 200
        if status == 206:  # a whole object's checksum does not describe a range of it
            for name in [n for n in headers if n.lower().startswith(checksums.PREFIX)]:
                headers.popall(name, None)
        headers.update(self._base_headers(request_id))
        if op.names_bucket and request.method != "HEAD":
            raw = await _read_all(answer, MAX_REWRITTEN + 1)
            if len(raw) > MAX_REWRITTEN:
                request["fg.upstream_error"] = True
                raise S3Refused("InternalError", 502, "the storage provider's answer is too large")
            location = f"/{op.bucket}/{op.key}" if op.key else f"/{op.bucket}"
            document = documents.rewrite_bucket(raw, real_bucket, op.bucket or "", location)
            headers.popall("Content-Length", None)
            request["fg.bytes_out"] = len(document)
            return web.Response(status=status, body=document, headers=headers)
        length = answer.content_length
        if request.method != "HEAD" and length is not None and length <= SMALL_ANSWER:
            # read whole: headers and body leave in one write
            small = await _read_all(answer, length)
            if len(small) != length:
                request["fg.upstream_error"] = True
                raise S3Refused("InternalError", 502, "the storage provider's answer was cut")
            request["fg.bytes_out"] = length
            headers.popall("Content-Length", None)
            return web.Response(status=status, body=small, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD" or status == 304:
            await response.write_eof()
            return response
        sent = 0
        try:
            async for piece in answer.content.iter_any():
                try:
                    async with asyncio.timeout(self._io_timeout_s):
                        await response.write(piece)
                except (TimeoutError, ConnectionError) as stuck:  # the client, not the upstream
                    log.info("s3 client stopped reading", request_id=request_id,
                             error=type(stuck).__name__)  # fmt: skip
                    request["fg.bytes_out"] = sent
                    if request.transport is not None:
                        request.transport.close()
                    return response
                sent += len(piece)
        except (aiohttp.ClientError, OSError, TimeoutError):
            request["fg.upstream_error"] = True
            request["fg.bytes_out"] = sent
            if request.transport is not None:
                request.transport.close()  # the client sees a short body, never a wrong one
            return response
        request["fg.bytes_out"] = sent
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ answers

    def _base_headers(self, request_id: str) -> dict[str, str]:
        return {"x-amz-request-id": request_id, "Server": "flashgate"}

    def _xml(self, request: web.Request, document: bytes, request_id: str) -> web.Response:
        request["fg.bytes_out"] = len(document)
        headers = self._base_headers(request_id)
        headers["Content-Type"] = "application/xml"
        return web.Response(status=200, body=document, headers=headers)

    def _error(self, request: web.Request, refused: S3Refused, request_id: str) -> web.Response:
        headers = self._base_headers(request_id)
        if refused.status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        if request.method == "HEAD":
            return web.Response(status=refused.status, headers=headers)
        headers["Content-Type"] = "application/xml"
        raw_path = request.raw_path.partition("?")[0]
        document = documents.error(refused.s3_code, refused.message, raw_path, request_id)
        request["fg.bytes_out"] = len(document)
        return web.Response(status=refused.status, body=document, headers=headers)


async def _read_all(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    """The upstream's body up to ``limit`` bytes (a read returns what has arrived)."""
    out = bytearray()
    while len(out) < limit:
        piece = await answer.content.read(limit - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _invalid_key() -> S3Refused:
    return S3Refused("InvalidAccessKeyId", 403, "the access key id does not exist in our records")


def _denied() -> S3Refused:
    return S3Refused("AccessDenied", 403, "access denied")


def _generic_message(code: str | None, status: int) -> str:
    if code == "NoSuchKey":
        return "the specified key does not exist"
    if code == "NoSuchBucket":
        return "the specified bucket does not exist"
    if code == "NoSuchUpload":
        return "the specified multipart upload does not exist"
    return f"the storage provider answered {status}" + (f" ({code})" if code else "")


def _length(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 15:
        raise S3Refused("InvalidArgument", 400, "a content length is malformed")
    return int(text)


def _with_aws_chunked(headers: list[tuple[str, str]]) -> str:
    existing = [v for n, v in headers if n == "content-encoding"]
    return ",".join([*existing, "aws-chunked"])


def _copy_source(value: str, op: operations.Operation, real_bucket: str) -> str:
    """``x-amz-copy-source`` naming the virtual bucket, rewritten to the real one; a copy
    from another bucket is refused (a key reaches only its own repository's buckets, and
    the upstream credential only its own bucket)."""
    raw, _, version = value.strip().partition("?")
    bucket, _, key = unquote(raw).lstrip("/").partition("/")
    if bucket != op.bucket or not key:
        raise S3Refused("AccessDenied", 403, "a copy must stay within one bucket")
    operations.check_key(key)
    rewritten = f"/{sigv4.uri_encode(real_bucket)}/{sigv4.uri_encode(key, keep_slash=True)}"
    if version:
        name, _, version_id = version.partition("=")
        if name != "versionId":
            raise S3Refused("InvalidArgument", 400, "x-amz-copy-source is malformed")
        rewritten += "?versionId=" + quote(unquote(version_id), safe="")
    return rewritten


#: The chunk size of a body re-sent aws-chunked (the encoded length is known in advance).
UPSTREAM_CHUNK = 64 * 1024


def aws_chunked_length(decoded: int, trailer: str) -> int:
    """The encoded length of ``decoded`` bytes in :data:`UPSTREAM_CHUNK` chunks with the
    checksum trailer ``trailer`` (its base64 value has a fixed length per algorithm)."""
    full, rest = divmod(decoded, UPSTREAM_CHUNK)
    size = full * (len(f"{UPSTREAM_CHUNK:x}") + 4 + UPSTREAM_CHUNK)
    if rest:
        size += len(f"{rest:x}") + 4 + rest
    digest = len(checksums.new(checksums.algorithm_of(trailer)).digest())
    return size + len("0\r\n") + len(trailer) + 1 + 4 * ((digest + 2) // 3) + 4


async def _aws_chunked(
    reader: body.RequestBody, pieces: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The decoded pieces aws-chunked again in :data:`UPSTREAM_CHUNK` chunks, ending with
    the verified trailer (sent only once the body passed every check)."""
    buffer = bytearray()
    async for piece in pieces:
        buffer += piece
        while len(buffer) >= UPSTREAM_CHUNK:
            yield b"%x\r\n%s\r\n" % (UPSTREAM_CHUNK, buffer[:UPSTREAM_CHUNK])
            del buffer[:UPSTREAM_CHUNK]
    if buffer:
        yield b"%x\r\n%s\r\n" % (len(buffer), buffer)
    assert reader.trailer_value is not None
    name, value = reader.trailer_value
    yield f"0\r\n{name}:{value}\r\n\r\n".encode()

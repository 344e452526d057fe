"""SigV4 verification against botocore's signer: whatever botocore signs verifies, any
change to what was signed is refused; presigned URLs; the strict claims; aws-chunked bodies
(signed chunks computed here independently, trailer checksums by botocore's own classes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpchecksum import Crc32Checksum, CrtCrc32cChecksum, CrtCrc64NvmeChecksum
from botocore.utils import percent_encode_sequence
from hypothesis import given
from hypothesis import strategies as st

from flashgate.errors import S3Refused
from flashgate.gateway.s3 import body, documents, operations, sigv4

KEY_ID = "fgk_abcdefghijklmnopqrstuvwx"
SECRET = "fgs_" + "A" * 43
HOST = "gateway.example:8443"

# --------------------------------------------------------------------------- helpers


def botocore_signed(
    method: str,
    key: str,
    params: dict[str, str],
    headers: dict[str, str],
    payload: str = sigv4.UNSIGNED_PAYLOAD,
    region: str = "us-east-1",
    secret: str = SECRET,
) -> AWSRequest:
    query = percent_encode_sequence(params) if params else ""
    url = f"https://{HOST}/bucket/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
    request = AWSRequest(
        method=method, url=url, headers={**headers, "X-Amz-Content-SHA256": payload}
    )
    S3SigV4Auth(Credentials(KEY_ID, secret), "s3", region).add_auth(request)
    return request


def parts(request: AWSRequest) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    split = urlsplit(request.url)
    from urllib.parse import unquote

    headers = [(k, v) for k, v in request.headers.items()]
    headers.append(("Host", HOST))
    return unquote(split.path), sigv4.split_query(split.query), headers


def verify_request(request: AWSRequest, *, now: float | None = None, secret: str = SECRET) -> bytes:
    path, query, headers = parts(request)
    presigned = any(n == "X-Amz-Algorithm" for n, _ in query)
    if presigned:
        auth = sigv4.parse_presigned(query, headers)
    else:
        auth = sigv4.parse_header_auth(request.headers["Authorization"], headers)
    sigv4.check_claims(auth, headers, region="us-east-1", now=now or time.time())
    return sigv4.verify(auth, secret.encode(), request.method, path, query, headers)


def code_of(call: object) -> str:
    with pytest.raises(S3Refused) as refused:
        call()  # type: ignore[operator]
    return refused.value.s3_code


# --------------------------------------------------------------------------- botocore agreement

keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("/ +%?&=#~!*'()"),
    min_size=1,
    max_size=40,
)
query_names = st.sampled_from(
    ["prefix", "delimiter", "max-keys", "versionId", "start-after", "x-y"]
)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
meta = st.dictionaries(
    st.from_regex(r"x-amz-meta-[a-z0-9]{1,8}", fullmatch=True),
    st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(lambda v: v.strip() or "v"),
    max_size=3,
)


@given(
    method=st.sampled_from(["GET", "PUT", "HEAD", "DELETE", "POST"]),
    key=keys,
    params=st.dictionaries(query_names, values, max_size=4),
    headers=meta,
    payload=st.sampled_from(
        [sigv4.UNSIGNED_PAYLOAD, sigv4.STREAMING_UNSIGNED_TRAILER, hashlib.sha256(b"x").hexdigest()]
    ),
)
def test_every_request_botocore_signs_verifies(method, key, params, headers, payload) -> None:
    request = botocore_signed(method, key, params, headers, payload)
    assert len(verify_request(request)) == 32


@given(key=keys, params=st.dictionaries(query_names, values, max_size=3), data=st.data())
def test_any_change_to_what_was_signed_is_refused(key, params, data) -> None:
    request = botocore_signed("GET", key, params, {"x-amz-meta-a": "b"})
    path, query, headers = parts(request)
    auth = sigv4.parse_header_auth(request.headers["Authorization"], headers)
    change = data.draw(st.sampled_from(["method", "path", "query", "header", "secret"]))
    secret = SECRET.encode()
    method = "PUT" if change == "method" else "GET"
    if change == "path":
        path += "x"
    if change == "query":
        query = [*query, ("prefix2", "x")]
    if change == "header":
        headers = [(n, v + "x" if n.lower() == "x-amz-meta-a" else v) for n, v in headers]
    if change == "secret":
        secret = b"fgs_" + b"B" * 43
    assert (
        code_of(lambda: sigv4.verify(auth, secret, method, path, query, headers))
        == "SignatureDoesNotMatch"
    )


@given(key=keys, params=st.dictionaries(query_names, values, max_size=3))
def test_presigned_urls_botocore_makes_verify(key, params) -> None:
    query = percent_encode_sequence(params) if params else ""
    url = f"https://{HOST}/bucket/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
    request = AWSRequest(method="GET", url=url, headers={})
    S3SigV4QueryAuth(Credentials(KEY_ID, SECRET), "s3", "us-east-1", expires=600).add_auth(request)
    verify_request(request)


def test_canonical_request_is_botocores() -> None:
    request = AWSRequest(
        method="PUT",
        url=f"https://{HOST}/bucket/a%20b/%E2%82%AC?uploadId=x%2By&partNumber=2",
        headers={"X-Amz-Content-SHA256": sigv4.UNSIGNED_PAYLOAD, "x-amz-meta-k": "  a   b "},
    )
    signer = S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1")
    request.context["timestamp"] = "20260101T000000Z"
    signer._modify_request_before_signing(request)
    expected = signer.canonical_request(request)
    path, query, headers = parts(request)
    signed = tuple(sorted(signer.headers_to_sign(request)))
    payload = request.headers["X-Amz-Content-SHA256"]
    ours = sigv4.canonical_request("PUT", path, query, headers, signed, payload)
    assert ours == expected


# --------------------------------------------------------------------------- strict claims


def test_claims_refusals() -> None:
    request = botocore_signed("GET", "k", {}, {})
    _, _, headers = parts(request)
    auth = sigv4.parse_header_auth(request.headers["Authorization"], headers)
    now = time.time()
    check = sigv4.check_claims
    assert code_of(lambda: check(auth, headers, region="eu-west-3", now=now)) == (
        "AuthorizationHeaderMalformed"
    )
    assert code_of(lambda: check(auth, headers, region="us-east-1", now=now + 16 * 60)) == (
        "RequestTimeTooSkewed"
    )
    assert code_of(lambda: check(auth, headers, region="us-east-1", now=now - 16 * 60)) == (
        "RequestTimeTooSkewed"
    )
    unsigned = [*headers, ("X-Amz-Meta-Sneaky", "1")]
    assert code_of(lambda: check(auth, unsigned, region="us-east-1", now=now)) == "AccessDenied"
    wrong_service = botocore_signed("GET", "k", {}, {})
    header = wrong_service.headers["Authorization"].replace("/s3/", "/sts/")
    other = sigv4.parse_header_auth(header, headers)
    assert code_of(lambda: check(other, headers, region="us-east-1", now=now)) == (
        "AuthorizationHeaderMalformed"
    )


def test_host_must_be_signed_and_headers_sorted() -> None:
    request = botocore_signed("GET", "k", {}, {})
    _, _, headers = parts(request)
    header = request.headers["Authorization"]
    no_host = header.replace("SignedHeaders=host;", "SignedHeaders=")
    auth = sigv4.parse_header_auth(no_host, headers)
    assert (
        code_of(lambda: sigv4.check_claims(auth, headers, region="us-east-1", now=time.time()))
        == "AccessDenied"
    )
    unsorted = header.replace(
        "SignedHeaders=host;x-amz-content-sha256", "SignedHeaders=x-amz-content-sha256;host"
    )
    assert (
        code_of(lambda: sigv4.parse_header_auth(unsorted, headers))
        == "AuthorizationHeaderMalformed"
    )


def test_presign_expiry_and_bounds() -> None:
    url = f"https://{HOST}/bucket/k"
    request = AWSRequest(method="GET", url=url, headers={})
    S3SigV4QueryAuth(Credentials(KEY_ID, SECRET), "s3", "us-east-1", expires=60).add_auth(request)
    now = time.time()
    verify_request(request, now=now + 30)
    assert code_of(lambda: verify_request(request, now=now + 120)) == "AccessDenied"
    long = AWSRequest(method="GET", url=url, headers={})
    S3SigV4QueryAuth(
        Credentials(KEY_ID, SECRET), "s3", "us-east-1", expires=8 * 24 * 3600
    ).add_auth(long)
    assert code_of(lambda: verify_request(long)) == "AuthorizationQueryParametersError"


def test_signing_key_is_the_documented_chain() -> None:
    """AWS's published example key derivation (secret ``wJalr...EXAMPLEKEY``)."""
    scope = sigv4.Scope("AKIDEXAMPLE", "20150830", "us-east-1", "iam")
    key = sigv4.signing_key(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", scope)
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"


# --------------------------------------------------------------------------- aws-chunked bodies


class _Stream:
    def __init__(self, data: bytes, piece: int = 7000) -> None:
        self._data, self._piece = data, piece

    async def readany(self) -> bytes:
        out, self._data = self._data[: self._piece], self._data[self._piece :]
        return out


def signed_chunks(
    data: bytes,
    key: bytes,
    amz_date: str,
    scope: sigv4.Scope,
    seed: str,
    size: int,
    trailer: tuple[str, str] | None = None,
) -> bytes:
    """aws-chunked with chained chunk signatures, written from the AWS documentation."""
    out, previous = bytearray(), seed
    pieces = [data[i : i + size] for i in range(0, len(data), size)] + [b""]
    for piece in pieces:
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                amz_date,
                scope.text,
                previous,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(piece).hexdigest(),
            ]
        )
        previous = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
        out += b"%x;chunk-signature=%s\r\n" % (len(piece), previous.encode())
        if piece:
            out += piece + b"\r\n"
    if trailer is None:
        return bytes(out + b"\r\n")
    name, value = trailer
    line = f"{name}:{value}\n".encode()
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256-TRAILER",
            amz_date,
            scope.text,
            previous,
            hashlib.sha256(line).hexdigest(),
        ]
    )
    signature = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    return bytes(out + f"{name}:{value}\r\nx-amz-trailer-signature:{signature}\r\n\r\n".encode())


def unsigned_trailer(data: bytes, name: str, value: str, size: int = 8192) -> bytes:
    out = bytearray()
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return bytes(out + f"0\r\n{name}:{value}\r\n\r\n".encode())


async def drain(reader: body.RequestBody) -> bytes:
    return b"".join([piece async for piece in reader.pieces()])


SCOPE = sigv4.Scope(KEY_ID, "20260101", "us-east-1", "s3")
DATE = "20260101T000000Z"
SKEY = sigv4.signing_key(SECRET.encode(), SCOPE)
SEED = "f" * 64
DATA = bytes(range(256)) * 300


def spec(mode: str, **kw: object) -> body.Spec:
    return body.Spec(
        mode=mode, length=len(DATA), key=SKEY, amz_date=DATE, scope=SCOPE, seed=SEED, **kw
    )  # type: ignore[arg-type]


def test_signed_chunks_decode_and_a_changed_byte_is_refused() -> None:
    encoded = signed_chunks(DATA, SKEY, DATE, SCOPE, SEED, 8192)
    reader = body.RequestBody(_Stream(encoded), spec(sigv4.STREAMING_SIGNED))
    assert asyncio.run(drain(reader)) == DATA
    assert reader.bytes_in == len(encoded)
    tampered = bytearray(encoded)
    tampered[9000] ^= 1
    reader = body.RequestBody(_Stream(bytes(tampered)), spec(sigv4.STREAMING_SIGNED))
    assert code_of(lambda: asyncio.run(drain(reader))) == "SignatureDoesNotMatch"


def test_signed_trailer() -> None:
    crc = Crc32Checksum()
    crc.update(DATA)
    value = base64.b64encode(crc.digest()).decode()
    encoded = signed_chunks(DATA, SKEY, DATE, SCOPE, SEED, 8192, ("x-amz-checksum-crc32", value))
    mode = sigv4.STREAMING_SIGNED_TRAILER
    reader = body.RequestBody(_Stream(encoded), spec(mode, trailer="x-amz-checksum-crc32"))
    assert asyncio.run(drain(reader)) == DATA
    forged = encoded.replace(value.encode(), base64.b64encode(b"\0\0\0\0"))
    reader = body.RequestBody(_Stream(forged), spec(mode, trailer="x-amz-checksum-crc32"))
    assert code_of(lambda: asyncio.run(drain(reader))) == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("crc32", Crc32Checksum),
        ("crc32c", CrtCrc32cChecksum),
        ("crc64nvme", CrtCrc64NvmeChecksum),
        ("sha1", lambda: hashlib.sha1()),  # noqa: S324 - the S3 checksum, not a signature
        ("sha256", lambda: hashlib.sha256()),
    ],
)
def test_trailer_checksums_as_botocore_computes_them(algorithm, digest) -> None:
    computed = digest()
    computed.update(DATA)
    value = base64.b64encode(computed.digest()).decode()
    name = f"x-amz-checksum-{algorithm}"
    mode = sigv4.STREAMING_UNSIGNED_TRAILER
    reader = body.RequestBody(
        _Stream(unsigned_trailer(DATA, name, value)), spec(mode, trailer=name)
    )
    assert asyncio.run(drain(reader)) == DATA
    assert reader.trailer_value == (name, value)
    wrong = bytearray(DATA)
    wrong[5] ^= 0xFF
    reader = body.RequestBody(
        _Stream(unsigned_trailer(bytes(wrong), name, value)), spec(mode, trailer=name)
    )
    assert code_of(lambda: asyncio.run(drain(reader))) == "BadDigest"


@given(
    data=st.binary(max_size=50_000),
    chunk=st.integers(1, 20_000),
    piece=st.integers(1, 9_000),
    signed=st.booleans(),
)
def test_aws_chunked_decodes_whatever_the_boundaries(data, chunk, piece, signed) -> None:
    crc = Crc32Checksum()
    crc.update(data)
    value = base64.b64encode(crc.digest()).decode()
    name = "x-amz-checksum-crc32"
    if signed:
        encoded = signed_chunks(data, SKEY, DATE, SCOPE, SEED, chunk, (name, value))
        mode = sigv4.STREAMING_SIGNED_TRAILER
    else:
        encoded = unsigned_trailer(data, name, value, chunk)
        mode = sigv4.STREAMING_UNSIGNED_TRAILER
    spec_ = body.Spec(
        mode=mode, length=len(data), trailer=name, key=SKEY, amz_date=DATE, scope=SCOPE, seed=SEED
    )
    reader = body.RequestBody(_Stream(encoded, piece), spec_)
    assert asyncio.run(drain(reader)) == data
    assert reader.trailer_value == (name, value)


def test_the_last_piece_is_held_back_until_the_checks_pass() -> None:
    """A body that fails a check never reaches its end upstream."""
    wrong = hashlib.sha256(b"other").hexdigest()
    reader = body.RequestBody(_Stream(DATA), body.Spec(mode=wrong, length=len(DATA)))
    seen: list[bytes] = []

    async def consume() -> None:
        async for piece in reader.pieces():
            seen.append(piece)

    assert code_of(lambda: asyncio.run(consume())) == "XAmzContentSHA256Mismatch"
    assert sum(map(len, seen)) < len(DATA)
    assert reader.failure is not None


def test_a_short_or_long_body_is_refused() -> None:
    name, value = "x-amz-checksum-crc32", "AAAAAA=="
    encoded = unsigned_trailer(DATA, name, value)
    short = body.Spec(mode=sigv4.STREAMING_UNSIGNED_TRAILER, length=len(DATA) + 1, trailer=name)
    assert code_of(lambda: asyncio.run(drain(body.RequestBody(_Stream(encoded), short)))) in (
        "IncompleteBody",
        "BadDigest",
    )
    extra = body.Spec(mode=sigv4.STREAMING_UNSIGNED_TRAILER, length=len(DATA), trailer=name)
    reader = body.RequestBody(_Stream(encoded + b"junk"), extra)
    assert code_of(lambda: asyncio.run(drain(reader))) == "IncompleteBody"


# --------------------------------------------------------------------------- operations, documents


@pytest.mark.parametrize(
    ("method", "path", "query", "copy", "name", "access"),
    [
        ("GET", "/", [], False, "ListBuckets", "read"),
        ("GET", "/b", [("list-type", "2")], False, "ListObjectsV2", "read"),
        ("HEAD", "/b/k", [], False, "HeadObject", "read"),
        ("GET", "/b/k", [], False, "GetObject", "read"),
        ("PUT", "/b/k", [], False, "PutObject", "write"),
        ("PUT", "/b/k", [], True, "CopyObject", "write"),
        ("DELETE", "/b/k", [], False, "DeleteObject", "write"),
        ("POST", "/b/k", [("uploads", "")], False, "CreateMultipartUpload", "write"),
        ("PUT", "/b/k", [("partNumber", "1"), ("uploadId", "u")], False, "UploadPart", "write"),
        ("POST", "/b/k", [("uploadId", "u")], False, "CompleteMultipartUpload", "write"),
        ("DELETE", "/b/k", [("uploadId", "u")], False, "AbortMultipartUpload", "write"),
        ("GET", "/b/k", [("uploadId", "u")], False, "ListParts", "read"),
        ("POST", "/b", [("delete", "")], False, "DeleteObjects", "write"),
        ("PUT", "/b", [("versioning", "")], False, "PutBucket.versioning", "admin"),
        ("GET", "/b", [("versioning", "")], False, "GetBucket.versioning", "read"),
    ],
)
def test_operations_and_their_access(method, path, query, copy, name, access) -> None:
    op = operations.classify(method, path, query, copy)
    assert (op.name, op.access) == (name, access)


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("PUT", "/b", []),  # CreateBucket
        ("DELETE", "/b", []),  # DeleteBucket
        ("PUT", "/b", [("policy", "")]),
        ("PUT", "/b/k", [("acl", "")]),
        ("GET", "/", [("x", "")]),
        ("PATCH", "/b/k", []),
    ],
)
def test_unsupported_operations_are_refused(method, path, query) -> None:
    assert code_of(lambda: operations.classify(method, path, query, False)) == "NotImplemented"


@pytest.mark.parametrize("path", ["/b/../other/k", "/b/a/./k", "/b/..", "/b/a/.."])
def test_dot_segments_are_refused(path) -> None:
    assert code_of(lambda: operations.classify("GET", path, [], False)) == "InvalidArgument"


def test_access_levels_are_ordered() -> None:
    assert operations.allows("admin", "write") and operations.allows("write", "read")
    assert not operations.allows("read", "write") and not operations.allows("write", "admin")
    assert not operations.allows("openai", "read")


def test_listings_name_the_virtual_bucket() -> None:
    real = b"<ListBucketResult><Name>real-b</Name><Contents><Key>real-b/x</Key></Contents>"
    out = documents.rewrite_bucket(real + b"</ListBucketResult>", "real-b", "photos", "/photos")
    assert b"<Name>photos</Name>" in out and b"<Key>real-b/x</Key>" in out
    complete = b"<R><Location>http://up/real-b/k</Location><Bucket>real-b</Bucket></R>"
    out = documents.rewrite_bucket(complete, "real-b", "photos", "/photos/k")
    assert out == b"<R><Location>/photos/k</Location><Bucket>photos</Bucket></R>"
    upload = (
        b"<Upload><Key>k</Key><Initiator><ID>arn:aws:iam::123456789012:user/storage</ID>"
        b"</Initiator><Owner><ID>abc</ID></Owner></Upload>"
    )
    assert documents.rewrite_bucket(upload, "real-b", "photos", "/photos") == (
        b"<Upload><Key>k</Key></Upload>"
    )


def test_an_upstream_error_is_reduced_to_its_code() -> None:
    raw = b"<Error><Code>NoSuchKey</Code><Message>in real-b</Message><HostId>x</HostId></Error>"
    assert documents.upstream_code(raw) == "NoSuchKey"
    assert documents.upstream_code(b"garbage") is None

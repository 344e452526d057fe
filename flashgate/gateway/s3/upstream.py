"""The request to the real bucket: its address, the headers relayed, and botocore's SigV4
signature with the stored credential.

Path-style addressing on the storage's endpoint (``https://s3.REGION.amazonaws.com`` for
AWS; a GCS HMAC key goes to ``https://storage.googleapis.com``, region ``auto``). Only
headers on an allow list are relayed to the upstream, and only headers on another are
relayed back: ACL grants, an expected bucket owner, the upstream's request ids, KMS key
ARNs or redirects never cross. Object-lock headers (a retention, a legal hold) are relayed
for an admin key only: a COMPLIANCE retention placed with a write key could not be removed
by the bucket's owner before it expires, so for a write key they are refused
(``AccessDenied``); the ``?retention`` and ``?legal-hold`` subresources are not supported.

The payload hash the upstream signature names is chosen by :func:`payload_mode`:

- a client's hex SHA-256 is passed on (the upstream checks the body too);
- a body the client sent aws-chunked with a checksum trailer is sent on aws-chunked
  (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``, HTTP chunked) with the same, verified, trailer:
  the upstream keeps the checksum (S3 requires part checksums when the multipart upload
  declared an algorithm, as s3transfer does);
- otherwise (``UNSIGNED-PAYLOAD``, or signed chunks without a trailer, decoded here)
  ``UNSIGNED-PAYLOAD`` with the decoded length. Computing a digest first would need the
  whole body; the gateway has checked the client's signatures itself, and holds the body's
  last bytes back until they pass (:mod:`.body`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from flashgate.errors import S3Refused
from flashgate.events.values import GcsStorage, S3Storage, StorageValue
from flashgate.gateway.s3 import checksums, sigv4

#: Request headers relayed to the upstream (lower case); plus ``x-amz-meta-*`` and the
#: ``x-amz-checksum-*`` headers of a body that is not streamed.
REQUEST_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-language",
        "content-md5",
        "content-type",
        "expires",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "range",
        "x-amz-checksum-algorithm",
        "x-amz-checksum-mode",
        "x-amz-checksum-type",
        "x-amz-copy-source-if-match",
        "x-amz-copy-source-if-modified-since",
        "x-amz-copy-source-if-none-match",
        "x-amz-copy-source-if-unmodified-since",
        "x-amz-copy-source-range",
        "x-amz-metadata-directive",
        "x-amz-mp-object-size",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-server-side-encryption-customer-key",
        "x-amz-server-side-encryption-customer-key-md5",
        "x-amz-storage-class",
        "x-amz-tagging",
        "x-amz-tagging-directive",
        "x-amz-website-redirect-location",
    }
)
#: Headers that would act on the real bucket's permissions: refused, not dropped.
REFUSED_HEADERS = frozenset(
    {
        "x-amz-acl",
        "x-amz-grant-full-control",
        "x-amz-grant-read",
        "x-amz-grant-read-acp",
        "x-amz-grant-write",
        "x-amz-grant-write-acp",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-context",
        "x-amz-bucket-object-lock-enabled",
        "x-amz-object-ownership",
    }
)
#: Headers that lock an object against deletion: relayed for an admin key only.
LOCK_HEADERS = frozenset(
    {
        "x-amz-object-lock-legal-hold",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
    }
)
#: Response headers relayed to the client; plus ``x-amz-meta-*`` and ``x-amz-checksum-*``.
RESPONSE_HEADERS = frozenset(
    {
        "accept-ranges",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "expires",
        "last-modified",
        "x-amz-checksum-type",
        "x-amz-copy-source-version-id",
        "x-amz-delete-marker",
        "x-amz-mp-parts-count",
        "x-amz-object-lock-legal-hold",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-server-side-encryption-customer-key-md5",
        "x-amz-storage-class",
        "x-amz-tagging-count",
        "x-amz-version-id",
        "x-amz-website-redirect-location",
    }
)


# botocore's signer logs each canonical request at DEBUG: the real bucket's path and host.
logging.getLogger("botocore.auth").setLevel(logging.INFO)


class _Signer(S3SigV4Auth):  # type: ignore[misc]  # botocore has no types
    """botocore's S3 signer with the payload hash chosen here (:func:`payload_mode`)."""

    def __init__(self, credentials: Credentials, region: str, payload: str) -> None:
        super().__init__(credentials, "s3", region)
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def endpoint_of(storage: StorageValue) -> tuple[str, str]:
    """(endpoint URL without a trailing slash, signing region) of a storage value."""
    if isinstance(storage, S3Storage):
        endpoint = storage.endpoint or f"https://s3.{storage.region}.amazonaws.com"
        return endpoint.rstrip("/"), storage.region
    if isinstance(storage, GcsStorage):
        endpoint = storage.endpoint or "https://storage.googleapis.com"
        return endpoint.rstrip("/"), storage.region or "auto"
    raise S3Refused("NotImplemented", 501, "this bucket's storage provider has no S3 interface")


def url_of(endpoint: str, bucket: str, key: str | None, query: Sequence[tuple[str, str]]) -> str:
    """Path-style URL, encoded as SigV4 canonicalises it (so the signature and the request
    agree byte for byte)."""
    path = f"/{sigv4.uri_encode(bucket)}"
    if key is not None:
        path += "/" + sigv4.uri_encode(key, keep_slash=True)
    query_text = sigv4.canonical_query(query)
    return endpoint + path + (f"?{query_text}" if query_text else "")


def relayed_request_headers(
    headers: Iterable[tuple[str, str]], *, streamed: bool, admin: bool = False
) -> list[tuple[str, str]]:
    """The client's headers the upstream gets (refusing those that change permissions).
    ``streamed``: the body's checksum travels in an aws-chunked trailer, not a header;
    ``admin``: the key is an admin key (object-lock headers are relayed)."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in REFUSED_HEADERS:
            raise S3Refused("NotImplemented", 501, f"{lname} is not supported through the gateway")
        if lname in LOCK_HEADERS:
            if not admin:
                raise S3Refused("AccessDenied", 403, f"{lname} needs an admin key")
            out.append((lname, value))
        elif lname in REQUEST_HEADERS or lname.startswith("x-amz-meta-"):
            out.append((lname, value))
        elif lname.startswith(checksums.PREFIX) and not streamed:
            checksums.algorithm_of(lname)
            out.append((lname, value))
        elif lname == "content-encoding":
            rest = ",".join(p.strip() for p in value.split(",") if p.strip() != "aws-chunked")
            if rest:
                out.append((lname, rest))
    return out


def relayed_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers the client gets; ``x-amz-meta-*`` names in lower case, as S3
    answers them (some S3-compatible servers capitalise them)."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            out.append((lname, value))
        elif lname in RESPONSE_HEADERS or lname.startswith(checksums.PREFIX):
            out.append((name, value))
    return out


def sign(
    storage: StorageValue,
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]],
    payload: str,
    region: str,
) -> dict[str, str]:
    """The headers of the upstream request, signed by botocore with ``storage``'s key."""
    credentials = Credentials(storage.access_key_id, storage.secret_access_key)
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    _Signer(credentials, region, payload).add_auth(request)
    return dict(request.headers.items())


def payload_mode(client_mode: str, trailer: bool) -> str:
    """The payload hash the upstream signature names (see the module's docstring)."""
    if sigv4.is_payload_hash(client_mode) and client_mode not in sigv4.STREAMING_MODES:
        return client_mode  # a hex SHA-256 or UNSIGNED-PAYLOAD
    return sigv4.STREAMING_UNSIGNED_TRAILER if trailer else sigv4.UNSIGNED_PAYLOAD

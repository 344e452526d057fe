"""Which S3 operation a path-style request is, and the access level it needs.

``/`` is the service (ListBuckets), ``/BUCKET`` a virtual bucket, ``/BUCKET/KEY`` an object.
The query's subresources (``uploads``, ``uploadId``, ``list-type``...) tell operations on the
same path apart. Access levels are ordered: ``read`` (GET, HEAD, listings) < ``write`` (also
PUT, DELETE, copy, multipart) < ``admin`` (also the bucket configuration this gateway
relays: ``versioning``, ``tagging``, ``cors``, ``lifecycle``). Anything else is refused
(``NotImplemented``) rather than relayed: an ACL or a bucket policy would act on the real
bucket behind the repository's back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flashgate.errors import S3Refused

LEVELS = {"read": 0, "write": 1, "admin": 2}
#: Bucket configuration an admin key may change (read with a read key).
BUCKET_CONFIG = frozenset({"versioning", "tagging", "cors", "lifecycle"})
#: Query parameters relayed as they are (not subresources).
PARAMETERS = frozenset(
    {
        "list-type",
        "continuation-token",
        "delimiter",
        "encoding-type",
        "fetch-owner",
        "max-keys",
        "prefix",
        "start-after",
        "marker",
        "max-uploads",
        "key-marker",
        "upload-id-marker",
        "max-parts",
        "part-number-marker",
        "partNumber",
        "uploadId",
        "versionId",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "x-id",
    }
)


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    access: str  # read|write|admin
    bucket: str | None
    key: str | None
    #: Does the answer name the bucket (its XML is rewritten to the virtual name)?
    names_bucket: bool = False


def _refuse(message: str) -> S3Refused:
    return S3Refused("NotImplemented", 501, message)


def split_path(path: str) -> tuple[str | None, str | None]:
    """(bucket, key) of a decoded path-style path; ``None`` where absent."""
    if not path.startswith("/"):
        raise S3Refused("InvalidURI", 400, "the path must start with /")
    bucket, _, key = path[1:].partition("/")
    if key:
        check_key(key)
    return (bucket or None), (key or None)


def check_key(key: str) -> None:
    """Refuse a key with a ``.`` or ``..`` segment: S3 takes it literally, but a proxy or
    an S3-compatible server that normalises paths would take it out of the bucket, and
    the stored credential may reach other buckets."""
    if any(segment in (".", "..") for segment in key.split("/")):
        raise S3Refused("InvalidArgument", 400, "keys with . or .. segments are not supported here")


def classify(method: str, path: str, query: Sequence[tuple[str, str]], copy: bool) -> Operation:
    """The operation of a request (``copy``: an ``x-amz-copy-source`` header is present).
    Presigned-URL parameters (``X-Amz-*``) are left out of ``query`` by the caller."""
    bucket, key = split_path(path)
    names = {n for n, _ in query}
    sub = names - PARAMETERS
    if method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        raise _refuse(f"method {method[:16]} is not supported")
    if bucket is None:
        if method == "GET" and not names:
            return Operation("ListBuckets", "read", None, None)
        raise _refuse("only ListBuckets is supported on the service")
    if key is None:
        return _bucket_operation(method, bucket, names, sub)
    return _object_operation(method, bucket, key, names, sub, copy)


def _bucket_operation(method: str, bucket: str, names: set[str], sub: set[str]) -> Operation:
    if not sub:
        if method == "GET":
            if "uploadId" in names or "partNumber" in names:
                raise _refuse("that parameter is for objects")
            name = "ListObjectsV2" if "list-type" in names else "ListObjects"
            return Operation(name, "read", bucket, None, names_bucket=True)
        if method == "HEAD":
            return Operation("HeadBucket", "read", bucket, None)
        raise _refuse(
            "buckets are the repository's storage secrets: they are not created or deleted here"
        )
    if sub == {"location"} and method == "GET":
        return Operation("GetBucketLocation", "read", bucket, None)
    if sub == {"uploads"} and method == "GET":
        return Operation("ListMultipartUploads", "read", bucket, None, names_bucket=True)
    if sub == {"delete"} and method == "POST":
        return Operation("DeleteObjects", "write", bucket, None)
    if len(sub) == 1 and (config := next(iter(sub))) in BUCKET_CONFIG:
        if method == "GET":
            return Operation(f"GetBucket.{config}", "read", bucket, None)
        if method in ("PUT", "DELETE"):
            return Operation(f"{method.title()}Bucket.{config}", "admin", bucket, None)
    raise _refuse(f"bucket operation {sorted(sub)[0][:32]!r} is not supported")


def _object_operation(
    method: str, bucket: str, key: str, names: set[str], sub: set[str], copy: bool
) -> Operation:
    upload = "uploadId" in names
    if sub == {"uploads"} and method == "POST":
        return Operation("CreateMultipartUpload", "write", bucket, key, names_bucket=True)
    if sub == {"tagging"}:
        if method == "GET":
            return Operation("GetObjectTagging", "read", bucket, key)
        if method in ("PUT", "DELETE"):
            return Operation(f"{method.title()}ObjectTagging", "write", bucket, key)
    if sub:
        raise _refuse(f"object operation {sorted(sub)[0][:32]!r} is not supported")
    if method == "GET":
        if upload:
            return Operation("ListParts", "read", bucket, key, names_bucket=True)
        return Operation("GetObject", "read", bucket, key)
    if method == "HEAD":
        return Operation("HeadObject", "read", bucket, key)
    if method == "PUT":
        if upload and "partNumber" in names:
            return Operation("UploadPartCopy" if copy else "UploadPart", "write", bucket, key)
        if upload or "partNumber" in names:
            raise S3Refused("InvalidRequest", 400, "UploadPart needs uploadId and partNumber")
        return Operation("CopyObject" if copy else "PutObject", "write", bucket, key)
    if method == "POST" and upload:
        return Operation("CompleteMultipartUpload", "write", bucket, key, names_bucket=True)
    if method == "DELETE":
        return Operation("AbortMultipartUpload" if upload else "DeleteObject", "write", bucket, key)
    raise _refuse(f"{method} on an object is not supported")


def allows(granted: str, needed: str) -> bool:
    """Does a key of access ``granted`` allow an operation that needs ``needed``?"""
    return granted in LEVELS and LEVELS[granted] >= LEVELS[needed]

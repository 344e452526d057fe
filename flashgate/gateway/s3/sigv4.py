"""AWS Signature Version 4 as S3 checks it: parsing, canonical forms, verification.

botocore signs requests but does not verify them, so verification is ours; these are pure
functions (no I/O), cross-checked against botocore's signer by the tests (property tests on
canonicalisation included). Two forms of authentication: the ``Authorization`` header and
presigned URLs (``X-Amz-*`` query parameters). The body modes the ``x-amz-content-sha256``
header names (a hex SHA-256, ``UNSIGNED-PAYLOAD`` and the ``STREAMING-*`` aws-chunked forms)
are told apart here and checked as the body streams (:mod:`.chunked`, :mod:`.body`).

Strict on purpose: the scope's region and service must be the gateway's, the request time
within 15 minutes of the node's clock (a presigned URL: not before its date, not after its
expiry, at most 7 days), every ``x-amz-*`` header present signed, ``host`` signed, the
signed header list sorted and unique, signatures compared in constant time.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from flashgate.errors import S3Refused

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = frozenset(
    {STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: How far the request's time may be from the node's clock (S3's bound).
MAX_SKEW_SECONDS = 15 * 60
#: The longest a presigned URL may be valid (S3's bound).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
SERVICE = "s3"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_DATE = re.compile(r"^\d{8}$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
#: Characters SigV4 leaves unencoded (RFC 3986 unreserved).
_UNRESERVED = "-_.~"


def _refuse(code: str, message: str, status: int = 403) -> S3Refused:
    return S3Refused(code, status, message)


@dataclass(frozen=True, slots=True)
class Scope:
    """``KEYID/DATE/REGION/SERVICE/aws4_request`` of a credential."""

    key_id: str
    date: str
    region: str
    service: str

    @property
    def text(self) -> str:
        """The credential scope without the key id (what the string to sign names)."""
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class Authorization:
    """What a request claims: its scope, signed headers, signature, time and body mode."""

    scope: Scope
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    payload_hash: str  # hex SHA-256 or one of the constants above
    presigned: bool
    expires: int | None = None

    def __repr__(self) -> str:  # a signature is a credential for as long as it is fresh
        return f"Authorization(key_id={self.scope.key_id!r}, presigned={self.presigned})"


# --------------------------------------------------------------------------- encoding


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """SigV4's URI encoding: every byte but ``A-Za-z0-9-_.~`` as ``%XX`` (upper case); with
    ``keep_slash``, ``/`` too (a path, which S3 does not normalise)."""
    return quote(text, safe=_UNRESERVED + ("/" if keep_slash else ""))


def split_query(raw: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a raw query string, in order. ``+`` is a plus
    (SigV4 clients encode a space as ``%20``); a name without ``=`` has the empty value."""
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_uri(path: str) -> str:
    """The canonical URI of a decoded path (S3: encoded once, not normalised)."""
    return uri_encode(path, keep_slash=True) or "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Encoded pairs sorted by name then value, ``name=value`` joined by ``&``."""
    encoded = sorted((uri_encode(n), uri_encode(v)) for n, v in pairs)
    return "&".join(f"{n}={v}" for n, v in encoded)


def _trim(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` for each signed header (values trimmed, repeats joined by ``,``)."""
    values: dict[str, list[str]] = {name: [] for name in signed}
    for name, value in headers:
        lname = name.lower()
        if lname in values:
            values[lname].append(_trim(value))
    missing = [name for name, found in values.items() if not found]
    if missing:
        raise _refuse("SignatureDoesNotMatch", f"a signed header is missing: {missing[0]}")
    return "".join(f"{name}:{','.join(values[name])}\n" for name in signed)


def canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        )
    )


def string_to_sign(amz_date: str, scope: Scope, request: str) -> str:
    digest = hashlib.sha256(request.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope.text}\n{digest}"


def signing_key(secret: bytes | memoryview, scope: Scope) -> bytes:
    """HMAC chain ``AWS4`` + secret, date, region, service, ``aws4_request``. The one
    copy of the secret made here (the first HMAC key) is zeroed after use."""
    first = bytearray(b"AWS4")
    first += secret
    try:
        key = hmac.digest(first, scope.date.encode(), "sha256")
    finally:
        first[:] = bytes(len(first))
    key = hmac.digest(key, scope.region.encode(), "sha256")
    key = hmac.digest(key, scope.service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def sign(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode(), "sha256").hex()


def chunk_string_to_sign(amz_date: str, scope: Scope, previous: str, data_sha256: str) -> str:
    """What each chunk of ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` signs (chained)."""
    return (
        f"{ALGORITHM}-PAYLOAD\n{amz_date}\n{scope.text}\n{previous}\n{EMPTY_SHA256}\n{data_sha256}"
    )


def trailer_string_to_sign(amz_date: str, scope: Scope, previous: str, trailer: bytes) -> str:
    """What the trailer of ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`` signs; ``trailer``
    is the canonical trailer (``name:value\\n`` per header)."""
    digest = hashlib.sha256(trailer).hexdigest()
    return f"{ALGORITHM}-TRAILER\n{amz_date}\n{scope.text}\n{previous}\n{digest}"


def matches(expected: str, presented: str) -> bool:
    """Constant-time comparison of two hex signatures."""
    return hmac.compare_digest(expected.encode(), presented.encode())


# --------------------------------------------------------------------------- parsing


def _scope(credential: str) -> Scope:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise _refuse("AuthorizationHeaderMalformed", "the credential is malformed", 400)
    key_id, date, region, service, _ = parts
    if not _KEY_ID.match(key_id) or not _DATE.match(date) or not region or not service:
        raise _refuse("AuthorizationHeaderMalformed", "the credential is malformed", 400)
    return Scope(key_id, date, region, service)


def _signed_headers(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not all(_HEADER_NAME.match(n) for n in names):
        raise _refuse("AuthorizationHeaderMalformed", "the signed headers are malformed", 400)
    if list(names) != sorted(set(names)):
        raise _refuse(
            "AuthorizationHeaderMalformed", "the signed headers are not sorted and unique", 400
        )
    return names


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    found = [v for n, v in headers if n.lower() == name]
    if len(found) > 1:
        raise _refuse("InvalidRequest", f"the {name} header is repeated", 400)
    return found[0] if found else None


def is_payload_hash(value: str) -> bool:
    return value == UNSIGNED_PAYLOAD or value in STREAMING_MODES or bool(_HEX64.match(value))


def parse_header_auth(value: str, headers: Sequence[tuple[str, str]]) -> Authorization:
    """The ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...``
    of a request (its time from ``x-amz-date``, its body mode from ``x-amz-content-sha256``)."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _refuse("AuthorizationHeaderMalformed", "the algorithm must be AWS4-HMAC-SHA256", 400)
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, field = item.strip().partition("=")
        if not sep or name in fields:
            raise _refuse("AuthorizationHeaderMalformed", "the authorization is malformed", 400)
        fields[name] = field
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise _refuse("AuthorizationHeaderMalformed", "the authorization is malformed", 400)
    signature = fields["Signature"]
    if not _HEX64.match(signature):
        raise _refuse("AuthorizationHeaderMalformed", "the signature is malformed", 400)
    amz_date = _header(headers, "x-amz-date")
    if amz_date is None or not _AMZ_DATE.match(amz_date):
        raise _refuse("AccessDenied", "an x-amz-date header (YYYYMMDDTHHMMSSZ) is required")
    payload = _header(headers, "x-amz-content-sha256")
    if payload is None:
        raise _refuse("InvalidRequest", "an x-amz-content-sha256 header is required", 400)
    if not is_payload_hash(payload):
        raise _refuse("InvalidArgument", "x-amz-content-sha256 is not a SHA-256 or a mode", 400)
    return Authorization(
        scope=_scope(fields["Credential"]),
        signed_headers=_signed_headers(fields["SignedHeaders"]),
        signature=signature,
        amz_date=amz_date,
        payload_hash=payload,
        presigned=False,
    )


def parse_presigned(
    query: Sequence[tuple[str, str]], headers: Sequence[tuple[str, str]]
) -> Authorization:
    """The ``X-Amz-*`` parameters of a presigned URL (each exactly once)."""
    found: dict[str, str] = {}
    for name, value in query:
        if name in _PRESIGN_PARAMS:
            if name in found:
                raise _refuse("AuthorizationQueryParametersError", f"{name} is repeated", 400)
            found[name] = value
    missing = [n for n in _PRESIGN_PARAMS if n not in found]
    if missing:
        raise _refuse("AuthorizationQueryParametersError", f"{missing[0]} is missing", 400)
    if found["X-Amz-Algorithm"] != ALGORITHM:
        raise _refuse(
            "AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256", 400
        )
    if not _AMZ_DATE.match(found["X-Amz-Date"]):
        raise _refuse("AuthorizationQueryParametersError", "X-Amz-Date is malformed", 400)
    expires_text = found["X-Amz-Expires"]
    if not expires_text.isdigit() or len(expires_text) > 7:
        raise _refuse("AuthorizationQueryParametersError", "X-Amz-Expires is malformed", 400)
    expires = int(expires_text)
    if not 1 <= expires <= MAX_PRESIGN_SECONDS:
        raise _refuse(
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be between 1 second and 7 days",
            400,
        )
    if not _HEX64.match(found["X-Amz-Signature"]):
        raise _refuse("AuthorizationQueryParametersError", "X-Amz-Signature is malformed", 400)
    payload = _header(headers, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
    if payload != UNSIGNED_PAYLOAD and not _HEX64.match(payload):
        raise _refuse(
            "InvalidArgument", "a presigned request's payload is unsigned or a SHA-256", 400
        )
    return Authorization(
        scope=_scope(found["X-Amz-Credential"]),
        signed_headers=_signed_headers(found["X-Amz-SignedHeaders"]),
        signature=found["X-Amz-Signature"],
        amz_date=found["X-Amz-Date"],
        payload_hash=payload,
        presigned=True,
        expires=expires,
    )


# --------------------------------------------------------------------------- checks


def request_time(amz_date: str) -> int:
    """Seconds since the epoch of a ``YYYYMMDDTHHMMSSZ`` time."""
    if not _AMZ_DATE.match(amz_date):
        raise _refuse("AccessDenied", "the request time is malformed")
    fields = (
        int(amz_date[0:4]),
        int(amz_date[4:6]),
        int(amz_date[6:8]),
        int(amz_date[9:11]),
        int(amz_date[11:13]),
        int(amz_date[13:15]),
    )
    month, day, hour, minute, second = fields[1:]
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise _refuse("AccessDenied", "the request time is malformed")
    return calendar.timegm((*fields, 0, 0, 0))


def check_claims(
    auth: Authorization, headers: Sequence[tuple[str, str]], *, region: str, now: float
) -> None:
    """Everything but the signature: scope, time, what must be signed."""
    scope = auth.scope
    if scope.service != SERVICE:
        raise _refuse("AuthorizationHeaderMalformed", "the credential's service must be s3", 400)
    if scope.region != region:
        raise _refuse(
            "AuthorizationHeaderMalformed",
            f"the credential's region is wrong; expecting '{region}'",
            400,
        )
    if scope.date != auth.amz_date[:8]:
        raise _refuse(
            "AuthorizationHeaderMalformed", "the credential's date is not the request's", 400
        )
    signed = set(auth.signed_headers)
    if "host" not in signed:
        raise _refuse("AccessDenied", "the host header must be signed")
    for name, _ in headers:
        lname = name.lower()
        if lname.startswith("x-amz-") and lname not in signed:
            raise _refuse("AccessDenied", f"the {lname} header must be signed")
    at = request_time(auth.amz_date)
    if auth.presigned:
        assert auth.expires is not None
        if now + MAX_SKEW_SECONDS < at:
            raise _refuse("AccessDenied", "the request is not yet valid")
        if now > at + auth.expires:
            raise _refuse("AccessDenied", "the request has expired")
    elif abs(now - at) > MAX_SKEW_SECONDS:
        raise _refuse(
            "RequestTimeTooSkewed",
            "the difference between the request time and the current time is too large",
        )


def verify(
    auth: Authorization,
    secret: bytes | memoryview,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
) -> bytes:
    """Check the signature; return the signing key (chunk signatures chain from it).
    A presigned URL's own ``X-Amz-Signature`` is not part of what it signs."""
    if auth.presigned:
        query = [(n, v) for n, v in query if n != "X-Amz-Signature"]
    request = canonical_request(
        method, path, query, headers, auth.signed_headers, auth.payload_hash
    )
    key = signing_key(secret, auth.scope)
    expected = sign(key, string_to_sign(auth.amz_date, auth.scope, request))
    if not matches(expected, auth.signature):
        raise _refuse(
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided",
        )
    return key

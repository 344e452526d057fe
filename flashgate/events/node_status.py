"""Liveness and status: ``fg.<f>.node.<node>.heartbeat`` and ``...status``.

Heartbeats are published by each node (signed with its identity, domain ``heartbeat``).
Status requests come from the admin tooling (admin-signed, domain ``status-request``), and
the node answers with a signed :class:`StatusResponse` (domain ``status-response``). A
status answer names secrets and versions, never a value or a partial decryption.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.types import (
    Count,
    Ed25519Sig,
    Epoch,
    Name,
    ReasonCode,
    RequestId,
    SecretKey,
    Serial,
    SignatureRaw,
    UnixMillis,
    Version,
    X25519Raw,
)

MAX_HEARTBEAT_BYTES = 4 * 1024
MAX_STATUS_REQUEST_BYTES = 4 * 1024
MAX_STATUS_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_STATUS_SECRETS = 100_000


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "heartbeat"

    fleet: Name
    node_id: Name
    epoch: Epoch
    roster_serial: Serial
    issued_at: UnixMillis
    started_at: UnixMillis
    secrets_held: Count
    secrets_pending: Count
    signature: SignatureRaw = b""


class StatusRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "status-request"

    fleet: Name
    request_id: RequestId
    issued_at: UnixMillis
    include_secrets: bool = True
    signature: Ed25519Sig = ""


class PeerStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    node_id: Name
    last_seen: UnixMillis | None
    last_latency_ms: Annotated[float, Meta(ge=0)] | None


class HeldSecret(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    version: Version
    epoch: Epoch | None = None  # the fleet key epoch of the envelope it was opened from


class PendingSecret(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    reason: ReasonCode


class FastPathStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The fast path as one node sees it (DESIGN §6): names and counts only."""

    #: The ring term new fast wraps go under (None: none yet).
    current_term: Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")] | None = None
    terms_opened: Count = 0
    #: Fast wraps in the wraps bucket, per term id: the secrets on the fast path.
    wraps_per_term: Annotated[dict[Name, Count], Meta(max_length=1024)] = {}
    #: Wraps under any term but the current one (waiting to be re-made).
    on_old_terms: Count = 0
    #: Envelopes this node opened by the fast path, and why others went the cold path.
    opened_fast: Count = 0
    fallbacks: Annotated[dict[ReasonCode, Count], Meta(max_length=64)] = {}
    #: Bad fast wraps proven (signed by their writer), per writer; and unsigned ones.
    bad_wraps: Annotated[dict[Name, Count], Meta(max_length=64)] = {}
    unattributed_bad_wraps: Count = 0


class StatusResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "status-response"
    #: ``fast_path`` came later: signed only when present.
    unsigned_at_default: ClassVar[dict[str, None]] = {"fast_path": None}

    fleet: Name
    node_id: Name
    request_id: RequestId
    issued_at: UnixMillis
    started_at: UnixMillis
    epoch: Epoch
    roster_serial: Serial
    peers: Annotated[list[PeerStatus], Meta(max_length=64)] = []
    secrets: Annotated[list[HeldSecret], Meta(max_length=MAX_STATUS_SECRETS)] = []
    pending: Annotated[list[PendingSecret], Meta(max_length=MAX_STATUS_SECRETS)] = []
    secrets_held: Count = 0
    share_requests_served: Count = 0
    share_requests_refused: dict[ReasonCode, Count] = {}
    misbehaviour: dict[Name, Count] = {}
    #: Admin-signed deletions and API key revocations this node keeps for good.
    tombstones: Count = 0
    #: Both buckets bound and their initial values loaded: answering is not being ready.
    ready: bool = False
    fast_path: FastPathStatus | None = None
    signature: SignatureRaw = b""


class ApiKeyCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Admin-signed: does this node accept ``presented`` for API key ``key_id``? The
    presented secret is sealed to the node's X25519 identity key (:mod:`flashgate.crypto.box`,
    AAD = :func:`apikey_check_aad`); the broker never sees it."""

    signing_domain: ClassVar[str] = "apikey-check"

    fleet: Name
    node_id: Name
    request_id: RequestId
    issued_at: UnixMillis
    key_id: Name
    sender_key: X25519Raw
    nonce: Annotated[bytes, Meta(min_length=12, max_length=12)]
    sealed: Annotated[bytes, Meta(max_length=1024)]
    signature: Ed25519Sig = ""


class ApiKeyCheckResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Node-signed answer: whether the node's vault accepted the presented secret
    (``Vault.verify_api_key``, constant time), or why the check was refused."""

    signing_domain: ClassVar[str] = "apikey-check-result"

    fleet: Name
    node_id: Name
    request_id: RequestId
    key_id: Name
    valid: bool
    refused: ReasonCode | None = None
    signature: SignatureRaw = b""


def apikey_check_aad(fleet: str, node_id: str, request_id: bytes, key_id: str) -> bytes:
    return b"\x00".join(
        [
            b"flashgate/apikey-check/v1",
            fleet.encode(),
            node_id.encode(),
            request_id,
            key_id.encode(),
        ]
    )


HEARTBEAT_CODEC: Codec[Heartbeat] = Codec(
    Heartbeat, max_bytes=MAX_HEARTBEAT_BYTES, fmt="msgpack", what="heartbeat"
)
STATUS_REQUEST_CODEC: Codec[StatusRequest] = Codec(
    StatusRequest, max_bytes=MAX_STATUS_REQUEST_BYTES, what="status request"
)
STATUS_RESPONSE_CODEC: Codec[StatusResponse] = Codec(
    StatusResponse, max_bytes=MAX_STATUS_RESPONSE_BYTES, fmt="msgpack", what="status response"
)
APIKEY_CHECK_CODEC: Codec[ApiKeyCheck] = Codec(
    ApiKeyCheck, max_bytes=4 * 1024, what="API key check"
)
APIKEY_CHECK_RESULT_CODEC: Codec[ApiKeyCheckResult] = Codec(
    ApiKeyCheckResult, max_bytes=4 * 1024, fmt="msgpack", what="API key check result"
)

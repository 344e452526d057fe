"""Share protocol messages (DESIGN §2.4): msgpack over core NATS ``fg.<f>.share.<node>``.

Request (signed by the requester's Ed25519 identity, domain ``share-request``):
    fleet, epoch, request id (16 random bytes), requester node id, the responder it is
    meant for (a broker forwarding it to another node gets it refused), issued-at (ms), an
    ephemeral X25519 public key for the reply, whether proofs are wanted, and up to
    :data:`MAX_SHARE_ITEMS` items, each key once: (secret key, KV revision, SHA-256 of the
    wrapped key), and where they are (``source``: the secrets bucket, or the ring bucket
    for a ring term of the fast path, whose key is ``term.<id>``; signed only when not
    the secrets bucket, so requests without it sign as before). No ciphertext travels:
    the responder looks each envelope (or term) up in its own copy and checks the digest.

Response (signed by the responder, domain ``share-response``):
    ``status`` "ok" with ``sealed`` = :class:`ShareResults` (msgpack) encrypted to the
    requester's ephemeral key (X25519 + HKDF-SHA256 + AES-256-GCM; ``sender_key`` is the
    responder's one-time X25519 key, ``nonce`` the GCM nonce), or ``status`` "refused"
    with a reason code and nothing sealed. A broker observer learns no partial.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.types import (
    Epoch,
    Name,
    ReasonCode,
    RequestId,
    Revision,
    SecretKey,
    Sha256,
    SignatureRaw,
    UnixMillis,
    X25519Raw,
)

MAX_SHARE_ITEMS = 256
MAX_SHARE_REQUEST_BYTES = 64 * 1024
#: 256 items with proofs at 8192 bits stay under this; NATS max_payload must allow it.
MAX_SHARE_RESPONSE_BYTES = 2 * 1024 * 1024
GroupElement = Annotated[bytes, Meta(min_length=1, max_length=1024)]
ProofResponse = Annotated[bytes, Meta(min_length=1, max_length=2048)]


class ShareItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    revision: Revision
    digest: Sha256  # SHA-256 of the JWE's encrypted-key bytes


class ShareRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "share-request"
    #: ``source`` came after the first version: signed only when not ``secrets``.
    unsigned_at_default: ClassVar[dict[str, str]] = {"source": "secrets"}

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    epoch: Epoch
    request_id: RequestId
    requester: Name
    responder: Name  # the node asked: any other refuses it
    issued_at: UnixMillis
    reply_key: X25519Raw
    proofs: bool = False
    #: Where the responder looks the items up: ``secrets`` (envelopes, the default) or
    #: ``ring`` (ring terms of the fast path, keys ``term.<id>``).
    source: Literal["secrets", "ring"] = "secrets"
    items: Annotated[list[ShareItem], Meta(min_length=1, max_length=MAX_SHARE_ITEMS)]
    signature: SignatureRaw = b""


class ShareProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    challenge: Sha256
    response: ProofResponse


class SharePartial(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    revision: Revision
    partial: GroupElement  # x_i, k bytes big-endian
    proof: ShareProof | None = None


class ShareItemRefusal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    revision: Revision
    reason: ReasonCode  # e.g. "unknown_secret", "digest_mismatch", "stale_revision"


class ShareResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The plaintext inside ``ShareResponse.sealed``; never on the broker in the clear."""

    request_id: RequestId
    partials: Annotated[list[SharePartial], Meta(max_length=MAX_SHARE_ITEMS)]
    refusals: Annotated[list[ShareItemRefusal], Meta(max_length=MAX_SHARE_ITEMS)] = []

    def __repr__(self) -> str:
        return f"ShareResults(partials=<{len(self.partials)} redacted>, refusals={self.refusals})"


class ShareResponse(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "share-response"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    epoch: Epoch
    request_id: RequestId
    responder: Name
    issued_at: UnixMillis
    status: Literal["ok", "refused"]
    reason: ReasonCode | None = None
    sender_key: X25519Raw | None = None
    nonce: Annotated[bytes, Meta(min_length=12, max_length=12)] | None = None
    sealed: Annotated[bytes, Meta(max_length=MAX_SHARE_RESPONSE_BYTES)] | None = None
    signature: SignatureRaw = b""


SHARE_REQUEST_CODEC: Codec[ShareRequest] = Codec(
    ShareRequest, max_bytes=MAX_SHARE_REQUEST_BYTES, fmt="msgpack", what="share request"
)
SHARE_RESPONSE_CODEC: Codec[ShareResponse] = Codec(
    ShareResponse,
    max_bytes=MAX_SHARE_RESPONSE_BYTES + 4096,
    fmt="msgpack",
    what="share response",
)
SHARE_RESULTS_CODEC: Codec[ShareResults] = Codec(
    ShareResults, max_bytes=MAX_SHARE_RESPONSE_BYTES, fmt="msgpack", what="share results"
)

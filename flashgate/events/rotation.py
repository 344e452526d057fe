"""Fleet key rotation on the wire (DESIGN §5): sealed shares and re-wrap requests.

A rotation from epoch k to k+1 travels as the admin-signed ``fleet.rotation.start``
command, which carries the new descriptor and, for every node of it, that node's new key
share sealed to the node's X25519 identity key (:class:`SealedShare`, opened with
:func:`flashgate.fleet.epoch_dealing.open_share`). The backend stores the signed command in
the fleet bucket (``rotation.<k+1>``), so a node that was down during the rotation finds
its share when it comes back; the backend itself cannot open any share.

The bridges then re-wrap each envelope's content key from k to k+1 and hand the new JWE
to the backend as a node-signed :class:`RewrapRequest` on ``fg.<f>.rewrap`` (core NATS
request/reply, msgpack). The backend checks that only the wrapped key changed and
answers with a :class:`RewrapReply`. No content key and no plaintext ever travels.

The backend cannot tell a wrong wrapped key from a right one. A node that then fails to
open a re-wrapped envelope (the threshold result checked, the payload's tag wrong) sends
the same request with ``action="revert"`` and the JWE that failed: the backend puts the
epoch-k original back (kept until epoch k retires) and refuses that envelope's next
re-wrap from the node whose re-wrap was disputed.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from flashgate.events.codec import Codec
from flashgate.events.envelope import JweText, RewrapAttestation
from flashgate.events.fleet import ShareIndex
from flashgate.events.types import (
    B64Url,
    Count,
    Epoch,
    Name,
    ReasonCode,
    RequestId,
    SecretKey,
    SignatureRaw,
    UnixMillis,
    Version,
)

MAX_REWRAP_ITEMS = 64
#: Re-wrap batches are cut by size too (a JWE can be large); NATS' default max_payload is 1 MiB.
MAX_REWRAP_REQUEST_BYTES = 900 * 1024
MAX_REWRAP_REPLY_BYTES = 64 * 1024
SHARE_AAD = b"flashgate/rotation-share/v1"


class SealedShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One node's key share of the new epoch, sealed to its X25519 identity key
    (:mod:`flashgate.crypto.box`, AAD = :func:`share_aad`)."""

    node_id: Name
    index: ShareIndex
    sender_key: B64Url  # the sealer's one-time X25519 public key
    nonce: B64Url
    ciphertext: B64Url  # AES-256-GCM of s_i (k bytes big-endian) plus tag


def share_aad(fleet: str, epoch: int, node_id: str, index: int) -> bytes:
    """Binds a sealed share to its fleet, epoch, node and index: moved anywhere, it fails."""
    return b"\x00".join(
        [SHARE_AAD, fleet.encode(), str(epoch).encode(), node_id.encode(), str(index).encode()]
    )


class RewrapItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    version: Version
    # rewrap: the same JWE with its content key wrapped under the new epoch;
    # revert: the re-wrapped JWE, as published, that does not open
    jwe: JweText
    # rewrap: the node's signed attestation binding the new JWE to the admin's statement
    # (None for an envelope without provenance, or a revert)
    attestation: RewrapAttestation | None = None


class RewrapRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    signing_domain: ClassVar[str] = "rewrap-request"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    node_id: Name
    request_id: RequestId
    issued_at: UnixMillis
    from_epoch: Epoch
    to_epoch: Epoch
    items: Annotated[list[RewrapItem], Meta(min_length=1, max_length=MAX_REWRAP_ITEMS)]
    action: Literal["rewrap", "revert"] = "rewrap"
    signature: SignatureRaw = b""


class RewrapRefusal(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    key: SecretKey
    reason: ReasonCode  # e.g. "already_rewrapped", "stale_version", "not_same_envelope"


class RewrapReply(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    request_id: RequestId
    ok: bool = True
    error: ReasonCode | None = None  # the whole request was refused
    accepted: Count = 0  # envelopes re-wrapped (or, for a revert, put back)
    refusals: Annotated[list[RewrapRefusal], Meta(max_length=MAX_REWRAP_ITEMS)] = []
    remaining: Count = 0  # envelopes still at the old epoch after this request


REWRAP_REQUEST_CODEC: Codec[RewrapRequest] = Codec(
    RewrapRequest, max_bytes=MAX_REWRAP_REQUEST_BYTES, fmt="msgpack", what="re-wrap request"
)
REWRAP_REPLY_CODEC: Codec[RewrapReply] = Codec(
    RewrapReply, max_bytes=MAX_REWRAP_REPLY_BYTES, fmt="msgpack", what="re-wrap reply"
)

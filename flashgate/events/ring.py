"""The fast path's wire types (DESIGN §6): ring terms and fast wraps.

| what       | where                                       | codec                      |
|------------|---------------------------------------------|----------------------------|
| ring term  | KV bucket ``fg-<f>-ring``, key ``term.<id>`` | JSON :class:`StoredTerm`   |
| fast wrap  | KV bucket ``fg-<f>-wraps``, key ``<repo>.<name>`` | msgpack :class:`FastWrap` |
| wraps snapshot | KV bucket ``fg-<f>-snapshots``, key ``head`` | msgpack :class:`WrapSnapshot` |
| its parts  | same bucket, key ``part.<snapshot id>.<n>`` | msgpack :class:`WrapSnapshotPart` |

A :class:`RingTerm` is signed by the node that made it (domain ``ring-term``) over the
fleet, the term id, the fleet key epoch its JWE is under, the JWE's SHA-256, the roster
serial it was made under, when, and its limits (age, number of wraps). Nodes use a term
only when its maker is active in their roster and a member of its epoch; responders
compute a partial for its JWE only then too.

A :class:`FastWrap` is signed by the node that wrote it (domain ``fast-wrap``): the
signature is what a bad wrap is reported with. (It is checked when a wrap fails to open:
a wrap that opens the JWE's payload under the JWE's own tag is right whoever wrote it.)
Neither carries a secret: a term's key is inside its JWE, a content key inside its wrap.

A :class:`WrapSnapshot` is signed by the node that wrote it (domain ``wrap-snapshot``): the
wraps bucket's current wraps as of one sequence of its stream, in parts it names by their
SHA-256, each wrap as it was in the bucket (its writer's signature with it). A starting
node reads it and then the bucket's stream after that sequence, instead of one message
per wrap (:mod:`flashgate.bridge.wrap_snapshots`).

A :class:`FastWrap` is kept per secret: ``gc=False`` as the envelope types are
(:mod:`flashgate.events.envelope`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from flashgate.crypto import fastwrap
from flashgate.events.codec import Codec
from flashgate.events.envelope import Sha256Text
from flashgate.events.types import (
    Ed25519Sig,
    Epoch,
    Name,
    SecretKey,
    Serial,
    Sha256,
    SignatureRaw,
    UnixMillis,
    Version,
)

TermId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$", description="16 random bytes, hex")]
#: A term's JWE: one wrapped 32-byte key (an 8192-bit fleet key's is under 1,500 chars).
TermJwe = Annotated[str, Meta(min_length=1, max_length=4096)]
TERM_KEY_PREFIX = "term."

#: The longest a term may be used for new wraps, and the most wraps under one term, that a
#: maker may state (AWS Encryption SDK caching: max age, max messages; random 96-bit GCM
#: nonces stay far from 2^32 uses).
MAX_TERM_AGE_MS = 90 * 24 * 3600 * 1000
MAX_TERM_WRAPS = 2**32


class RingTerm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A ring term's signed statement (domain ``ring-term``), by its maker."""

    signing_domain: ClassVar[str] = "ring-term"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    term_id: TermId
    epoch: Epoch
    jwe_sha256: Sha256Text
    creator: Name
    roster_serial: Serial
    created_at: UnixMillis
    max_age_ms: Annotated[int, Meta(ge=1_000, le=MAX_TERM_AGE_MS)]
    max_wraps: Annotated[int, Meta(ge=1, le=MAX_TERM_WRAPS)]
    signature: Ed25519Sig = ""


class StoredTerm(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ring bucket's value: the signed term and its JWE (the key, under the epoch's
    fleet public key)."""

    term: RingTerm
    jwe: TermJwe

    def __repr__(self) -> str:
        t = self.term
        return f"StoredTerm({t.term_id} epoch={t.epoch} by {t.creator})"


class FastWrap(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """An envelope's content key under a ring term (domain ``fast-wrap``), by its writer.
    The AES-GCM additional data is :func:`flashgate.crypto.fastwrap.wrap_aad` of these
    fields; ``sealed`` is the 32-byte key and its 16-byte tag."""

    signing_domain: ClassVar[str] = "fast-wrap"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    key: SecretKey
    version: Version
    epoch: Epoch
    wrapped_key_sha256: Sha256
    term_id: TermId
    writer: Name
    written_at: UnixMillis
    nonce: Annotated[bytes, Meta(min_length=fastwrap.NONCE_BYTES, max_length=fastwrap.NONCE_BYTES)]
    sealed: Annotated[
        bytes,
        Meta(min_length=fastwrap.SEALED_CEK_BYTES, max_length=fastwrap.SEALED_CEK_BYTES),
    ]
    signature: SignatureRaw = b""

    def __repr__(self) -> str:
        return (
            f"FastWrap({self.key} v{self.version} e{self.epoch} term={self.term_id} "
            f"by {self.writer})"
        )


SnapshotId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$", description="16 random bytes, hex")]
SNAPSHOT_HEAD_KEY = "head"
SNAPSHOT_PART_PREFIX = "part."
#: Wraps in one part of a snapshot (a msgpack wrap is about 300 bytes: a part stays
#: well under NATS' default max_payload of 1 MiB).
SNAPSHOT_PART_WRAPS = 1024
#: Parts in one snapshot, at most (4M wraps).
MAX_SNAPSHOT_PARTS = 4096


class WrapSnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The head of a wraps snapshot (domain ``wrap-snapshot``), by the node that wrote it:
    the wraps bucket as of ``stream_sequence`` of its stream (the one created at
    ``stream_created``), in ``parts`` (each part's SHA-256, in order), ``wraps`` wraps in
    all."""

    signing_domain: ClassVar[str] = "wrap-snapshot"

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    snapshot_id: SnapshotId
    #: When the wraps bucket's stream was created: a snapshot is of that stream only (a
    #: bucket deleted and made again starts its sequences over).
    stream_created: UnixMillis
    stream_sequence: Annotated[int, Meta(ge=1, le=2**63 - 1)]
    wraps: Annotated[int, Meta(ge=0, le=MAX_SNAPSHOT_PARTS * SNAPSHOT_PART_WRAPS)]
    parts: Annotated[list[Sha256], Meta(max_length=MAX_SNAPSHOT_PARTS)]
    writer: Name
    written_at: UnixMillis
    signature: SignatureRaw = b""

    def __repr__(self) -> str:
        return (
            f"WrapSnapshot({self.snapshot_id} at {self.stream_sequence}: {self.wraps} wraps "
            f"in {len(self.parts)} parts, by {self.writer})"
        )


class WrapSnapshotPart(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Part ``index`` of snapshot ``snapshot_id``: wraps as they are in the bucket."""

    format: Annotated[int, Meta(ge=1, le=1)] = 1
    fleet: Name
    snapshot_id: SnapshotId
    index: Annotated[int, Meta(ge=0, lt=MAX_SNAPSHOT_PARTS)]
    wraps: Annotated[list[FastWrap], Meta(max_length=SNAPSHOT_PART_WRAPS)]

    def __repr__(self) -> str:
        return f"WrapSnapshotPart({self.snapshot_id}#{self.index}: {len(self.wraps)} wraps)"


def snapshot_part_key(snapshot_id: str, index: int) -> str:
    """The snapshots bucket key of part ``index`` of a snapshot."""
    return f"{SNAPSHOT_PART_PREFIX}{snapshot_id}.{index}"


def term_key(term_id: str) -> str:
    """The ring bucket key of a term."""
    return TERM_KEY_PREFIX + term_id


STORED_TERM_CODEC: Codec[StoredTerm] = Codec(StoredTerm, max_bytes=8 * 1024, what="ring term")
FAST_WRAP_CODEC: Codec[FastWrap] = Codec(FastWrap, max_bytes=1024, fmt="msgpack", what="fast wrap")
WRAP_SNAPSHOT_CODEC: Codec[WrapSnapshot] = Codec(
    WrapSnapshot,
    max_bytes=64 + MAX_SNAPSHOT_PARTS * 40 + 1024,
    fmt="msgpack",
    what="wraps snapshot",
)
WRAP_SNAPSHOT_PART_CODEC: Codec[WrapSnapshotPart] = Codec(
    WrapSnapshotPart,
    max_bytes=256 + SNAPSHOT_PART_WRAPS * 1024,
    fmt="msgpack",
    what="wraps snapshot part",
)

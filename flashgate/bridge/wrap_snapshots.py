"""Snapshots of the wraps bucket: a starting node reads a checkpoint and the tail after it,
not one message per wrap.

A node starting on 100k secrets read 100k fast wraps, one NATS message each (nats-py
costs about 20 µs of the node's CPU per message before any check). A **snapshot**
(:class:`~flashgate.events.ring.WrapSnapshot`, bucket ``fg-<f>-snapshots``) is the wraps
bucket's current wraps as of one sequence ``S`` of its stream, in parts of up to
:data:`~flashgate.events.ring.SNAPSHOT_PART_WRAPS` wraps, each wrap exactly as it was in
the bucket (with its writer's signature). A starting node reads the head, its parts, and
then the bucket's stream from ``S + 1`` on (every later put, delete and purge, in order:
:func:`flashgate.broker.watch.follow_batches` with ``start_sequence``). Applied in order
on top of the snapshot, the tail gives the bucket's state, whatever changed after ``S``:
about a hundred messages and the tail instead of 100k.

**Trust.** A snapshot adds no trust: a wrap from a snapshot is used exactly as one read
from the bucket, and a wrong wrap can only fail (its payload opens only under the JWE's own
tag), so a lying snapshot can at worst send secrets down the cold path, as an empty wraps
bucket would. Still, every message type has its signer: the head is signed by the node that
wrote it, which must be **active** in this node's roster, and names each part by its SHA-256.
A replayed older snapshot is correct too (its tail is longer); one that claims a sequence
past the bucket's last is refused. A refused snapshot (unsigned, a revoked or unknown
writer, a missing or damaged part, another fleet) is logged with its reason and the node
reads the whole bucket instead, as before snapshots.

**Writing.** The first-ranked live active member of the current epoch (rendezvous, as for
ring terms) writes one when the tail since the last snapshot is at least
:data:`SNAPSHOT_MIN_TAIL` messages and a tenth of the wraps, at most once per
:data:`SNAPSHOT_INTERVAL_MS` (by its own clock: since it first saw the head, and since it
last wrote one). It reads the whole wraps bucket for it, exactly as of one point of its
stream (the wraps a running node keeps in memory are trimmed,
:class:`~flashgate.bridge.fastpath.WrapSeen`), in a task of its own (the wraps are written
meanwhile), writes the parts under a new snapshot id, then the head (compare-and-set on its
revision: a racing writer's head is not overwritten; a lost acknowledgement is told from a
failure by reading the head back), and removes the parts of the snapshots that were there
before it started but the one it replaces (a node may be reading that one now). Parts are
removed by a stream purge by subject, which leaves no marker behind.

The head names the wraps stream by its creation time: a bucket deleted and made again
starts its sequences over, and a snapshot of the old one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from flashgate.broker.watch import InitialDone, Value, follow_batches
from flashgate.crypto.rng import Rng
from flashgate.errors import FlashgateError, SignatureInvalid, SnapshotRefused
from flashgate.events.ring import (
    FAST_WRAP_CODEC,
    SNAPSHOT_HEAD_KEY,
    SNAPSHOT_PART_PREFIX,
    SNAPSHOT_PART_WRAPS,
    WRAP_SNAPSHOT_CODEC,
    WRAP_SNAPSHOT_PART_CODEC,
    FastWrap,
    WrapSnapshot,
    WrapSnapshotPart,
    snapshot_part_key,
)
from flashgate.events.signing import sign, verify

log = structlog.get_logger("flashgate.bridge.wrap_snapshots")

#: A new snapshot is due once the wraps bucket has this many messages after the last one's
#: sequence (and a tenth of its wraps): below that the tail costs little.
SNAPSHOT_MIN_TAIL = 1000
#: At most one snapshot per this long (each is a read of the whole wraps bucket).
SNAPSHOT_INTERVAL_MS = 60_000
#: Whether one is due is looked at this often (a round trip for the head).
SNAPSHOT_CHECK_MS = 10_000
#: A part is cut at this many bytes too (NATS' default max_payload is 1 MiB).
PART_MAX_BYTES = 512 * 1024
#: Parts read at once.
PART_CONCURRENCY = 8
#: A snapshot not read in this long is given up (every wrap is read instead).
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class SnapshotRead:
    head: WrapSnapshot
    wraps: list[FastWrap]

    @property
    def next_sequence(self) -> int:
        """Where the tail starts."""
        return self.head.stream_sequence + 1


async def head_entry(kv: KeyValue) -> tuple[bytes, int] | None:
    """The snapshot head as stored, and its revision (None: there is none)."""
    return await _get(kv, SNAPSHOT_HEAD_KEY)


async def read_head(kv: KeyValue) -> WrapSnapshot | None:
    """The snapshot head (None: there is none). Raises :class:`SnapshotRefused` for one
    that does not decode. Not yet checked (:func:`check_head`)."""
    entry = await head_entry(kv)
    if entry is None:
        return None
    try:
        return WRAP_SNAPSHOT_CODEC.decode(entry[0])
    except FlashgateError as exc:
        raise SnapshotRefused("malformed_head", f"wraps snapshot head: {exc.message}") from exc


@dataclass(frozen=True, slots=True)
class BucketFacts:
    """What a snapshot is checked against: the wraps bucket's stream, as it is now."""

    created_ms: int  # when the stream was created
    last_sequence: int
    messages: int  # (history 1: one per key ever written, its value or its marker)

    @classmethod
    async def of(cls, wraps_kv: KeyValue) -> BucketFacts:
        info = (await wraps_kv.status()).stream_info
        created = info.created
        return cls(
            created_ms=0 if created is None else int(created.timestamp() * 1000),
            last_sequence=int(info.state.last_seq),
            messages=int(info.state.messages),
        )


def check_head(
    head: WrapSnapshot,
    *,
    fleet: str,
    writer_key: Callable[[str], Ed25519PublicKey | None],
    bucket: BucketFacts,
) -> None:
    """Raise :class:`SnapshotRefused` unless ``head`` is this fleet's, signed by a node
    ``writer_key`` knows (an active one), of the wraps stream as it is (``bucket``: the
    same stream, not past its last sequence, no more wraps than it has messages)."""
    where = f"wraps snapshot {head.snapshot_id}"
    if head.fleet != fleet:
        raise SnapshotRefused("foreign", f"{where} is of another fleet")
    key = writer_key(head.writer)
    if key is None:
        raise SnapshotRefused(
            "writer_not_active", f"{where} is by {head.writer}, not an active node"
        )
    try:
        verify(head, key)
    except SignatureInvalid as exc:
        raise SnapshotRefused("bad_signature", f"{where} is not signed by {head.writer}") from exc
    if head.stream_created != bucket.created_ms:
        raise SnapshotRefused(
            "another_stream", f"{where} is of a wraps bucket made before this one"
        )
    if head.stream_sequence > bucket.last_sequence:
        raise SnapshotRefused(
            "ahead_of_bucket",
            f"{where} claims sequence {head.stream_sequence}, "
            f"past the bucket's last ({bucket.last_sequence})",
        )
    if head.wraps > bucket.messages:
        raise SnapshotRefused(
            "oversized", f"{where} claims {head.wraps} wraps, the bucket holds {bucket.messages}"
        )


async def read_snapshot(
    kv: KeyValue,
    *,
    fleet: str,
    writer_key: Callable[[str], Ed25519PublicKey | None],
    bucket: Callable[[], Awaitable[BucketFacts]],
    timeout_s: float = READ_TIMEOUT_S,
) -> SnapshotRead | None:
    """The newest snapshot, checked (module docs), or None if there is none. Raises
    :class:`SnapshotRefused` for one that is not used (``timed_out``: not read within
    ``timeout_s``). ``bucket``: the wraps bucket's facts, asked for after the head is
    read (a head written just before is never past them)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_snapshot(kv, fleet, writer_key, bucket)
    except TimeoutError as exc:
        raise SnapshotRefused("timed_out", f"wraps snapshot not read in {timeout_s:.0f} s") from exc


async def _read_snapshot(
    kv: KeyValue,
    fleet: str,
    writer_key: Callable[[str], Ed25519PublicKey | None],
    bucket: Callable[[], Awaitable[BucketFacts]],
) -> SnapshotRead | None:
    head = await read_head(kv)
    if head is None:
        return None
    check_head(head, fleet=fleet, writer_key=writer_key, bucket=await bucket())
    semaphore = asyncio.Semaphore(PART_CONCURRENCY)

    async def part(index: int) -> WrapSnapshotPart:
        async with semaphore:
            entry = await _get(kv, snapshot_part_key(head.snapshot_id, index))
        where = f"wraps snapshot {head.snapshot_id} part {index}"
        if entry is None:
            raise SnapshotRefused("part_missing", f"{where} is missing")
        raw, _ = entry
        if not hmac.compare_digest(hashlib.sha256(raw).digest(), head.parts[index]):
            raise SnapshotRefused("part_damaged", f"{where} is not the part its head names")
        try:
            decoded = WRAP_SNAPSHOT_PART_CODEC.decode(raw)
        except FlashgateError as exc:  # (its digest matched: the writer made it so)
            raise SnapshotRefused("part_damaged", f"{where}: {exc.message}") from exc
        if (decoded.fleet, decoded.snapshot_id, decoded.index) != (
            fleet,
            head.snapshot_id,
            index,
        ):
            raise SnapshotRefused("part_damaged", f"{where} names another place")
        return decoded

    tasks = [asyncio.ensure_future(part(i)) for i in range(len(head.parts))]
    try:
        parts = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    wraps = [wrap for p in parts for wrap in p.wraps]
    del parts
    where = f"wraps snapshot {head.snapshot_id}"
    if len(wraps) != head.wraps:
        raise SnapshotRefused(
            "part_damaged", f"{where} has {len(wraps)} wraps, its head says {head.wraps}"
        )
    if any(wrap.fleet != fleet for wrap in wraps):
        raise SnapshotRefused("foreign", f"{where} holds another fleet's wraps")
    if len({wrap.key for wrap in wraps}) != len(wraps):
        raise SnapshotRefused("part_damaged", f"{where} holds a key twice")
    return SnapshotRead(head, wraps)


async def current_raw_wraps(wraps_kv: KeyValue) -> tuple[dict[str, bytes], int]:
    """Every wrap in the bucket as stored, by key, exactly as of one point of its stream
    (the buffered watch: no key written meanwhile is missed), and a stream sequence at or
    before that point, after every wrap returned (0: none)."""
    raw: dict[str, bytes] = {}
    last = 0
    lists = follow_batches(wraps_kv)
    async with contextlib.aclosing(lists):
        async for events in lists:
            if isinstance(events[0], InitialDone):
                break
            for event in events:
                if isinstance(event, Value):
                    raw[event.key] = event.value
                    last = max(last, event.revision)
    return raw, last


def placed_wrap(key: str, raw: bytes, fleet: str) -> FastWrap | None:
    """The wrap stored at ``key``, if it decodes and is this fleet's wrap of that key (a
    reader would refuse any other: it has no place in a snapshot)."""
    try:
        wrap = FAST_WRAP_CODEC.decode(raw)
    except FlashgateError:
        return None
    return wrap if wrap.key == key and wrap.fleet == fleet else None


class PartCutter:
    """Cuts wraps into encoded parts of at most SNAPSHOT_PART_WRAPS wraps and about
    PART_MAX_BYTES each, one part at a time (a node holding 100k wraps never has every
    part encoded at once)."""

    def __init__(self, fleet: str, snapshot_id: str) -> None:
        self.fleet, self.snapshot_id = fleet, snapshot_id
        self.parts = 0
        self._chunk: list[FastWrap] = []
        self._size = 0

    def add(self, wrap: FastWrap, length: int) -> bytes | None:
        """Take ``wrap`` (``length`` bytes encoded); a part it closed, if any."""
        closed = None
        chunk = self._chunk
        if chunk and (len(chunk) >= SNAPSHOT_PART_WRAPS or self._size + length > PART_MAX_BYTES):
            closed = self.close()
        self._chunk.append(wrap)
        self._size += length
        return closed

    def close(self) -> bytes | None:
        """The part being cut, if it holds any wrap."""
        if not self._chunk:
            return None
        part = WrapSnapshotPart(
            fleet=self.fleet, snapshot_id=self.snapshot_id, index=self.parts, wraps=self._chunk
        )
        self.parts += 1
        self._chunk, self._size = [], 0
        return WRAP_SNAPSHOT_PART_CODEC.encode(part)


async def write_snapshot(
    kv: KeyValue,
    wraps_kv: KeyValue,
    *,
    fleet: str,
    node_id: str,
    signing_key: Ed25519PrivateKey,
    rng: Rng,
    clock: Callable[[], int],
    replaces: WrapSnapshot | None,
    revision: int | None,
) -> WrapSnapshot | None:
    """Read the wraps bucket and publish its snapshot (module docs), replacing the head at
    ``revision`` (None: there is none), which is ``replaces`` (None: none, or one refused:
    its parts are not kept). None: nothing to snapshot, or another node's head came
    first."""
    facts = await BucketFacts.of(wraps_kv)
    raw, last = await current_raw_wraps(wraps_kv)
    if last == 0:
        return None
    # The snapshots whose parts may go once this one is the head: those there now (a
    # writer that starts later keeps its own).
    older = await _part_ids(kv)
    snapshot_id = rng.token_bytes(16).hex()
    cutter = PartCutter(fleet, snapshot_id)
    digests: list[bytes] = []
    count = 0
    encoded: bytes | None = None

    async def put(part: bytes | None) -> None:
        if part is not None:
            digests.append(hashlib.sha256(part).digest())
            await kv.put(snapshot_part_key(snapshot_id, len(digests) - 1), part)

    try:
        for key in list(raw):
            stored = raw.pop(key)  # let go as it is taken
            wrap = placed_wrap(key, stored, fleet)
            if wrap is not None:
                count += 1
                await put(cutter.add(wrap, len(stored)))
        await put(cutter.close())
        head = sign(
            WrapSnapshot(
                fleet=fleet,
                snapshot_id=snapshot_id,
                stream_created=facts.created_ms,
                stream_sequence=last,
                wraps=count,
                parts=digests,
                writer=node_id,
                written_at=clock(),
            ),
            signing_key,
        )
        encoded = WRAP_SNAPSHOT_CODEC.encode(head)
        if revision is None:
            await kv.create(SNAPSHOT_HEAD_KEY, encoded)
        else:
            await kv.update(SNAPSHOT_HEAD_KEY, encoded, last=revision)
    except Exception as exc:
        # Not written, or written and its acknowledgement lost: the head says which.
        if encoded is not None:
            with contextlib.suppress(Exception):
                entry = await head_entry(kv)
                if entry is not None and entry[0] == encoded:
                    return await _written(kv, head, replaces, older)
        log.warning("wraps snapshot not written", error=type(exc).__name__)
        await _purge_parts(kv, {snapshot_id})
        return None
    return await _written(kv, head, replaces, older)


async def _written(
    kv: KeyValue, head: WrapSnapshot, replaces: WrapSnapshot | None, older: set[str]
) -> WrapSnapshot:
    older -= {head.snapshot_id, None if replaces is None else replaces.snapshot_id}
    await _purge_parts(kv, older)
    log.info(
        "wraps snapshot written",
        snapshot=head.snapshot_id,
        stream_sequence=head.stream_sequence,
        wraps=head.wraps,
        parts=len(head.parts),
    )
    return head


async def _part_ids(kv: KeyValue) -> set[str]:
    """The snapshot ids that have parts in the bucket."""
    try:
        keys = await kv.keys()
    except Exception:  # none (nats-py raises for an empty bucket)
        return set()
    return {
        key[len(SNAPSHOT_PART_PREFIX) :].split(".", 1)[0]
        for key in keys
        if key.startswith(SNAPSHOT_PART_PREFIX)
    }


async def _purge_parts(kv: KeyValue, snapshot_ids: set[str]) -> None:
    """Remove the parts of these snapshots from the bucket's stream: a stream purge by
    subject leaves no marker (a KV purge would leave one per key, for ever)."""
    for snapshot_id in snapshot_ids:
        with contextlib.suppress(Exception):
            await kv._js.purge_stream(
                kv._stream, subject=f"{kv._pre}{SNAPSHOT_PART_PREFIX}{snapshot_id}.>"
            )


async def _get(kv: KeyValue, key: str) -> tuple[bytes, int] | None:
    """The value and revision of ``key`` (None: never written, deleted or purged)."""
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    if entry.value is None or entry.operation is not None or entry.revision is None:
        return None
    return bytes(entry.value), entry.revision

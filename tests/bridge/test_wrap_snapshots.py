"""Snapshots of the wraps bucket (flashgate/bridge/wrap_snapshots.py), on a real
nats-server: a snapshot and the tail after it are the bucket, wherever the bucket changed
after it; every refused snapshot says why; a racing writer's head is never overwritten;
old parts are purged, the replaced snapshot's kept for readers in flight."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import secrets
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.bridge import wrap_snapshots
from flashgate.bridge.wrap_snapshots import (
    BucketFacts,
    PartCutter,
    SnapshotRead,
    current_raw_wraps,
    placed_wrap,
    read_head,
    read_snapshot,
    write_snapshot,
)
from flashgate.broker.watch import Deleted, InitialDone, Value, follow_batches
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.errors import SnapshotRefused
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
from flashgate.events.signing import sign

FLEET = "snapfleet"
WRITER = "node-1"
KEY = Ed25519PrivateKey.generate()
TERM = secrets.token_hex(16)


def clock() -> int:
    import time

    return int(time.time() * 1000)


def writer_key(known: dict[str, Ed25519PublicKey]) -> Callable[[str], Ed25519PublicKey | None]:
    return known.get


ACTIVE = writer_key({WRITER: KEY.public_key()})


def wrap(key: str, version: int = 1, fleet: str = FLEET) -> FastWrap:
    return sign(
        FastWrap(
            fleet=fleet,
            key=key,
            version=version,
            epoch=1,
            wrapped_key_sha256=secrets.token_bytes(32),
            term_id=TERM,
            writer=WRITER,
            written_at=clock(),
            nonce=secrets.token_bytes(12),
            sealed=secrets.token_bytes(48),
        ),
        KEY,
    )


async def buckets(js: JetStreamContext) -> tuple[KeyValue, KeyValue]:
    suffix = secrets.token_hex(4)
    wraps = await js.create_key_value(bucket=f"t-wraps-{suffix}", history=1)
    snaps = await js.create_key_value(bucket=f"t-snaps-{suffix}", history=1)
    return wraps, snaps


async def put_wraps(kv: KeyValue, keys: list[str], version: int = 1) -> None:
    for key in keys:
        await kv.put(key, FAST_WRAP_CODEC.encode(wrap(key, version)))


async def snapshot(snaps: KeyValue, wraps: KeyValue, node_id: str = WRITER) -> WrapSnapshot | None:
    entry = await wrap_snapshots.head_entry(snaps)
    replaces = None if entry is None else WRAP_SNAPSHOT_CODEC.decode(entry[0])
    return await write_snapshot(
        snaps,
        wraps,
        fleet=FLEET,
        node_id=node_id,
        signing_key=KEY,
        rng=SYSTEM_RNG,
        clock=clock,
        replaces=replaces,
        revision=None if entry is None else entry[1],
    )


async def last_sequence(kv: KeyValue) -> int:
    return int((await kv.status()).stream_info.state.last_seq)


async def read(
    snaps: KeyValue, wraps: KeyValue, *, fleet: str = FLEET, **overrides: object
) -> SnapshotRead | None:
    """The snapshot as a node reads it; ``overrides``: writer_key, or BucketFacts fields."""
    keys = overrides.pop("writer_key", ACTIVE)

    async def bucket() -> BucketFacts:
        facts = await BucketFacts.of(wraps)
        return dataclasses.replace(facts, **overrides)  # type: ignore[arg-type]

    return await read_snapshot(snaps, fleet=fleet, writer_key=keys, bucket=bucket)  # type: ignore[arg-type]


async def through_snapshot(snaps: KeyValue, wraps: KeyValue) -> dict[str, bytes]:
    """What a starting node ends with: the snapshot's wraps, then the tail applied."""
    got = await read(snaps, wraps)
    assert got is not None
    state = {w.key: FAST_WRAP_CODEC.encode(w) for w in got.wraps}
    lists = follow_batches(wraps, stream=True, start_sequence=got.next_sequence)
    async with contextlib.aclosing(lists):
        while True:
            async with asyncio.timeout(10):
                events = await anext(lists)
            if isinstance(events[0], InitialDone):
                return state
            for event in events:
                assert event.revision >= got.next_sequence
                if isinstance(event, Value):
                    state[event.key] = event.value
                elif isinstance(event, Deleted):
                    state.pop(event.key, None)


async def whole_bucket(wraps: KeyValue) -> dict[str, bytes]:
    raw, _ = await current_raw_wraps(wraps)
    found = [placed_wrap(key, value, FLEET) for key, value in raw.items()]
    return {w.key: FAST_WRAP_CODEC.encode(w) for w in found if w is not None}


async def test_a_snapshot_and_its_tail_are_the_bucket(js: JetStreamContext) -> None:
    wraps, snaps = await buckets(js)
    keys = [f"app.s{i:04d}" for i in range(2500)]  # three parts
    await put_wraps(wraps, keys)
    head = await snapshot(snaps, wraps)
    assert head is not None and head.wraps == len(keys) and len(head.parts) == 3
    assert head.stream_sequence == await last_sequence(wraps)
    # after it: overwrites, deletes, purges, new keys, and a key deleted then back
    await put_wraps(wraps, keys[:40], version=2)
    for key in keys[40:60]:
        await wraps.delete(key)
    for key in keys[60:70]:
        await wraps.purge(key)
    await put_wraps(wraps, ["new.k1", "new.k2"])
    await wraps.delete(keys[80])
    await put_wraps(wraps, [keys[80]], version=3)
    expected = await whole_bucket(wraps)
    assert len(expected) == len(keys) - 30 + 2
    assert await through_snapshot(snaps, wraps) == expected


async def test_a_snapshot_with_no_tail_is_the_bucket_and_the_tail_is_empty(
    js: JetStreamContext,
) -> None:
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, [f"app.s{i}" for i in range(10)])
    await snapshot(snaps, wraps)
    assert await through_snapshot(snaps, wraps) == await whole_bucket(wraps)


async def test_no_snapshot_and_an_empty_bucket(js: JetStreamContext) -> None:
    wraps, snaps = await buckets(js)
    assert await read(snaps, wraps) is None
    assert await snapshot(snaps, wraps) is None  # nothing to snapshot
    assert await read_head(snaps) is None


async def refused(snaps: KeyValue, wraps: KeyValue, **overrides: object) -> str:
    with pytest.raises(SnapshotRefused) as caught:
        await read(snaps, wraps, **overrides)
    assert "\n" not in caught.value.message
    return caught.value.reason


async def test_each_refused_snapshot_says_why(js: JetStreamContext) -> None:
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, [f"app.s{i:04d}" for i in range(1500)])
    head = await snapshot(snaps, wraps)
    assert head is not None
    assert await read(snaps, wraps) is not None

    # the writer not active (revoked, unknown), or another key signed it
    assert await refused(snaps, wraps, writer_key=writer_key({})) == "writer_not_active"
    stranger = writer_key({WRITER: Ed25519PrivateKey.generate().public_key()})
    assert await refused(snaps, wraps, writer_key=stranger) == "bad_signature"
    # another fleet reading it; a sequence the bucket has not reached; more wraps than
    # the bucket has messages; another stream (the bucket made again)
    assert await refused(snaps, wraps, fleet="otherfleet") == "foreign"
    behind = head.stream_sequence - 1
    assert await refused(snaps, wraps, last_sequence=behind) == "ahead_of_bucket"
    assert await refused(snaps, wraps, messages=head.wraps - 1) == "oversized"
    assert await refused(snaps, wraps, created_ms=head.stream_created + 1) == "another_stream"

    # a part changed (even to a well-formed part of as many wraps), or gone
    part0 = snapshot_part_key(head.snapshot_id, 0)
    original = (await snaps.get(part0)).value
    assert original is not None
    other = WRAP_SNAPSHOT_PART_CODEC.decode(original)
    swapped = WRAP_SNAPSHOT_PART_CODEC.encode(
        WRAP_SNAPSHOT_PART_CODEC.type(
            fleet=other.fleet,
            snapshot_id=other.snapshot_id,
            index=0,
            wraps=[*other.wraps[:-1], wrap(other.wraps[-1].key)],
        )
    )
    await snaps.put(part0, swapped)
    assert await refused(snaps, wraps) == "part_damaged"
    await snaps.purge(part0)
    assert await refused(snaps, wraps) == "part_missing"
    await snaps.put(part0, original)
    assert await read(snaps, wraps) is not None

    # a head changed after signing (more wraps claimed), or not a head at all
    forged = WRAP_SNAPSHOT_CODEC.encode(
        WrapSnapshot(**{**_fields(head), "stream_sequence": head.stream_sequence - 5})  # type: ignore[arg-type]
    )
    await snaps.put(SNAPSHOT_HEAD_KEY, forged)
    assert await refused(snaps, wraps) == "bad_signature"
    await snaps.put(SNAPSHOT_HEAD_KEY, b"\x93not a head")
    assert await refused(snaps, wraps) == "malformed_head"


async def test_a_signed_snapshot_of_another_fleets_wraps_or_parts_is_refused(
    js: JetStreamContext,
) -> None:
    """Parts are bound to their head by digest, and to the fleet and place they say."""
    wraps, snaps = await buckets(js)
    await wraps.put("app.s1", FAST_WRAP_CODEC.encode(wrap("app.s1", fleet="otherfleet")))
    await put_wraps(wraps, ["app.s2"])
    head = await snapshot(snaps, wraps)
    assert head is not None and head.wraps == 1  # the writer leaves out what is not its fleet's
    # a writer that puts another fleet's wrap in anyway: refused whole
    sid = secrets.token_hex(16)
    part = WRAP_SNAPSHOT_PART_CODEC.encode(
        WRAP_SNAPSHOT_PART_CODEC.type(
            fleet=FLEET, snapshot_id=sid, index=0, wraps=[wrap("app.s1", fleet="otherfleet")]
        )
    )
    await signed_head(snaps, wraps, [part], sid, 1)
    assert await refused(snaps, wraps) == "foreign"


def _fields(head: WrapSnapshot) -> dict[str, object]:
    return {name: getattr(head, name) for name in head.__struct_fields__}


async def test_a_racing_writers_head_is_not_overwritten(js: JetStreamContext) -> None:
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, [f"app.s{i}" for i in range(5)])
    first = await snapshot(snaps, wraps)
    assert first is not None
    entry = await wrap_snapshots.head_entry(snaps)
    assert entry is not None
    # two writers saw the same head; the first to write wins, the other's parts go
    won = await snapshot(snaps, wraps, node_id="node-2")
    assert won is not None
    lost = await write_snapshot(
        snaps,
        wraps,
        fleet=FLEET,
        node_id="node-3",
        signing_key=KEY,
        rng=SYSTEM_RNG,
        clock=clock,
        replaces=first,
        revision=entry[1],
    )
    assert lost is None
    head = await read_head(snaps)
    assert head is not None and head.snapshot_id == won.snapshot_id
    assert await part_ids(snaps) == {first.snapshot_id, won.snapshot_id}


async def part_ids(snaps: KeyValue) -> set[str]:
    keys = await snaps.keys()
    return {
        key[len(SNAPSHOT_PART_PREFIX) :].split(".")[0]
        for key in keys
        if key.startswith(SNAPSHOT_PART_PREFIX)
    }


async def test_old_parts_go_and_the_replaced_snapshots_stay_for_readers(
    js: JetStreamContext,
) -> None:
    wraps, snaps = await buckets(js)
    heads = []
    for round_ in range(3):
        await put_wraps(wraps, [f"app.r{round_}"])
        head = await snapshot(snaps, wraps)
        assert head is not None
        heads.append(head.snapshot_id)
    assert await part_ids(snaps) == set(heads[1:])


def test_parts_are_cut_by_count_and_by_size_and_keep_every_wrap_in_order() -> None:
    wraps = [wrap(f"app.s{i:05d}") for i in range(SNAPSHOT_PART_WRAPS * 2 + 3)]
    cutter = PartCutter(FLEET, TERM)
    parts = [p for w in wraps if (p := cutter.add(w, len(FAST_WRAP_CODEC.encode(w))))]
    last = cutter.close()
    assert last is not None and cutter.close() is None
    decoded = [WRAP_SNAPSHOT_PART_CODEC.decode(p) for p in [*parts, last]]
    assert [len(p.wraps) for p in decoded] == [SNAPSHOT_PART_WRAPS, SNAPSHOT_PART_WRAPS, 3]
    assert [p.index for p in decoded] == [0, 1, 2]
    assert [w for p in decoded for w in p.wraps] == wraps
    # by size: wraps said to be large close a part before it is full
    cutter = PartCutter(FLEET, TERM)
    big = wrap_snapshots.PART_MAX_BYTES // 3
    closed = [cutter.add(w, big) for w in wraps[:7]]
    assert sum(p is not None for p in closed) == 2  # 3 + 3, and 1 left
    assert all(len(p) < wrap_snapshots.PART_MAX_BYTES for p in closed if p is not None)


async def signed_head(
    snaps: KeyValue, wraps: KeyValue, parts: list[bytes], snapshot_id: str, count: int
) -> None:
    """A head signed by the active writer over ``parts`` (put under ``snapshot_id``)."""
    facts = await BucketFacts.of(wraps)
    for index, part in enumerate(parts):
        await snaps.put(snapshot_part_key(snapshot_id, index), part)
    head = sign(
        WrapSnapshot(
            fleet=FLEET,
            snapshot_id=snapshot_id,
            stream_created=facts.created_ms,
            stream_sequence=facts.last_sequence,
            wraps=count,
            parts=[hashlib.sha256(p).digest() for p in parts],
            writer=WRITER,
            written_at=clock(),
        ),
        KEY,
    )
    await snaps.put(SNAPSHOT_HEAD_KEY, WRAP_SNAPSHOT_CODEC.encode(head))


def encoded_part(snapshot_id: str, index: int, wraps: list[FastWrap]) -> bytes:
    return WRAP_SNAPSHOT_PART_CODEC.encode(
        WrapSnapshotPart(fleet=FLEET, snapshot_id=snapshot_id, index=index, wraps=wraps)
    )


async def test_a_signed_head_over_misplaced_miscounted_or_repeated_parts_is_refused(
    js: JetStreamContext,
) -> None:
    """Even signed by an active node: parts of another snapshot or place, a count that is
    not the parts', a key twice."""
    wraps, snaps = await buckets(js)
    keys = [f"app.s{i}" for i in range(6)]
    await put_wraps(wraps, keys)
    some = [wrap(key) for key in keys]
    sid, other = secrets.token_hex(16), secrets.token_hex(16)
    await signed_head(snaps, wraps, [encoded_part(other, 0, some)], sid, 6)
    assert await refused(snaps, wraps) == "part_damaged"  # another snapshot's part
    await signed_head(snaps, wraps, [encoded_part(sid, 1, some)], sid, 6)
    assert await refused(snaps, wraps) == "part_damaged"  # another index
    await signed_head(snaps, wraps, [encoded_part(sid, 0, some)], sid, 5)
    assert await refused(snaps, wraps) == "part_damaged"  # count
    await signed_head(snaps, wraps, [encoded_part(sid, 0, [*some[:5], some[0]])], sid, 6)
    assert await refused(snaps, wraps) == "part_damaged"  # a key twice
    await signed_head(snaps, wraps, [encoded_part(sid, 0, some)], sid, 6)
    got = await read(snaps, wraps)
    assert got is not None and [w.key for w in got.wraps] == keys


async def test_a_snapshot_of_a_bucket_made_again_is_refused(js: JetStreamContext) -> None:
    """A bucket deleted and made again starts its sequences over: a snapshot of the old
    one would stand for the new one's first messages."""
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, [f"old.s{i}" for i in range(20)])
    assert await snapshot(snaps, wraps) is not None
    name = wraps._name  # type: ignore[attr-defined]
    await js.delete_key_value(name)
    await asyncio.sleep(0.01)  # (creation times are kept to the millisecond)
    again = await js.create_key_value(bucket=name, history=1)
    await put_wraps(again, [f"new.s{i}" for i in range(25)])
    assert await refused(snaps, again) == "another_stream"


async def test_a_wrap_stored_under_another_key_or_fleet_is_left_out(js: JetStreamContext) -> None:
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, ["app.good"])
    await wraps.put("app.moved", FAST_WRAP_CODEC.encode(wrap("app.elsewhere")))
    await wraps.put("app.foreign", FAST_WRAP_CODEC.encode(wrap("app.foreign", fleet="other")))
    await wraps.put("app.junk", b"\xc1")
    head = await snapshot(snaps, wraps)
    assert head is not None and head.wraps == 1
    got = await read(snaps, wraps)
    assert got is not None and [w.key for w in got.wraps] == ["app.good"]


async def test_a_head_written_first_by_another_is_not_overwritten(js: JetStreamContext) -> None:
    """Two writers that saw no head: the second's create fails, its parts go."""
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, ["app.s1"])
    first = await snapshot(snaps, wraps)
    assert first is not None
    lost = await write_snapshot(
        snaps,
        wraps,
        fleet=FLEET,
        node_id="node-2",
        signing_key=KEY,
        rng=SYSTEM_RNG,
        clock=clock,
        replaces=None,
        revision=None,
    )
    assert lost is None
    head = await read_head(snaps)
    assert head is not None and head.snapshot_id == first.snapshot_id
    assert await part_ids(snaps) == {first.snapshot_id}


async def test_a_head_written_whose_acknowledgement_was_lost_keeps_its_parts(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    wraps, snaps = await buckets(js)
    await put_wraps(wraps, ["app.s1", "app.s2"])
    update = snaps.update

    async def applied_then_lost(key: str, value: bytes, last: int) -> int:
        await update(key, value, last=last)
        raise TimeoutError

    first = await snapshot(snaps, wraps)
    assert first is not None
    await put_wraps(wraps, ["app.s3"])
    monkeypatch.setattr(snaps, "update", applied_then_lost)
    second = await snapshot(snaps, wraps)
    assert second is not None  # it is the head: not taken for a failure
    got = await read(snaps, wraps)
    assert got is not None and got.head.snapshot_id == second.snapshot_id
    assert len(got.wraps) == 3


async def test_old_parts_leave_no_marker_behind(js: JetStreamContext) -> None:
    """Parts go by a stream purge by subject: after many snapshots the bucket's stream
    holds the head and the two kept snapshots' parts, nothing else."""
    wraps, snaps = await buckets(js)
    for round_ in range(8):
        await put_wraps(wraps, [f"app.r{round_}"])
        assert await snapshot(snaps, wraps) is not None
    state = (await snaps.status()).stream_info.state
    assert state.messages == 1 + 2  # the head, a part each for the last two snapshots

"""flashgate.broker.watch: current values, one InitialDone, then live changes.

The watch ends its initial values by the server's counts, not by nats-py's marker (which
can come first, nats-io/nats.py#842); the replayed-feed tests check those counts
deterministically. On the real server, the stress tests
restart the watch many times on a small bucket, and with a writer running while the
watch starts, and check each time that the initial values are exactly the bucket's
state at one point of its stream and that the live changes are exactly everything
written after that point (this is the test that catches the server's
last-per-subject start-up, see the module docstring of flashgate.broker.watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_DEL, KV_OP, KeyValue

from flashgate.broker import watch
from flashgate.broker.connection import connect
from flashgate.broker.declare import declare_fleet
from flashgate.broker.watch import (
    Deleted,
    InitialDone,
    Value,
    WatchEvent,
    _InitialValues,
    current_values,
    follow,
)
from flashgate.errors import BrokerError, BrokerUnavailable
from flashgate.events.subjects import FleetNames

EVENT_TIMEOUT = 5.0
PROMPT = 2.0  # an empty bucket must not wait for anything: well below any watch timeout
STRESS_STARTS = 50
RACING_STARTS = 30


@pytest.fixture
async def kv(js: JetStreamContext, fleet_names: FleetNames) -> KeyValue:
    return (await declare_fleet(js, fleet_names)).secrets


async def next_event(events: AsyncIterator[WatchEvent]) -> WatchEvent:
    async with asyncio.timeout(EVENT_TIMEOUT):
        return await anext(events)


async def initial_part(events: AsyncIterator[WatchEvent]) -> tuple[list[Value], InitialDone]:
    """The events up to and including InitialDone; only Values may come before it."""
    values: list[Value] = []
    while True:
        event = await next_event(events)
        if isinstance(event, InitialDone):
            return values, event
        assert isinstance(event, Value), event
        values.append(event)


def by_key(values: list[Value]) -> dict[str, bytes]:
    found = {value.key: value.value for value in values}
    assert len(found) == len(values), "a key came twice in the initial values"
    return found


# --- the end of the initial values, without a server ------------------------------------


def test_the_entry_with_delta_zero_ends_the_initial_values() -> None:
    initial = _InitialValues()
    assert not initial.add(Value("a", 3, b"a"), delta=2)
    assert not initial.add(Value("b", 4, b"b"), delta=5)  # writes came in meanwhile
    assert initial.add(Deleted("a", 9), delta=0)
    assert initial.values() == [Value("b", 4, b"b")]


def test_the_first_delta_bounds_the_initial_values_under_constant_writes() -> None:
    initial = _InitialValues()
    assert not initial.add(Value("a", 1, b"a1"), delta=2)
    assert not initial.add(Value("b", 2, b"b1"), delta=4)
    assert initial.add(Value("a", 5, b"a2"), delta=3)  # the 3rd of 1 + 2 pending
    assert initial.values() == [Value("b", 2, b"b1"), Value("a", 5, b"a2")]


# --- the feed replayed without a server ----------------------------------------------------


class ReplayedFeed:
    """Stands in for a watch's feed (a consumer on the server): hands on the given events
    with their deltas, then waits; its consumer info says what the server had sent
    (``delivered``) and has left."""

    stopped: ClassVar[list[DeliverPolicy]] = []

    def __init__(
        self,
        updates: list[tuple[Value | Deleted, int]],
        *,
        delivered: int,
        policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> None:
        self._updates = list(updates)
        self.policy = policy
        self.last_sequence = 0
        self._info = SimpleNamespace(
            num_pending=0,
            delivered=SimpleNamespace(consumer_seq=delivered, stream_seq=delivered),
            config=SimpleNamespace(deliver_policy=policy),
        )

    async def consumer_info(self) -> Any:
        return self._info

    async def start(self, kv: Any) -> None:
        return None

    async def next(self) -> tuple[Value | Deleted, int, int]:
        if self._updates:
            event, delta = self._updates.pop(0)
            self.last_sequence = event.revision
            return event, event.revision, delta
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def next_batch(
        self, limit: int, last: Callable[[int | None], bool] | None = None
    ) -> list[tuple[Value | Deleted, int, int]]:
        """Every update left, up to ``limit``, as the feeds hand them on: none after the
        one ``last`` is True for (those stay)."""
        batch = []
        while True:
            item = await self.next()  # (waits for ever when there is none)
            batch.append(item)
            if last is not None and last(item[2]):
                return batch
            if not self._updates or len(batch) >= limit:
                return batch

    async def stop(self) -> None:
        ReplayedFeed.stopped.append(self.policy)


class ReplayedBucket:
    _name = "replayed"


async def replayed(
    updates: list[tuple[Value | Deleted, int]],
    *,
    delivered: int,
    count: int,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool = False,
) -> list[WatchEvent]:
    """The first ``count`` events of follow() over the replayed updates (the bucket's
    stream). Streamed, the initial values come from a pull feed and the live changes from
    an ordered feed started after the last message the pull feed handed on."""
    made: list[tuple[str, DeliverPolicy, int]] = []

    def ordered(kv: Any, policy: DeliverPolicy = DeliverPolicy.ALL, start: int = 0) -> Any:
        made.append(("ordered", policy, start))
        after = [(event, delta) for event, delta in updates if event.revision >= start]
        return ReplayedFeed(after, delivered=delivered, policy=policy)

    def pull(kv: Any) -> Any:
        made.append(("pull", DeliverPolicy.LAST_PER_SUBJECT, 0))
        return ReplayedFeed(updates, delivered=delivered, policy=DeliverPolicy.LAST_PER_SUBJECT)

    monkeypatch.setattr(watch, "OrderedFeed", ordered)
    monkeypatch.setattr(watch, "PullFeed", pull)
    ReplayedFeed.stopped = []
    events: list[WatchEvent] = []
    watching = follow(cast(KeyValue, ReplayedBucket()), stream=stream)
    async with contextlib.aclosing(watching) as iterator:
        for _ in range(count):
            events.append(await next_event(iterator))
    assert ReplayedFeed.stopped[-1] == made[-1][1]  # the feed in use is stopped
    if stream and made[-1][0] == "ordered":
        initial = [e for e in events if not isinstance(e, InitialDone)][
            : events.index(next(e for e in events if isinstance(e, InitialDone)))
        ]
        last = max((e.revision for e in initial), default=0)
        assert made == [
            ("pull", DeliverPolicy.LAST_PER_SUBJECT, 0),
            (
                "ordered",
                DeliverPolicy.BY_START_SEQUENCE if last else DeliverPolicy.ALL,
                last + 1 if last else 0,
            ),
        ]
    elif not stream:
        assert made == [("ordered", DeliverPolicy.ALL, 0)]
    return events


STARTUP: list[tuple[Value | Deleted, int]] = [
    (Value("repo.a", 1, b"a1"), 3),
    (Value("repo.b", 2, b"b1"), 2),
    (Value("repo.a", 3, b"a2"), 1),
    (Deleted("repo.b", 4), 0),  # b deleted: not a current value
]
LIVE_VALUE = Value("repo.c", 5, b"c1")
LIVE = (LIVE_VALUE, 0)
EXPECTED = [Value("repo.a", 3, b"a2"), InitialDone(1), LIVE_VALUE]


async def test_initial_values_end_at_delta_zero_then_live(monkeypatch: pytest.MonkeyPatch) -> None:
    events = await replayed(
        [*STARTUP, LIVE], delivered=len(STARTUP), count=3, monkeypatch=monkeypatch
    )
    assert events == EXPECTED


async def test_nothing_sent_and_nothing_pending_is_an_empty_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = await replayed([LIVE], delivered=0, count=2, monkeypatch=monkeypatch)
    assert events == [InitialDone(0), LIVE_VALUE]


async def test_something_sent_waits_for_it_however_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server says it sent messages: the watch waits for them, it does not end empty
    (nats-io/nats.py#842 ended here when the client had processed none yet)."""
    events = await replayed(STARTUP, delivered=len(STARTUP), count=2, monkeypatch=monkeypatch)
    assert events == [Value("repo.a", 3, b"a2"), InitialDone(1)]


async def test_streamed_initial_values_come_as_they_arrive_deletes_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streamed: each value is handed on as it comes (a key again after a gap, in
    revision order), deletes among them, and the marker counts the values."""
    events = await replayed(
        [*STARTUP, LIVE], delivered=len(STARTUP), count=6, monkeypatch=monkeypatch, stream=True
    )
    assert events == [
        Value("repo.a", 1, b"a1"),
        Value("repo.b", 2, b"b1"),
        Value("repo.a", 3, b"a2"),
        Deleted("repo.b", 4),
        InitialDone(3),
        LIVE_VALUE,
    ]


async def test_streamed_values_are_handed_on_before_the_cut_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first value is out while the server still has values to send (the buffered
    form would wait for the cut: here it never comes)."""
    first = (Value("repo.a", 1, b"a1"), 5)
    events = await replayed([first], delivered=1, count=1, monkeypatch=monkeypatch, stream=True)
    assert events == [Value("repo.a", 1, b"a1")]


async def test_streamed_empty_bucket_is_done_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    events = await replayed([LIVE], delivered=0, count=2, monkeypatch=monkeypatch, stream=True)
    assert events == [InitialDone(0), LIVE_VALUE]


async def test_batches_are_the_events_in_order_at_most_limit_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """follow_batches: follow's events, in lists of what has arrived (at most ``limit``,
    none empty, the marker alone); the cut may fall inside what the feed holds: what is
    after it is not taken, it comes live."""
    pulled = ReplayedFeed([*STARTUP, LIVE], delivered=len(STARTUP))
    monkeypatch.setattr(watch, "PullFeed", lambda kv: pulled)

    def ordered(kv: Any, policy: DeliverPolicy = DeliverPolicy.ALL, start: int = 0) -> Any:
        assert (policy, start) == (DeliverPolicy.BY_START_SEQUENCE, 5)
        return ReplayedFeed([LIVE], delivered=0, policy=policy)

    monkeypatch.setattr(watch, "OrderedFeed", ordered)
    lists = watch.follow_batches(cast(KeyValue, ReplayedBucket()), stream=True, limit=3)
    async with contextlib.aclosing(lists) as iterator:
        got = [await anext(iterator) for _ in range(4)]
    assert got == [
        [Value("repo.a", 1, b"a1"), Value("repo.b", 2, b"b1"), Value("repo.a", 3, b"a2")],
        [Deleted("repo.b", 4)],
        [InitialDone(3)],
        [LIVE_VALUE],
    ]
    assert pulled.last_sequence == 4  # LIVE was not taken from the pull feed


# --- on the server -------------------------------------------------------------------------


async def test_an_empty_bucket_is_done_at_once_then_live(kv: KeyValue) -> None:
    async with contextlib.aclosing(follow(kv)) as events:
        async with asyncio.timeout(PROMPT):
            assert await anext(events) == InitialDone(0)
        first = await kv.put("repo.a", b"1")
        assert await next_event(events) == Value("repo.a", first, b"1")
        await kv.delete("repo.a")
        deleted = await next_event(events)
        assert isinstance(deleted, Deleted) and deleted.key == "repo.a"
        assert deleted.revision > first


async def test_current_values_of_an_empty_bucket_is_prompt(kv: KeyValue) -> None:
    async with asyncio.timeout(PROMPT):
        assert await current_values(kv) == {}


async def fill(kv: KeyValue) -> tuple[dict[str, Value], list[str]]:
    """Twelve keys, some updated several times, some deleted or purged afterwards: the
    expected current values (latest revisions) and the keys that are gone."""
    latest: dict[str, Value] = {}
    for round_ in range(3):
        for i in range(12):
            if round_ == 0 or i % (round_ + 2) == 0:
                key, value = f"repo.k{i:02d}", f"k{i}-r{round_}".encode()
                latest[key] = Value(key, await kv.put(key, value), value)
    gone = ["repo.k03", "repo.k06", "repo.k07"]
    await kv.delete(gone[0])
    await kv.delete(gone[1])
    await kv.purge(gone[2])
    for key in gone:
        del latest[key]
    return latest, gone


async def test_initial_values_are_the_latest_of_each_key_then_live_changes_in_order(
    kv: KeyValue,
) -> None:
    latest, gone = await fill(kv)
    expected = sorted(latest.values(), key=lambda value: value.revision)

    async with contextlib.aclosing(follow(kv)) as events:
        values, done = await initial_part(events)
        assert values == expected
        assert done == InitialDone(len(expected))

        put = await kv.put("repo.k00", b"live")
        await kv.delete("repo.k01")
        again = await kv.put(gone[0], b"back")
        await kv.purge("repo.k02")
        live = [await next_event(events) for _ in range(4)]

    assert live[0] == Value("repo.k00", put, b"live")
    assert isinstance(live[1], Deleted) and live[1].key == "repo.k01"
    assert live[2] == Value(gone[0], again, b"back")
    assert isinstance(live[3], Deleted) and live[3].key == "repo.k02"
    revisions = [event.revision for event in live if not isinstance(event, InitialDone)]
    assert put < revisions[1] < again < revisions[3]


async def test_streamed_initial_values_are_the_latest_revisions_as_they_come(
    kv: KeyValue,
) -> None:
    """Streamed: the latest revision of each key only (no superseded one is handed on,
    so a caller acting at once acts on current values), the deleted keys as deletes."""
    latest, gone = await fill(kv)
    async with contextlib.aclosing(follow(kv, stream=True)) as events:
        initial: list[WatchEvent] = []
        while not isinstance(event := await next_event(events), InitialDone):
            initial.append(event)
        values = [e for e in initial if isinstance(e, Value)]
        assert values == sorted(latest.values(), key=lambda value: value.revision)
        assert {e.key for e in initial if isinstance(e, Deleted)} == set(gone)
        assert event == InitialDone(len(values))
        put = await kv.put("repo.k00", b"live")
        assert await next_event(events) == Value("repo.k00", put, b"live")


async def test_without_deletes_live_deletions_are_left_out(kv: KeyValue) -> None:
    latest, _ = await fill(kv)
    async with contextlib.aclosing(follow(kv, include_deletes=False)) as events:
        values, done = await initial_part(events)
        assert by_key(values) == {key: value.value for key, value in latest.items()}
        assert done.count == len(latest)
        await kv.delete("repo.k00")
        await kv.purge("repo.k01")
        put = await kv.put("repo.k02", b"after")
        assert await next_event(events) == Value("repo.k02", put, b"after")


async def test_current_values_are_the_initial_values_of_follow(kv: KeyValue) -> None:
    latest, _ = await fill(kv)
    found = await current_values(kv)
    assert found == {key: value.value for key, value in latest.items()}
    async with contextlib.aclosing(follow(kv)) as events:
        values, _ = await initial_part(events)
    assert by_key(values) == found


async def test_many_starts_on_a_small_bucket_always_see_every_value_once(
    kv: KeyValue,
) -> None:
    """Three values: the size where nats-py's marker most often comes first (#842)."""
    written = {f"repo.s{i}": Value(f"repo.s{i}", 0, f"s{i}".encode()) for i in range(3)}
    for key, value in list(written.items()):
        written[key] = Value(key, await kv.put(key, value.value), value.value)
    expected = sorted(written.values(), key=lambda value: value.revision)

    async with asyncio.timeout(60):
        for _ in range(STRESS_STARTS):
            async with contextlib.aclosing(follow(kv)) as events:
                values, done = await initial_part(events)
                assert values == expected
                assert done == InitialDone(3)
            assert await current_values(kv) == {v.key: v.value for v in expected}


@dataclass(frozen=True, slots=True)
class Write:
    key: str
    revision: int
    value: bytes | None  # None: a delete


def state(log: list[Write]) -> dict[str, bytes]:
    current: dict[str, bytes] = {}
    for write in log:
        if write.value is None:
            current.pop(write.key, None)
        else:
            current[write.key] = write.value
    return current


def as_write(event: Value | Deleted) -> Write:
    value = event.value if isinstance(event, Value) else None
    return Write(event.key, event.revision, value)


async def test_writes_during_start_are_initial_or_live_never_lost_or_twice(
    js: JetStreamContext, fleet_names: FleetNames, kv: KeyValue
) -> None:
    """A writer runs while the watch starts and a little after InitialDone. The live
    events must be exactly a suffix of all writes, and the initial values exactly the
    state of the bucket before that suffix."""
    rng = random.Random(842)
    keys = [f"repo.w{i}" for i in range(8)]
    prefix = f"$KV.{fleet_names.secrets_bucket}."
    log: list[Write] = []

    async def write_one(n: int) -> None:
        key = rng.choice(keys)
        if rng.random() < 0.25:
            ack = await js.publish(prefix + key, b"", headers={KV_OP: KV_DEL})
            log.append(Write(key, ack.seq, None))
        else:
            value = f"{key}={n}".encode()
            log.append(Write(key, await kv.put(key, value), value))

    async def writer(stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await write_one(n)
            n += 1
        for extra in range(5):
            await write_one(n + extra)

    for n in range(20):
        await write_one(n)

    raced = 0
    async with asyncio.timeout(120):
        for _ in range(RACING_STARTS):
            round_start = len(log)
            stop = asyncio.Event()
            writing = asyncio.create_task(writer(stop))
            await asyncio.sleep(rng.random() * 0.005)
            async with contextlib.aclosing(follow(kv)) as events:
                values, done = await initial_part(events)
                stop.set()
                await writing
                sentinel = Write("repo.end", await kv.put("repo.end", b"end"), b"end")
                log.append(sentinel)
                live: list[Write] = []
                if Value(sentinel.key, sentinel.revision, b"end") not in values:
                    while not live or live[-1] != sentinel:
                        event = await next_event(events)
                        assert not isinstance(event, InitialDone)
                        live.append(as_write(event))

            cut = log.index(live[0]) if live else len(log)
            assert live == log[cut:]
            assert by_key(values) == state(log[:cut])
            assert done.count == len(values)
            revisions = [value.revision for value in values] + [w.revision for w in live]
            assert revisions == sorted(set(revisions))
            raced += round_start < cut < len(log) - 1  # writes of this round on both sides

    assert [write.revision for write in log] == sorted(write.revision for write in log)
    # The writer is started first and shares the watch's connection, so some of its
    # writes are before the cut and the 5 after InitialDone are after it, every round.
    assert raced == RACING_STARTS


async def test_streamed_writes_during_start_are_never_lost(
    js: JetStreamContext, fleet_names: FleetNames, kv: KeyValue
) -> None:
    """A writer runs while a streamed watch starts: applying every event handed on, in
    order, gives the bucket's state (nothing lost), and no key goes back to an older
    revision (the race of the module docs may make a write late, never lost)."""
    rng = random.Random(995)
    keys = [f"repo.s{i}" for i in range(8)]
    for i, key in enumerate(keys):
        await kv.put(key, f"{key}={i}".encode())
    async with asyncio.timeout(120):
        for _ in range(RACING_STARTS):
            stop = asyncio.Event()
            log: list[Write] = []

            async def writer(stop: asyncio.Event = stop, log: list[Write] = log) -> None:
                n = 0
                while not stop.is_set():
                    key, value = rng.choice(keys), f"w{n}".encode()
                    log.append(Write(key, await kv.put(key, value), value))
                    n += 1

            writing = asyncio.create_task(writer())
            await asyncio.sleep(rng.random() * 0.005)
            async with contextlib.aclosing(follow(kv, stream=True)) as events:
                seen: dict[str, Value] = {}
                done = False
                while not done:
                    event = await next_event(events)
                    done = isinstance(event, InitialDone)
                    if isinstance(event, Value):
                        assert event.revision > seen.get(event.key, Value("", 0, b"")).revision
                        seen[event.key] = event
                stop.set()
                await writing
                sentinel = await kv.put("repo.end", b"end")
                while "repo.end" not in seen or seen["repo.end"].revision < sentinel:
                    event = await next_event(events)
                    if isinstance(event, Value):
                        assert event.revision > seen.get(event.key, Value("", 0, b"")).revision
                        seen[event.key] = event
            final = {key: (await kv.get(key)).value for key in keys}
            assert {key: seen[key].value for key in keys} == final


async def test_starting_on_a_closed_connection_is_broker_unavailable(
    nats_url: str, fleet_names: FleetNames
) -> None:
    client: Client = await connect(nats_url, role="test", name="pytest:closed-watch")
    kv = (await declare_fleet(client.jetstream(), fleet_names)).secrets
    await client.close()
    with pytest.raises(BrokerUnavailable, match="watching bucket"):
        await current_values(kv)


async def test_watching_a_removed_bucket_is_a_broker_error(
    js: JetStreamContext, fleet_names: FleetNames, kv: KeyValue
) -> None:
    await js.delete_key_value(fleet_names.secrets_bucket)
    with pytest.raises(BrokerError, match="watching bucket"):
        await current_values(kv)


# --- a checkpoint and the tail after it ---------------------------------------------------


async def tail_from(kv: KeyValue, start: int) -> tuple[list[Value | Deleted], InitialDone]:
    events: list[Value | Deleted] = []
    batches = watch.follow_batches(kv, stream=True, start_sequence=start)
    async with contextlib.aclosing(batches):
        while True:
            async with asyncio.timeout(EVENT_TIMEOUT):
                batch = await anext(batches)
            for event in batch:
                if isinstance(event, InitialDone):
                    return events, event
                events.append(event)


def replay(state: dict[str, bytes], events: list[Value | Deleted]) -> dict[str, bytes]:
    state = dict(state)
    for event in events:
        if isinstance(event, Value):
            state[event.key] = event.value
        else:
            state.pop(event.key, None)
    return state


async def test_a_checkpoint_and_the_tail_after_it_are_the_bucket_wherever_it_is_cut(
    kv: KeyValue,
) -> None:
    """The state at stream sequence S, then every message from S + 1 on, applied in
    order, is the bucket's state: for every S (overwrites, deletes and purges after it
    included; the bucket keeps history, so older revisions come in the tail too)."""
    writes: list[tuple[int, str, bytes | None]] = []  # (sequence, key, value or deleted)
    latest, gone = await fill(kv)
    async with contextlib.aclosing(follow(kv, include_deletes=True)) as events:
        _, done = await initial_part(events)
    last = max(value.revision for value in latest.values())
    # The state at each sequence, from the bucket's own history (every revision kept).
    for key in {*latest, *gone}:
        for entry in await kv.history(key):
            value = None if entry.operation is not None else entry.value
            writes.append((entry.revision, key, value))
    writes.sort()
    last = max(last, writes[-1][0])
    whole = {key: value.value for key, value in latest.items()}
    for cut in range(0, last + 2):
        at_cut: dict[str, bytes] = {}
        for sequence, key, value in writes:
            if sequence > cut:
                break
            if value is None:
                at_cut.pop(key, None)
            else:
                at_cut[key] = value
        tail, done = await tail_from(kv, cut + 1)
        assert all(event.revision > cut for event in tail)
        assert replay(at_cut, tail) == whole, cut
        assert done.count == sum(isinstance(event, Value) for event in tail)


async def test_a_tail_from_past_the_end_is_done_at_once_then_live(kv: KeyValue) -> None:
    await fill(kv)
    info = await kv._js.stream_info(kv._stream)
    start = info.state.last_seq + 1
    batches = watch.follow_batches(kv, stream=True, start_sequence=start)
    async with contextlib.aclosing(batches):
        async with asyncio.timeout(PROMPT):
            assert await anext(batches) == [InitialDone(0)]
        put = await kv.put("repo.k00", b"live")
        async with asyncio.timeout(EVENT_TIMEOUT):
            assert await anext(batches) == [Value("repo.k00", put, b"live")]


async def test_a_start_sequence_is_for_the_streamed_form(kv: KeyValue) -> None:
    with pytest.raises(ValueError, match="streamed"):
        await anext(watch.follow_batches(kv, start_sequence=3))

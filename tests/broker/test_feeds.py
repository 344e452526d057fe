"""flashgate.broker.feeds: the pull feed reads at the reader's pace and survives loss.

Against a real nats-server: the pull feed never has more than its window requested or
waiting however slowly it is read, and a message lost in flight (dropped here before the
feed sees it) or a consumer gone at the server (deleted here) makes it take up again
after the last message handed on, so every value still comes, in stream order.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from flashgate.broker import feeds
from flashgate.broker.declare import declare_fleet
from flashgate.broker.feeds import PullFeed, Value
from flashgate.events.subjects import FleetNames

KEYS = 120
TIMEOUT = 20.0


@pytest.fixture
async def kv(js: JetStreamContext, fleet_names: FleetNames) -> KeyValue:
    bucket = (await declare_fleet(js, fleet_names)).secrets
    for i in range(KEYS):
        await bucket.put(f"repo.k{i:03d}", f"v{i}".encode())
    return bucket


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feeds, "PULL_BATCH", 8)
    monkeypatch.setattr(feeds, "PULL_WINDOW", 32)
    monkeypatch.setattr(feeds, "PULL_STALL_S", 0.5)


async def read_all(feed: PullFeed, *, slowly: bool = False) -> list[Value]:
    values: list[Value] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            event, sequence, delta = await feed.next()
            assert isinstance(event, Value) and event.revision == sequence
            values.append(event)
            assert feed._requested + len(feed._events) <= feeds.PULL_WINDOW
            if slowly:
                await asyncio.sleep(0.002)
            if delta == 0:
                return values


def keys_in_order(values: list[Value]) -> list[str]:
    revisions = [v.revision for v in values]
    assert revisions == sorted(revisions)
    return [v.key for v in values]


EXPECTED = [f"repo.k{i:03d}" for i in range(KEYS)]


async def test_a_slow_reader_never_has_more_than_the_window(kv: KeyValue) -> None:
    feed = PullFeed(kv)
    await feed.start(kv)
    try:
        values = await read_all(feed, slowly=True)
        assert keys_in_order(values) == EXPECTED
        assert feed.remade == 0
    finally:
        await feed.stop()


async def test_a_message_lost_in_flight_is_read_again_from_the_last_one_taken(
    kv: KeyValue,
) -> None:
    feed = PullFeed(kv)
    receive = feed._on_message
    seen = 0

    async def lossy(msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 40:  # the 40th message never reaches the feed
            return
        await receive(msg)  # type: ignore[arg-type]

    feed._on_message = lossy  # type: ignore[method-assign]
    await feed.start(kv)
    try:
        values = await read_all(feed)
        assert keys_in_order(values) == EXPECTED
        assert feed.remade == 1
    finally:
        await feed.stop()


async def test_a_consumer_gone_at_the_server_is_made_again(
    js: JetStreamContext, kv: KeyValue
) -> None:
    feed = PullFeed(kv)
    await feed.start(kv)
    try:
        first = [await feed.next() for _ in range(10)]
        assert feed._consumer is not None
        await js.delete_consumer(kv._stream, feed._consumer)
        feed._events.clear()  # what was already sent is lost with it
        rest = await read_all(feed)
        values = [e for e, _, _ in first if isinstance(e, Value)] + rest
        assert keys_in_order(values) == EXPECTED
        assert feed.remade >= 1
    finally:
        await feed.stop()


async def test_stop_deletes_the_consumer(js: JetStreamContext, kv: KeyValue) -> None:
    feed = PullFeed(kv)
    await feed.start(kv)
    name = feed._consumer
    await feed.next()
    await feed.stop()
    names = [c.name for c in await js.consumers_info(kv._stream)]
    assert name not in names


@pytest.mark.parametrize(
    ("reply", "fields"),
    [
        ("$JS.ACK.KV_b.c1.1.42.7.1700000000000000000.3", ("c1", 42, 7, 3)),
        ("$JS.ACK.dom.ACCHASH.KV_b.c1.1.42.7.1700000000000000000.3.tok", ("c1", 42, 7, 3)),
        ("$JS.ACK.dom.ACCHASH.KV_b.c1.1.42.7.1700000000000000000.3", ("c1", 42, 7, 3)),
    ],
)
def test_reply_fields_read_what_nats_py_reads(
    reply: str, fields: tuple[str, int, int, int]
) -> None:
    from nats.aio.msg import Msg

    meta = Msg.Metadata._from_reply(reply)
    assert fields == (meta.consumer, meta.sequence.stream, meta.sequence.consumer, meta.num_pending)
    assert feeds.reply_fields(reply) == fields


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.a.b", "$JS.NAK.s.c.1.2.3.4.5"])
def test_other_subjects_are_not_jetstream_messages(reply: str) -> None:
    with pytest.raises(ValueError, match="not a JetStream message"):
        feeds.reply_fields(reply)


async def test_values_gone_while_pending_end_the_read_not_hang_it(
    js: JetStreamContext, kv: KeyValue
) -> None:
    """What was pending vanishes from the stream (expired, purged) while what was sent
    of it is lost in flight: no message will say delta 0, so the feed ends once the
    consumer has nothing left, after the last one taken, instead of making its consumer
    again forever."""
    last_kept = KEYS - 40
    feed = PullFeed(kv)
    await feed.start(kv)
    try:
        taken: list[Value] = []
        async with asyncio.timeout(TIMEOUT):
            while not taken or taken[-1].key != f"repo.k{last_kept - 1:03d}":
                event, _, _ = await feed.next()
                assert isinstance(event, Value)
                taken.append(event)
            for i in range(last_kept, KEYS):  # the last 40 keys' only messages
                await js.purge_stream(kv._stream, subject=f"{kv._pre}repo.k{i:03d}")
            await asyncio.sleep(0.2)
            feed._events.clear()  # what was sent of them is lost in flight
            told: list[int | None] = []  # what a batch's reader is told of the end
            ended = await feed.next_batch(16, lambda delta: told.append(delta) or delta == 0)
        assert ended == [(None, taken[-1].revision, 0)] and told == [0]
        assert [v.key for v in taken] == EXPECTED[:last_kept]
    finally:
        await feed.stop()


async def test_a_batch_ends_at_the_item_its_reader_says_is_the_last(kv: KeyValue) -> None:
    """next_batch: at most ``limit`` items, none after the one ``last`` is True for
    (those stay, not taken: the feed's last sequence is that one's, and they come next)."""
    feed = PullFeed(kv)
    await feed.start(kv)
    try:
        async with asyncio.timeout(TIMEOUT):
            while len(feed._events) < 12:  # enough arrived for the batch to be cut short
                await asyncio.sleep(0.01)
            told: list[int | None] = []
            first = await feed.next_batch(10, lambda delta: told.append(delta) or len(told) == 5)
            assert len(first) == 5 and len(told) == 5
            assert feed.last_sequence == first[-1][1]
            rest: list[feeds.FeedItem] = []
            while not rest or rest[-1][2] != 0:
                batch = await feed.next_batch(10)
                assert 1 <= len(batch) <= 10
                rest += batch
        values = [event for event, _, _ in first + rest]
        assert all(isinstance(v, Value) for v in values)
        assert keys_in_order(values) == EXPECTED  # type: ignore[arg-type]
    finally:
        await feed.stop()


async def test_a_live_feed_reset_by_nats_py_does_not_replay_the_stream(kv: KeyValue) -> None:
    """nats-py resets an ordered consumer (a gap, missed heartbeats) from the last stream
    sequence it delivered: before any live message, that must be where the feed starts,
    not the stream's first message."""
    from nats.js.api import DeliverPolicy

    from flashgate.broker.feeds import OrderedFeed

    info = await kv._js.stream_info(kv._stream)
    start = info.state.last_seq + 1
    feed = OrderedFeed(kv, DeliverPolicy.BY_START_SEQUENCE, start)
    await feed.start(kv)
    try:
        jsi = feed.sub._sub._jsi
        await jsi.reset_ordered_consumer(jsi._sseq + 1)
        revision = await kv.put("repo.after", b"live")
        async with asyncio.timeout(TIMEOUT):
            event, sequence, _ = await feed.next()
        assert event == Value("repo.after", revision, b"live") and sequence == revision
    finally:
        await feed.stop()


async def test_closing_a_streamed_watch_at_its_end_marker_stops_its_live_feed(
    kv: KeyValue,
) -> None:
    from flashgate.broker.watch import InitialDone, follow

    nc = kv._js._nc
    before = set(nc._subs)
    events = follow(kv, stream=True)
    async with asyncio.timeout(TIMEOUT):
        while not isinstance(await anext(events), InitialDone):
            pass
    await events.aclose()
    assert set(nc._subs) == before


async def test_another_login_pulling_from_the_consumer_delays_the_read_never_loses(
    nats_url: str, kv: KeyValue
) -> None:
    """A rogue client (node logins may pull on the bucket streams) asks the feed's own
    consumer for messages: those go to the rogue, the feed sees the gap in its consumer
    sequence and makes its consumer again from the last value it took."""
    from flashgate.broker.connection import connect

    rogue = await connect(nats_url, role="test", name="pytest:rogue-puller")
    try:
        feed = PullFeed(kv)
        await feed.start(kv)
        try:
            first = [await feed.next() for _ in range(5)]
            stolen = await rogue.subscribe(rogue.new_inbox())
            await rogue.publish(
                feed._next_subject, b'{"batch": 20, "no_wait": true}', reply=stolen.subject
            )
            await rogue.flush()
            rest = await read_all(feed)
            values = [e for e, _, _ in first if isinstance(e, Value)] + rest
            assert keys_in_order(values) == EXPECTED
            assert feed.remade >= 1
            assert stolen.pending_msgs > 0 or stolen.delivered > 0
        finally:
            await feed.stop()
    finally:
        await rogue.close()


async def test_a_feed_from_a_start_sequence_made_again_before_any_message_starts_there(
    kv: KeyValue,
) -> None:
    """A tail feed (deliver by start sequence) whose very first message is lost: made
    again from its start sequence, not from the stream's beginning."""
    start = 100
    feed = PullFeed(kv, DeliverPolicy.BY_START_SEQUENCE, start)
    receive = feed._on_message
    seen = 0

    async def first_lost(msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            return
        await receive(msg)  # type: ignore[arg-type]

    feed._on_message = first_lost  # type: ignore[method-assign]
    await feed.start(kv)
    try:
        values = await read_all(feed)
        assert keys_in_order(values) == EXPECTED[start - 1 :]
        assert feed.remade == 1
    finally:
        await feed.stop()

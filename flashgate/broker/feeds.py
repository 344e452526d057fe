"""A bucket's stream as :class:`Value` / :class:`Deleted` events, each with its ``delta``
(the consumer's pending count once that message is taken): what
:func:`flashgate.broker.watch.follow` reads.

* :class:`OrderedFeed`: nats-py's ordered push consumer. It delivers every message once,
  in stream order, and recreates the consumer after a gap; the watch's live changes
  come from it. nats-py's ``KeyValue.watch`` does the same through an entry object, a
  timestamp and a queue per message: a node reading a bucket of 100k envelopes spent
  twice the time in it (17 µs against 8 µs a message here).
* :class:`PullFeed`: an ephemeral pull consumer, for reading a bucket's current values
  at the reader's pace. A push consumer is sent as much as the server's flow control
  allows before the client answers (about 80% of the connection's pending limit, 64 MB
  by default): a node checking each envelope more slowly than the server sends them held
  them all in the client (about 100 MB of peak memory more at 100k envelopes). The pull
  feed asks for :data:`PULL_BATCH` messages at a time, and for more only as they are
  taken: at most :data:`PULL_WINDOW` are requested or waiting.

The pull consumer delivers with no acknowledgement, so a message lost in flight (a
reconnect) is not sent again: a gap in its consumer sequence, or no message for
:data:`PULL_STALL_S` while it has some pending, makes it again from the stream sequence
after the last one taken (deliver by start sequence: every stored revision after it
comes, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

__all__ = [
    "FEED_LIMIT",
    "PULL_BATCH",
    "PULL_STALL_S",
    "PULL_WINDOW",
    "Deleted",
    "FeedItem",
    "OrderedFeed",
    "PullFeed",
    "Value",
]

_DELETE_OPERATIONS = frozenset({KV_DEL, KV_PURGE})
#: nats-server 2.11+ expiry markers: their reason, as the operation it stands for.
_MARKER_OPERATIONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}
#: Events read from the ordered consumer and not yet taken, at most (then it waits, and
#: nats-py's own pending limits apply, as they did to its watcher).
FEED_LIMIT = 4096
#: The server removes a feed's consumer after this long without a client (nats-py's).
INACTIVE_THRESHOLD_S = 5 * 60
#: Messages asked for by one pull request, and at most requested or waiting in all.
PULL_BATCH = 512
PULL_WINDOW = 4 * PULL_BATCH
#: A pull request waits this long at the server for messages.
PULL_EXPIRES_S = 30.0
#: No message for this long while some are pending: the pull consumer is made again.
PULL_STALL_S = 5.0
_STATUS = "Status"
_PENDING_MESSAGES = "Nats-Pending-Messages"


class Value(msgspec.Struct, frozen=True, gc=False):
    """The value of ``key`` at ``revision`` (the stream sequence of the put). A struct out
    of the cycle collector: one is made per message a watch reads (200k for a node
    starting on 100k secrets and their fast wraps), ten times faster than a frozen
    dataclass."""

    key: str
    revision: int
    value: bytes


class Deleted(msgspec.Struct, frozen=True, gc=False):
    """``key`` was deleted or purged at ``revision``."""

    key: str
    revision: int


def event_of(msg: Msg, prefix: str, revision: int) -> Value | Deleted | None:
    """The change a bucket message stands for (None: a marker that changes no value)."""
    headers = msg.headers
    operation = None
    if headers:
        operation = headers.get(KV_OP)
        if operation is None and KV_MARKER_REASON in headers:
            # nats-server 2.11+ places expiry markers with a reason instead.
            operation = _MARKER_OPERATIONS.get(headers[KV_MARKER_REASON])
            if operation is None:
                return None  # a reason of a later server: not a change of the value
    key = msg.subject[len(prefix) :]
    if operation in _DELETE_OPERATIONS:
        return Deleted(key, revision)
    return Value(key, revision, msg.data)


FeedItem: TypeAlias = tuple[Value | Deleted | None, int, int | None]
"""An event (None: a marker that changes no value), its stream sequence, its ``delta``."""


def reply_fields(reply: str) -> tuple[str, int, int, int]:
    """A JetStream message's consumer, stream sequence, consumer sequence and pending
    count, read from its reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>.<consumer seq>.<time>.<pending>``, or with a domain and account hash after
    ``$JS.ACK`` and a token at the end). nats-py's ``Msg.metadata`` reads the same and
    builds a timestamp and two objects more: a quarter of the pull feed's time per message.
    ValueError for any other subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        at = 3
    elif len(tokens) >= 11:
        at = 5
    else:
        raise ValueError("not a JetStream message")
    if tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError("not a JetStream message")
    return tokens[at], int(tokens[at + 2]), int(tokens[at + 3]), int(tokens[at + 5])


class OrderedFeed:
    """The bucket's stream through nats-py's ordered consumer (module docs)."""

    def __init__(
        self, kv: KeyValue, policy: DeliverPolicy = DeliverPolicy.ALL, start: int = 0
    ) -> None:
        self._prefix: str = kv._pre
        self.policy = policy
        self._start = start  # the first stream sequence (deliver by start sequence)
        self._events: deque[FeedItem] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.sub: Any = None

    async def start(self, kv: KeyValue) -> None:
        extra: dict[str, Any] = {}
        if self.policy == DeliverPolicy.BY_START_SEQUENCE:
            extra["config"] = ConsumerConfig(opt_start_seq=self._start)
        self.sub = await kv._js.subscribe(
            f"{self._prefix}>",
            stream=kv._stream,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=self.policy,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            **extra,
        )
        jsi = getattr(getattr(self.sub, "_sub", None), "_jsi", None)
        if self._start and jsi is not None and hasattr(jsi, "_sseq"):
            # nats-py resets an ordered consumer (after a gap, or missed heartbeats) from
            # the last stream sequence it delivered, counted from 0: before the first live
            # message that would replay the whole stream.
            jsi._sseq = self._start - 1

    async def consumer_info(self) -> ConsumerInfo:
        info: ConsumerInfo = await self.sub.consumer_info()
        return info

    async def _on_message(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta.sequence.stream < self._start:
            return  # before where this feed starts (a reset nats-py made from too early)
        event = event_of(msg, self._prefix, meta.sequence.stream)
        while len(self._events) >= FEED_LIMIT:
            self._space.clear()
            await self._space.wait()
        self._events.append((event, meta.sequence.stream, meta.num_pending))
        self._ready.set()

    async def next(self) -> FeedItem:
        return (await self.next_batch(1))[0]

    async def next_batch(self, limit: int) -> list[FeedItem]:
        """What has arrived, at least one item and at most ``limit``, in order."""
        events = self._events
        while not events:
            self._ready.clear()
            await self._ready.wait()
        batch = [events.popleft() for _ in range(min(limit, len(events)))]
        if len(events) <= FEED_LIMIT // 2:
            self._space.set()
        return batch

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


class PullFeed:
    """The bucket's stream, from ``policy`` on, through an ephemeral pull consumer asked
    for messages as they are taken (module docs). For reading current values: it ends
    with the caller (:meth:`stop` deletes the consumer)."""

    def __init__(
        self,
        kv: KeyValue,
        policy: DeliverPolicy = DeliverPolicy.LAST_PER_SUBJECT,
        start_sequence: int = 0,
    ):
        """``start_sequence`` with ``DeliverPolicy.BY_START_SEQUENCE``: the first stream
        sequence read."""
        self._kv = kv
        self._prefix: str = kv._pre
        self.policy = policy
        self._start = start_sequence
        self._events: deque[FeedItem] = deque()
        self._ready = asyncio.Event()
        self._sub: Any = None
        self._inbox = ""
        self._consumer: str | None = None
        self._next_subject = ""
        self._requested = 0  # asked for and not arrived yet
        self._consumer_seq = 0  # of the last message from the current consumer
        self._last_stream_seq = 0  # of the last message handed on
        self._arrived_at = 0.0
        self._pending: int | None = None  # the last message's count of messages after it
        self.remade = 0  # consumers made again after a gap or a stall

    async def start(self, kv: KeyValue) -> None:
        await self._make_consumer(self.policy, self._start)

    async def _make_consumer(self, policy: DeliverPolicy, start: int = 0) -> None:
        """A new consumer, with its own inbox: nothing an earlier one sent (a message, a
        request's end) is taken for it."""
        old, self._consumer = self._consumer, None  # from now on its messages are dropped
        old_sub, self._sub = self._sub, None
        if old_sub is not None:
            with contextlib.suppress(Exception):
                await old_sub.unsubscribe()
        if old is not None:
            await self._delete(old)
        config = ConsumerConfig(
            deliver_policy=policy,
            opt_start_seq=start or None,
            ack_policy=AckPolicy.NONE,
            filter_subject=f"{self._prefix}>",
            inactive_threshold=INACTIVE_THRESHOLD_S,
            mem_storage=True,
            num_replicas=1,
            max_waiting=8,
        )
        js = self._kv._js
        self._inbox = js._nc.new_inbox()
        self._sub = await js._nc.subscribe(self._inbox, cb=self._on_message)
        info = await js.add_consumer(self._kv._stream, config=config)
        self._events.clear()
        self._consumer = info.name
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{self._kv._stream}.{info.name}"
        self._consumer_seq = 0
        self._requested = 0
        self._arrived_at = time.monotonic()
        await self._ask()

    async def consumer_info(self) -> ConsumerInfo:
        assert self._consumer is not None
        info: ConsumerInfo = await self._kv._js.consumer_info(self._kv._stream, self._consumer)
        return info

    async def _ask(self) -> None:
        """Ask for more while fewer than PULL_WINDOW are requested or waiting."""
        while self._requested + len(self._events) + PULL_BATCH <= PULL_WINDOW:
            self._requested += PULL_BATCH
            request = {"batch": PULL_BATCH, "expires": int(PULL_EXPIRES_S * 1e9)}
            await self._kv._js._nc.publish(
                self._next_subject, json.dumps(request).encode(), reply=self._inbox
            )

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and _STATUS in headers and not msg.data:
            # A request ended (expired, too many waiting, ...): what it still owed is not
            # coming (all it asked for, if the server does not say).
            owed = headers.get(_PENDING_MESSAGES, "")
            self._requested = max(0, self._requested - int(owed)) if owed.isdigit() else 0
            return
        try:
            consumer, stream_seq, consumer_seq, pending = reply_fields(msg.reply)
        except ValueError:
            return
        if consumer != self._consumer:
            return  # from a consumer made again since: its messages come again
        self._requested = max(0, self._requested - 1)
        self._arrived_at = time.monotonic()
        if consumer_seq != self._consumer_seq + 1:  # lost in flight: never sent again
            self._consumer_seq = -1  # nothing more from this consumer is taken
            self._ready.set()
            return
        self._consumer_seq = consumer_seq
        event = event_of(msg, self._prefix, stream_seq)
        self._events.append((event, stream_seq, pending))
        self._ready.set()

    async def next(self) -> FeedItem:
        return (await self.next_batch(1))[0]

    async def next_batch(
        self, limit: int, last: Callable[[int | None], bool] | None = None
    ) -> list[FeedItem]:
        """What has arrived, at least one item and at most ``limit``, in order; with
        ``last``, told each item's ``delta`` as it is taken, none after the one it is
        True for (the rest stay, not taken: :attr:`last_sequence` is that one's)."""
        events = self._events
        while True:
            if self._consumer_seq == -1:
                await self._remake()
            if events:
                batch: list[FeedItem] = []
                while events and len(batch) < limit:
                    item = events.popleft()
                    batch.append(item)
                    if last is not None and last(item[2]):
                        break
                self._last_stream_seq = batch[-1][1]
                self._pending = batch[-1][2]
                if self._requested + len(events) <= PULL_WINDOW - PULL_BATCH:
                    await self._ask()
                return batch
            if self._requested == 0:
                await self._ask()
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PULL_STALL_S):
                    await self._ready.wait()
                continue
            if time.monotonic() - self._arrived_at >= PULL_STALL_S and self._pending != 0:
                if await self._nothing_left():
                    # What was pending is gone (expired, purged): the last one taken ends.
                    end: FeedItem = (None, self._last_stream_seq, 0)
                    if last is not None:
                        last(0)
                    return [end]
                await self._remake()

    async def _nothing_left(self) -> bool:
        """Whether the consumer is there and has nothing more to send."""
        try:
            info = await self.consumer_info()
        except Exception:
            return False  # gone: made again
        return info.num_pending == 0 and not self._events

    async def _remake(self) -> None:
        """Lost messages or requests: a new consumer from after the last one taken."""
        self.remade += 1
        start = self._last_stream_seq + 1
        policy = DeliverPolicy.BY_START_SEQUENCE if self._last_stream_seq else self.policy
        await self._make_consumer(policy, start if self._last_stream_seq else self._start)

    @property
    def last_sequence(self) -> int:
        """The stream sequence of the last message handed on (0: none)."""
        return self._last_stream_seq

    async def _delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self._kv._js.delete_consumer(self._kv._stream, name)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._consumer is not None:
            await self._delete(self._consumer)

"""Watching a key-value bucket: every current value, one end marker, then live changes.

:func:`follow` yields typed events::

    Value(key, revision, value)      # a current value, then a live put
    Deleted(key, revision)           # a live delete or purge (if include_deletes)
    InitialDone(count)               # exactly once: the current values are all out

Before :class:`InitialDone` come the **current values** of the bucket: the latest
revision of every key that is not deleted, each key once, in revision order. After it
come **live changes**, in stream order. The initial values are the state of the bucket
at one point of its stream (the *cut*) and every message after the cut is delivered
live, so a value written while the watch starts is either part of the initial values or
delivered after ``InitialDone``: never lost, never both. Keys whose latest revision is a
delete or a purge are absent from the initial values (no ``Deleted`` is reported for
them).

:func:`current_values` is the initial part alone, as a dict (for reconciliation).

Close the generator when done (``contextlib.aclosing``) so the watch's subscription
is stopped.

Why not nats-py's own end marker
--------------------------------

nats-py's ``KeyValue.watch`` yields ``None`` as its "end of initial values" marker. In
nats-py 2.16 the marker can come *before* the initial values (nats-io/nats.py#842; the
fix, nats-io/nats.py#995, is not released): right after subscribing it reads the
consumer info and, if ``num_pending`` is 0 and its subscription has *processed* no
message yet, it emits the marker at once. But ``num_pending`` is also 0 when the server
has already sent every initial value and they are still in flight or queued in the
client. A caller that stops at the marker then sees an empty bucket; one that carries
on treats the current values as live updates. So this module ignores nats-py's ``None``
and finds the end of the initial values itself.

How the end of the initial values is found
------------------------------------------

The watch reads the bucket's whole stream (``include_history=True``: deliver policy
*all*, every stored revision and delete marker, oldest first) through nats-py's ordered
consumer, which delivers every message exactly once in stream order (it recreates the
consumer after a gap). Replaying a prefix of that sequence gives the exact state of the
bucket at the last message of the prefix, so **wherever the cut falls, the initial
values are consistent and the live changes are exactly the messages after it**. The
server's counts only decide *where* the cut falls:

* **``delta == 0``**: every delivered message carries ``delta``, the consumer's
  ``num_pending`` once that message is taken, i.e. how many messages come after it.
  The first message with ``delta == 0`` was the last one stored when it was sent:
  the cut. (The Go client ends its initial values the same way.)
* **The first message's count** bounds the wait under constant writes: its ``delta``
  says how many messages were stored after it at that moment, so the initial values
  also end once ``delta + 1`` messages have arrived (again as the Go client does).
* **An empty bucket** delivers no message, so there is no ``delta`` to read. Right
  after subscribing the consumer info is read: ``num_pending == 0`` together with
  ``delivered.consumer_seq == 0`` means the server has sent nothing and has nothing
  to send, so the bucket was empty then and ``InitialDone(0)`` comes at once;
  whatever arrives later was stored later and is live. This uses the *server's*
  delivered count, not the count of messages the client has processed that nats-py
  compares with (the cause of #842). When the server has sent messages, one of them
  has ``delta == 0`` (or the count rule applies), and the watch waits for it however
  late the client processes it.

Why the history and not only the latest revision per key (nats-py's default, deliver
policy *last per subject*): observed on nats-server 2.15.1, a key written while the
watch is created can be sent only *after* the message with ``delta == 0``, and the
value it had at the cut is never sent, so the key is missing from the initial values
although it existed all along. About one start in a hundred did this under
``test_writes_during_start_are_initial_or_live_never_lost_or_twice``; with the history
none has. (Likely cause: the server reads its resume point, its list of last revisions
and its pending count from the store separately, so a racing write falls between them.)
Reading the history costs at most the bucket's history setting times the number of keys
in messages at start-up; only the latest revision of each key is kept in memory until
the cut, and each is let go once it has been yielded (the caller's copy is then the only
one).

nats-py errors raised while starting the watch are mapped with
:func:`~flashgate.broker.connection.broker_errors`. After the start, nats-py's ordered
consumer resumes after a gap or reconnect on its own (nats-py's behaviour, not
re-tested here); errors there reach the connection's error callback, not the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeAlias

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from flashgate.broker.connection import broker_errors

__all__ = [
    "Deleted",
    "InitialDone",
    "Value",
    "WatchEvent",
    "current_values",
    "follow",
]

_DELETE_OPERATIONS = frozenset({KV_DEL, KV_PURGE})
#: nats-server 2.11+ expiry markers: their reason, as the operation it stands for.
_MARKER_OPERATIONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}
#: Events read from the subscription and not yet taken, at most.
FEED_LIMIT = 4096
#: The server removes the watch's consumer after this long without a client (nats-py's).
_INACTIVE_THRESHOLD_S = 5 * 60


@dataclass(frozen=True, slots=True)
class Value:
    """The value of ``key`` at ``revision`` (the stream sequence of the put)."""

    key: str
    revision: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Deleted:
    """``key`` was deleted or purged at ``revision`` (live changes only)."""

    key: str
    revision: int


@dataclass(frozen=True, slots=True)
class InitialDone:
    """Every current value has been yielded (``count`` of them); live changes follow."""

    count: int


WatchEvent: TypeAlias = Value | Deleted | InitialDone


class _InitialValues:
    """Collects the initial entries and tells when the last one has arrived."""

    def __init__(self) -> None:
        self._latest: dict[str, Value | Deleted] = {}
        self._received = 0
        self._expected: int | None = None

    def add(self, event: Value | Deleted, delta: int | None) -> bool:
        """Record one entry; True if it is the last of the initial values."""
        self._received += 1
        previous = self._latest.get(event.key)
        if previous is None or previous.revision < event.revision:
            self._latest[event.key] = event
        if delta is None:  # never from nats-py's watcher; then only the count can end
            return self._expected is not None and self._received >= self._expected
        if self._expected is None:
            self._expected = delta + 1
        return delta == 0 or self._received >= self._expected

    def values(self) -> list[Value]:
        """The current values at the cut, in revision order."""
        current = [event for event in self._latest.values() if isinstance(event, Value)]
        return sorted(current, key=lambda value: value.revision)


class _Feed:
    """The bucket's stream through nats-py's ordered consumer (which delivers every
    message once, in stream order, and recreates the consumer after a gap), handed on as
    :class:`Value` / :class:`Deleted` events with each message's ``delta`` (its
    ``num_pending``). nats-py's ``KeyValue.watch`` does the same through an entry object, a
    timestamp and a queue per message: a node reading a bucket of 100k envelopes spent
    twice the time in it (17 µs against 8 µs a message here). At most
    :data:`FEED_LIMIT` events wait here; beyond that the subscription waits (and nats-py's
    own pending limits apply, as they did to its watcher)."""

    def __init__(self, kv: KeyValue) -> None:
        self._prefix: str = kv._pre
        self._events: deque[tuple[Value | Deleted, int | None]] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.sub: Any = None

    async def start(self, kv: KeyValue) -> None:
        self.sub = await kv._js.subscribe(
            f"{self._prefix}>",
            stream=kv._stream,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=_INACTIVE_THRESHOLD_S,
        )

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        operation = None
        if headers:
            operation = headers.get(KV_OP)
            if operation is None and KV_MARKER_REASON in headers:
                # nats-server 2.11+ places expiry markers with a reason instead.
                operation = _MARKER_OPERATIONS.get(headers[KV_MARKER_REASON])
                if operation is None:
                    return  # a reason of a later server: not a change of the value
        meta = msg.metadata
        key = msg.subject[len(self._prefix) :]
        revision = meta.sequence.stream
        event: Value | Deleted = (
            Deleted(key, revision)
            if operation in _DELETE_OPERATIONS
            else Value(key, revision, msg.data)
        )
        while len(self._events) >= FEED_LIMIT:
            self._space.clear()
            await self._space.wait()
        self._events.append((event, meta.num_pending))
        self._ready.set()

    async def next(self) -> tuple[Value | Deleted, int | None]:
        events = self._events
        while not events:
            self._ready.clear()
            await self._ready.wait()
        if len(events) <= FEED_LIMIT // 2:
            self._space.set()
        return events.popleft()

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


def _bucket_name(kv: KeyValue) -> str:
    name = getattr(kv, "_name", None)
    return name if isinstance(name, str) else "?"


async def _was_empty(subscription: Any) -> bool:
    """True if the server had nothing to deliver to the new watch: no message sent, none
    pending. Read from the consumer info, so messages sent but not yet processed by the
    client count as delivered (unlike nats-py's own check, nats-io/nats.py#842)."""
    info = await subscription.consumer_info()
    if info.config.deliver_policy not in (DeliverPolicy.ALL, None):
        # The ordered consumer was already recreated after a gap (by start sequence):
        # its counts do not cover what the first consumer sent; wait for a delta.
        return False
    return bool(info.num_pending == 0 and info.delivered.consumer_seq == 0)


async def follow(kv: KeyValue, *, include_deletes: bool = True) -> AsyncGenerator[WatchEvent, None]:
    """Current values, one :class:`InitialDone`, then live changes; see the module docs.

    ``include_deletes=False`` leaves out live :class:`Deleted` events (deleted keys are
    never part of the initial values either way). Runs until closed.
    """
    what = f"watching bucket {_bucket_name(kv)}"
    feed = _Feed(kv)
    with broker_errors(what):
        await feed.start(kv)
    try:
        with broker_errors(what):
            empty = await _was_empty(feed.sub)
        initial = _InitialValues()
        if not empty:
            while True:
                event, delta = await feed.next()
                if initial.add(event, delta):
                    break
        values = initial.values()
        del initial  # the buffer goes as the values are taken, not at the end of the watch
        count = len(values)
        values.reverse()
        while values:
            yield values.pop()
        yield InitialDone(count)

        while True:
            event, _ = await feed.next()
            if isinstance(event, Value) or include_deletes:
                yield event
    finally:
        with contextlib.suppress(Exception):
            await feed.stop()


async def current_values(kv: KeyValue) -> dict[str, bytes]:
    """Every key of the bucket that has a value now, with that value (deleted keys left
    out). Uses :func:`follow`'s end of initial values; an empty bucket returns at once."""
    values: dict[str, bytes] = {}
    async with contextlib.aclosing(follow(kv, include_deletes=False)) as events:
        async for event in events:
            if isinstance(event, InitialDone):
                break
            if isinstance(event, Value):
                values[event.key] = event.value
    return values

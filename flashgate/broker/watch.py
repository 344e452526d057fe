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

:func:`follow_batches` yields the same events in lists of what has arrived together (a
node's start takes 200k events at 100k secrets: one step per list, not per event).
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
consumer (:class:`~flashgate.broker.feeds.OrderedFeed`), which delivers every message
exactly once in stream order (it recreates the consumer after a gap). Replaying a prefix
of that sequence gives the exact state of the bucket at the last message of the prefix,
so **wherever the cut falls, the initial values are consistent and the live changes are
exactly the messages after it**. The server's counts only decide *where* the cut falls:

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

Streamed initial values
-----------------------

``follow(kv, stream=True)`` hands each initial value on as it arrives instead of holding
them all until the cut: a node starting on a bucket of 100k envelopes held about 150 MB of
raw values before checking the first one. The initial values are read through a pull
consumer (:class:`~flashgate.broker.feeds.PullFeed`), asked for messages only as the
caller takes them, so however slowly the caller checks them at most a few thousand wait
in the client (a push consumer is sent up to the server's flow-control window, tens of
MB). It asks for the latest revision of each key only (deliver policy *last per
subject*): a caller that acts on each value at once would otherwise act on every stored
revision of it. The cut is found as above, from the deltas. The live changes then come
from an ordered consumer started at the stream sequence after the last message taken:
the server sends the last-per-subject messages in stream order, so every later write
has a higher sequence and none is lost or handed on twice. The differences from the
buffered form, which its callers accept:

* A deleted key may come as a :class:`Deleted` among the initial values (its delete
  marker is its latest revision); with ``include_deletes=False`` it is left out.
* The race above: a key written while the consumer is created may come only after
  :class:`InitialDone`, as a live change, its value at the cut never sent. It is not
  lost, it is late. A caller that must see every key before the marker uses the
  buffered form.
* A message lost in flight (a reconnect) makes the pull consumer again from the stream
  sequence after the last one taken, with every stored revision after it: a key may then
  come more than once, in revision order (the last one is its current value).

``InitialDone(count)`` counts the values handed on before it.

nats-py errors raised while starting the watch are mapped with
:func:`~flashgate.broker.connection.broker_errors`. After the start, nats-py's ordered
consumer resumes after a gap or reconnect on its own (nats-py's behaviour, not
re-tested here); errors there reach the connection's error callback, not the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TypeAlias

from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from flashgate.broker.connection import broker_errors
from flashgate.broker.feeds import Deleted, OrderedFeed, PullFeed, Value

__all__ = [
    "Deleted",
    "InitialDone",
    "Value",
    "WatchEvent",
    "current_values",
    "follow",
    "follow_batches",
]

#: Events in one of :func:`follow_batches`'s lists, at most (by default).
BATCH_LIMIT = 256


@dataclass(frozen=True, slots=True)
class InitialDone:
    """Every current value has been yielded (``count`` of them); live changes follow."""

    count: int


WatchEvent: TypeAlias = Value | Deleted | InitialDone


class _Cut:
    """Tells when the last message of the initial values has arrived, from each
    message's ``delta`` (see the module docs)."""

    def __init__(self) -> None:
        self._received = 0
        self._expected: int | None = None
        self.done = False  # the last one has arrived

    def reached(self, delta: int | None) -> bool:
        """Count one message; True if it is the last of the initial values."""
        self._received += 1
        if delta is None:  # never from the feed; then only the count can end
            done = self._expected is not None and self._received >= self._expected
        else:
            if self._expected is None:
                self._expected = delta + 1
            done = delta == 0 or self._received >= self._expected
        self.done = self.done or done
        return done


class _InitialValues:
    """Collects the initial entries and tells when the last one has arrived."""

    def __init__(self) -> None:
        self._latest: dict[str, Value | Deleted] = {}
        self._cut = _Cut()

    def add(self, event: Value | Deleted | None, delta: int | None) -> bool:
        """Record one entry (None: a marker that changes no value); True if it is the
        last of the initial values."""
        if event is not None:
            previous = self._latest.get(event.key)
            if previous is None or previous.revision < event.revision:
                self._latest[event.key] = event
        return self._cut.reached(delta)

    def values(self) -> list[Value]:
        """The current values at the cut, in revision order."""
        current = [event for event in self._latest.values() if isinstance(event, Value)]
        return sorted(current, key=lambda value: value.revision)


def _bucket_name(kv: KeyValue) -> str:
    name = getattr(kv, "_name", None)
    return name if isinstance(name, str) else "?"


async def _was_empty(feed: OrderedFeed | PullFeed) -> bool:
    """True if the server had nothing to deliver to the new watch: no message sent, none
    pending. Read from the consumer info, so messages sent but not yet processed by the
    client count as delivered (unlike nats-py's own check, nats-io/nats.py#842)."""
    policy = feed.policy
    info = await feed.consumer_info()
    if info.config.deliver_policy not in (policy, None):
        # The ordered consumer was already recreated after a gap (by start sequence):
        # its counts do not cover what the first consumer sent; wait for a delta.
        return False
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return bool(info.num_pending == 0 and delivered == 0)


async def follow(
    kv: KeyValue, *, include_deletes: bool = True, stream: bool = False
) -> AsyncGenerator[WatchEvent, None]:
    """Current values, one :class:`InitialDone`, then live changes; see the module docs.

    ``include_deletes=False`` leaves out :class:`Deleted` events (deleted keys are never
    part of the buffered initial values either way). ``stream=True``: the initial values
    are handed on as they arrive, read at the caller's pace, not held until the cut (see
    the module docs, "Streamed initial values"). Runs until closed. One event at a time
    from :func:`follow_batches`.
    """
    batches = follow_batches(kv, include_deletes=include_deletes, stream=stream)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for event in batch:
                yield event


async def follow_batches(
    kv: KeyValue,
    *,
    include_deletes: bool = True,
    stream: bool = False,
    limit: int = BATCH_LIMIT,
    start_sequence: int = 0,
) -> AsyncGenerator[list[WatchEvent], None]:
    """:func:`follow`'s events in order, as lists of what has arrived (at most ``limit``
    each, never empty; :class:`InitialDone` alone in its list). For a caller that takes
    many events at once: a node starting on 100k envelopes and their wraps paid about
    2 µs an event for taking them one at a time (a coroutine and a generator step each,
    and a queue between it and its checks).

    ``start_sequence`` (streamed only): the "initial values" are instead every message of
    the bucket's stream from that sequence on, in stream order (puts, and deletes and
    purges as :class:`Deleted`): the **tail** after a checkpoint of the bucket taken at
    ``start_sequence - 1``. Applied in order on top of that checkpoint they give the
    bucket's state at the cut, whatever was overwritten or purged since (a key's last
    message in the tail decides it; a key with none is as the checkpoint has it)."""
    if limit < 1:
        raise ValueError("a batch holds at least one event")
    if start_sequence and not stream:
        raise ValueError("a start sequence is for the streamed form")
    what = f"watching bucket {_bucket_name(kv)}"
    count = 0
    last = 0
    if stream:
        initial = (
            PullFeed(kv, DeliverPolicy.BY_START_SEQUENCE, start_sequence)
            if start_sequence
            else PullFeed(kv)
        )
        try:
            with broker_errors(what):
                await initial.start(kv)
                empty = await _was_empty(initial)
            cut = _Cut()
            while not empty and not cut.done:
                try:
                    items = await initial.next_batch(limit, cut.reached)
                except Exception:
                    with broker_errors(what):  # (not around each message: it costs)
                        raise
                batch: list[WatchEvent] = []
                for event, _, _ in items:
                    if isinstance(event, Value):
                        count += 1
                        batch.append(event)
                    elif event is not None and include_deletes:
                        batch.append(event)
                if batch:
                    yield batch
            last = initial.last_sequence
        finally:
            with contextlib.suppress(Exception):
                await initial.stop()
    # Streamed, the live changes are every message after the last one taken (none taken:
    # the bucket was empty when the pull consumer was made, so all there now came after).
    if stream and (last or start_sequence):
        feed = OrderedFeed(kv, DeliverPolicy.BY_START_SEQUENCE, max(last + 1, start_sequence))
    else:
        feed = OrderedFeed(kv, DeliverPolicy.ALL)
    try:
        with broker_errors(what):
            await feed.start(kv)
        if stream:
            yield [InitialDone(count)]
        else:
            with broker_errors(what):
                empty = await _was_empty(feed)
            buffered = _InitialValues()
            if not empty:
                while True:
                    event, _, delta = await feed.next()
                    if buffered.add(event, delta):
                        break
            values = buffered.values()
            del buffered  # the buffer goes as the values are taken, not at the end
            count = len(values)
            values.reverse()
            while values:
                yield [values.pop() for _ in range(min(limit, len(values)))]
            yield [InitialDone(count)]

        while True:
            live: list[WatchEvent] = [
                event
                for event, _, _ in await feed.next_batch(limit)
                if isinstance(event, Value) or (event is not None and include_deletes)
            ]
            if live:
                yield live
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

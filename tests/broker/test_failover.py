"""flashgate.broker.failover: a stream tail that resumes where it was, publishes retried
under one id. The leader kill itself is in tests/e2e/test_cluster_failover.py."""

from __future__ import annotations

import asyncio
import time

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from flashgate.broker.failover import TAIL_HEARTBEAT, publish_until_stored, tail_stream
from flashgate.events.subjects import FleetNames


async def _stream(js: JetStreamContext, names: FleetNames) -> str:
    await js.add_stream(StreamConfig(name=names.event_stream, subjects=[names.event_subjects]))
    return names.event_stream


async def _next(sub: JetStreamContext.PushSubscription, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bytes((await sub.next_msg(timeout=1.0)).data)
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise


async def test_a_lost_tail_consumer_is_recreated_after_the_last_message_not_from_the_start(
    nc: Client, js: JetStreamContext, fleet_names: FleetNames
) -> None:
    """The server forgets the tail's consumer (as when the server holding it dies) before
    any new message: it is recreated from where the tail started, and neither replays
    the stream's older messages nor loses the new ones."""
    stream = await _stream(js, fleet_names)
    for i in range(5):
        await js.publish(fleet_names.event_subject("old"), f"old-{i}".encode())
    sub = await tail_stream(nc, stream, fleet_names.event_subjects)
    await js.delete_consumer(stream, sub._consumer)  # type: ignore[attr-defined]
    # Two missed heartbeats: the tail notices and recreates its consumer.
    await asyncio.sleep(4 * TAIL_HEARTBEAT)
    for i in range(3):
        await js.publish(fleet_names.event_subject("new"), f"new-{i}".encode())
    assert [await _next(sub) for _ in range(3)] == [b"new-0", b"new-1", b"new-2"]
    await sub.unsubscribe()


async def test_a_publish_retried_under_one_id_is_stored_once(
    nc: Client, js: JetStreamContext, fleet_names: FleetNames
) -> None:
    stream = await _stream(js, fleet_names)
    subject = fleet_names.event_subject("x")
    deadline = time.monotonic() + 10
    first = await publish_until_stored(nc, subject, b"a", msg_id="id-1", deadline=deadline)
    again = await publish_until_stored(nc, subject, b"a", msg_id="id-1", deadline=deadline)
    assert again.duplicate and again.seq == first.seq
    assert (await js.stream_info(stream)).state.messages == 1

"""A client's side of a JetStream leader change: resume within about a second of a leader.

When the server leading a replicated stream dies, the others elect a new leader (a few
seconds, most of a failover). Two things a client does could add seconds of their own:

* **Following a stream** through an ephemeral ordered push consumer (the admin's outcome
  watch): the consumer is R1 and lives on one server; if that server dies, nats-py notices
  only after two missed idle heartbeats (5 s each by default) and then recreates it once
  per check. :func:`tail_stream` asks for heartbeats every :data:`TAIL_HEARTBEAT` seconds
  and recreates through a context whose requests time out after :data:`TAIL_API_TIMEOUT`,
  so a lost consumer is noticed within ``2 × TAIL_HEARTBEAT`` and recreated within about
  a second of the stream having a leader again, from the message after the last one seen.
* **Publishing** while there is no leader: no responders, a timeout, or "unavailable".
  :func:`publish_until_stored` retries with the same ``Nats-Msg-Id`` (the stream's
  duplicate window drops a copy stored before a lost acknowledgement) at a short fixed
  interval, so the first attempt after the election is stored.

nats-py keeps the ordered consumer's resume point in its subscription (``_jsi._sseq``,
the last stream sequence delivered). It starts at 0, so a consumer recreated before its
first message would start again at sequence 1 and replay the whole stream; the tail sets
it to the stream's last sequence when it starts (one private attribute, read and set
here only; checked by tests/broker/test_failover.py against the nats-py in use).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.api import ConsumerConfig, DeliverPolicy, PubAck

from flashgate.broker.connection import broker_errors
from flashgate.errors import BrokerError, BrokerUnavailable

#: Seconds between the server's idle heartbeats to a tail: a lost consumer is noticed
#: after two missed ones.
TAIL_HEARTBEAT = 0.5
#: Seconds a tail's JetStream request (creating or recreating its consumer) may take.
TAIL_API_TIMEOUT = 1.0
#: Seconds one publish waits for its acknowledgement before it is sent again.
PUBLISH_ATTEMPT_TIMEOUT = 2.0
#: Seconds between publish attempts while the stream has no leader.
PUBLISH_RETRY_INTERVAL = 0.2

_T = TypeVar("_T")


async def tail_stream(
    nc: Client, stream: str, subjects: str, *, deadline: float | None = None
) -> JetStreamContext.PushSubscription:
    """An ordered push subscription to the messages of ``stream`` on ``subjects`` stored
    from now on, resuming on its own across leader changes (see the module docstring).

    Starting is retried while JetStream is unavailable (an election) until ``deadline``
    (``time.monotonic()`` seconds; default: a single attempt)."""
    js = nc.jetstream(timeout=TAIL_API_TIMEOUT)

    async def start() -> JetStreamContext.PushSubscription:
        with broker_errors(f"following stream {stream}"):
            last = (await js.stream_info(stream)).state.last_seq
            sub = await js.subscribe(
                subjects,
                stream=stream,
                ordered_consumer=True,
                idle_heartbeat=TAIL_HEARTBEAT,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1
                ),
            )
        _set_resume_point(sub, last)
        return sub

    return await _retrying(start, deadline)


def _set_resume_point(sub: JetStreamContext.PushSubscription, last: int) -> None:
    jsi: Any = getattr(sub._sub, "_jsi", None)
    if jsi is None or not isinstance(getattr(jsi, "_sseq", None), int):
        raise BrokerError("nats-py's ordered consumer changed: its resume point is not found")
    jsi._sseq = max(jsi._sseq, last)


async def publish_until_stored(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    deadline: float,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Publish to a stream, again with the same ``msg_id`` while JetStream is unavailable,
    until stored or ``deadline`` (``time.monotonic()``); then the last error is raised."""
    js = nc.jetstream(timeout=PUBLISH_ATTEMPT_TIMEOUT)
    all_headers = {**(headers or {}), api.Header.MSG_ID.value: msg_id}

    async def attempt() -> PubAck:
        with broker_errors(f"publishing to {subject}"):
            return await js.publish(subject, payload, headers=all_headers)

    return await _retrying(attempt, deadline)


async def _retrying(attempt: Callable[[], Awaitable[_T]], deadline: float | None) -> _T:
    while True:
        try:
            return await attempt()
        except BrokerUnavailable:
            if deadline is None or time.monotonic() + PUBLISH_RETRY_INTERVAL > deadline:
                raise
        await asyncio.sleep(PUBLISH_RETRY_INTERVAL)

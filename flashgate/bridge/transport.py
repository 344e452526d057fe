"""The node's NATS transport: the one module of the bridge that calls the NATS client.

A :class:`NatsTransport` is made unconnected; :meth:`NatsTransport.connect` creates its
:class:`Connection` state object (the client and its JetStream context), which every call
reads through :attr:`NatsTransport.connection`: before the connection (or after
:meth:`close`) that raises :class:`~flashgate.errors.BrokerUnavailable`, instead of each
caller checking an ``Optional``. Client errors become typed errors here
(:func:`~flashgate.broker.connection.broker_errors`).

What travels (subjects in :class:`~flashgate.events.subjects.FleetNames`): share requests
to a peer (:meth:`request`, the collectors' transport), re-wrapped envelopes to the backend
(:meth:`send_rewrap`), heartbeats and the events it signs (core NATS, on its own report
subject: the backend relays them into the event stream), and the subscriptions the node
wires up. :meth:`bucket` binds a KV bucket, waiting for the backend to create it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import (
    DEFAULT_SUB_PENDING_BYTES_LIMIT,
    DEFAULT_SUB_PENDING_MSGS_LIMIT,
)
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.broker.connection import broker_errors, connect, inbox_replies_only
from flashgate.errors import BrokerUnavailable, FlashgateError
from flashgate.events.subjects import FleetNames

log = structlog.get_logger("flashgate.bridge")

Handler = Callable[[Msg], Awaitable[None]]
#: A subscription's queue was full and a message to ``subject`` was dropped.
OnDrop = Callable[[str], None]
#: Seconds between two log lines about dropped messages.
DROP_LOG_EVERY_S = 10.0

#: Seconds a re-wrap batch may take at the backend.
REWRAP_TIMEOUT_S = 15
#: Seconds to wait for the client to drain and close on stop.
CLOSE_TIMEOUT_S = 2


@dataclass(frozen=True)
class Connection:
    """What exists once connected."""

    nc: Client
    js: JetStreamContext


class NatsTransport:
    def __init__(self, names: FleetNames, node_id: str) -> None:
        self.names = names
        self.node_id = node_id
        self._connection: Connection | None = None
        self._on_drop: dict[str, OnDrop] = {}  # subject -> whom to tell of a drop

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise BrokerUnavailable("this node is not connected to NATS")
        return self._connection

    async def connect(
        self,
        urls: list[str],
        *,
        user: str | None = None,
        password: str | None = None,
        nkey_seed: str | None = None,
    ) -> None:
        """Connect as this node: with its own NKey (``nkey_seed``, from its bundle) when it
        has one, else with ``user``/``password``. Replies come back on
        ``_INBOX.bridge.<node>``, which only this node's NATS user may read."""
        nc = await connect(
            urls,
            role="bridge",
            identity=self.node_id,
            name=f"bridge-{self.node_id}",
            user=user,
            password=password,
            nkey_seed=nkey_seed,
            error_cb=self._on_error,
        )
        self._connection = Connection(nc, nc.jetstream())

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.nc.close(), CLOSE_TIMEOUT_S)

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        pending_msgs: int | None = None,
        pending_bytes: int | None = None,
        on_drop: OnDrop | None = None,
    ) -> None:
        """Subscribe ``handler``. With ``pending_msgs``/``pending_bytes`` the messages
        waiting for it are bounded: beyond, the client drops them (``on_drop`` is told)
        while it keeps reading the socket, so the server never finds this node slow and
        cuts it off."""
        if on_drop is not None:
            self._on_drop[subject] = on_drop
        await self.connection.nc.subscribe(
            subject,
            cb=inbox_replies_only(handler, subject),
            pending_msgs_limit=pending_msgs or DEFAULT_SUB_PENDING_MSGS_LIMIT,
            pending_bytes_limit=pending_bytes or DEFAULT_SUB_PENDING_BYTES_LIMIT,
        )

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            on_drop = self._on_drop.get(exc.subject)
            if on_drop is not None:
                on_drop(exc.subject)

    async def request(self, node_id: str, payload: bytes, timeout: float) -> bytes:
        """A share request to peer ``node_id`` (:class:`~flashgate.bridge.collector.Transport`)."""
        with broker_errors(f"share request to {node_id}"):
            msg = await self.connection.nc.request(
                self.names.share_subject(node_id), payload, timeout=timeout
            )
        return msg.data

    async def send_rewrap(self, payload: bytes) -> bytes:
        with broker_errors("sending re-wrapped envelopes to the backend"):
            msg = await self.connection.nc.request(
                self.names.rewrap_subject, payload, timeout=REWRAP_TIMEOUT_S
            )
        return msg.data

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.connection.nc.publish(subject, payload)

    async def publish_report(self, payload: bytes) -> None:
        """An event this node signed, on its own report subject (core NATS): the backend
        checks it and relays it into the event stream, where a node may not publish."""
        await self.connection.nc.publish(self.names.node_report_subject(self.node_id), payload)

    async def bucket_if_there(self, name: str) -> KeyValue | None:
        """Bind bucket ``name`` if it exists now and this node may use it (None if not: it
        is made by a newer backend, or granted by a newer server configuration)."""
        try:
            with broker_errors(f"binding bucket {name}"):
                return await self.connection.js.key_value(name)
        except FlashgateError as exc:
            if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                log.warning("bucket not usable", bucket=name, error=exc.message[:200])
            return None

    async def bucket(self, name: str) -> KeyValue:
        """Bind bucket ``name``, waiting for it: the backend creates the buckets, and a
        bridge may start first. That wait is said once (info), its retries at debug level;
        any other failure to bind is a warning each time."""
        js = self.connection.js
        waiting = False
        while True:
            try:
                with broker_errors(f"binding bucket {name}"):
                    return await js.key_value(name)
            except FlashgateError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    log.warning(
                        "bucket not available yet; retrying", bucket=name, error=exc.message[:200]
                    )
                elif not waiting:
                    waiting = True
                    log.info("waiting for the backend to create bucket", bucket=name)
                else:
                    log.debug("bucket not created yet", bucket=name)
                await asyncio.sleep(1.0)

"""The node's NATS transport (flashgate/bridge/transport.py) and its connection state
object, against a real nats-server: no call reaches the client before it is connected or
after it is closed; each raises a typed error instead."""

from __future__ import annotations

import secrets

import pytest

from flashgate.bridge.transport import NatsTransport
from flashgate.errors import BrokerUnavailable, NoResponders
from flashgate.events.subjects import FleetNames


async def test_calls_before_connecting_raise_broker_unavailable() -> None:
    transport = NatsTransport(FleetNames("unit"), "node-1")
    with pytest.raises(BrokerUnavailable):
        await transport.request("node-2", b"x", 1.0)
    with pytest.raises(BrokerUnavailable):
        await transport.publish("fg.unit.x", b"x")
    with pytest.raises(BrokerUnavailable):
        await transport.bucket("fg-unit-secrets")
    await transport.close()  # closing what was never opened is fine


async def test_connected_then_closed(nats_url: str) -> None:
    transport = NatsTransport(FleetNames("unit"), "node-1")
    await transport.connect([nats_url])
    with pytest.raises(NoResponders):  # connected: the request reaches NATS, nobody serves
        await transport.request("node-2", b"x", 1.0)
    await transport.close()
    with pytest.raises(BrokerUnavailable):
        await transport.send_rewrap(b"x")


async def test_an_optional_bucket_is_bound_if_there_and_none_if_not(nats_url: str) -> None:
    """The snapshots bucket is bound only if it is there: a node beside a backend older
    than it reads every wrap instead of waiting for the bucket (as it does for the others)."""
    transport = NatsTransport(FleetNames("unit"), "node-1")
    await transport.connect([nats_url])
    try:
        name = f"t-opt-{secrets.token_hex(4)}"
        assert await transport.bucket_if_there(name) is None
        await transport.connection.js.create_key_value(bucket=name)
        kv = await transport.bucket_if_there(name)
        assert kv is not None and await kv.put("k", b"v") > 0
    finally:
        await transport.close()

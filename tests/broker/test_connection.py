"""connect(): role inboxes, fail-fast first connection, version floor, reconnect policy, logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from flashgate.broker.connection import (
    broker_errors,
    check_server_version,
    connect,
    flush,
    inbox_prefix,
    redact_url,
)
from flashgate.devcluster.nats_server import NatsBinary, NatsServerProcess, free_port
from flashgate.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    InvalidName,
    NoResponders,
    UnsupportedServer,
)
from tests.support.nats_servers import eventually

pytestmark = pytest.mark.nats

PAYLOAD = b"payload-that-must-not-be-logged"


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.10.0", "2.10.22", "2.15.1", "3.0.0", "2.11.0-RC.1"])
def test_supported_versions(version: str) -> None:
    assert check_server_version(version) >= (2, 10, 0)


@pytest.mark.parametrize("version", ["2.9.10", "2.9.25", "1.4.1", "0.0.0-unknown"])
def test_old_versions_are_refused(version: str) -> None:
    with pytest.raises(UnsupportedServer, match=r">= 2\.10"):
        check_server_version(version)


def test_inbox_prefix_is_per_role_and_validated() -> None:
    assert inbox_prefix("bridge") == "_INBOX.bridge"
    for bad in ["", "a.b", "a*", ">", "Bridge"]:
        with pytest.raises(InvalidName):
            inbox_prefix(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@127.0.0.1:4333", "nats://127.0.0.1:4333"),
        ("nats://tok3n@host.example", "nats://host.example"),
        ("127.0.0.1:4333", "nats://127.0.0.1:4333"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- against the session server -------------------------------------------------------------


async def test_replies_come_back_on_the_role_inbox(nc: Client) -> None:
    seen: list[str] = []

    async def echo(msg: Msg) -> None:
        seen.append(msg.reply)
        await msg.respond(msg.data)

    await nc.subscribe("fgtest.echo", cb=echo)
    reply = await nc.request("fgtest.echo", b"ping", timeout=2)
    assert reply.data == b"ping"
    assert seen and seen[0].startswith("_INBOX.test.")
    assert nc.new_inbox().startswith("_INBOX.test.")


async def test_invalid_role_is_refused_before_connecting(nats_url: str) -> None:
    with pytest.raises(InvalidName):
        await connect(nats_url, role="no.dots", name="x")


async def test_inbox_prefix_cannot_be_overridden(nats_url: str) -> None:
    with pytest.raises(ConfigurationError, match="inbox_prefix"):
        await connect(nats_url, role="test", name="x", inbox_prefix="_INBOX")


async def test_nothing_listening_fails_fast_without_credentials_in_the_message() -> None:
    url = f"nats://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable) as caught:
        await asyncio.wait_for(
            connect(url, role="test", name="x", connect_timeout=1, reconnect_time_wait=0.1),
            timeout=10,
        )
    message = caught.value.message
    assert "127.0.0.1" in message
    assert "s3cret" not in message and "alice" not in message


async def test_broker_errors_maps_nats_errors(nc: Client) -> None:
    with pytest.raises(NoResponders, match="asking nobody"), broker_errors("asking nobody"):
        await nc.request("fgtest.nobody.home", b"", timeout=0.5)
    assert issubclass(NoResponders, BrokerUnavailable)
    js = nc.jetstream()
    with pytest.raises(BrokerError, match="stream not found"), broker_errors("info"):
        await js.stream_info("fgtest-no-such-stream")


async def test_flush_makes_a_new_subscription_visible_to_other_connections(
    own_server: NatsServerProcess,
) -> None:
    """nats-py 2.16's own flush() may PONG before the SUB reached the server; ours may not.

    The race shows mostly on a freshly started server, so this uses one per test."""

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    for attempt in range(10):
        responder = await connect(own_server.url, role="test", name="r")
        requester = await connect(own_server.url, role="test", name="q")
        try:
            await responder.subscribe(f"fgtest.flush.{attempt}", cb=echo)
            await flush(responder)
            reply = await requester.request(f"fgtest.flush.{attempt}", b"x", timeout=2)
            assert reply.data == b"x"
        finally:
            await responder.close()
            await requester.close()


# --- an old server ----------------------------------------------------------------------------


@pytest.fixture
async def old_server() -> AsyncIterator[str]:
    """A fake NATS server that says it is 2.9.10 and answers the handshake."""
    info = (
        b'INFO {"server_id":"FAKE","version":"2.9.10","proto":1,"headers":true,'
        b'"max_payload":1048576}\r\n'
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(info)
        await writer.drain()
        while line := await reader.readline():
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.close()


async def test_an_old_server_is_refused_after_connecting(old_server: str) -> None:
    with pytest.raises(UnsupportedServer) as caught:
        await connect(old_server, role="test", name="x", connect_timeout=2)
    assert "2.9.10" in caught.value.message and ">= 2.10" in caught.value.message


# --- own servers: reconnects, auth -----------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path, nats_binary: NatsBinary) -> Iterator[NatsServerProcess]:
    with NatsServerProcess(tmp_path / "own", binary=nats_binary) as server:
        yield server


async def test_reconnect_is_logged_with_role_and_name_never_payloads(
    own_server: NatsServerProcess,
) -> None:
    with capture_logs() as logs:
        nc = await connect(own_server.url, role="bridge", name="node-1", reconnect_time_wait=0.1)
        try:
            await nc.publish("fgtest.log", PAYLOAD)
            await nc.flush()
            own_server.restart()

            async def flushed() -> None:
                with broker_errors("flush"):
                    await nc.flush(timeout=1)
                if nc.stats["reconnects"] < 1:
                    raise BrokerError("not reconnected yet")

            await eventually(flushed, timeout=15)
        finally:
            await nc.close()
    events = [entry["event"] for entry in logs]
    for expected in ["nats.connected", "nats.disconnected", "nats.reconnected", "nats.closed"]:
        assert expected in events, events
    for entry in logs:
        if entry["event"].startswith("nats."):
            assert entry["role"] == "bridge" and entry["connection"] == "node-1"
    assert "payload-that-must-not-be-logged" not in repr(logs)


async def test_max_reconnect_attempts_zero_closes_on_disconnect(
    own_server: NatsServerProcess,
) -> None:
    nc = await connect(own_server.url, role="test", name="x", max_reconnect_attempts=0)
    try:
        own_server.stop()

        async def closed() -> None:
            if not nc.is_closed:
                raise BrokerError("still open")

        await eventually(closed, timeout=10, interval=0.05)
    finally:
        await nc.close()


AUTH_CONFIG = """
authorization {
  users: [
    { user: "alice", password: "s3cret" },
    { user: "node", password: "n0de",
      permissions: { publish: ["fgtest.echo"], subscribe: ["_INBOX.bridge.>"] } }
  ]
}
"""


@pytest.fixture
def auth_server(tmp_path: Path, nats_binary: NatsBinary) -> Iterator[NatsServerProcess]:
    with NatsServerProcess(tmp_path / "auth", binary=nats_binary, extra_config=AUTH_CONFIG) as s:
        yield s


async def test_credentials_are_passed_and_refusals_are_typed(
    auth_server: NatsServerProcess,
) -> None:
    nc = await connect(auth_server.url, role="test", name="x", user="alice", password="s3cret")
    await nc.close()
    with pytest.raises(BrokerError, match="refused the credentials") as caught:
        await connect(
            auth_server.url,
            role="test",
            name="x",
            user="alice",
            password="wrong",
            reconnect_time_wait=0.1,
        )
    assert "wrong" not in caught.value.message and "s3cret" not in caught.value.message


async def test_role_permissions_can_be_written_on_the_role_inbox(
    auth_server: NatsServerProcess,
) -> None:
    """A user allowed to subscribe only to ``_INBOX.bridge.>`` can make requests as role
    ``bridge``, and cannot as any other role."""
    responder = await connect(
        auth_server.url, role="admin", name="r", user="alice", password="s3cret"
    )
    bridge = await connect(auth_server.url, role="bridge", name="b", user="node", password="n0de")
    other = await connect(auth_server.url, role="other", name="o", user="node", password="n0de")
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe("fgtest.echo", cb=echo)
        await flush(responder)
        assert (await bridge.request("fgtest.echo", b"hi", timeout=2)).data == b"hi"
        with (
            capture_logs() as logs,
            pytest.raises(BrokerUnavailable),
            broker_errors("request as another role"),
        ):
            await other.request("fgtest.echo", b"hi", timeout=0.5)
        # nats-py lowercases server errors (and keeps the connection open for this one)
        errors = [entry["error"].lower() for entry in logs if entry["event"] == "nats.error"]
        assert any("permissions violation" in e and "_inbox.other." in e for e in errors)
        assert not other.is_closed
    finally:
        for client in (responder, bridge, other):
            await client.close()


async def test_requests_are_answered_only_to_an_inbox() -> None:
    """The guard every flashgate responder (bridge share/status/API-key, backend queries and
    re-wraps) sits behind: an answer goes to an ``_INBOX.`` reply or nowhere."""
    from types import SimpleNamespace

    from flashgate.broker.connection import inbox_replies_only

    seen: list[str] = []

    async def handler(msg: Any) -> None:
        seen.append(msg.reply)

    guarded = inbox_replies_only(handler, "test")
    for reply in ("_INBOX.bridge.node-2.x", "", "$KV.fg-f-secrets.a.b", "$JS.API.STREAM.PURGE.X"):
        await guarded(SimpleNamespace(reply=reply, data=b""))  # type: ignore[arg-type]
    assert seen == ["_INBOX.bridge.node-2.x", ""]

"""Per-node NATS identities and per-role least privilege, against a real nats-server.

Each Bridge Node logs in with its own NKey (flashgate.broker.permissions.node_permissions):
it reads only its own share and node subjects and inbox, cannot reach the command stream or
another role's consumer, cannot speak for another node, and once revoked (its user taken
out of the config, the server reloaded) it can no longer connect. Issue 14 §3.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from flashgate.broker.connection import connect, flush
from flashgate.broker.declare import declare_fleet
from flashgate.broker.permissions import (
    BACKEND_DURABLE,
    RoleCredentials,
    authorization_config,
)
from flashgate.devcluster.nats_server import NatsBinary, NatsServerProcess
from flashgate.errors import BrokerError
from flashgate.events.subjects import FleetNames
from flashgate.fleet.nats_identity import new_seed, public_nkey

NAMES = FleetNames("idt")
CREDS = {
    "admin": RoleCredentials("admin", "admin-pw"),
    "backend": RoleCredentials("backend", "backend-pw"),
}
SEEDS = {node: new_seed() for node in ("node-1", "node-2", "node-3")}


def _config(nodes: list[str]) -> str:
    identities = {node: public_nkey(SEEDS[node]) for node in nodes}
    text = authorization_config(NAMES, CREDS, identities)
    # An unrestricted observer beside the flashgate users.
    return text.replace(
        "users: [", 'users: [\n  {"user": "observer", "password": "observer-pw"},', 1
    )


@pytest.fixture
def server(tmp_path: Path, nats_binary: NatsBinary) -> Iterator[NatsServerProcess]:
    with NatsServerProcess(
        tmp_path / "ids", binary=nats_binary, extra_config=_config(list(SEEDS))
    ) as s:
        yield s


async def _node(server: NatsServerProcess, node: str, errors: list[str] | None = None) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc).lower())

    return await connect(
        server.url,
        role="bridge",
        identity=node,
        name=f"bridge-{node}",
        nkey_seed=SEEDS[node],
        error_cb=on_error,
        reconnect_time_wait=0.1,
    )


async def _role(server: NatsServerProcess, role: str) -> Client:
    return await connect(
        server.url,
        role=role,
        name=role,
        user=CREDS[role].user,
        password=CREDS[role].password,
    )


@pytest.fixture
async def backend(server: NatsServerProcess) -> AsyncIterator[Client]:
    """The backend's login with the fleet's streams and its durable command consumer."""
    nc = await _role(server, "backend")
    js = nc.jetstream()
    await declare_fleet(js, NAMES, replicas=1)
    await js.pull_subscribe(
        NAMES.command_subjects,
        durable=BACKEND_DURABLE,
        stream=NAMES.command_stream,
        config=ConsumerConfig(
            durable_name=BACKEND_DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=NAMES.command_subjects,
        ),
    )
    try:
        yield nc
    finally:
        await nc.close()


async def _delivered(
    server: NatsServerProcess, subject: str, publisher: Client, publish_to: str
) -> list[bytes]:
    """What an unrestricted observer sees on ``subject`` after ``publisher`` sent one
    message to ``publish_to`` (followed by a flush: the server has handled it)."""
    observer = await connect(
        server.url, role="observer", name="observer", user="observer", password="observer-pw"
    )
    seen: list[bytes] = []

    async def collect(msg: Msg) -> None:
        seen.append(msg.data)

    try:
        await observer.subscribe(subject, cb=collect)
        await flush(observer)
        await publisher.publish(publish_to, b"x")
        await flush(publisher)
        await observer.publish(subject + ".marker" if subject.endswith(">") else subject, b"end")
        await flush(observer)
        for _ in range(100):
            if b"end" in seen:
                break
            await asyncio.sleep(0.05)
        return [data for data in seen if data != b"end"]
    finally:
        await observer.close()


async def test_a_node_logs_in_with_its_own_nkey_and_a_wrong_one_is_refused(
    server: NatsServerProcess,
) -> None:
    nc = await _node(server, "node-1")
    assert nc.is_connected
    await nc.close()
    with pytest.raises(BrokerError, match="refused the credentials"):
        await connect(server.url, role="bridge", identity="node-9", name="x", nkey_seed=new_seed())


async def test_a_revoked_node_is_disconnected_and_can_no_longer_connect(
    server: NatsServerProcess,
) -> None:
    nc = await _node(server, "node-2")
    others = await _node(server, "node-1")
    server.reload(_config(["node-1", "node-3"]))  # node-2 revoked
    with pytest.raises(BrokerError, match="refused the credentials"):
        await _node(server, "node-2")
    for _ in range(600):  # its live connection is cut too (and cannot come back)
        if not nc.is_connected:
            break
        await asyncio.sleep(0.05)
    assert not nc.is_connected
    await flush(others)  # the others are not touched
    assert others.is_connected
    await nc.close()
    await others.close()


@pytest.mark.parametrize(
    "subject",
    [
        NAMES.share_subject("node-2"),
        NAMES.status_subject("node-2"),
        NAMES.apikey_check_subject("node-2"),
        "fg.idt.node.node-2.>",
        "fg.idt.share.>",
        "_INBOX.bridge.node-2.>",
        "_INBOX.bridge.>",
        "_INBOX.admin.>",
    ],
)
async def test_a_node_cannot_subscribe_to_another_nodes_subjects_or_inbox(
    server: NatsServerProcess, subject: str
) -> None:
    errors: list[str] = []
    node1 = await _node(server, "node-1", errors)
    # An unrestricted user publishes there: what would node-1 get?
    sender = await connect(server.url, role="o", name="o", user="observer", password="observer-pw")
    got: list[bytes] = []

    async def collect(msg: Msg) -> None:
        got.append(msg.data)

    try:
        await node1.subscribe(subject, cb=collect)
        await flush(node1)
        await sender.publish(subject.replace(">", "x.y"), b"secret reply")
        await flush(sender)
        await flush(node1)
        assert got == []
        assert any("permissions violation" in e and "subscription" in e for e in errors), errors
    finally:
        await node1.close()
        await sender.close()


async def test_a_node_serves_its_own_share_subject_and_gets_its_replies(
    server: NatsServerProcess,
) -> None:
    """The grants are enough for the real work: node-1 asks node-2 for a share."""
    node1 = await _node(server, "node-1")
    node2 = await _node(server, "node-2")

    async def answer(msg: Msg) -> None:
        await msg.respond(b"partial")

    try:
        await node2.subscribe(NAMES.share_subject("node-2"), cb=answer)
        await flush(node2)
        reply = await node1.request(NAMES.share_subject("node-2"), b"req", timeout=5)
        assert reply.data == b"partial"
    finally:
        await node1.close()
        await node2.close()


async def test_a_node_cannot_publish_another_nodes_heartbeat(server: NatsServerProcess) -> None:
    node1 = await _node(server, "node-1")
    try:
        forged = await _delivered(
            server,
            NAMES.heartbeat_subject("node-2"),
            node1,
            NAMES.heartbeat_subject("node-2"),
        )
        own = await _delivered(
            server, NAMES.heartbeat_subject("node-1"), node1, NAMES.heartbeat_subject("node-1")
        )
        assert forged == []
        assert own == [b"x"]
    finally:
        await node1.close()


@pytest.mark.parametrize("event_type", ["node.misbehaved", "secret.created"])
async def test_a_node_cannot_publish_into_the_event_stream(
    server: NatsServerProcess, backend: Client, event_type: str
) -> None:
    """A flooding node could fill the JetStream storage the buckets and the command stream
    share: its reports go to its own report subject (core NATS), and the backend relays
    them (flashgate.backend.node_reports). The event stream is the backend's alone."""
    node1 = await _node(server, "node-1")
    js = backend.jetstream()
    try:
        for _ in range(3):
            await node1.publish(NAMES.event_subject(event_type), b"{}")
        await flush(node1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await node1.jetstream(timeout=1).publish(NAMES.event_subject(event_type), b"{}")
        assert (await js.stream_info(NAMES.event_stream)).state.messages == 0
        # Its own report subject it may publish to, another node's not.
        own = NAMES.node_report_subject("node-1")
        assert await _delivered(server, own, node1, own) == [b"x"]
        other = NAMES.node_report_subject("node-2")
        assert await _delivered(server, other, node1, other) == []
    finally:
        await node1.close()


async def test_a_node_cannot_delete_the_backends_durable_command_consumer(
    server: NatsServerProcess, backend: Client
) -> None:
    node1 = await _node(server, "node-1")
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await node1.jetstream(timeout=1).delete_consumer(NAMES.command_stream, BACKEND_DURABLE)
        info = await backend.jetstream().consumer_info(NAMES.command_stream, BACKEND_DURABLE)
        assert info.name == BACKEND_DURABLE
    finally:
        await node1.close()


async def test_the_admin_cannot_delete_the_backends_durable_command_consumer(
    server: NatsServerProcess, backend: Client
) -> None:
    admin = await _role(server, "admin")
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await admin.jetstream(timeout=1).delete_consumer(NAMES.command_stream, BACKEND_DURABLE)
        info = await backend.jetstream().consumer_info(NAMES.command_stream, BACKEND_DURABLE)
        assert info.name == BACKEND_DURABLE
    finally:
        await admin.close()


async def test_a_node_cannot_read_the_command_stream(
    server: NatsServerProcess, backend: Client
) -> None:
    admin = await _role(server, "admin")
    await admin.jetstream().publish(NAMES.command_subject("secret.put"), b"signed command")
    await admin.close()
    node1 = await _node(server, "node-1")
    js = node1.jetstream(timeout=1)
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.add_consumer(
                NAMES.command_stream,
                ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
            )
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.get_msg(NAMES.command_stream, 1)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
            await js.get_msg(NAMES.command_stream, 1, direct=True)
    finally:
        await node1.close()


async def test_a_node_still_watches_the_buckets(server: NatsServerProcess, backend: Client) -> None:
    """What a node needs from JetStream still works: bind the buckets, watch, read."""
    kv_backend = await backend.jetstream().key_value(NAMES.secrets_bucket)
    await kv_backend.put("repo.name", b"envelope")
    node1 = await _node(server, "node-1")
    try:
        kv = await node1.jetstream(timeout=5).key_value(NAMES.secrets_bucket)
        assert (await kv.get("repo.name")).value == b"envelope"
        watcher = await kv.watchall()
        entry = await watcher.updates(timeout=5)
        assert entry is not None and entry.key == "repo.name"
        await watcher.stop()
    finally:
        await node1.close()


# --- a node's replies go nowhere but to an inbox (the reply-subject trick) -------------------


async def _answer_everything(node: Client, subject: str) -> None:
    """A rogue node answers whatever it receives, to whatever reply subject it carries."""

    async def answer(msg: Msg) -> None:
        if msg.reply:
            payload = b"{}" if "PURGE" in msg.reply else b"" if "DELETE" in msg.reply else b"EVIL"
            await msg.respond(payload)

    await node.subscribe(subject, cb=answer)


@pytest.mark.parametrize(
    "own_subject",
    [
        NAMES.status_subject("node-1"),
        NAMES.apikey_check_subject("node-1"),
        NAMES.heartbeat_subject("node-1"),
        NAMES.share_subject("node-1"),
    ],
)
async def test_a_node_cannot_send_itself_a_request_and_answer_it_anywhere(
    server: NatsServerProcess, backend: Client, own_subject: str
) -> None:
    """Receiving a message it sent itself, with a reply subject of its choice, would let
    ``allow_responses`` carry its answer to any subject: a bucket key, the JetStream API.
    A node never receives what it publishes (its own request subjects are not its to
    publish, its own heartbeat is not delivered to it)."""
    kv = await backend.jetstream().key_value(NAMES.secrets_bucket)
    await kv.put("payments.s3", b"GOOD")
    node1 = await _node(server, "node-1")
    try:
        with contextlib.suppress(Exception):
            await _answer_everything(node1, NAMES.heartbeat_wildcard)
        for subject in (own_subject, f"fg.{NAMES.fleet}.node.node-1.>"):
            with contextlib.suppress(Exception):
                await _answer_everything(node1, subject)
        await flush(node1)
        for reply in (
            f"$KV.{NAMES.secrets_bucket}.payments.s3",
            f"$JS.API.CONSUMER.DELETE.{NAMES.command_stream}.{BACKEND_DURABLE}",
            f"$JS.API.STREAM.PURGE.KV_{NAMES.secrets_bucket}",
        ):
            with contextlib.suppress(Exception):
                await node1.publish(own_subject, b"x", reply=reply)
                await flush(node1)
            await asyncio.sleep(0.3)
        assert (await kv.get("payments.s3")).value == b"GOOD"
        info = await backend.jetstream().consumer_info(NAMES.command_stream, BACKEND_DURABLE)
        assert info.name == BACKEND_DURABLE
    finally:
        await node1.close()


async def test_a_node_may_ack_only_on_the_bucket_streams(server: NatsServerProcess) -> None:
    """``$JS.ACK`` on the command stream would let a node acknowledge (or terminate) a
    command the backend has not applied yet."""
    node1 = await _node(server, "node-1")
    try:
        ack = f"$JS.ACK.{NAMES.command_stream}.{BACKEND_DURABLE}.1.1.1.0.0"
        assert await _delivered(server, ack, node1, ack) == []
    finally:
        await node1.close()


# --- the fast path's buckets: the nodes' own (DESIGN §6) ------------------------------------


async def test_the_fast_path_buckets_are_the_nodes_alone(
    server: NatsServerProcess, backend: Client
) -> None:
    """Nodes read and write the ring, wraps and snapshots buckets; the backend (which
    declared them) and the admin can do none of it."""
    node1 = await _node(server, "node-1")
    admin = await _role(server, "admin")
    keys = {
        NAMES.ring_bucket: "term.x",
        NAMES.wraps_bucket: "payments.s3",
        NAMES.snapshots_bucket: "head",
    }
    try:
        for bucket, key in keys.items():
            kv = await node1.jetstream(timeout=5).key_value(bucket)
            await kv.put(key, b"v")
            assert (await kv.get(key)).value == b"v"
            for other in (backend, admin):
                js = other.jetstream(timeout=1)
                with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                    await js.publish(f"$KV.{bucket}.{key}", b"forged")
                with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                    await js.get_msg(f"KV_{bucket}", 1, direct=True)
                with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                    await js.get_msg(f"KV_{bucket}", 1)
            assert (await kv.get(key)).value == b"v"
        # a node removes old snapshot parts by a stream purge by subject; it may purge no
        # other stream (the wraps, the envelopes)
        js1 = node1.jetstream(timeout=5)
        snaps = await js1.key_value(NAMES.snapshots_bucket)
        await snaps.put("part.old.0", b"p")
        await js1.purge_stream(
            f"KV_{NAMES.snapshots_bucket}", subject=f"$KV.{NAMES.snapshots_bucket}.part.old.>"
        )
        assert (await snaps.get("head")).value == b"v"
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await snaps.get("part.old.0")
        for stream in (f"KV_{NAMES.wraps_bucket}", f"KV_{NAMES.secrets_bucket}"):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                await node1.jetstream(timeout=1).purge_stream(stream)
        wraps = await js1.key_value(NAMES.wraps_bucket)
        assert (await wraps.get("payments.s3")).value == b"v"
    finally:
        await node1.close()
        await admin.close()

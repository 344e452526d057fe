"""Node reports through the backend, against a real nats-server with the fleet's logins
(each node its own NKey) and an in-process backend: a node may not publish into the event
stream (tests/broker/test_identities.py), so its signed reports go to its own report
subject and the backend relays them (flashgate.backend.node_reports). A report arrives
with the node's signature; forgeries are dropped and counted; a flooding node gets no more
than its bucket allows and another node's report still gets through."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.client import Client

from flashgate.backend import db, health
from flashgate.backend.node_reports import MAX_AGE_MS, MIN_COST_BYTES
from flashgate.backend.service import Backend, BackendSettings
from flashgate.bridge.liveness import Liveness
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.transport import NatsTransport
from flashgate.broker.connection import connect, flush
from flashgate.broker.permissions import ROLES, RoleCredentials, authorization_config
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.devcluster.nats_server import NatsBinary, NatsServerProcess
from flashgate.events import domain as ev
from flashgate.events.event_auth import EventAuthority, bridge_source, sign_event
from flashgate.events.subjects import FleetNames
from flashgate.fleet.backend_key import load_backend_signing_key
from flashgate.fleet.nats_identity import public_nkey
from tests.support.databases import sqlite_url
from tests.support.fleets import FleetFixture, make_fleet

pytestmark = pytest.mark.nats

#: The flood test's bucket, in bytes: a few reports at once, and next to nothing after.
BURST = 8 * 1024
RATE = 1.0


@pytest.fixture
def fleet(tmp_path: Path) -> FleetFixture:
    return make_fleet(tmp_path / "fleets", "relay")


@pytest.fixture
def logins() -> dict[str, RoleCredentials]:
    return {r: RoleCredentials(r, secrets.token_hex(12)) for r in ROLES}


@pytest.fixture
def server(
    tmp_path: Path, fleet: FleetFixture, logins: dict[str, RoleCredentials], nats_binary: NatsBinary
) -> Iterator[NatsServerProcess]:
    nodes = {b.node_id: public_nkey(b.nats_seed or "") for b in fleet.ceremony.bundles}
    users = authorization_config(fleet.names, logins, nodes)
    with NatsServerProcess(tmp_path / "nats", binary=nats_binary, extra_config=users) as s:
        yield s


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = sqlite_url(tmp_path / "backend.db")
    db.migrate(url)
    return url


@pytest.fixture
async def backend(
    db_url: str, server: NatsServerProcess, fleet: FleetFixture, logins: dict[str, RoleCredentials]
) -> AsyncIterator[Backend]:
    service = Backend(
        BackendSettings(
            nats_urls=[server.url],
            db_url=db_url,
            fleet_dir=fleet.dir,
            nats_user="backend",
            nats_password=logins["backend"].password,
            node_report_burst_bytes=BURST,
            node_report_rate_bytes=RATE,
        )
    )
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def nodes(server: NatsServerProcess, fleet: FleetFixture) -> AsyncIterator[dict[str, Client]]:
    """Each node's own NATS login (its NKey from its bundle)."""
    clients = {
        b.node_id: await connect(
            server.url,
            role="bridge",
            identity=b.node_id,
            name=f"bridge-{b.node_id}",
            nkey_seed=b.nats_seed,
        )
        for b in fleet.ceremony.bundles
    }
    yield clients
    for nc in clients.values():
        await nc.close()


def bundle(fleet: FleetFixture, node_id: str) -> Any:
    return next(b for b in fleet.ceremony.bundles if b.node_id == node_id)


def report(fleet: FleetFixture, reporter: str, *, at: datetime | None = None) -> bytes:
    about = "node-3" if reporter != "node-3" else "node-1"
    event = ev.make_event(
        ev.NodeMisbehaved(node_id=about, reporter=reporter, reason="invalid_partial", epoch=1),
        event_id=f"{reporter}.{about}.{secrets.token_hex(8)}",
        source=bridge_source(fleet.name, reporter),
        subject=about,
        time=at,
    )
    return ev.encode_event(sign_event(event, bundle(fleet, reporter).signing_key))


async def stream_events(backend: Backend) -> list[tuple[str, bytes]]:
    js = backend.js
    assert js is not None
    names = cast(FleetNames, backend.processor.state.names)  # type: ignore[union-attr]
    state = (await js.stream_info(names.event_stream)).state
    out: list[tuple[str, bytes]] = []
    if state.messages == 0:
        return out
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(names.event_stream, seq)
        out.append((msg.subject, msg.data or b""))
    return out


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        await asyncio.sleep(0.05)


def handled(backend: Backend, node_id: str) -> int:
    """Reports of ``node_id`` the relay has settled: relayed or dropped (any reason)."""
    relay = backend.node_reports
    assert relay is not None
    return relay.relayed[node_id] + sum(relay.dropped.get(node_id, {}).values())


def authority(fleet: FleetFixture) -> EventAuthority:
    keys = {b.node_id: b.signing_key.public_key() for b in fleet.ceremony.bundles}
    backend_key = load_backend_signing_key(fleet.dir, fleet.ceremony.descriptor).public_key()
    return EventAuthority(fleet.names, backend_key, keys.get)


async def test_a_nodes_report_reaches_the_event_stream_through_the_backend_signed_by_it(
    backend: Backend, fleet: FleetFixture, server: NatsServerProcess
) -> None:
    """The bridge's own code path: Liveness.report_misbehaviour on a node's real login."""
    b = bundle(fleet, "node-1")
    transport = NatsTransport(fleet.names, "node-1")
    await transport.connect([server.url], nkey_seed=b.nats_seed)
    roster = fleet.ceremony.roster
    live = Liveness(
        node_id="node-1",
        signing_key=b.signing_key,
        transport=transport,
        peers=PeerBook("node-1", roster),
        ring=cast(Any, SimpleNamespace(current=SimpleNamespace(epoch=1))),
        vault=cast(Any, None),
        loader=cast(Any, None),
        roster=lambda: roster,
        started_at=0,
        clock=lambda: int(time.time() * 1000),
        rng=SYSTEM_RNG,
    )
    try:
        await live.report_misbehaviour("node-2", "invalid_partial", "r.s")
        await until(lambda: _count(backend, 1))
    finally:
        await transport.close()
    [(subject, raw)] = await stream_events(backend)
    event = authority(fleet).open(subject, raw)  # the node's signature, checked as any consumer
    assert event.source == bridge_source(fleet.name, "node-1")
    data = event.data
    assert isinstance(data, ev.NodeMisbehaved)
    assert (data.reporter, data.node_id, data.secret_key) == ("node-1", "node-2", "r.s")


async def _count(backend: Backend, n: int) -> bool:
    return len(await stream_events(backend)) >= n


async def test_forged_reports_are_dropped_and_counted_and_the_backend_keeps_running(
    backend: Backend, fleet: FleetFixture, nodes: dict[str, Client]
) -> None:
    node1 = nodes["node-1"]
    subject = fleet.names.node_report_subject("node-1")
    valid = report(fleet, "node-1")
    forged = {
        "not_its_own": report(fleet, "node-2"),  # node-2's signed report, sent by node-1
        "stale": report(
            fleet, "node-1", at=datetime.now(UTC) - timedelta(milliseconds=2 * MAX_AGE_MS)
        ),
        "oversized": valid + b" " * ev.MAX_EVENT_BYTES,
        "garbage": secrets.token_bytes(300),
        "replayed": valid,  # after the valid one
    }
    await node1.publish(subject, valid)
    for raw in forged.values():
        await node1.publish(subject, raw)
    await flush(node1)

    async def all_handled() -> bool:
        return handled(backend, "node-1") == 1 + len(forged)

    await until(all_handled)
    relay = backend.node_reports
    assert relay is not None
    assert dict(relay.dropped["node-1"]) == dict.fromkeys(forged, 1)
    events = await stream_events(backend)
    assert [raw for _, raw in events] == [valid]
    assert await health.check(backend) == []  # still running, every task alive
    second = report(fleet, "node-1")
    await node1.publish(subject, second)
    await until(lambda: _count(backend, 2))
    assert [raw for _, raw in await stream_events(backend)] == [valid, second]


async def test_a_flooding_node_fills_its_bucket_not_the_stream_and_others_get_through(
    backend: Backend, fleet: FleetFixture, nodes: dict[str, Client]
) -> None:
    flood = [report(fleet, "node-1") for _ in range(3000)]
    subject = fleet.names.node_report_subject("node-1")
    started = time.monotonic()
    for raw in flood:
        await nodes["node-1"].publish(subject, raw)
    await flush(nodes["node-1"])

    async def flood_handled() -> bool:
        return handled(backend, "node-1") == len(flood)

    await until(flood_handled, timeout=60)
    allowance = BURST + RATE * (time.monotonic() - started)
    events = await stream_events(backend)
    stored = sum(len(raw) for _, raw in events)
    assert events and stored <= allowance  # the bucket's allowance, and no more
    assert len(events) >= BURST // max(len(flood[0]), MIN_COST_BYTES)
    relay = backend.node_reports
    assert relay is not None
    dropped = relay.dropped["node-1"]
    assert set(dropped) <= {"rate_limited", "overflow"}
    assert sum(dropped.values()) == len(flood) - len(events)

    other = report(fleet, "node-2")
    await nodes["node-2"].publish(fleet.names.node_report_subject("node-2"), other)
    await until(lambda: _count(backend, len(events) + 1))
    assert (await stream_events(backend))[-1][1] == other
    assert relay.summary()["node-2"] == {"relayed": 1}

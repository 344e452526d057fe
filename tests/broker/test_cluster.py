"""A 3-node cluster: replicas follow it; it loses the leader of an R3 secrets bucket:
nothing is lost, writes resume.

No timing is asserted: reads and writes are retried (bounded) while the remaining two
servers elect a new leader, and the killed server is restarted at the end so the session
cluster is whole again for any later test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.broker import declare
from flashgate.broker.connection import broker_errors, connect
from flashgate.broker.declare import declare_fleet
from flashgate.devcluster.nats_server import NatsCluster, NatsServerProcess
from flashgate.errors import BrokerError
from flashgate.events.subjects import FleetNames, secret_key
from tests.support.nats_servers import eventually

pytestmark = [pytest.mark.nats, pytest.mark.slow]

VALUES = 20
FAILOVER_TIMEOUT = 15.0


@pytest.fixture
async def cluster_nc(nats_cluster: NatsCluster) -> AsyncIterator[Client]:
    nc = await connect(
        nats_cluster.urls, role="test", name="pytest-cluster", reconnect_time_wait=0.2
    )
    try:
        yield nc
    finally:
        await nc.close()


async def read_all(kv: KeyValue, keys: list[str]) -> dict[str, bytes | None]:
    with broker_errors("reading the secrets bucket"):
        return {key: (await kv.get(key)).value for key in keys}


async def stream_leader(nc: Client, stream: str) -> str:
    with broker_errors(f"stream info {stream}"):
        info = await nc.jetstream(timeout=2).stream_info(stream)
    leader = info.cluster.leader if info.cluster else None
    if not leader:
        raise BrokerError(f"{stream} has no leader yet")
    return leader


async def test_secrets_survive_losing_the_stream_leader(
    nats_cluster: NatsCluster, cluster_nc: Client, fleet_names: FleetNames
) -> None:
    js = cluster_nc.jetstream(timeout=2)
    fleet = await eventually(lambda: declare_fleet(js, fleet_names, replicas=3))
    kv = fleet.secrets
    stream = f"KV_{fleet_names.secrets_bucket}"
    keys = [secret_key("repo", f"s{i:02d}") for i in range(VALUES)]
    for i, key in enumerate(keys):

        async def put(key: str = key, i: int = i) -> int:
            # A new replicated stream may still be electing its leader (no responders yet).
            with broker_errors("initial put"):
                return await kv.put(key, f"envelope-{i}".encode())

        await eventually(put)
    expected = {key: f"envelope-{i}".encode() for i, key in enumerate(keys)}

    # A snapshot of the wraps bucket names its stream by its creation time: the same
    # whichever server leads the stream.
    created = (await js.stream_info(stream)).created
    assert created is not None
    victim: NatsServerProcess = nats_cluster.server(await stream_leader(cluster_nc, stream))
    victim.kill()
    try:
        assert await eventually(lambda: read_all(kv, keys), timeout=FAILOVER_TIMEOUT) == expected

        async def put_after_failover() -> int:
            with broker_errors("put after failover"):
                return await kv.put(secret_key("repo", "after"), b"new-envelope")

        await eventually(put_after_failover, timeout=FAILOVER_TIMEOUT)
        new_leader = await eventually(
            lambda: stream_leader(cluster_nc, stream), timeout=FAILOVER_TIMEOUT
        )
        assert new_leader != victim.name
        assert (await kv.get(secret_key("repo", "after"))).value == b"new-envelope"
        assert (await js.stream_info(stream)).created == created
    finally:
        victim.restart()

    async def rejoined() -> None:
        with broker_errors("stream info"):
            info = await js.stream_info(stream)
        cluster = info.cluster
        caught_up = cluster is not None and (
            cluster.leader == victim.name
            or any(peer.name == victim.name and peer.current for peer in cluster.replicas or [])
        )
        if not caught_up:
            raise BrokerError(f"{victim.name} has not caught up yet")

    await eventually(rejoined, timeout=FAILOVER_TIMEOUT * 2)
    nats_cluster.wait_ready()


async def replica_counts(js: JetStreamContext, names: FleetNames) -> dict[str, int]:
    streams = [
        names.command_stream,
        names.event_stream,
        f"KV_{names.secrets_bucket}",
        f"KV_{names.fleet_bucket}",
    ]
    with broker_errors("stream info"):
        return {s: (await js.stream_info(s)).config.num_replicas or 1 for s in streams}


async def test_replicas_follow_the_cluster_raised_never_lowered(
    cluster_nc: Client, fleet_names: FleetNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing configured: a 3-node cluster gets R3 everywhere; a fleet declared at R1 by
    hand is raised to R3; a backend that sees a smaller cluster (a server down) keeps R3."""
    js = cluster_nc.jetstream(timeout=5)
    await eventually(lambda: declare_fleet(js, fleet_names, replicas=1))
    assert set((await replica_counts(js, fleet_names)).values()) == {1}

    raised = await eventually(lambda: declare_fleet(js, fleet_names))
    assert raised.replicas == 3
    assert {(c.field, c.old, c.new) for c in raised.changes} == {("num_replicas", 1, 3)}
    assert set((await replica_counts(js, fleet_names)).values()) == {3}

    monkeypatch.setattr(declare, "reported_cluster_size", lambda nc: 1)
    kept = await eventually(lambda: declare_fleet(js, fleet_names))
    assert (kept.replicas, kept.changes) == (1, ())
    assert set((await replica_counts(js, fleet_names)).values()) == {3}

"""A real 3-node NATS cluster loses the leader of the command stream during pipelined
writes: every write is applied once, in order, and held by every bridge.

The backend runs in this process (SQLite), the three bridges as processes, all connected
to the three servers; the streams and buckets get R3 because the cluster has three
servers (nothing is configured). The writes go out as the CLI sends them
(:func:`flashgate.broker.failover.publish_until_stored`: again under the same id while
there is no leader) and their outcomes are read as the CLI reads them (a
:func:`~flashgate.broker.failover.tail_stream` on the event stream). No timing is
asserted; the killed server is restarted at the end so the session cluster is whole
again for later tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import nats.errors
import pytest

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.broker.connection import broker_errors, connect
from flashgate.broker.failover import publish_until_stored, tail_stream
from flashgate.devcluster.nats_server import NatsCluster
from flashgate.errors import BrokerError
from flashgate.events import commands as cmd
from flashgate.events.domain import DomainEvent, decode_event
from flashgate.events.subjects import secret_key
from tests.support.admin_client import AdminClient, Commands
from tests.support.bridge_cluster import Cluster, NodeProcess
from tests.support.fleets import make_fleet
from tests.support.nats_servers import eventually

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SECRETS = 4
VERSIONS = 8
#: Writes in flight together (each is published without waiting for its outcome).
PIPELINE = 4
TIMEOUT = 90.0
NODES = ["node-1", "node-2", "node-3"]


def writes(commands: Commands) -> list[cmd.Command]:
    """v1..VERSIONS of each secret, interleaved: a secret's versions straddle the kill."""
    return [
        commands.put("ha", f"s{i}", b"v1")
        if v == 1
        else commands.rotate("ha", f"s{i}", f"v{v}".encode(), version=v)
        for v in range(1, VERSIONS + 1)
        for i in range(SECRETS)
    ]


async def test_killing_the_command_stream_leader_during_pipelined_writes_loses_nothing(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    urls = nats_cluster.urls
    nc = await connect(urls, role="test", name="pytest-failover", reconnect_time_wait=0.2)
    fleet = make_fleet(tmp_path / "fleets", nodes=3, threshold=2)
    names = fleet.names
    db_url = f"sqlite:///{tmp_path / 'backend.db'}"
    await asyncio.to_thread(db.migrate, db_url)
    backend = Backend(BackendSettings(nats_urls=urls, db_url=db_url, fleet_dir=fleet.dir))
    logs = tmp_path / "logs"
    logs.mkdir()
    nodes = {
        node: NodeProcess(
            node, fleet.dir / "nodes" / f"{node}.bundle", ",".join(urls), logs / f"{node}.log"
        )
        for node in NODES
    }
    bridges = Cluster(fleet=fleet, admin=AdminClient(fleet, nc), nodes=nodes, nc=nc)
    victim = None
    try:
        await backend.start()
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(names.command_stream)
        assert info.config.num_replicas == 3  # followed the cluster, nothing configured
        for node in nodes.values():
            node.start()

        async def all_ready() -> bool:
            answers = [await bridges.try_status(node) for node in NODES]
            return all(a is not None and a.ready for a in answers)

        await _until(all_ready, "every bridge ready")

        tail = await tail_stream(nc, names.event_stream, names.event_subjects)
        commands = writes(Commands(fleet))
        deadline = time.monotonic() + TIMEOUT

        async def send(batch: list[cmd.Command]) -> None:
            await asyncio.gather(
                *(
                    publish_until_stored(
                        nc,
                        names.command_subject(c.command_type),
                        cmd.COMMAND_CODEC.encode(c),  # type: ignore[arg-type]
                        msg_id=c.command_id,
                        deadline=deadline,
                    )
                    for c in batch
                )
            )

        async def leader() -> str:
            with broker_errors("command stream info"):
                cluster = (await js.stream_info(names.command_stream)).cluster
            if cluster is None or not cluster.leader:
                raise BrokerError("no leader yet")
            return cluster.leader

        victim = nats_cluster.server(await leader())
        batches = [commands[i : i + PIPELINE] for i in range(0, len(commands), PIPELINE)]
        kill_after = len(batches) // 3
        for index, batch in enumerate(batches):
            sending = asyncio.ensure_future(send(batch))
            if index == kill_after:
                victim.kill()  # SIGKILL while this batch is in flight
            await sending

        events = await _outcomes(tail, {c.command_id for c in commands})
        await tail.unsubscribe()

        # Applied once: one outcome per command, none rejected, nothing applied twice.
        per_command = Counter(getattr(e.data, "command_id", None) for e in events)
        assert all(per_command[c.command_id] == 1 for c in commands), per_command
        rejected = [e for e in events if e.type.endswith("rejected")]
        assert rejected == []
        assert backend.applied == len(commands)
        # In order: each secret's versions in stream order.
        versions: dict[str, list[int]] = {}
        for event in events:
            data = event.data
            versions.setdefault(getattr(data, "name", "?"), []).append(data.version)  # type: ignore[union-attr]
        assert versions == {f"s{i}": list(range(1, VERSIONS + 1)) for i in range(SECRETS)}
        # Held by every bridge, at the last version.
        for i in range(SECRETS):
            await bridges.wait_held(NODES, secret_key("ha", f"s{i}"), VERSIONS, timeout=TIMEOUT)
        assert (await eventually(leader, timeout=TIMEOUT)) != victim.name
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                if node.running:
                    node.terminate(5)
            node.kill()
        await backend.stop()
        await nc.close()
        if victim is not None:
            victim.restart()
            nats_cluster.wait_ready(60)


async def _outcomes(tail: object, wanted: set[str], timeout: float = TIMEOUT) -> list[DomainEvent]:
    """Events from the tail, in stream order, until one carries each wanted command id."""
    seen: set[str] = set()
    events: list[DomainEvent] = []
    deadline = time.monotonic() + timeout
    while not wanted <= seen:
        if time.monotonic() > deadline:
            pytest.fail(f"outcomes missing for {len(wanted - seen)} of {len(wanted)} writes")
        try:
            msg = await tail.next_msg(timeout=1.0)  # type: ignore[attr-defined]
        except nats.errors.TimeoutError:
            continue
        event = decode_event(msg.data)
        events.append(event)
        command_id = getattr(event.data, "command_id", None)
        if command_id is not None:
            seen.add(command_id)
    return events


async def _until(predicate: object, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)

"""A flood of garbage on one node's share subject (issue 14, §4): the node sheds the excess
itself (a bounded queue, drops counted and logged with the reason) and stays connected;
the server does not cut it off as a slow consumer. A real node process, a real nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client

from tests.support.bridge_cluster import running_cluster, wait_until

MESSAGES = 300_000
SIZE = 256  # 77 MB in all, past the server's 64 MB of pending data per client


async def test_a_flood_on_the_share_subject_is_shed_and_the_node_stays_connected(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=2, threshold=2) as cluster:
        subject = cluster.fleet.names.share_subject("node-1")
        junk = b"\xc1" * SIZE
        for i in range(MESSAGES):
            await nc.publish(subject, junk, reply=f"_INBOX.flood.{i}")
            if i % 10_000 == 0:
                await nc.flush()
        await nc.flush()

        async def shed() -> bool:
            status = await cluster.try_status("node-1")
            return status is not None and status.share_requests_refused.get("dropped", 0) > 0

        await wait_until(shed, 60, "node-1 to report dropped share requests")
        log = cluster.nodes["node-1"].log.read_text()
        events = [json.loads(line).get("event", "") for line in log.splitlines() if line]
        assert not any("disconnected" in e for e in events), "node-1 was cut off"
        assert any("share requests dropped" in e for e in events)
        assert cluster.nodes["node-1"].running
        await asyncio.sleep(0)

"""The fast path with Bridge Nodes as real processes, a real nats-server and the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.bridge.test_nodes import put
from tests.support.bridge_cluster import running_cluster, wait_until
from tests.support.material import CANARY

pytestmark = [pytest.mark.nats, pytest.mark.processes]
ALL3 = ["node-1", "node-2", "node-3"]
SECRETS = 5


async def test_a_restarted_node_loads_by_the_fast_path_and_no_store_holds_a_value(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        for i in range(SECRETS):
            await put(cluster, "app", f"s{i}", CANARY + bytes([65 + i]))
        for i in range(SECRETS):
            await cluster.wait_held(ALL3, f"app.s{i}", 1)

        async def wrapped() -> bool:
            status = await cluster.try_status("node-1")
            fast = None if status is None else status.fast_path
            return (
                fast is not None
                and fast.current_term is not None
                and fast.wraps_per_term.get(fast.current_term) == SECRETS
            )

        await wait_until(wrapped, 60, "every secret wrapped under the ring's current term")
        node = cluster.nodes["node-3"]
        assert node.terminate() == 0
        node.start()
        await cluster.wait_up(["node-3"])
        for i in range(SECRETS):
            await cluster.wait_held(["node-3"], f"app.s{i}", 1)
        status = await cluster.status("node-3")
        assert status.fast_path is not None
        assert status.fast_path.terms_opened == 1  # one threshold decryption
        assert status.fast_path.opened_fast == SECRETS  # and no other
        assert not status.fast_path.bad_wraps and not status.fast_path.unattributed_bad_wraps
        # the envelope values it proved before the restart were not proved again: neither
        # their statements checked nor their signatures verified
        lines = [json.loads(x) for x in node.log.read_text().splitlines() if x.startswith("{")]
        checked = [x for x in lines if x.get("event") == "admin statements checked"]
        assert len(checked) == 2, checked
        again = checked[1]
        assert (again["verified"], again["values_proven_before"]) == (0, SECRETS), checked

        # started again without what it proved (a first join, as far as proofs go): its
        # signature worker proves the values, and the node checks them against its state
        assert node.terminate() == 0
        node.bundle.with_name(node.bundle.name + ".verified").unlink()
        node.start()
        await cluster.wait_up(["node-3"])
        for i in range(SECRETS):
            await cluster.wait_held(["node-3"], f"app.s{i}", 1)
        lines = [json.loads(x) for x in node.log.read_text().splitlines() if x.startswith("{")]
        checked = [x for x in lines if x.get("event") == "admin statements checked"]
        assert len(checked) == 3, checked
        fresh = checked[2]
        assert (fresh["proven_by_worker"], fresh["verified"]) == (SECRETS, 0), checked
        assert fresh["values_proven_before"] == 0, checked

        # canary: the ring and the wraps hold no value (nor the logs, as everywhere)
        js = nc.jetstream()
        names = cluster.fleet.names
        seen = 0
        for bucket in (names.ring_bucket, names.wraps_bucket):
            kv = await js.key_value(bucket)
            for key in await kv.keys():
                value = (await kv.get(key)).value or b""
                assert CANARY[:24] not in value, (bucket, key)
                seen += 1
        assert seen == 1 + SECRETS
        for log in (tmp_path / "logs").iterdir():
            assert CANARY[:24] not in log.read_bytes(), log

"""The fast path with Bridge Nodes as real processes, a real nats-server and the backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from flashgate.bridge.wrap_snapshots import write_snapshot
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.events.ring import snapshot_part_key
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


def log_events(node_log: Path, event: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in node_log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == event]


async def test_a_restarted_node_reads_the_wraps_from_a_snapshot_and_its_tail(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """A snapshot (written here as node-1 would, once due) and the wraps after it: the
    restarted node takes the wraps from both and opens every secret by the fast path; a
    snapshot with a damaged part is refused, said, and every wrap is read instead."""
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        for i in range(SECRETS):
            await put(cluster, "app", f"s{i}", CANARY + bytes([65 + i]))

        async def wrapped(count: int) -> bool:
            status = await cluster.try_status("node-1")
            fast = None if status is None else status.fast_path
            return (
                fast is not None
                and fast.current_term is not None
                and fast.wraps_per_term.get(fast.current_term) == count
            )

        await wait_until(lambda: wrapped(SECRETS), 60, "every secret wrapped")
        names = cluster.fleet.names
        js = nc.jetstream()
        snaps = await js.key_value(names.snapshots_bucket)
        wraps = await js.key_value(names.wraps_bucket)
        node1 = next(b for b in cluster.fleet.ceremony.bundles if b.node_id == "node-1")
        head = await write_snapshot(
            snaps,
            wraps,
            fleet=names.fleet,
            node_id="node-1",
            signing_key=node1.signing_key,
            rng=SYSTEM_RNG,
            clock=lambda: int(time.time() * 1000),
            replaces=None,
            revision=None,
        )
        assert head is not None and head.wraps == SECRETS
        await put(cluster, "app", "late", CANARY + b"late")  # its wrap: in the tail
        await wait_until(lambda: wrapped(SECRETS + 1), 60, "the late secret wrapped")

        node = cluster.nodes["node-3"]
        assert node.terminate() == 0
        node.start()
        await cluster.wait_up(["node-3"])
        for key in [f"app.s{i}" for i in range(SECRETS)] + ["app.late"]:
            await cluster.wait_held(["node-3"], key, 1)
        status = await cluster.status("node-3")
        assert status.fast_path is not None
        assert status.fast_path.opened_fast == SECRETS + 1, status.fast_path
        read = log_events(node.log, "wraps snapshot read")
        assert len(read) == 1 and read[0]["wraps"] == SECRETS, read
        counts = log_events(node.log, "wraps read")[-1]  # the rest: the tail, one wrap
        assert (counts["from_snapshot"], counts["read_one_by_one"]) == (SECRETS, 1), counts

        # a part damaged: refused, and every wrap read from the bucket
        await snaps.put(snapshot_part_key(head.snapshot_id, 0), b"\x80")
        assert node.terminate() == 0
        node.start()
        await cluster.wait_up(["node-3"])
        for key in [f"app.s{i}" for i in range(SECRETS)] + ["app.late"]:
            await cluster.wait_held(["node-3"], key, 1)
        status = await cluster.status("node-3")
        assert status.fast_path is not None
        assert status.fast_path.opened_fast == SECRETS + 1, status.fast_path
        refused = log_events(node.log, "wraps snapshot refused; reading every wrap")
        assert len(refused) == 1 and refused[0]["reason"] == "part_damaged", refused
        assert len(log_events(node.log, "wraps snapshot read")) == 1
        counts = log_events(node.log, "wraps read")[-1]
        assert (counts["from_snapshot"], counts["read_one_by_one"]) == (0, SECRETS + 1), counts

        # canary: the snapshot holds wraps, never a value
        for key in await snaps.keys():
            assert CANARY[:24] not in ((await snaps.get(key)).value or b""), key

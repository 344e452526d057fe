"""A revocation and a fleet key rotation cannot be rolled back by whoever writes the fleet
bucket (issue 14, §1). Real Bridge Node processes, a real nats-server, the real backend.

3-of-5: node-2 is revoked (roster serial 2), the fleet key is rotated to epoch 2 dealt to
nodes 1, 3, 4, 5, and a secret is written under epoch 2 only. Then nodes 1, 3 and 4 are
restarted with the serial-1 roster (every node active) written back into the fleet bucket,
as an attacker with write access to the bucket would. Node-2, holding its old bundle, asks
each of them for its partial decryption of the new secret: it gets none.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flashgate.bridge.protocol import build_request, open_response
from flashgate.bridge.store import make_entry
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.errors import Refused
from flashgate.events import commands as cmd
from flashgate.events.fleet import ROSTER_CODEC
from flashgate.events.share import ShareItem
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.ceremony import initial_roster
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.directory import read_bundle
from tests.support.bridge_cluster import Cluster, running_cluster, wait_until
from tests.support.material import CANARY, TEST_PASSPHRASE, deal_test_epoch, stated

pytestmark = [pytest.mark.nats, pytest.mark.e2e]
STAYING = ["node-1", "node-3", "node-4", "node-5"]
RESTARTED = ["node-1", "node-3", "node-4"]


async def _holds_at(cluster: Cluster, nodes: list[str], key: str, epoch: int) -> bool:
    for node in nodes:
        status = await cluster.try_status(node)
        if status is None or not any(s.key == key and s.epoch == epoch for s in status.secrets):
            return False
    return True


async def test_a_rolled_back_roster_does_not_undo_revocation_and_rotation(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=5, threshold=3) as cluster:
        admin, fleet = cluster.admin, cluster.fleet
        cer = fleet.ceremony
        event = await admin.send(admin.put("r", "old", b"old"), timeout=30)
        assert not event.type.endswith("rejected"), event.data
        await cluster.wait_held(["node-1", "node-2", "node-3", "node-4", "node-5"], "r.old", 1)

        # 1. revoke node-2: roster serial 2
        first = cer.roster
        revoked = sign(
            msgspec.structs.replace(
                initial_roster(cer.descriptor, fleet.admin, issued_at=int(time.time() * 1000)),
                serial=2,
                signature="",
                nodes=[
                    msgspec.structs.replace(n, status="revoked") if n.id == "node-2" else n
                    for n in first.nodes
                ],
            ),
            fleet.admin,
        )
        event = await admin.send(
            sign(cmd.RevokeNode(**admin.base(), node_id="node-2", roster=revoked), fleet.admin)
        )
        assert event.type.endswith("node.revoked"), event.data
        node2 = cluster.nodes["node-2"]
        assert node2.process is not None
        assert await asyncio.to_thread(node2.process.wait, 30) == 3

        # 2. rotate to epoch 2, dealt to nodes 1, 3, 4, 5; retire epoch 1
        dealt = deal_test_epoch(cer.descriptor, revoked, fleet.admin)
        assert sorted(n.id for n in dealt.descriptor.nodes) == STAYING
        started = await admin.send(
            sign(
                cmd.StartKeyRotation(
                    **admin.base(),
                    from_epoch=1,
                    descriptor=dealt.descriptor,
                    shares=list(dealt.shares),
                ),
                fleet.admin,
            ),
            timeout=30,
        )
        assert started.type == "io.flashgate.fleet.rotation.started", started.data
        await wait_until(
            lambda: _holds_at(cluster, STAYING, "r.old", 2), 120, "r.old re-wrapped to epoch 2"
        )
        finished = await admin.send(
            sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), fleet.admin), timeout=30
        )
        assert not finished.type.endswith("rejected"), finished.data

        async def resealed() -> bool:
            for n in RESTARTED:
                path = fleet.dir / "nodes" / f"{n}.bundle"
                if (await asyncio.to_thread(read_bundle, path, TEST_PASSPHRASE)).epoch != 2:
                    return False
            return True

        await wait_until(resealed, 60, "bundles re-sealed for epoch 2")

        # 3. a secret under epoch 2 only
        public2 = fleet_public_key(dealt.descriptor)
        context = SecretContext(fleet=fleet.name, repo="r", name="new", kind="generic", version=1)
        put = sign(
            stated(
                cmd.PutSecret,
                fleet.admin,
                **admin.base(),
                repo="r",
                name="new",
                kind="generic",
                version=1,
                epoch=2,
                jwe=encrypt_secret(public2, context, CANARY),
            ),
            fleet.admin,
        )
        event = await admin.send(put, timeout=30)
        assert not event.type.endswith("rejected"), event.data
        await wait_until(lambda: _holds_at(cluster, STAYING, "r.new", 2), 60, "r.new held")

        # 4. nodes 1, 3, 4 stop; the serial-1 roster is written back; they start again
        for node in RESTARTED:
            assert cluster.nodes[node].terminate(15) == 0
        js = nc.jetstream()
        fleet_kv = await js.key_value(fleet.names.fleet_bucket)
        await fleet_kv.put(FleetNames.ROSTER_KEY, ROSTER_CODEC.encode(first))
        for node in RESTARTED:
            cluster.start(node)
        await wait_until(lambda: _holds_at(cluster, RESTARTED, "r.new", 2), 90, "restarted")

        # 5. node-2 asks each restarted node for its partial of the epoch-2 secret
        secrets_kv = await js.key_value(fleet.names.secrets_bucket)
        stored = await secrets_kv.get("r.new")
        assert stored.value is not None and stored.revision is not None
        entry = make_entry(
            fleet.name, "r.new", stored.revision, stored.value, {2: public2}, prove=lambda _e: None
        )
        bundle2 = cer.bundles[1]
        assert bundle2.node_id == "node-2"
        got: dict[str, object] = {}
        for node in RESTARTED:
            raw, request, reply_key = build_request(
                node_id="node-2",
                responder=node,
                fleet=fleet.name,
                epoch=2,
                signing_key=bundle2.signing_key,
                items=[ShareItem(entry.key, entry.revision, entry.digest)],
            )
            msg = await nc.request(fleet.names.share_subject(node), raw, timeout=10)
            try:
                results = open_response(msg.data, request, reply_key, node, first)
            except Refused as refusal:
                got[node] = refusal.reason
                continue
            got[node] = len(results.partials)
        assert all(isinstance(v, str) for v in got.values()), got  # refused, no partial

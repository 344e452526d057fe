"""A deleted secret or a revoked API key cannot be put back by whoever writes the buckets
(issue 14: revocation that cannot be undone). Real Bridge Node processes, a real
nats-server, the real backend.

The admin deletes a secret and revokes an API key. Then, as an attacker with write access to
the buckets would (a compromised backend, a database restored from before the deletion, the
broker), the last proven envelopes are written back into the secrets bucket and the
deletion's signed tombstones are removed from the fleet bucket. Neither the running nodes nor
a restarted one load them again, and no node answers share requests for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from flashgate.bridge.protocol import build_request, open_response
from flashgate.bridge.store import make_entry
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.errors import Refused
from flashgate.events import commands as cmd
from flashgate.events.share import ShareItem
from flashgate.events.signing import sign
from tests.support.bridge_cluster import Cluster, running_cluster, wait_until
from tests.support.material import CANARY, stated

pytestmark = [pytest.mark.nats, pytest.mark.e2e]
NODES = ["node-1", "node-2", "node-3"]


async def _held(cluster: Cluster, node: str) -> set[str]:
    status = await cluster.try_status(node)
    return set() if status is None else {s.key for s in status.secrets}


async def _pending(cluster: Cluster, node: str) -> dict[str, str]:
    status = await cluster.try_status(node)
    return {} if status is None else {p.key: p.reason for p in status.pending}


async def test_a_deleted_secret_and_a_revoked_api_key_stay_gone(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        admin, fleet = cluster.admin, cluster.fleet
        event = await admin.send(admin.put("r", "gone", CANARY), timeout=30)
        assert not event.type.endswith("rejected"), event.data
        key_id = new_key_id()
        create = sign(
            stated(
                cmd.CreateApiKey,
                fleet.admin,
                **admin.base(),
                key_id=key_id,
                repo="r",
                scope="ai",
                access="openai",
                label="client",
                epoch=1,
                jwe=admin.jwe("r", key_id, new_key_secret(), kind="apikey"),
            ),
            fleet.admin,
        )
        event = await admin.send(create, timeout=30)
        assert not event.type.endswith("rejected"), event.data
        api_key = f"r.{key_id}"
        await cluster.wait_held(NODES, "r.gone", 1)
        await cluster.wait_held(NODES, api_key, 1)

        js = nc.jetstream()
        secrets_kv = await js.key_value(fleet.names.secrets_bucket)
        fleet_kv = await js.key_value(fleet.names.fleet_bucket)
        kept = {k: (await secrets_kv.get(k)).value for k in ("r.gone", api_key)}

        event = await admin.send(admin.delete("r", "gone"), timeout=30)
        assert event.type.endswith("secret.deleted"), event.data
        revoke = sign(cmd.RevokeApiKey(**admin.base(), key_id=key_id), fleet.admin)
        event = await admin.send(revoke, timeout=30)
        assert event.type.endswith("apikey.revoked"), event.data

        async def gone_everywhere() -> bool:
            for node in NODES:
                if {"r.gone", api_key} & await _held(cluster, node):
                    return False
            return True

        await wait_until(gone_everywhere, 30, "deleted everywhere")

        # node-1 stops; the attacker removes the tombstones and writes the envelopes back
        assert cluster.nodes["node-1"].terminate(15) == 0
        async for tombstone in _tombstone_keys(fleet_kv):
            await fleet_kv.purge(tombstone)
        for key, value in kept.items():
            assert value is not None
            await secrets_kv.put(key, value)
        cluster.start("node-1")

        async def refused_everywhere() -> bool:
            for node in NODES:
                pending = await _pending(cluster, node)
                if pending.get("r.gone") != "deleted" or pending.get(api_key) != "deleted":
                    return False
            return True

        await wait_until(refused_everywhere, 60, "the put-back envelopes refused")
        for node in NODES:  # node-1 read its own back from disk: the bucket has none now
            assert (await cluster.status(node)).tombstones == 2, node
        for node in NODES:
            assert not {"r.gone", api_key} & await _held(cluster, node), node

        # and no node answers a share request for them
        stored = await secrets_kv.get("r.gone")
        assert stored.value is not None and stored.revision is not None
        entry = make_entry(
            fleet.name,
            "r.gone",
            stored.revision,
            stored.value,
            {1: fleet.key},
            prove=lambda _e: None,
        )
        requester = fleet.ceremony.bundles[0]
        for node in NODES[1:]:
            raw, request, reply_key = build_request(
                node_id=requester.node_id,
                responder=node,
                fleet=fleet.name,
                epoch=1,
                signing_key=requester.signing_key,
                items=[ShareItem(entry.key, entry.revision, entry.digest)],
            )
            msg = await nc.request(fleet.names.share_subject(node), raw, timeout=10)
            try:
                results = open_response(msg.data, request, reply_key, node, fleet.ceremony.roster)
            except Refused:
                continue
            assert not results.partials, node


async def _tombstone_keys(kv: object):  # type: ignore[no-untyped-def]
    from nats.js.errors import NoKeysError

    try:
        keys = await kv.keys()  # type: ignore[attr-defined]
    except NoKeysError:
        return
    for key in keys:
        if key.startswith("tombstone."):
            yield key

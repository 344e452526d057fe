"""Nodes load only envelopes the admin wrote (issue 14, §2). Real Bridge Node processes, a
real nats-server, the real backend.

Whoever can write the secrets bucket (a compromised backend, its database, the broker) can
encrypt anything under the fleet's public key. Here it writes, straight into the bucket,
``payments/s3`` at the next version with its own bucket credentials and an admin-scope API
key for the repository. No node loads either (each stays pending as ``unproven``, the old
value still served), and no node computes a partial for them when a peer asks, so the
bucket is no decryption oracle either. An API key whose scope or access is changed in the
bucket is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from flashgate.bridge.protocol import build_request, open_response
from flashgate.crypto import jwe
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.errors import Refused
from flashgate.events import commands as cmd
from flashgate.events.envelope import ENVELOPE_CODEC, ApiKeyInfo, SecretEnvelope
from flashgate.events.share import ShareItem
from flashgate.events.signing import sign
from tests.support.bridge_cluster import Cluster, running_cluster, wait_until
from tests.support.material import stated

pytestmark = [pytest.mark.nats, pytest.mark.e2e]
NODES = ["node-1", "node-2", "node-3"]
ATTACKER_S3 = json.dumps(
    {
        "type": "storage",
        "provider": "s3",
        "bucket": "attacker-bucket",
        "region": "us-east-1",
        "access_key_id": "AKIAATTACKER",
        "secret_access_key": "attacker-secret",
    }
).encode()
PLANTED_KEY_ID = "fgk_" + "a" * 21


def _forged(cluster: Cluster, **fields: object) -> bytes:
    """An envelope under the fleet key written by someone other than the admin."""
    fleet = cluster.fleet
    context = SecretContext(
        fleet=fleet.name,
        repo=str(fields["repo"]),
        name=str(fields["name"]),
        kind=str(fields["kind"]),
        version=int(fields["version"]),  # type: ignore[call-overload]
    )
    value = fields.pop("value")
    envelope = SecretEnvelope(
        fleet=fleet.name,
        epoch=1,
        jwe=encrypt_secret(fleet.key, context, value),  # type: ignore[arg-type]
        written_at=int(time.time() * 1000),
        **fields,  # type: ignore[arg-type]
    )
    return ENVELOPE_CODEC.encode(envelope)


async def _pending(cluster: Cluster, node: str) -> dict[str, str]:
    status = await cluster.try_status(node)
    return {} if status is None else {p.key: p.reason for p in status.pending}


async def test_envelopes_not_written_by_the_admin_are_neither_loaded_nor_answered(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        admin, fleet = cluster.admin, cluster.fleet
        honest = json.dumps(
            {
                "type": "storage",
                "provider": "s3",
                "bucket": "customer-data",
                "region": "eu-west-1",
                "access_key_id": "AKIAHONEST",
                "secret_access_key": "honest-secret",
            }
        ).encode()
        event = await admin.send(admin.put("payments", "s3", honest, kind="storage"), timeout=30)
        assert not event.type.endswith("rejected"), event.data
        await cluster.wait_held(NODES, "payments.s3", 1)

        js = nc.jetstream()
        secrets_kv = await js.key_value(fleet.names.secrets_bucket)
        await secrets_kv.put(
            "payments.s3",
            _forged(
                cluster, repo="payments", name="s3", kind="storage", version=2, value=ATTACKER_S3
            ),
        )
        await secrets_kv.put(
            f"payments.{PLANTED_KEY_ID}",
            _forged(
                cluster,
                repo="payments",
                name=PLANTED_KEY_ID,
                kind="apikey",
                version=1,
                value=b"fgs_" + b"p" * 43,
                api_key=ApiKeyInfo(
                    key_id=PLANTED_KEY_ID, scope="storage", access="admin", label="planted"
                ),
            ),
        )

        async def refused_everywhere() -> bool:
            for node in NODES:
                pending = await _pending(cluster, node)
                if pending.get("payments.s3") != "unproven":
                    return False
                if pending.get(f"payments.{PLANTED_KEY_ID}") != "unproven":
                    return False
            return True

        await wait_until(refused_everywhere, 60, "the planted envelopes pending as unproven")
        for node in NODES:
            status = await cluster.status(node)
            held = {s.key: s.version for s in status.secrets}
            assert held.get("payments.s3") == 1, (node, held)  # the admin's value, still
            assert f"payments.{PLANTED_KEY_ID}" not in held, (node, held)

        # A peer (node-1, an honest requester) asks the others for partials of them: none.
        bundle1 = fleet.ceremony.bundles[0]
        assert bundle1.node_id == "node-1"
        items = []
        for key in ("payments.s3", f"payments.{PLANTED_KEY_ID}"):
            stored = await secrets_kv.get(key)
            assert stored.value is not None and stored.revision is not None
            parsed = jwe.parse(ENVELOPE_CODEC.decode(stored.value).jwe)
            digest = hashlib.sha256(parsed.encrypted_key).digest()
            items.append(ShareItem(key, stored.revision, digest))
        for node in ("node-2", "node-3"):
            raw, request, reply_key = build_request(
                node_id="node-1",
                responder=node,
                fleet=fleet.name,
                epoch=1,
                signing_key=bundle1.signing_key,
                items=items,
            )
            msg = await nc.request(fleet.names.share_subject(node), raw, timeout=10)
            try:
                results = open_response(msg.data, request, reply_key, node, fleet.ceremony.roster)
            except Refused:
                continue  # refused whole: no partial either
            assert results.partials == [], node
            assert len(results.refusals) == 2, msgspec.to_builtins(results.refusals)


async def test_an_api_key_changed_in_the_bucket_is_refused(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """The admin's API key, its access raised to admin in the bucket (statement kept): no
    node takes the changed envelope (the proven one stays its copy)."""
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        admin, fleet = cluster.admin, cluster.fleet
        key_id = new_key_id()
        created = await admin.send(
            sign(
                stated(
                    cmd.CreateApiKey,
                    fleet.admin,
                    **admin.base(),
                    key_id=key_id,
                    repo="payments",
                    scope="storage",
                    access="read",
                    label="CI reader",
                    epoch=1,
                    jwe=admin.jwe("payments", key_id, new_key_secret(), kind="apikey"),
                ),
                fleet.admin,
            ),
            timeout=30,
        )
        assert created.type == "io.flashgate.apikey.created", created.data
        key = f"payments.{key_id}"
        await cluster.wait_held(NODES, key, 1)
        secrets_kv = await nc.jetstream().key_value(fleet.names.secrets_bucket)
        stored = await secrets_kv.get(key)
        assert stored.value is not None
        envelope = ENVELOPE_CODEC.decode(stored.value)
        assert envelope.api_key is not None and envelope.provenance is not None
        raised = msgspec.structs.replace(
            envelope, api_key=msgspec.structs.replace(envelope.api_key, access="admin")
        )
        await secrets_kv.put(key, ENVELOPE_CODEC.encode(raised))

        async def refused_everywhere() -> bool:
            for node in NODES:
                if (await _pending(cluster, node)).get(key) != "unproven":
                    return False
            return True

        await wait_until(refused_everywhere, 60, "the changed API key pending as unproven")

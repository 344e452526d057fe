"""Bridge Nodes as real processes against a real nats-server and the real backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import msgspec
import pytest
import structlog
from nats.aio.client import Client
from structlog.testing import capture_logs

from flashgate.backend import db
from flashgate.backend.service import Backend, BackendSettings
from flashgate.bridge.protocol import build_request
from flashgate.events.envelope import ENVELOPE_CODEC
from flashgate.events.share import SHARE_REQUEST_CODEC, ShareItem
from flashgate.events.signing import sign
from flashgate.fleet.identity_keys import new_ed25519
from tests.support.bridge_cluster import Cluster, NodeProcess, running_cluster, wait_until
from tests.support.fleets import make_fleet
from tests.support.material import CANARY, proven

pytestmark = [pytest.mark.nats, pytest.mark.processes]
ALL5 = [f"node-{i}" for i in range(1, 6)]


async def put(cluster: Cluster, repo: str, name: str, value: bytes, version: int = 1) -> None:
    admin = cluster.admin
    command = (
        admin.put(repo, name, value)
        if version == 1
        else admin.rotate(repo, name, value, version=version)
    )
    event = await admin.send(command, timeout=30)
    assert not event.type.endswith("rejected"), event.data


async def test_fleet_of_five_loads_and_survives_failures(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=5, threshold=3) as cluster:
        # every node loads every secret
        for i in range(6):
            await put(cluster, "app", f"s{i}", CANARY + bytes([i]))
        for i in range(6):
            await cluster.wait_held(ALL5, f"app.s{i}", 1)
        # with any 2 nodes killed, the other 3 still load new secrets and rotations
        cluster.nodes["node-2"].kill()
        cluster.nodes["node-4"].kill()
        survivors = ["node-1", "node-3", "node-5"]
        await put(cluster, "app", "after-two-down", b"v")
        await put(cluster, "app", "s0", b"rotated", version=2)
        await cluster.wait_held(survivors, "app.after-two-down", 1)
        await cluster.wait_held(survivors, "app.s0", 2)
        # with 3 killed, the survivors report the secret pending ...
        cluster.nodes["node-5"].kill()
        await put(cluster, "app", "needs-quorum", b"v")

        async def pending_everywhere() -> bool:
            for node in ("node-1", "node-3"):
                status = await cluster.try_status(node)
                if status is None or "app.needs-quorum" not in {p.key for p in status.pending}:
                    return False
            return True

        await wait_until(pending_everywhere, 30, "the secret pending on the survivors")
        status = await cluster.status("node-1")
        assert "app.needs-quorum" not in {s.key for s in status.secrets}
        # ... and load it once a peer returns
        cluster.start("node-5")
        await cluster.wait_held(["node-1", "node-3", "node-5"], "app.needs-quorum", 1, 60)
        # the restarted node reloaded everything, including the rotation
        await cluster.wait_held(["node-5"], "app.s0", 2)


async def test_requests_are_refused_with_their_reason_counted(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        await put(cluster, "r", "one", b"v")
        await cluster.wait_held(["node-1", "node-2", "node-3"], "r.one", 1)
        kv = await cluster.admin.js.key_value(cluster.fleet.names.secrets_bucket)
        entry = await kv.get("r.one")
        from flashgate.bridge.store import make_entry
        from flashgate.fleet.descriptor import fleet_public_key

        made = make_entry(
            cluster.fleet.name,
            "r.one",
            entry.revision,
            entry.value,
            {1: fleet_public_key(cluster.fleet.ceremony.descriptor)},
            prove=lambda _envelope: None,  # only its digest is used here
        )
        items = [ShareItem("r.one", entry.revision, made.digest)]
        bundle2 = cluster.fleet.ceremony.bundles[1]  # node-2's identity
        subject = cluster.fleet.names.share_subject("node-1")

        def request(**overrides: object) -> tuple[bytes, object]:
            raw, req, _ = build_request(
                node_id="node-2",
                responder="node-1",
                fleet=cluster.fleet.name,
                epoch=1,
                signing_key=bundle2.signing_key,
                items=items,
            )
            if overrides:
                req = sign(
                    msgspec.structs.replace(req, signature=b"", **overrides),
                    overrides.pop("_key", bundle2.signing_key),
                )  # type: ignore[arg-type]
                raw = SHARE_REQUEST_CODEC.encode(req)
            return raw, req

        async def send(raw: bytes) -> None:
            await nc.request(subject, raw, timeout=5)

        good, _ = request()
        await send(good)
        await send(good)  # replayed
        unsigned = SHARE_REQUEST_CODEC.encode(
            msgspec.structs.replace(SHARE_REQUEST_CODEC.decode(request()[0]), signature=b"")
        )
        await send(unsigned)
        stranger = sign(
            msgspec.structs.replace(
                SHARE_REQUEST_CODEC.decode(request()[0]), requester="node-9", signature=b""
            ),
            new_ed25519(),
        )
        await send(SHARE_REQUEST_CODEC.encode(stranger))
        stale = sign(
            msgspec.structs.replace(
                SHARE_REQUEST_CODEC.decode(request()[0]),
                issued_at=int(time.time() * 1000) - 3_600_000,
                signature=b"",
            ),
            bundle2.signing_key,
        )
        await send(SHARE_REQUEST_CODEC.encode(stale))
        await send(b"\x00" * (1 << 17))  # oversized
        status = await cluster.status("node-1")
        refused = status.share_requests_refused
        assert refused.get("replay") == 1
        assert refused.get("bad_signature") == 1
        assert refused.get("unknown_requester") == 1
        assert refused.get("stale") == 1
        assert refused.get("oversized") == 1
        # revoked: node-3 revoked by a new roster; node-1 refuses it at once
        from flashgate.events.commands import RevokeNode
        from flashgate.fleet.ceremony import initial_roster

        roster = initial_roster(
            cluster.fleet.ceremony.descriptor,
            cluster.fleet.admin,
            issued_at=int(time.time() * 1000),
            serial=2,
        )
        roster = sign(
            msgspec.structs.replace(
                roster,
                signature="",
                nodes=[
                    msgspec.structs.replace(n, status="revoked") if n.id == "node-3" else n
                    for n in roster.nodes
                ],
            ),
            cluster.fleet.admin,
        )
        revoke = sign(
            RevokeNode(**cluster.admin.base(), node_id="node-3", roster=roster), cluster.fleet.admin
        )
        assert (await cluster.admin.send(revoke)).type.endswith("node.revoked")
        bundle3 = cluster.fleet.ceremony.bundles[2]
        raw3, _, _ = build_request(
            node_id="node-3",
            responder="node-1",
            fleet=cluster.fleet.name,
            epoch=1,
            signing_key=bundle3.signing_key,
            items=items,
        )

        async def revoked_refused() -> bool:
            await nc.request(subject, raw3, timeout=5)
            raw3_again, _, _ = build_request(
                node_id="node-3",
                responder="node-1",
                fleet=cluster.fleet.name,
                epoch=1,
                signing_key=bundle3.signing_key,
                items=items,
            )
            del raw3_again
            status = await cluster.status("node-1")
            return status.share_requests_refused.get("revoked_requester", 0) >= 1

        await wait_until(revoked_refused, 20, "node-3 refused as revoked")
        # node-3 itself purges and exits 3 (supervisors must not restart it); started again
        # on its old bundle, it finds itself revoked while starting and exits 3 again.
        node3 = cluster.nodes["node-3"]
        assert node3.process is not None
        assert await asyncio.to_thread(node3.process.wait, 30) == 3
        node3.start()
        assert node3.process is not None
        assert await asyncio.to_thread(node3.process.wait, 30) == 3


async def test_moved_and_rolled_back_envelopes_are_refused(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        await put(cluster, "r", "a", b"va")
        await put(cluster, "r", "b", b"vb1")
        await put(cluster, "r", "b", b"vb2", version=2)
        nodes = ["node-1", "node-2", "node-3"]
        await cluster.wait_held(nodes, "r.b", 2)
        kv = await cluster.admin.js.key_value(cluster.fleet.names.secrets_bucket)
        # moved: a's envelope written under key c
        a_raw = (await kv.get("r.a")).value
        await kv.put("r.c", a_raw)
        # rolled back: b's version 1 envelope written again over version 2
        history = await kv.history("r.b")
        v1 = next(h.value for h in history if ENVELOPE_CODEC.decode(h.value).version == 1)
        await kv.put("r.b", v1)
        # not of its kind: a storage value without its provider, bucket, region, key id
        partial = b'{"secret_access_key": "' + CANARY + b'", "type": "storage"}'
        written = await cluster.admin.send(cluster.admin.put("r", "s3", partial, kind="storage"))
        assert not written.type.endswith("rejected"), written.data

        async def refused() -> bool:
            status = await cluster.status("node-1")
            held = {(s.key, s.version) for s in status.secrets}
            pending = {p.key: p.reason for p in status.pending}
            return (
                pending.get("r.c") == "context_mismatch"
                and pending.get("r.s3") == "invalid_value"
                and ("r.b", 2) in held
            )

        await wait_until(refused, 20, "moved envelope and invalid value refused, rollback ignored")
        status = await cluster.status("node-1")
        assert not {"r.c", "r.s3"} & {s.key for s in status.secrets}


async def test_byzantine_node_is_named_and_does_not_stop_loads(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    async with running_cluster(
        tmp_path, nats_url, nc, nodes=4, threshold=2, start=False
    ) as cluster:
        cluster.nodes["node-4"].module = "tests.bridge.byzantine_node"
        for proc in cluster.nodes.values():
            # Every load by the cold path (share requests): with the fast path, the honest
            # nodes open most secrets from each other's wraps and may never ask node-4.
            proc.extra_args.append("--no-fast-path")
            proc.start()
        honest = ["node-1", "node-2", "node-3"]
        await cluster.wait_up([*honest, "node-4"])
        # 16 secrets: node-4 is among the 2 nodes rendezvous hashing picks for a secret
        # half the time, so (all but 2^-16 of the time) some load asks it.
        for i in range(16):
            await put(cluster, "byz", f"s{i}", b"value")
        for i in range(16):
            await cluster.wait_held(honest, f"byz.s{i}", 1)
        report = await cluster.admin.wait_for(lambda e: e.type.endswith("node.misbehaved"), 30)
        assert report.data.node_id == "node-4" and report.data.reason == "invalid_partial"
        assert report.data.reporter in honest
        statuses = [await cluster.status(n) for n in honest]
        assert sum(s.misbehaviour.get("node-4", 0) for s in statuses) >= 1
        assert all(set(s.misbehaviour) <= {"node-4"} for s in statuses)


async def test_sigterm_purges_and_exits_zero(tmp_path: Path, nats_url: str, nc: Client) -> None:
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        await put(cluster, "c", "canary", CANARY)
        await cluster.wait_held(["node-1", "node-2", "node-3"], "c.canary", 1)
        assert cluster.nodes["node-2"].terminate(timeout=5) == 0  # the contract: within 5 s
        log = cluster.nodes["node-2"].log.read_text()
        assert "vault purged" in log
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert CANARY not in path.read_bytes(), path


async def test_sigterm_purges_the_vault_in_process(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """The purge itself, checked on the node object: every buffer is zeroed."""
    from flashgate.bridge.node import BridgeNode, BridgeSettings
    from flashgate.fleet.directory import read_bundle
    from tests.support.material import TEST_PASSPHRASE

    async with running_cluster(
        tmp_path, nats_url, nc, nodes=3, threshold=2, start=False
    ) as cluster:
        for node in ("node-2", "node-3"):
            cluster.start(node)
        bundle = read_bundle(cluster.fleet.dir / "nodes" / "node-1.bundle", TEST_PASSPHRASE)
        from flashgate.devcluster.nats_server import free_port

        port = free_port()
        node = BridgeNode(
            bundle,
            BridgeSettings(nats_urls=[nats_url], lock_memory=False, metrics_port=port),
        )
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logged:
            await node.start()
            try:
                await put(cluster, "c", "inproc", CANARY)
                await wait_until(lambda: _holds(node, "c.inproc"), 30, "the in-process node")
                buffers = [slot.data for slot in node.vault._slots.values()]
                assert any(CANARY in bytes(b) for b in buffers)
                metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
                assert 'flashgate_secrets_held{node="node-1"}' in metrics
                assert "flashgate_share_requests_served_total" in metrics
                assert CANARY.decode() not in metrics
            finally:
                purged = await node.stop()
        assert purged >= 1 and len(node.vault) == 0
        assert all(not b for b in buffers)  # wiped and cleared
        # The node's name is bound once (contextvars): its tasks' lines carry it too.
        events = {line["event"]: line for line in logged}
        for event in ("bridge node started", "secrets loaded", "bridge node stopped; vault purged"):
            assert events[event].get("node") == "node-1", event
        assert "node" not in structlog.contextvars.get_contextvars()  # not left bound


async def _holds(node, key: str) -> bool:  # type: ignore[no-untyped-def]
    await asyncio.sleep(0)
    return node.vault.version_of(key) is not None


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
        return response.read().decode()


async def test_forged_rotation_documents_are_refused(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """The fleet bucket is written by the backend; nodes act only on admin-signed rotation
    and retirement commands. A forged one changes nothing and loads go on."""
    from flashgate.events import commands as cmd
    from tests.support.material import deal_test_epoch

    nodes = ["node-1", "node-2", "node-3"]
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        await put(cluster, "r", "before", b"before")
        await cluster.wait_held(nodes, "r.before", 1)
        cer = cluster.fleet.ceremony
        dealt = deal_test_epoch(cer.descriptor, cer.roster, cer.admin_key)
        intruder = new_ed25519()
        base = cluster.admin.base()
        forged_start = sign(
            cmd.StartKeyRotation(
                **base, from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
            ),
            intruder,
        )
        forged_finish = sign(
            cmd.FinishKeyRotation(**cluster.admin.base(), retired_epoch=1), intruder
        )
        kv = await nc.jetstream().key_value(cluster.fleet.names.fleet_bucket)
        await kv.put("rotation.2", cmd.COMMAND_CODEC.encode(forged_start))
        await kv.put("retired.1", cmd.COMMAND_CODEC.encode(forged_finish))
        await kv.put("rotation.3", b"{not a command")

        async def all_refused() -> bool:
            logs = [cluster.nodes[n].log.read_text() for n in nodes]
            return all(log.count("fleet key rotation refused") >= 2 for log in logs) and all(
                "fleet key retirement refused" in log for log in logs
            )

        await wait_until(all_refused, 30, "every node to refuse the forged documents")
        for node in nodes:
            status = await cluster.status(node)
            assert status.epoch == 1
        await put(cluster, "r", "after", b"after")  # epoch 1 still works everywhere
        await cluster.wait_held(nodes, "r.after", 1)


async def test_a_bad_rewrap_is_disputed_reverted_and_done_again(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """A node that re-wraps a content key wrongly (here: a forged re-wrap signed with
    node-1's key while every node is paused) cannot make the secret unreadable: the nodes
    that fail to open it dispute it, the backend puts the original back and names node-1,
    and another node re-wraps it correctly, so every node ends up holding it under epoch 2."""
    import os
    import secrets
    import signal

    from flashgate.crypto import jwe
    from flashgate.crypto.encrypt import wrap_key
    from flashgate.events import commands as cmd
    from flashgate.events.envelope import RewrapAttestation, jwe_sha256
    from flashgate.events.rotation import (
        REWRAP_REPLY_CODEC,
        REWRAP_REQUEST_CODEC,
        RewrapItem,
        RewrapRequest,
    )
    from flashgate.fleet.descriptor import fleet_public_key
    from tests.support.material import deal_test_epoch

    nodes = ["node-1", "node-2", "node-3"]
    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        await put(cluster, "r", "one", CANARY)
        await put(cluster, "r", "two", b"two")
        for key in ("r.one", "r.two"):
            await cluster.wait_held(nodes, key, 1)
        kv = await nc.jetstream().key_value(cluster.fleet.names.secrets_bucket)
        original = ENVELOPE_CODEC.decode((await kv.get("r.one")).value)

        cer = cluster.fleet.ceremony
        dealt = deal_test_epoch(cer.descriptor, cer.roster, cer.admin_key)
        pids = [cluster.nodes[n].process.pid for n in nodes]  # type: ignore[union-attr]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            start = cmd.StartKeyRotation(
                **cluster.admin.base(),
                from_epoch=1,
                descriptor=dealt.descriptor,
                shares=list(dealt.shares),
            )
            started = await cluster.admin.send(sign(start, cluster.fleet.admin))
            assert started.type == "io.flashgate.fleet.rotation.started"
            parsed = jwe.parse(original.jwe)
            forged = jwe.serialize(
                parsed.protected,
                wrap_key(fleet_public_key(dealt.descriptor), secrets.token_bytes(32)),
                parsed.iv,
                parsed.ciphertext,
                parsed.tag,
            )
            # node-1 attests it, as a compromised node can (docs/security-model.md)
            assert original.provenance is not None
            attestation = sign(
                RewrapAttestation(
                    node_id="node-1",
                    epoch=2,
                    jwe_sha256=jwe_sha256(forged),
                    statement_signature=original.provenance.statement.signature,
                ),
                cer.bundles[0].signing_key,
            )
            request = sign(
                RewrapRequest(
                    fleet=cluster.fleet.name,
                    node_id="node-1",
                    request_id=secrets.token_bytes(16),
                    issued_at=int(time.time() * 1000),
                    from_epoch=1,
                    to_epoch=2,
                    items=[RewrapItem("r.one", 1, forged, attestation)],
                ),
                cer.bundles[0].signing_key,
            )
            msg = await nc.request(
                cluster.fleet.names.rewrap_subject, REWRAP_REQUEST_CODEC.encode(request), 10
            )
            assert REWRAP_REPLY_CODEC.decode(msg.data).accepted == 1
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        blamed = await cluster.admin.wait_for(
            lambda e: (
                e.type == "io.flashgate.node.misbehaved" and e.data.reason == "rewrap_disputed"
            ),
            timeout=60,
        )
        assert blamed.data.node_id == "node-1" and blamed.data.secret_key == "r.one"

        async def everyone_holds_both_under_epoch_2() -> bool:
            for node in nodes:
                status = await cluster.try_status(node)
                if status is None:
                    return False
                held = {s.key: (s.version, s.epoch) for s in status.secrets}
                if held.get("r.one") != (1, 2) or held.get("r.two") != (1, 2):
                    return False
            return True

        await wait_until(everyone_holds_both_under_epoch_2, 90, "both secrets under epoch 2")
        final = ENVELOPE_CODEC.decode((await kv.get("r.one")).value)
        assert final.epoch == 2 and final.jwe != forged
        logs = [cluster.nodes[n].log.read_text() for n in nodes]
        assert any("asked the backend to revert" in log for log in logs)
        assert all(CANARY.decode() not in log for log in logs)


async def test_a_bridge_started_before_the_backend_waits_quietly_for_the_buckets(
    tmp_path: Path, nats_url: str
) -> None:
    """No buckets yet (the backend declares them): the bridge says once, at info, that it
    waits for them, retries at debug level only, and starts once they exist."""
    fleet = make_fleet(tmp_path / "fleets", nodes=3, threshold=2)
    log = tmp_path / "node-1.log"
    node = NodeProcess(
        "node-1",
        fleet.dir / "nodes" / "node-1.bundle",
        nats_url,
        log,
        extra_args=["--log-level", "debug"],
    )

    def lines(event: str) -> list[dict[str, object]]:
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    found.append(entry)
        return found

    async def seen(event: str, count: int = 1) -> bool:
        return len(lines(event)) >= count

    url = f"sqlite:///{tmp_path / 'backend.db'}"
    await asyncio.to_thread(db.migrate, url)
    backend = Backend(BackendSettings(nats_urls=[nats_url], db_url=url, fleet_dir=fleet.dir))
    node.start()
    try:
        # Several retries went by (each at debug level) before the backend starts.
        await wait_until(lambda: seen("bucket not created yet", 3), 30, "three retries")
        await backend.start()
        await wait_until(lambda: seen("bridge node started"), 30, "the bridge to start")
    finally:
        node.kill()
        await backend.stop()
    waiting = lines("waiting for the backend to create bucket")
    assert [(e["level"], e["bucket"]) for e in waiting] == [("info", fleet.names.fleet_bucket)]
    assert lines("bucket not available yet; retrying") == []
    assert {e["level"] for e in lines("bucket not created yet")} == {"debug"}


async def test_only_current_revisions_are_served_and_a_version_keeps_its_value(
    tmp_path: Path, nats_url: str, nc: Client
) -> None:
    """Issue 14 §4, real processes: a responder refuses partials for a revision two steps
    back and for a deleted secret although the bucket's history holds both; an envelope
    written into the bucket at the held version with another value is not loaded."""
    from flashgate.bridge.protocol import open_response
    from flashgate.bridge.store import make_entry
    from flashgate.events.envelope import SecretEnvelope
    from flashgate.fleet.descriptor import fleet_public_key

    async with running_cluster(tmp_path, nats_url, nc, nodes=3, threshold=2) as cluster:
        nodes = ["node-1", "node-2", "node-3"]
        kv = await cluster.admin.js.key_value(cluster.fleet.names.secrets_bucket)
        await put(cluster, "r", "rotated", b"v1")
        oldest = await kv.get("r.rotated")  # the outcome comes after the bucket write
        assert ENVELOPE_CODEC.decode(oldest.value).version == 1
        for version in (2, 3):
            await put(cluster, "r", "rotated", b"v%d" % version, version=version)
        await put(cluster, "r", "gone", b"deleted")
        await cluster.wait_held(nodes, "r.rotated", 3)
        await cluster.wait_held(nodes, "r.gone", 1)
        gone = await kv.get("r.gone")
        deleted = await cluster.admin.send(cluster.admin.delete("r", "gone"))
        assert not deleted.type.endswith("rejected"), deleted.data
        keys = {1: fleet_public_key(cluster.fleet.ceremony.descriptor)}
        bundle2 = cluster.fleet.ceremony.bundles[1]

        async def refusals(key: str, revision: int, value: bytes) -> list[str]:
            made = make_entry(
                cluster.fleet.name, key, revision, value, keys, prove=lambda _envelope: None
            )  # only its digest is used here
            raw, request, reply_key = build_request(
                node_id="node-2",
                responder="node-1",
                fleet=cluster.fleet.name,
                epoch=1,
                signing_key=bundle2.signing_key,
                items=[ShareItem(key, revision, made.digest)],
            )
            msg = await nc.request(cluster.fleet.names.share_subject("node-1"), raw, timeout=5)
            results = open_response(
                msg.data, request, reply_key, "node-1", cluster.fleet.ceremony.roster
            )
            assert results.partials == []
            return [r.reason for r in results.refusals]

        async def deleted_everywhere() -> bool:
            status = await cluster.status("node-1")
            return "r.gone" not in {s.key for s in status.secrets}

        await wait_until(deleted_everywhere, 20, "r.gone dropped by node-1")
        assert await refusals("r.rotated", oldest.revision, oldest.value) == ["unknown_secret"]
        assert await refusals("r.gone", gone.revision, gone.value) == ["unknown_secret"]

        # The bucket writer puts version 3 again, with another value: not a re-wrap. It
        # cannot prove an envelope of its own (nodes would refuse it as unproven), so it
        # replays one the admin signed for version 3 with another value (a second
        # statement the backend refused as a version conflict).
        current = ENVELOPE_CODEC.decode((await kv.get("r.rotated")).value)
        forged = cluster.admin.jwe("r", "rotated", b"attacker", version=3)
        other = SecretEnvelope(
            fleet=current.fleet,
            repo="r",
            name="rotated",
            kind=current.kind,
            version=3,
            epoch=1,
            jwe=forged,
            written_at=current.written_at,
        )
        await kv.put("r.rotated", ENVELOPE_CODEC.encode(proven(other, cluster.fleet.admin)))

        async def conflict_seen() -> bool:
            status = await cluster.status("node-1")
            pending = {p.key: p.reason for p in status.pending}
            held = {(s.key, s.version) for s in status.secrets}
            return pending.get("r.rotated") == "version_conflict" and ("r.rotated", 3) in held

        await wait_until(conflict_seen, 20, "the forged value at the held version refused")

"""Fleet key rotation in the backend: start (sealed shares stored for the nodes), node-signed
re-wrap requests (only the wrapped key may change), progress, finish (only when nothing
references the old epoch), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from flashgate.backend.service import Backend
from flashgate.crypto import jwe
from flashgate.crypto.api_key_tokens import new_key_id, new_key_secret
from flashgate.crypto.context import SecretContext
from flashgate.crypto.decrypt import rewrap
from flashgate.crypto.encrypt import encrypt_secret, wrap_key
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.crypto.threshold.combine import combine
from flashgate.crypto.threshold.partial import partial_decrypt
from flashgate.events import commands as cmd
from flashgate.events.envelope import ENVELOPE_CODEC, Provenance, RewrapAttestation, jwe_sha256
from flashgate.events.fleet import Roster
from flashgate.events.rotation import (
    REWRAP_REPLY_CODEC,
    REWRAP_REQUEST_CODEC,
    RewrapItem,
    RewrapReply,
    RewrapRequest,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.epoch_dealing import NextEpoch
from tests.backend.test_commands import kv_envelope, wait_kv
from tests.support.admin_client import AdminClient
from tests.support.material import CANARY, deal_test_epoch, stated

pytestmark = pytest.mark.nats


def next_epoch(admin: AdminClient) -> NextEpoch:
    cer = admin.fleet.ceremony
    return deal_test_epoch(cer.descriptor, cer.roster, cer.admin_key)


def y_of(admin: AdminClient, token: str) -> int:
    """The old epoch's RSA result for a token, from two of the ceremony's shares."""
    bundles = admin.fleet.ceremony.bundles
    public = bundles[0].public
    c = jwe.parse(token).wrapped_key(admin.fleet.key)
    return combine(public, c, {b.index: partial_decrypt(b.share, public, c) for b in bundles[:2]})


async def send_rewrap(
    admin: AdminClient,
    items: list[RewrapItem],
    *,
    node: int = 0,
    signer: int | None = None,
    from_epoch: int = 1,
    to_epoch: int = 2,
    action: str = "rewrap",
) -> RewrapReply:
    bundles = admin.fleet.ceremony.bundles
    request = sign(
        RewrapRequest(
            fleet=admin.fleet.name,
            node_id=bundles[node].node_id,
            request_id=secrets.token_bytes(16),
            issued_at=int(time.time() * 1000),
            from_epoch=from_epoch,
            to_epoch=to_epoch,
            items=items,
            action=action,  # type: ignore[arg-type]
        ),
        bundles[node if signer is None else signer].signing_key,
    )
    return await raw_rewrap(admin, REWRAP_REQUEST_CODEC.encode(request))


async def raw_rewrap(admin: AdminClient, payload: bytes) -> RewrapReply:
    msg = await admin.nc.request(admin.fleet.names.rewrap_subject, payload, timeout=10)
    return REWRAP_REPLY_CODEC.decode(msg.data)


async def test_rotation_rewrap_and_retirement(backend: Backend, admin: AdminClient) -> None:
    await admin.send(admin.put("payments", "db", CANARY))
    await admin.send(admin.put("payments", "s3", b"s3-value"))
    key_id = new_key_id()
    await admin.send(
        sign(
            stated(
                cmd.CreateApiKey,
                admin.fleet.admin,
                **admin.base(),
                key_id=key_id,
                repo="payments",
                scope="ai",
                access="openai",
                label="gateway",
                epoch=1,
                jwe=admin.jwe("payments", key_id, new_key_secret(), kind="apikey"),
            ),
            admin.fleet.admin,
        )
    )
    keys = ["payments.db", "payments.s3", f"payments.{key_id}"]
    envelopes = {k: await wait_kv(admin, k, 1) for k in keys}

    # Before any rotation: nothing to re-wrap into.
    item = RewrapItem("payments.db", 1, envelopes["payments.db"].jwe)
    refused = await send_rewrap(admin, [item])
    assert (refused.ok, refused.error) == (False, "stale_epoch")

    dealt = next_epoch(admin)
    incomplete = sign(
        cmd.StartKeyRotation(
            **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares[1:])
        ),
        admin.fleet.admin,
    )
    rejected = await admin.send(incomplete)
    assert rejected.data.reason == "malformed_document"
    start = sign(
        cmd.StartKeyRotation(
            **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
        ),
        admin.fleet.admin,
    )
    started = await admin.send(start)
    assert started.type == "io.flashgate.fleet.rotation.started"
    assert (started.data.from_epoch, started.data.to_epoch, started.data.total) == (1, 2, 3)
    again = await admin.send(
        sign(msgspec.structs.replace(start, command_id="x" * 20, signature=""), admin.fleet.admin)
    )
    assert again.data.reason == "already_exists"

    # The signed command is in the fleet bucket for the nodes, with the new descriptor.
    fleet_kv = await admin.js.key_value(admin.fleet.names.fleet_bucket)
    stored = cmd.COMMAND_CODEC.decode((await fleet_kv.get("rotation.2")).value)
    assert stored == start
    verify(stored, admin.fleet.admin.public_key())
    assert (await fleet_kv.get("descriptor.2")).value is not None

    answer = await admin.query("rotation")
    assert answer["rotation"] == {
        "epoch": 1,
        "rotating_to": 2,
        "envelopes": {"1": 3},
        "rewrapped": 0,
    }

    # Retiring now is refused: envelopes still use epoch 1.
    finish = sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), admin.fleet.admin)
    early = await admin.send(finish)
    assert early.data.reason == "bad_configuration" and "3 envelope" in early.data.detail

    new_key = fleet_public_key(dealt.descriptor)
    rewrapped = {
        k: rewrap(jwe.parse(e.jwe), y_of(admin, e.jwe), admin.fleet.key, new_key)
        for k, e in envelopes.items()
    }

    # Refusals, cheapest first.
    good = RewrapItem("payments.db", 1, rewrapped["payments.db"])
    assert (await raw_rewrap(admin, b"\x93garbage")).error == "malformed_message"
    assert (await send_rewrap(admin, [good], signer=1)).error == "bad_signature"
    assert (await send_rewrap(admin, [good], from_epoch=2, to_epoch=3)).error == "stale_epoch"
    outsider = RewrapRequest(
        fleet=admin.fleet.name,
        node_id="node-9",
        request_id=secrets.token_bytes(16),
        issued_at=int(time.time() * 1000),
        from_epoch=1,
        to_epoch=2,
        items=[good],
    )
    assert (await raw_rewrap(admin, REWRAP_REQUEST_CODEC.encode(outsider))).error == "unknown_node"
    ctx = SecretContext(
        fleet=admin.fleet.name, repo="payments", name="db", kind="generic", version=1
    )
    fresh = encrypt_secret(new_key, ctx, b"attacker's value")  # valid under k+1, not a re-wrap
    stale = RewrapItem("payments.s3", 2, rewrapped["payments.s3"])
    mixed = await send_rewrap(admin, [RewrapItem("payments.db", 1, fresh), stale])
    assert mixed.ok and mixed.accepted == 0
    assert [(r.key, r.reason) for r in mixed.refusals] == [
        ("payments.db", "not_a_rewrap"),
        ("payments.s3", "stale_version"),
    ]

    # The real re-wraps, from two nodes.
    first = await send_rewrap(admin, [good], node=0)
    assert (first.accepted, first.remaining) == (1, 2)
    rest = [RewrapItem(k, 1, rewrapped[k]) for k in keys[1:]]
    second = await send_rewrap(admin, rest, node=2)
    assert (second.accepted, second.remaining, second.refusals) == (2, 0, [])
    repeat = await send_rewrap(admin, [good], node=1)
    assert [r.reason for r in repeat.refusals] == ["stale_epoch"]  # already re-wrapped

    for k in keys:
        env = await wait_kv(admin, k, 1)
        for _ in range(100):
            if env.epoch == 2:
                break
            env = await kv_envelope(admin, k)
        assert (env.epoch, env.version, env.jwe) == (2, 1, rewrapped[k])
    progressed = await admin.wait_for(
        lambda e: e.type == "io.flashgate.fleet.rotation.progressed" and e.data.done == 3
    )
    assert progressed.data.total == 3

    completed = await admin.send(
        sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), admin.fleet.admin)
    )
    assert completed.type == "io.flashgate.fleet.rotation.completed"
    assert (completed.data.retired_epoch, completed.data.current_epoch) == (1, 2)
    retirement = cmd.COMMAND_CODEC.decode((await fleet_kv.get("retired.1")).value)
    verify(retirement, admin.fleet.admin.public_key())
    assert (await fleet_kv.get("epoch")).value == b"2"
    answer = await admin.query("rotation")
    assert answer["rotation"] == {
        "epoch": 2,
        "rotating_to": None,
        "envelopes": {"2": 3},
        "rewrapped": 0,
    }

    # Epoch 1 is gone for writers; epoch 2 is current.
    old = await admin.send(admin.rotate("payments", "db", b"v2", version=2))
    assert old.data.reason == "stale_epoch"
    ctx2 = SecretContext(
        fleet=admin.fleet.name, repo="payments", name="db", kind="generic", version=2
    )
    put2 = sign(
        stated(
            cmd.RotateSecret,
            admin.fleet.admin,
            **admin.base(),
            repo="payments",
            name="db",
            kind="generic",
            version=2,
            epoch=2,
            jwe=encrypt_secret(new_key, ctx2, b"v2"),
        ),
        admin.fleet.admin,
    )
    assert (await admin.send(put2)).type == "io.flashgate.secret.rotated"
    assert (await wait_kv(admin, "payments.db", 2)).epoch == 2


async def test_rewrapped_counts_only_rewraps_from_the_old_epoch(
    backend: Backend, admin: AdminClient
) -> None:
    """A secret written under the new epoch during the rotation is live under it but was
    never re-wrapped: the rotation query's ``rewrapped`` leaves it out (and `fleet
    rotate-key` reports that count)."""
    await admin.send(admin.put("payments", "db", b"db-value"))
    await admin.send(admin.put("payments", "s3", b"s3-value"))
    envelopes = {k: await wait_kv(admin, k, 1) for k in ("payments.db", "payments.s3")}
    dealt = next_epoch(admin)
    started = await admin.send(
        sign(
            cmd.StartKeyRotation(
                **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
            ),
            admin.fleet.admin,
        )
    )
    assert started.type == "io.flashgate.fleet.rotation.started"
    new_key = fleet_public_key(dealt.descriptor)
    ctx = SecretContext(
        fleet=admin.fleet.name, repo="payments", name="new", kind="generic", version=1
    )
    written = await admin.send(
        sign(
            stated(
                cmd.PutSecret,
                admin.fleet.admin,
                **admin.base(),
                repo="payments",
                name="new",
                kind="generic",
                version=1,
                epoch=2,
                jwe=encrypt_secret(new_key, ctx, b"written under epoch 2"),
            ),
            admin.fleet.admin,
        )
    )
    assert written.type == "io.flashgate.secret.created", written
    env = envelopes["payments.db"]
    item = RewrapItem(
        "payments.db", 1, rewrap(jwe.parse(env.jwe), y_of(admin, env.jwe), admin.fleet.key, new_key)
    )
    assert (await send_rewrap(admin, [item])).accepted == 1

    rotation = (await admin.query("rotation"))["rotation"]
    assert rotation["envelopes"] == {"1": 1, "2": 2}
    assert rotation["rewrapped"] == 1


def bad_rewrap(token: str, new_key: FleetPublicKey) -> str:
    """What a byzantine node could send: a well-formed re-wrap of the wrong content key."""
    p = jwe.parse(token)
    return jwe.serialize(
        p.protected, wrap_key(new_key, secrets.token_bytes(32)), p.iv, p.ciphertext, p.tag
    )


async def test_a_rewrap_no_node_can_open_is_reverted(backend: Backend, admin: AdminClient) -> None:
    """The backend cannot check a wrapped key. A node that cannot open a re-wrap disputes
    it: the original comes back, the disputed node may not re-wrap it again, another may."""
    await admin.send(admin.put("payments", "db", CANARY))
    original = await wait_kv(admin, "payments.db", 1)
    dealt = next_epoch(admin)
    start = cmd.StartKeyRotation(
        **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
    )
    await admin.send(sign(start, admin.fleet.admin))
    new_key = fleet_public_key(dealt.descriptor)
    forged = bad_rewrap(original.jwe, new_key)
    node_ids = [b.node_id for b in admin.fleet.ceremony.bundles]

    # node 0 re-wraps wrongly (and attests it): the backend cannot tell and accepts it.
    assert original.provenance is not None
    attestation = sign(
        RewrapAttestation(
            node_id=node_ids[0],
            epoch=2,
            jwe_sha256=jwe_sha256(forged),
            statement_signature=original.provenance.statement.signature,
        ),
        admin.fleet.ceremony.bundles[0].signing_key,
    )
    accepted = await send_rewrap(admin, [RewrapItem("payments.db", 1, forged, attestation)], node=0)
    assert (accepted.accepted, accepted.remaining) == (1, 0)
    for _ in range(100):
        rewrapped = await kv_envelope(admin, "payments.db")
        if rewrapped.epoch == 2:
            break
        time.sleep(0.02)
    # published with the admin's statement and node 0's attestation, for the nodes to check
    assert rewrapped.provenance == Provenance(
        statement=original.provenance.statement, rewrap=attestation
    )

    # Disputes that do not match the current envelope, or name no re-wrap, change nothing.
    stale = await send_rewrap(
        admin, [RewrapItem("payments.db", 1, original.jwe)], node=1, action="revert"
    )
    assert [r.reason for r in stale.refusals] == ["stale_version"]
    ctx = SecretContext(
        fleet=admin.fleet.name, repo="payments", name="fresh", kind="generic", version=1
    )
    put2 = stated(
        cmd.PutSecret,
        admin.fleet.admin,
        **admin.base(),
        repo="payments",
        name="fresh",
        kind="generic",
        version=1,
        epoch=2,
        jwe=encrypt_secret(new_key, ctx, b"written under epoch 2"),
    )
    assert (await admin.send(sign(put2, admin.fleet.admin))).type == "io.flashgate.secret.created"
    fresh = await wait_kv(admin, "payments.fresh", 1)
    assert fresh.epoch == 2
    not_rewrapped = await send_rewrap(
        admin, [RewrapItem("payments.fresh", 1, fresh.jwe)], node=1, action="revert"
    )
    assert [r.reason for r in not_rewrapped.refusals] == ["not_found"]
    assert not_rewrapped.accepted == 0

    # node 1 cannot open it and disputes it: the epoch-1 original is back, in the bucket too.
    reverted = await send_rewrap(
        admin, [RewrapItem("payments.db", 1, forged)], node=1, action="revert"
    )
    assert (reverted.accepted, reverted.remaining, reverted.refusals) == (1, 1, [])
    for _ in range(100):
        env = await kv_envelope(admin, "payments.db")
        if env is not None and env.epoch == 1:
            break
        time.sleep(0.02)
    assert env is not None and (env.epoch, env.jwe) == (1, original.jwe)
    assert env.provenance == original.provenance  # the original's, without the re-wrap's
    blamed = await admin.wait_for(lambda e: e.type == "io.flashgate.node.misbehaved")
    assert (blamed.data.node_id, blamed.data.reporter, blamed.data.reason) == (
        node_ids[0],
        node_ids[1],
        "rewrap_disputed",
    )
    audit = (await admin.query("audit"))["audit"]
    [row] = [a for a in audit if a["command_type"] == "fleet.rewrap.revert"]
    assert row["actor"] == f"node:{node_ids[1]}" and f"node:{node_ids[0]}" in row["detail"]
    again = await send_rewrap(
        admin, [RewrapItem("payments.db", 1, forged)], node=1, action="revert"
    )
    assert [r.reason for r in again.refusals] == ["stale_version"]  # reverted once, not twice

    # node 0 may not re-wrap it again while node 1, which disputed it, is active.
    good = rewrap(jwe.parse(original.jwe), y_of(admin, original.jwe), admin.fleet.key, new_key)
    barred = await send_rewrap(admin, [RewrapItem("payments.db", 1, good)], node=0)
    assert [r.reason for r in barred.refusals] == ["rewrap_disputed"]
    # node 0 re-wrapped it correctly after all? node 2 disputes that one too (a node that
    # disputes everything cannot be told from an honest one) ...
    honest = await send_rewrap(admin, [RewrapItem("payments.db", 1, good)], node=2)
    assert (honest.accepted, honest.remaining) == (1, 0)
    disputed = await send_rewrap(
        admin, [RewrapItem("payments.db", 1, good)], node=1, action="revert"
    )
    assert disputed.accepted == 1
    for node in (0, 2):  # both barred by node 1 now
        refused = await send_rewrap(admin, [RewrapItem("payments.db", 1, good)], node=node)
        assert [r.reason for r in refused.refusals] == ["rewrap_disputed"]
    # ... until the operator revokes node 1: its bars go with it.
    cer = admin.fleet.ceremony
    roster = sign(
        msgspec.structs.replace(
            cer.roster,
            serial=cer.roster.serial + 1,
            nodes=[
                msgspec.structs.replace(n, status="revoked") if n.id == node_ids[1] else n
                for n in cer.roster.nodes
            ],
            signature="",
        ),
        cer.admin_key,
    )
    revoked = await admin.send(
        sign(cmd.RevokeNode(**admin.base(), node_id=node_ids[1], roster=roster), cer.admin_key)
    )
    assert revoked.type == "io.flashgate.node.revoked"
    honest = await send_rewrap(admin, [RewrapItem("payments.db", 1, good)], node=2)
    assert (honest.accepted, honest.remaining) == (1, 0)
    for _ in range(100):
        env = await kv_envelope(admin, "payments.db")
        if env is not None and env.epoch == 2:
            break
        time.sleep(0.02)
    assert env is not None and env.jwe == good

    # Retirement drops the kept originals.
    done = await admin.send(
        sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), admin.fleet.admin)
    )
    assert done.type == "io.flashgate.fleet.rotation.completed"
    async with backend.sessions() as session:
        from sqlalchemy import func, select

        from flashgate.backend.models import RewrapOrigin

        assert await session.scalar(select(func.count()).select_from(RewrapOrigin)) == 0

    # The next epoch must go to exactly the active nodes: dealt from a stale roster that
    # still lists the revoked node, it is refused.
    def deal(roster: Roster) -> NextEpoch:
        return deal_test_epoch(dealt.descriptor, roster, cer.admin_key, pair=0)

    def start3(epoch3: NextEpoch) -> cmd.StartKeyRotation:
        return sign(
            cmd.StartKeyRotation(
                **admin.base(),
                from_epoch=2,
                descriptor=epoch3.descriptor,
                shares=list(epoch3.shares),
            ),
            cer.admin_key,
        )

    stale_roster = await admin.send(start3(deal(cer.roster)))
    assert stale_roster.data.reason == "stale_roster" and node_ids[1] in stale_roster.data.detail
    started = await admin.send(start3(deal(roster)))
    assert started.type == "io.flashgate.fleet.rotation.started"


async def test_second_rotation_purges_the_first_ones_shares(
    backend: Backend, admin: AdminClient
) -> None:
    """Retiring an epoch that was itself dealt by a rotation removes its sealed shares."""
    cer = admin.fleet.ceremony
    dealt = next_epoch(admin)
    await admin.send(
        sign(
            cmd.StartKeyRotation(
                **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
            ),
            cer.admin_key,
        )
    )
    await admin.send(sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), cer.admin_key))
    third = deal_test_epoch(dealt.descriptor, cer.roster, cer.admin_key, pair=0)
    started = await admin.send(
        sign(
            cmd.StartKeyRotation(
                **admin.base(), from_epoch=2, descriptor=third.descriptor, shares=list(third.shares)
            ),
            cer.admin_key,
        )
    )
    assert started.data.total == 0
    await admin.send(sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=2), cer.admin_key))
    fleet_kv = await admin.js.key_value(admin.fleet.names.fleet_bucket)
    for _ in range(100):
        try:
            await fleet_kv.get("rotation.2")
        except KeyNotFoundError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the retired epoch's sealed shares are still in the fleet bucket")
    assert (await fleet_kv.get("rotation.3")).value is not None
    assert (await fleet_kv.get("epoch")).value == b"3"


async def test_a_replica_that_missed_the_rotation_writes_no_retired_epoch(
    nats_url: str, pg_url: str, admin: AdminClient
) -> None:
    """Two replicas on PostgreSQL: whichever applied the rotation, the other one reads the
    epochs from the database in each write's transaction."""
    from flashgate.backend.service import BackendSettings

    fleet = admin.fleet
    replicas = [
        Backend(
            BackendSettings(
                nats_urls=[nats_url], db_url=pg_url, fleet_dir=fleet.dir, instance=f"r{i}"
            )
        )
        for i in range(2)
    ]
    for replica in replicas:
        await replica.start()
    try:
        cer = fleet.ceremony
        late = replicas[1].processor
        assert late is not None
        for i in range(2):  # the repository, then its id cached: writes take the fast path
            put = admin.put("late", f"seed-{i}", b"x")
            assert (await late.process_command(put)).result == "applied"
        for i in range(2):  # gone before the rotation ends (they would hold epoch 1)
            gone = admin.delete("late", f"seed-{i}")
            assert (await late.process_command(gone)).result == "applied"
        fast_writes: list[bool] = []
        write_secret = late.store.write_secret

        async def recorded(write: Any, *, rotate: bool) -> bool:
            fast_writes.append(await write_secret(write, rotate=rotate))
            return fast_writes[-1]

        late.store.write_secret = recorded  # type: ignore[method-assign]
        dealt = next_epoch(admin)
        start = sign(
            cmd.StartKeyRotation(
                **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
            ),
            cer.admin_key,
        )
        assert replicas[0].processor is not None and replicas[1].processor is not None
        outcome = await replicas[0].processor.process_command(start)
        assert outcome.result == "applied"
        # replica 1 never saw it: its memory still says "epoch 1, no rotation"
        assert replicas[1].processor.state.rotating_to is None
        finish = sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), cer.admin_key)
        assert (await replicas[0].processor.process_command(finish)).result == "applied"
        stale = await replicas[1].processor.process_command(admin.put("late", "old", b"x"))
        assert (stale.result, stale.reason) == ("rejected", "stale_epoch")
        assert fast_writes == [False]  # tried: the fleet row had other epochs; wrote nothing
        ctx = SecretContext(fleet=fleet.name, repo="late", name="new", kind="generic", version=1)
        fresh = sign(
            stated(
                cmd.PutSecret,
                cer.admin_key,
                **admin.base(),
                repo="late",
                name="new",
                kind="generic",
                version=1,
                epoch=2,
                jwe=encrypt_secret(fleet_public_key(dealt.descriptor), ctx, b"x"),
            ),
            cer.admin_key,
        )
        assert (await replicas[1].processor.process_command(fresh)).result == "applied"
        assert replicas[1].processor.state.epoch == 2
    finally:
        for replica in replicas:
            await replica.stop()


async def test_retiring_an_epoch_purges_its_envelopes_from_the_bucket_history(
    backend: Backend, admin: AdminClient
) -> None:
    """Once epoch 1 retires, the secrets bucket's history holds no epoch-1 envelope: not a
    superseded version, not a re-wrapped original, not a deleted secret's (issue 14 §4)."""
    await admin.send(admin.put("payments", "db", b"v1"))
    await admin.send(admin.rotate("payments", "db", b"v2", version=2))
    await admin.send(admin.put("payments", "gone", b"deleted-before-rotation"))
    await admin.send(admin.delete("payments", "gone"))
    current = await wait_kv(admin, "payments.db", 2)
    kv = await admin.js.key_value(admin.fleet.names.secrets_bucket)

    stream = f"KV_{admin.fleet.names.secrets_bucket}"

    async def epochs_in_history(key: str) -> list[int | None]:
        """Every message the bucket's stream holds for ``key``, oldest first: its envelope's
        epoch, or None for a delete or purge marker. (Read message by message: nats-py's
        KeyValue.history can stop before the values, nats-io/nats.py#842.)"""
        subject = f"$KV.{admin.fleet.names.secrets_bucket}.{key}"
        found: list[int | None] = []
        seq = 1
        while True:
            try:
                msg = await admin.js.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                return found
            marker = (msg.headers or {}).get("KV-Operation")
            found.append(None if marker else ENVELOPE_CODEC.decode(msg.data or b"").epoch)
            seq = msg.seq + 1

    assert await epochs_in_history("payments.db") == [1, 1]
    assert await epochs_in_history("payments.gone") == [1, None]

    dealt = next_epoch(admin)
    start = sign(
        cmd.StartKeyRotation(
            **admin.base(), from_epoch=1, descriptor=dealt.descriptor, shares=list(dealt.shares)
        ),
        admin.fleet.admin,
    )
    assert (await admin.send(start)).type == "io.flashgate.fleet.rotation.started"
    new_key = fleet_public_key(dealt.descriptor)
    token = rewrap(jwe.parse(current.jwe), y_of(admin, current.jwe), admin.fleet.key, new_key)
    reply = await send_rewrap(admin, [RewrapItem("payments.db", 2, token)])
    assert (reply.accepted, reply.remaining) == (1, 0)
    completed = await admin.send(
        sign(cmd.FinishKeyRotation(**admin.base(), retired_epoch=1), admin.fleet.admin)
    )
    assert completed.type == "io.flashgate.fleet.rotation.completed"

    deadline = time.monotonic() + 10
    while True:
        histories = {k: await epochs_in_history(k) for k in ("payments.db", "payments.gone")}
        if 1 not in histories["payments.db"] + histories["payments.gone"]:
            break
        assert time.monotonic() < deadline, histories
        await asyncio.sleep(0.05)
    assert histories == {"payments.db": [2], "payments.gone": [None]}
    latest = await kv_envelope(admin, "payments.db")
    assert (latest.version, latest.epoch, latest.jwe) == (2, 2, token)
    with pytest.raises(KeyNotFoundError):
        await kv.get("payments.gone")

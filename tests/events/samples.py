"""One valid, signed sample of every wire type, built from a small test fleet."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.rng import DeterministicRng
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.envelope import ApiKeyInfo, SecretEnvelope, statement_for
from flashgate.events.fleet import Roster, RosterNode
from flashgate.events.node_status import (
    Heartbeat,
    HeldSecret,
    PeerStatus,
    PendingSecret,
    StatusRequest,
    StatusResponse,
)
from flashgate.events.share import (
    ShareItem,
    SharePartial,
    ShareProof,
    ShareRequest,
    ShareResponse,
    ShareResults,
)
from flashgate.events.signing import sign
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from tests.support.material import TEST_BITS, fixed_primes, proven, stated

FLEET = "samples"
T0 = 1_790_000_000_000


@cache
def fleet() -> Ceremony:
    return run_ceremony(
        fleet=FLEET,
        node_ids=["node-1", "node-2", "node-3"],
        threshold=2,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
        rng=DeterministicRng(b"samples"),
    )


def admin() -> Ed25519PrivateKey:
    return fleet().admin_key


def node_key(i: int) -> Ed25519PrivateKey:
    return fleet().bundles[i - 1].signing_key


def jwe_for(repo: str, name: str, kind: str = "ai", version: int = 1) -> str:
    key = fleet_public_key(fleet().descriptor)
    ctx = SecretContext(fleet=FLEET, repo=repo, name=name, kind=kind, version=version)
    return encrypt_secret(key, ctx, b"sample value", rng=DeterministicRng(b"jwe"))


def roster(serial: int = 2, revoked: str | None = None) -> Roster:
    nodes = [
        RosterNode(
            id=n.id,
            index=n.index,
            signing_key=n.signing_key,
            exchange_key=n.exchange_key,
            status="revoked" if n.id == revoked else "active",
        )
        for n in fleet().descriptor.nodes
    ]
    return sign(Roster(fleet=FLEET, epoch=1, serial=serial, issued_at=T0, nodes=nodes), admin())


def command_samples() -> list[cmd.Command]:
    base: dict[str, Any] = {"fleet": FLEET, "actor": "admin:alice", "issued_at": T0}
    items: list[cmd.Command] = [
        stated(
            cmd.PutSecret,
            admin(),
            command_id="put-0000000000000001",
            repo="payments",
            name="s3",
            kind="storage",
            version=1,
            epoch=1,
            jwe=jwe_for("payments", "s3", "storage"),
            **base,
        ),
        stated(
            cmd.RotateSecret,
            admin(),
            command_id="rot-0000000000000001",
            repo="payments",
            name="s3",
            kind="storage",
            version=2,
            epoch=1,
            jwe=jwe_for("payments", "s3", "storage", 2),
            **base,
        ),
        cmd.DeleteSecret(command_id="del-0000000000000001", repo="payments", name="s3", **base),
        stated(
            cmd.CreateApiKey,
            admin(),
            command_id="key-0000000000000001",
            key_id="fgk_abcdefghijklmnop",
            repo="payments",
            scope="storage",
            access="read",
            label="CI reader",
            epoch=1,
            jwe=jwe_for("payments", "fgk_abcdefghijklmnop", "apikey"),
            **base,
        ),
        cmd.RenameApiKey(
            command_id="ren-0000000000000001",
            key_id="fgk_abcdefghijklmnop",
            label="CI reader (old)",
            **base,
        ),
        cmd.RevokeApiKey(command_id="rev-0000000000000001", key_id="fgk_abcdefghijklmnop", **base),
        cmd.AttestEnvelopes(
            command_id="att-0000000000000001",
            statements=[
                sign(
                    statement_for(
                        sample, command_id="att-0000000000000001", issued_at=base["issued_at"]
                    ),
                    admin(),
                )
                for sample in (envelope(), apikey_envelope())
            ],
            **base,
        ),
        cmd.RevokeNode(
            command_id="nod-0000000000000001",
            node_id="node-3",
            roster=roster(2, revoked="node-3"),
            **base,
        ),
        cmd.StartKeyRotation(
            command_id="rst-0000000000000001", from_epoch=1, descriptor=fleet().descriptor, **base
        ),
        cmd.FinishKeyRotation(command_id="rfn-0000000000000001", retired_epoch=1, **base),
    ]
    return [sign(c, admin()) for c in items]


def event_samples() -> list[ev.DomainEvent]:
    data: list[ev.EventData] = [
        ev.SecretCreated(
            repo="payments",
            name="s3",
            kind="storage",
            version=1,
            epoch=1,
            command_id="put-0000000000000001",
        ),
        ev.SecretRotated(
            repo="payments", name="s3", kind="storage", version=2, previous_version=1, epoch=1
        ),
        ev.SecretDeleted(repo="payments", name="s3", last_version=2),
        ev.ApiKeyCreated(
            key_id="fgk_abcdefghijklmnop", repo="payments", scope="ai", access="openai", label="bot"
        ),
        ev.ApiKeyRenamed(key_id="fgk_abcdefghijklmnop", repo="payments", label="bot 2"),
        ev.ApiKeyRevoked(key_id="fgk_abcdefghijklmnop", repo="payments"),
        ev.NodeRevoked(node_id="node-3", roster_serial=2),
        ev.NodeMisbehaved(
            node_id="node-2",
            reporter="node-1",
            reason="invalid_proof",
            secret_key="payments.s3",
            epoch=1,
        ),
        ev.GatewayUsage(
            node_id="node-1",
            repo="payments",
            key_id="fgk_abcdefghijklmnopqrstuvwx",
            api="openai",
            window_start=1_700_000_000_000,
            window_end=1_700_000_060_000,
            requests=12,
            errors=1,
            upstream_errors=0,
            bytes_in=4096,
            bytes_out=65536,
        ),
        ev.KeyRotationStarted(from_epoch=1, to_epoch=2, total=10),
        ev.KeyRotationProgressed(from_epoch=1, to_epoch=2, done=5, total=10),
        ev.KeyRotationCompleted(retired_epoch=1, current_epoch=2),
        ev.EnvelopesAttested(count=2),
        ev.CommandRejected(
            command_id="put-0000000000000001",
            command_type="secret.put",
            reason="bad_signature",
            detail="command signature does not verify",
        ),
    ]
    return [
        ev.make_event(
            d, event_id=f"evt-{i}", source=f"flashgate/{FLEET}/backend", subject="payments.s3"
        )
        for i, d in enumerate(data)
    ]


def envelope() -> SecretEnvelope:
    envelope = SecretEnvelope(
        fleet=FLEET,
        repo="payments",
        name="s3",
        kind="storage",
        version=1,
        epoch=1,
        jwe=jwe_for("payments", "s3", "storage"),
        written_at=T0,
        command_id="put-0000000000000001",
    )
    return proven(envelope, admin())


def apikey_envelope() -> SecretEnvelope:
    envelope = SecretEnvelope(
        fleet=FLEET,
        repo="payments",
        name="fgk_abcdefghijklmnop",
        kind="apikey",
        version=1,
        epoch=1,
        jwe=jwe_for("payments", "fgk_abcdefghijklmnop", "apikey"),
        written_at=T0,
        api_key=ApiKeyInfo(
            key_id="fgk_abcdefghijklmnop", scope="storage", access="read", label="CI reader"
        ),
    )
    return proven(envelope, admin())


def share_request(items: int = 3) -> ShareRequest:
    request = ShareRequest(
        fleet=FLEET,
        epoch=1,
        request_id=bytes(range(16)),
        requester="node-1",
        responder="node-2",
        issued_at=T0,
        reply_key=bytes(range(32)),
        proofs=False,
        items=[
            ShareItem(f"repo-{i % 7}.secret-{i}", i + 1, bytes([i % 256]) * 32)
            for i in range(items)
        ],
    )
    return sign(request, node_key(1))


def share_results() -> ShareResults:
    return ShareResults(
        request_id=bytes(range(16)),
        partials=[
            SharePartial("payments.s3", 4, b"\x05" * 128, ShareProof(b"\x01" * 32, b"\x02" * 200))
        ],
        refusals=[],
    )


def share_response() -> ShareResponse:
    response = ShareResponse(
        fleet=FLEET,
        epoch=1,
        request_id=bytes(range(16)),
        responder="node-2",
        issued_at=T0,
        status="ok",
        sender_key=b"\x07" * 32,
        nonce=b"\x08" * 12,
        sealed=b"\x09" * 300,
    )
    return sign(response, node_key(2))


def heartbeat() -> Heartbeat:
    return sign(
        Heartbeat(
            fleet=FLEET,
            node_id="node-1",
            epoch=1,
            roster_serial=1,
            issued_at=T0,
            started_at=T0 - 5000,
            secrets_held=3,
            secrets_pending=0,
        ),
        node_key(1),
    )


def status_request() -> StatusRequest:
    return sign(StatusRequest(fleet=FLEET, request_id=bytes(16), issued_at=T0), admin())


def status_response() -> StatusResponse:
    return sign(
        StatusResponse(
            fleet=FLEET,
            node_id="node-2",
            request_id=bytes(16),
            issued_at=T0,
            started_at=T0 - 1000,
            epoch=1,
            roster_serial=1,
            peers=[PeerStatus("node-1", T0 - 10, 1.5), PeerStatus("node-3", None, None)],
            secrets=[HeldSecret("payments.s3", 2)],
            pending=[PendingSecret("misc.x", "no_quorum")],
            secrets_held=1,
            share_requests_served=10,
            share_requests_refused={"replay": 1},
            misbehaviour={"node-3": 2},
        ),
        node_key(2),
    )


def to_json_view(value: msgspec.Struct) -> Any:
    """The JSON-equivalent document (bytes as base64), as a schema validator sees it."""
    return msgspec.to_builtins(value)

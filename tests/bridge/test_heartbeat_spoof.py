"""A peer's heartbeat counts only when it is that peer's, fresh, and on its own subject
(issue 14 §3: a rogue on the broker replayed another node's heartbeats to keep a dead
node looking alive)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from flashgate.bridge.liveness import HEARTBEAT_MAX_AGE_MS, Liveness
from flashgate.bridge.peers import PeerBook
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.events.fleet import Roster, RosterNode
from flashgate.events.node_status import HEARTBEAT_CODEC, Heartbeat
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.identity_keys import new_ed25519, new_x25519, public_b64

NAMES = FleetNames("acme")
KEYS = {f"node-{i}": new_ed25519() for i in (1, 2, 3)}
NOW = 1_800_000_000_000


def roster(revoked: set[str] = frozenset()) -> Roster:  # type: ignore[assignment]
    return Roster(
        fleet="acme",
        epoch=1,
        serial=1,
        issued_at=NOW,
        nodes=[
            RosterNode(
                id=node_id,
                index=i + 1,
                signing_key=public_b64(key),
                exchange_key=public_b64(new_x25519()),
                status="revoked" if node_id in revoked else "active",
            )
            for i, (node_id, key) in enumerate(KEYS.items())
        ],
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def liveness(clock: Clock) -> Liveness:
    return Liveness(
        node_id="node-1",
        signing_key=KEYS["node-1"],
        transport=cast(Any, SimpleNamespace(names=NAMES)),
        peers=PeerBook("node-1", roster()),
        ring=cast(Any, None),
        vault=cast(Any, None),
        loader=cast(Any, SimpleNamespace(wake=lambda: None)),
        roster=roster,
        started_at=NOW,
        clock=clock,
        rng=SYSTEM_RNG,
    )


def beat(node_id: str, issued_at: int, *, key: str | None = None) -> bytes:
    hb = Heartbeat(
        fleet="acme",
        node_id=node_id,
        epoch=1,
        roster_serial=1,
        issued_at=issued_at,
        started_at=NOW,
        secrets_held=0,
        secrets_pending=0,
    )
    return HEARTBEAT_CODEC.encode(sign(hb, KEYS[key or node_id]))


def msg(subject_node: str, data: bytes) -> Any:
    return SimpleNamespace(subject=NAMES.heartbeat_subject(subject_node), data=data)


async def test_a_fresh_heartbeat_of_an_active_peer_counts() -> None:
    live = liveness(Clock())
    await live.on_heartbeat(msg("node-2", beat("node-2", NOW)))
    assert live.peers.peers["node-2"].last_seen is not None


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda: msg("node-3", beat("node-2", NOW)), id="on-another-node-subject"),
        pytest.param(lambda: msg("node-2", beat("node-2", NOW, key="node-3")), id="wrong-key"),
        pytest.param(
            lambda: msg("node-2", beat("node-2", NOW - HEARTBEAT_MAX_AGE_MS - 1)), id="stale"
        ),
        pytest.param(
            lambda: msg("node-2", beat("node-2", NOW + HEARTBEAT_MAX_AGE_MS + 1)), id="future"
        ),
        pytest.param(
            lambda: msg(
                "node-2",
                HEARTBEAT_CODEC.encode(
                    msgspec.structs.replace(
                        HEARTBEAT_CODEC.decode(beat("node-2", NOW)), secrets_held=5
                    )
                ),
            ),
            id="altered",
        ),
    ],
)
async def test_a_spoofed_heartbeat_does_not_count(forged: Any) -> None:
    live = liveness(Clock())
    await live.on_heartbeat(forged())
    assert all(p.last_seen is None for p in live.peers.peers.values())


async def test_a_replayed_heartbeat_does_not_keep_a_silent_peer_alive() -> None:
    clock = Clock()
    live = liveness(clock)
    captured = beat("node-2", NOW)
    await live.on_heartbeat(msg("node-2", captured))
    first = live.peers.peers["node-2"].last_seen
    assert first is not None
    clock.now += 1000
    live.peers.peers["node-2"].last_seen = None  # forget: only the replay could revive it
    await live.on_heartbeat(msg("node-2", captured))
    assert live.peers.peers["node-2"].last_seen is None
    await live.on_heartbeat(msg("node-2", beat("node-2", clock.now)))  # a newer one does
    assert live.peers.peers["node-2"].last_seen is not None


async def test_a_misbehaviour_report_is_signed_by_its_reporter() -> None:
    """What a bridge publishes is believed by :class:`EventAuthority`; unsigned was not."""
    from flashgate.events.event_auth import EventAuthority

    published: list[tuple[str, bytes]] = []

    async def publish_report(payload: bytes) -> None:
        published.append((NAMES.event_subject("node.misbehaved"), payload))

    live = liveness(Clock())
    live.transport = cast(Any, SimpleNamespace(names=NAMES, publish_report=publish_report))
    live.ring = cast(Any, SimpleNamespace(current=SimpleNamespace(epoch=1)))
    await live.report_misbehaviour("node-2", "bad_proof", None)
    [(subject, payload)] = published  # relayed verbatim by the backend

    def node_key(node_id: str) -> Any:
        entry = live.peers.active(node_id)
        return KEYS[node_id].public_key() if entry is not None else None

    authority = EventAuthority(NAMES, new_ed25519().public_key(), node_key)
    event = authority.open(subject, payload)
    assert event.data.reporter == "node-1"  # type: ignore[attr-defined]

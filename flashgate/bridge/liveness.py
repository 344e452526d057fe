"""Liveness: this node's heartbeats, its peers' heartbeats, and misbehaviour reports.

Every :data:`HEARTBEAT_INTERVAL_S` the node publishes a signed :class:`Heartbeat` (epoch,
roster serial, secrets held and pending) on ``fg.<f>.node.<node>.heartbeat``. A peer's
heartbeat counts only when it verifies under that peer's roster key while the peer is
active, arrived on that peer's own subject, was issued within
:data:`HEARTBEAT_MAX_AGE_MS` of this node's clock and is newer than the last one counted
(a replayed heartbeat keeps no dead node alive); the first one heard from a peer wakes the
loader (secrets pending for want of that peer are tried again). A peer proven to have
misbehaved (a partial that fails its proof) is reported as a ``NodeMisbehaved`` event,
and its gateway's usage summaries as ``GatewayUsage`` events, each signed by this node
(:mod:`flashgate.events.event_auth`), on this node's own report subject: the backend
checks them and relays them into the event stream (:mod:`flashgate.backend.node_reports`),
where a node may not publish. Publishing is best effort: a broker hiccup must not stop
the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.msg import Msg

from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.loader import Loader
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.screening import Clock
from flashgate.bridge.transport import NatsTransport
from flashgate.bridge.vault import Vault
from flashgate.crypto.rng import Rng
from flashgate.errors import FlashgateError, SignatureInvalid
from flashgate.events import domain as ev
from flashgate.events.event_auth import bridge_source, sign_event
from flashgate.events.fleet import Roster
from flashgate.events.node_status import HEARTBEAT_CODEC, Heartbeat
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public

HEARTBEAT_INTERVAL_S = 2.0
#: A heartbeat issued further than this from the receiver's clock (either way) is not
#: counted: clocks of a fleet are expected within seconds of each other (NTP).
HEARTBEAT_MAX_AGE_MS = 30_000


@dataclass
class Liveness:
    node_id: str
    signing_key: Ed25519PrivateKey
    transport: NatsTransport
    peers: PeerBook
    ring: KeyRing
    vault: Vault
    loader: Loader
    roster: Callable[[], Roster]
    started_at: int
    clock: Clock
    rng: Rng
    #: issued_at of the last heartbeat counted, per peer
    _last_beat: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def fleet(self) -> str:
        return self.transport.names.fleet

    async def heartbeats(self) -> None:
        names = self.transport.names
        while True:
            beat = sign(
                Heartbeat(
                    fleet=self.fleet,
                    node_id=self.node_id,
                    epoch=self.ring.current.epoch,
                    roster_serial=self.roster().serial,
                    issued_at=self.clock(),
                    started_at=self.started_at,
                    secrets_held=len(self.vault),
                    secrets_pending=len(self.loader.pending),
                ),
                self.signing_key,
            )
            with contextlib.suppress(Exception):
                await self.transport.publish(
                    names.heartbeat_subject(self.node_id), HEARTBEAT_CODEC.encode(beat)
                )
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = HEARTBEAT_CODEC.decode(msg.data)
        except FlashgateError:
            return
        if beat.node_id == self.node_id or beat.fleet != self.fleet:
            return
        if msg.subject != self.transport.names.heartbeat_subject(beat.node_id):
            return  # another node's heartbeat, moved
        if abs(beat.issued_at - self.clock()) > HEARTBEAT_MAX_AGE_MS:
            return
        if beat.issued_at <= self._last_beat.get(beat.node_id, 0):
            return  # a replay (or out of order): only newer ones count
        entry = self.peers.active(beat.node_id)
        if entry is None:
            return
        try:
            verify(beat, load_ed25519_public(entry.signing_key))
        except SignatureInvalid:
            return
        self._last_beat[beat.node_id] = beat.issued_at
        was_alive = self.peers.peers[beat.node_id].last_seen is not None
        self.peers.seen(beat.node_id)
        if not was_alive:
            self.loader.wake()

    async def report_misbehaviour(self, node_id: str, reason: str, key: str | None) -> None:
        await self.publish_event(
            ev.NodeMisbehaved(
                node_id=node_id,
                reporter=self.node_id,
                reason=reason,
                secret_key=key,
                epoch=self.ring.current.epoch,
            ),
            event_id=f"{self.node_id}.{node_id}.{self.rng.token_bytes(8).hex()}",
            subject=node_id,
        )

    async def publish_usage(self, usage: ev.GatewayUsage) -> None:
        """A usage summary of this node's gateway (one key, API and window)."""
        await self.publish_event(
            usage,
            event_id=f"{self.node_id}.usage.{self.rng.token_bytes(8).hex()}",
            subject=f"{usage.repo}.{usage.key_id}",
        )

    async def publish_event(self, data: ev.EventData, *, event_id: str, subject: str) -> None:
        """Sign ``data`` as an event of this node and publish it (best effort)."""
        names = self.transport.names
        event = ev.make_event(
            data,
            event_id=event_id,
            source=bridge_source(names.fleet, self.node_id),
            subject=subject,
        )
        event = sign_event(event, self.signing_key)
        with contextlib.suppress(Exception):  # not connected yet, or a broker hiccup
            await self.transport.publish_report(ev.encode_event(event))

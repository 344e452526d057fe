"""Re-wrapping content keys during a fleet key rotation (DESIGN §5).

While a node holds two epochs (k and k+1), every envelope still under k is re-wrapped:
its wrapped key is threshold-decrypted under k (the share protocol, as for a load), the
payload is checked to open with it, and the same content key is wrapped under k+1
(:func:`flashgate.crypto.decrypt.rewrap`: header, IV, ciphertext and tag stay byte for
byte). The new JWE goes to the backend in a node-signed re-wrap request, each with this
node's :class:`~flashgate.events.envelope.RewrapAttestation` binding it to the admin's
statement of the original (the other nodes load it only with that, from an active member of
k+1); the backend publishes it, and every node then loads it under k+1, which proves it
opens.

Work is split by rendezvous hashing over the live members of the new epoch, as partial
collection is: the first-ranked live node re-wraps an envelope. An envelope nobody has
re-wrapped after a while is taken by the next-ranked node too (a slow or faulty node must
not stall the rotation); the backend accepts the first re-wrap and refuses the others.
With fewer than t nodes up, collection fails and the work waits, with backoff.

The backend cannot check a wrapped key, so a faulty re-wrap is caught by the nodes: one
whose checked threshold result does not open a re-wrapped envelope (the loader tells
:meth:`Rewrapper.dispute`) sends that JWE back with ``action="revert"``. The backend puts
the original back and bars the disputed node from that envelope; the envelope is then
re-wrapped again by the next-ranked node once its takeover time has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge.collector import Collector
from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.screening import wall_clock_ms
from flashgate.bridge.store import Entry, EnvelopeStore
from flashgate.crypto.decrypt import rewrap
from flashgate.errors import FlashgateError, RewrapDisputed
from flashgate.events.envelope import RewrapAttestation, jwe_sha256
from flashgate.events.rotation import (
    MAX_REWRAP_ITEMS,
    MAX_REWRAP_REQUEST_BYTES,
    REWRAP_REPLY_CODEC,
    REWRAP_REQUEST_CODEC,
    RewrapItem,
    RewrapReply,
    RewrapRequest,
)
from flashgate.events.signing import sign

log = structlog.get_logger("flashgate.bridge.rewrap")

#: An envelope is taken by the node ranked p-th (0 = first) after p times this long.
TAKEOVER_AFTER_S = 15.0
#: A submitted envelope not seen re-wrapped after this long is submitted again.
RESUBMIT_AFTER_S = 20.0
IDLE_POLL_S = 1.0
# The backoff is kept by hand rather than with tenacity (as the backend's retries are): wake()
# (a peer is back) cuts the wait short and resets it, and a batch can partly succeed.
MAX_BACKOFF_S = 10.0

Send = Callable[[bytes], Awaitable[bytes]]
"""send(request) -> reply: a request to the backend's re-wrap endpoint."""
Fetch = Callable[[str], Awaitable[Entry | None]]
"""fetch(key) -> the key's latest value in the bucket, checked (a loaded store entry keeps
no envelope: :class:`~flashgate.bridge.store.Entry`)."""


@dataclass
class Rewrapper:
    node_id: str
    fleet: str
    signing_key: Ed25519PrivateKey
    store: EnvelopeStore
    peers: PeerBook
    ring: KeyRing
    collectors: dict[int, Collector]
    send: Send
    fetch: Fetch | None = None
    rewrapped: int = 0  # envelopes this node's requests got accepted
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _first_seen: dict[str, float] = field(default_factory=dict)  # key -> monotonic
    _submitted: dict[tuple[str, int], float] = field(default_factory=dict)  # (key, rev) -> t
    _disputes: dict[tuple[str, int], Entry] = field(default_factory=dict)  # to send
    _disputed: set[tuple[str, int]] = field(default_factory=set)  # sent
    _barred: set[tuple[str, int]] = field(default_factory=set)  # our re-wrap was disputed
    _backoff: float = 0.5

    def wake(self) -> None:
        self._wake.set()

    def dispute(self, entry: Entry) -> None:
        """``entry`` (under the new epoch) does not open: ask the backend to revert it, once
        per stored revision."""
        ident = (entry.key, entry.revision)
        if ident not in self._disputed:
            self._disputes[ident] = entry
            self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            plan = self.ring.rotation()
            if plan is None:
                self._disputes.clear()
                self._disputed.clear()
                self._barred.clear()
            elif self._disputes:
                try:
                    await self._send_disputes(*plan)
                except FlashgateError as exc:
                    log.warning("re-wrap dispute not delivered; retrying", reason=exc.code)
            batch = self._mine(*plan) if plan is not None else []
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                continue
            assert plan is not None
            try:
                progressed = await self._rewrap(batch, *plan)
            except FlashgateError as exc:
                log.warning("re-wrap failed; retrying", reason=exc.code, detail=exc.message[:200])
                progressed = False
            if progressed:
                self._backoff = 0.5
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)

    def _mine(self, from_epoch: int, to_epoch: int) -> list[Entry]:
        """Envelopes still under ``from_epoch`` that are this node's to re-wrap now."""
        members = self.ring.slots[to_epoch].key.members
        now = time.monotonic()
        mine: list[Entry] = []
        size = 0
        for entry in list(self.store.current.values()):
            if entry.epoch != from_epoch:
                self._first_seen.pop(entry.key, None)
                continue
            sent = self._submitted.get((entry.key, entry.revision))
            if sent is not None and now - sent < RESUBMIT_AFTER_S:
                continue
            if (entry.key, entry.revision) in self._barred:
                continue  # left to the next-ranked node
            first = self._first_seen.setdefault(entry.key, now)
            ranking = [n for n in self.peers.ranking(entry.digest) if n in members]
            if self.node_id not in ranking:
                continue
            if ranking.index(self.node_id) * TAKEOVER_AFTER_S > now - first:
                continue
            cost = entry.size + 256
            if len(mine) >= MAX_REWRAP_ITEMS or size + cost > MAX_REWRAP_REQUEST_BYTES - 4096:
                break
            mine.append(entry)
            size += cost
        return mine

    async def _whole(self, batch: list[Entry]) -> list[Entry]:
        """The batch with each envelope whole: a loaded entry's is read again from the
        bucket (the same revision and wrapped key, checked again), or left for later."""

        async def whole(entry: Entry) -> Entry | None:
            if entry.retained:
                return entry
            if self.fetch is None:
                return None
            fetched = await self.fetch(entry.key)
            if (
                fetched is None
                or fetched.revision != entry.revision
                or fetched.digest != entry.digest
            ):
                return None
            return fetched

        found = await asyncio.gather(*(whole(entry) for entry in batch))
        return [entry for entry in found if entry is not None]

    async def _rewrap(self, batch: list[Entry], from_epoch: int, to_epoch: int) -> bool:
        old = self.ring.slots[from_epoch].key.public.key
        new = self.ring.slots[to_epoch].key.public.key
        batch = await self._whole(batch)
        if not batch:
            return False
        result = await self.collectors[from_epoch].collect(batch)
        items: list[RewrapItem] = []
        for entry in batch:
            y = result.values.get(entry.key)
            if y is None:
                continue
            if not entry.retained:
                continue  # loaded (and let go) meanwhile: read again on a later pass
            try:
                token = rewrap(entry.parsed, y, old, new)
            except FlashgateError as exc:
                log.error("envelope does not open; not re-wrapped", key=entry.key, reason=exc.code)
                continue
            items.append(
                RewrapItem(entry.key, entry.version, token, self._attest(entry, token, to_epoch))
            )
        if not items:
            reasons = sorted(set(result.failed.values()))
            log.warning(
                "re-wrap waiting: cannot decrypt under the old epoch yet",
                reasons=reasons,
                hint="fewer than t nodes up?" if "no_quorum" in reasons else None,
            )
            return False
        reply = await self._send(from_epoch, to_epoch, items, "rewrap")
        now = time.monotonic()
        revisions = {e.key: e.revision for e in batch}
        for item in items:
            self._submitted[(item.key, revisions[item.key])] = now
        self._trim(now)
        if not reply.ok:
            log.warning("re-wrap request refused by the backend", reason=reply.error)
            return False
        self.rewrapped += reply.accepted
        refused: dict[str, int] = {}
        for refusal in reply.refusals:
            refused[refusal.reason] = refused.get(refusal.reason, 0) + 1
            if refusal.reason == RewrapDisputed.code and refusal.key in revisions:
                self._barred.add((refusal.key, revisions[refusal.key]))
        log.info(
            "envelopes re-wrapped",
            accepted=reply.accepted,
            refused=refused or None,
            remaining=reply.remaining,
            to_epoch=to_epoch,
        )
        return True

    def _attest(self, entry: Entry, token: str, to_epoch: int) -> RewrapAttestation | None:
        """This node's signed word that ``token`` re-wraps the admin-stated envelope: the
        other nodes load the re-wrapped envelope only with it (DESIGN §8)."""
        provenance = entry.envelope.provenance
        if provenance is None:  # never in the store: an unproven envelope is not taken
            return None
        attestation = RewrapAttestation(
            node_id=self.node_id,
            epoch=to_epoch,
            jwe_sha256=jwe_sha256(token),
            statement_signature=provenance.statement.signature,
        )
        return sign(attestation, self.signing_key)

    async def _send_disputes(self, from_epoch: int, to_epoch: int) -> None:
        while self._disputes:
            batch: list[tuple[tuple[str, int], Entry]] = []
            size = 0
            for ident, entry in list(self._disputes.items()):
                if entry.epoch != to_epoch or not entry.retained:  # another rotation by now
                    del self._disputes[ident]
                    continue
                cost = len(entry.envelope.jwe) + 256
                if len(batch) >= MAX_REWRAP_ITEMS or size + cost > MAX_REWRAP_REQUEST_BYTES - 4096:
                    break
                batch.append((ident, entry))
                size += cost
            if not batch:
                return
            items = [RewrapItem(e.key, e.version, e.envelope.jwe) for _, e in batch]
            reply = await self._send(from_epoch, to_epoch, items, "revert")
            if not reply.ok:  # e.g. the clock: kept, and sent again on a later pass
                log.warning("re-wrap dispute refused by the backend", reason=reply.error)
                return
            for ident, _ in batch:
                self._disputes.pop(ident, None)
                self._disputed.add(ident)
            log.warning(
                "re-wrapped envelopes do not open; asked the backend to revert them",
                keys=[e.key for _, e in batch][:8],
                reverted=reply.accepted,
                refused=sorted({r.reason for r in reply.refusals}) or None,
                error=reply.error,
            )

    async def _send(
        self,
        from_epoch: int,
        to_epoch: int,
        items: list[RewrapItem],
        action: Literal["rewrap", "revert"],
    ) -> RewrapReply:
        request = sign(
            RewrapRequest(
                fleet=self.fleet,
                node_id=self.node_id,
                request_id=secrets.token_bytes(16),
                issued_at=wall_clock_ms(),
                from_epoch=from_epoch,
                to_epoch=to_epoch,
                items=items,
                action=action,
            ),
            self.signing_key,
        )
        return REWRAP_REPLY_CODEC.decode(await self.send(REWRAP_REQUEST_CODEC.encode(request)))

    def _trim(self, now: float) -> None:
        for k in [k for k, t in self._submitted.items() if now - t > 4 * RESUBMIT_AFTER_S]:
            del self._submitted[k]

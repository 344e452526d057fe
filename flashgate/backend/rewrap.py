"""Accepting re-wrapped envelopes from the bridges during a fleet key rotation.

A bridge that re-wrapped content keys from epoch k to k+1 sends a node-signed
:class:`~flashgate.events.rotation.RewrapRequest` on ``fg.<f>.rewrap``. The backend checks,
cheapest first: size and schema, fleet, the sender is an active node of the roster and
signed it, a rotation k -> k+1 is running; then per envelope, inside one transaction that
holds the fleet row: it is the current version of a live secret or API key, still at epoch
k, and the new JWE is the old one byte for byte except its wrapped key, which must fit the
epoch k+1 key. It cannot check that the new wrapped key opens (it holds no share): every
bridge loads the re-wrapped envelope through the share protocol, and ``fleet rotate-key``
retires epoch k only once every online node holds every secret under k+1.

Accepted envelopes replace the current row's JWE and epoch and go to the bucket through
the outbox, with an audit row per request and a ``fleet.rotation.progressed`` event.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flashgate.backend import outbox
from flashgate.backend.commands import (
    API_KEY_PREFIX,
    CommandProcessor,
    count_live_envelopes,
)
from flashgate.backend.models import ApiKey, AuditEvent, Fleet, Repository, Secret, SecretVersion
from flashgate.backend.reconcile import api_key_envelope, secret_envelope
from flashgate.crypto import jwe
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import (
    FlashgateError,
    FleetMismatch,
    NotARewrap,
    NotFound,
    OversizedInput,
    StaleEpoch,
    StaleVersion,
    UnknownNode,
)
from flashgate.events import domain as ev
from flashgate.events.fleet import ROSTER_CODEC
from flashgate.events.rotation import (
    REWRAP_REPLY_CODEC,
    REWRAP_REQUEST_CODEC,
    RewrapItem,
    RewrapRefusal,
    RewrapReply,
    RewrapRequest,
)
from flashgate.events.signing import verify
from flashgate.events.subjects import split_secret_key
from flashgate.fleet.signing import load_ed25519_public

log = structlog.get_logger("flashgate.backend.rewrap")

#: A request older or newer than this is refused (a replay changes nothing anyway).
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000


def check_rewrap(old_token: str, new_token: str, new_key: FleetPublicKey) -> None:
    """The new JWE is the old one with only its wrapped key changed (header, IV, ciphertext
    and tag byte for byte), and that key is well-formed under the new epoch's key."""
    old, new = jwe.parse(old_token), jwe.parse(new_token)
    if (old.protected, old.iv, old.ciphertext, old.tag) != (
        new.protected,
        new.iv,
        new.ciphertext,
        new.tag,
    ):
        raise NotARewrap("the re-wrapped envelope differs from the original beyond its key")
    new.wrapped_key(new_key)  # size and range under the new epoch's modulus


@dataclass
class RewrapService:
    sessions: async_sessionmaker[AsyncSession]
    processor: CommandProcessor
    source: str
    on_commit: Callable[[], None] | None = None
    accepted: int = 0

    async def answer(self, raw: bytes) -> bytes:
        """Handle one request; always returns a reply (never raises for bad input)."""
        request_id = b"\x00" * 16
        try:
            request = REWRAP_REQUEST_CODEC.decode(raw)
            request_id = request.request_id
            reply = await self._handle(request)
        except (FlashgateError, OversizedInput) as exc:
            log.warning("re-wrap request refused", reason=exc.code, detail=exc.message[:200])
            reply = RewrapReply(request_id=request_id, ok=False, error=exc.code)
        return REWRAP_REPLY_CODEC.encode(reply)

    async def _handle(self, request: RewrapRequest) -> RewrapReply:
        state = self.processor.state
        if request.fleet != state.names.fleet:
            raise FleetMismatch(f"re-wrap request for fleet {request.fleet!r}")
        if abs(int(time.time() * 1000) - request.issued_at) > MAX_CLOCK_SKEW_MS:
            raise StaleEpoch("re-wrap request is too old or from the future")
        async with self.sessions() as session, session.begin():
            # The fleet row lock orders re-wraps against fleet.rotation.finish.
            fleet = await session.get(Fleet, state.fleet_id, with_for_update=True)
            assert fleet is not None
            self._check_sender(fleet, request)
            if fleet.rotating_to != request.to_epoch or fleet.epoch != request.from_epoch:
                raise StaleEpoch(
                    f"no rotation {request.from_epoch} -> {request.to_epoch} is running"
                )
            if request.to_epoch not in state.keys:
                await self.processor.refresh_state(session)
            new_key = state.keys[request.to_epoch]
            refusals: list[RewrapRefusal] = []
            accepted = 0
            for item in request.items:
                try:
                    await self._apply(session, request, item, new_key)
                    accepted += 1
                except FlashgateError as exc:
                    refusals.append(RewrapRefusal(item.key, exc.code))
            remaining = await count_live_envelopes(session, fleet.id, epoch=request.from_epoch)
            if accepted:
                total = await count_live_envelopes(session, fleet.id)
                event = ev.make_event(
                    ev.KeyRotationProgressed(
                        from_epoch=request.from_epoch,
                        to_epoch=request.to_epoch,
                        done=total - remaining,
                        total=total,
                    ),
                    event_id=f"rewrap.{request.request_id.hex()}.{secrets.token_hex(4)}",
                    source=self.source,
                )
                outbox.add_event(session, state.names, event)
                session.add(
                    AuditEvent(
                        fleet=state.names.fleet,
                        actor=f"node:{request.node_id}",
                        command_type="fleet.rewrap",
                        target=f"{accepted} envelope(s) to epoch {request.to_epoch}",
                        result="applied",
                    )
                )
        if accepted and self.on_commit is not None:
            self.on_commit()
        self.accepted += accepted
        log.info(
            "envelopes re-wrapped",
            node=request.node_id,
            accepted=accepted,
            refused=len(refusals),
            remaining=remaining,
        )
        return RewrapReply(
            request_id=request.request_id,
            accepted=accepted,
            refusals=refusals,
            remaining=remaining,
        )

    def _check_sender(self, fleet: Fleet, request: RewrapRequest) -> None:
        if not fleet.roster:
            raise UnknownNode("no roster is pinned; cannot authenticate nodes")
        roster = ROSTER_CODEC.decode(fleet.roster.encode())
        entry = roster.node(request.node_id)
        if entry is None or entry.status != "active":
            raise UnknownNode(f"{request.node_id!r} is not an active node")
        verify(request, load_ed25519_public(entry.signing_key, "node key"))

    async def _apply(
        self,
        session: AsyncSession,
        request: RewrapRequest,
        item: RewrapItem,
        new_key: FleetPublicKey,
    ) -> None:
        names = self.processor.state.names
        repo, name = split_secret_key(item.key)
        if name.startswith(API_KEY_PREFIX):
            key = await session.scalar(
                select(ApiKey)
                .join(Repository, Repository.id == ApiKey.repository_id)
                .where(
                    Repository.fleet_id == self.processor.state.fleet_id,
                    Repository.name == repo,
                    ApiKey.key_id == name,
                    ApiKey.revoked_at.is_(None),
                )
            )
            if key is None:
                raise NotFound(f"API key {item.key} does not exist or is revoked")
            if item.version != 1:
                raise StaleVersion("API keys have version 1")
            self._check_epoch(key.epoch, request)
            check_rewrap(key.jwe, item.jwe, new_key)
            key.jwe, key.epoch = item.jwe, request.to_epoch
            outbox.add_kv_put(session, names, api_key_envelope(names, repo, key))
            return
        row = (
            await session.execute(
                select(Secret, SecretVersion)
                .join(Repository, Repository.id == Secret.repository_id)
                .join(
                    SecretVersion,
                    (SecretVersion.secret_id == Secret.id)
                    & (SecretVersion.version == Secret.current_version),
                )
                .where(
                    Repository.fleet_id == self.processor.state.fleet_id,
                    Repository.name == repo,
                    Secret.name == name,
                    Secret.deleted.is_(False),
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"secret {item.key} does not exist")
        secret, version = row
        if version.version != item.version:
            raise StaleVersion(f"{item.key} is at version {version.version}")
        self._check_epoch(version.epoch, request)
        check_rewrap(version.jwe, item.jwe, new_key)
        version.jwe, version.epoch = item.jwe, request.to_epoch
        outbox.add_kv_put(session, names, secret_envelope(names, repo, secret, version))

    @staticmethod
    def _check_epoch(epoch: int, request: RewrapRequest) -> None:
        if epoch == request.to_epoch:
            raise StaleEpoch("already re-wrapped")
        if epoch != request.from_epoch:
            raise StaleEpoch(f"envelope is at epoch {epoch}")

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
the outbox, with an audit row per request and a ``fleet.rotation.progressed`` event. The
original is kept (``rewrap_origins``) until epoch k retires.

A node that cannot open a re-wrapped envelope (its threshold result checked, the payload
tag wrong: the wrapped key is not the content key) sends ``action="revert"`` with the JWE
that failed. If that is still the current envelope and a re-wrap replaced it, the original
goes back (epoch k, to be re-wrapped again), the node that made the disputed re-wrap may
not re-wrap that envelope again, and a ``node.misbehaved`` event and an audit row name
both nodes. The backend cannot tell which of the two is wrong; a revert only costs a
re-wrap, and the old epoch cannot retire while any envelope still uses it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flashgate.backend import outbox
from flashgate.backend.fleet_state import FleetState
from flashgate.backend.models import (
    ApiKey,
    AuditEvent,
    Fleet,
    Repository,
    RewrapOrigin,
    Secret,
    SecretVersion,
)
from flashgate.backend.reconcile import api_key_envelope, count_live_envelopes, secret_envelope
from flashgate.backend.store import Store
from flashgate.crypto import jwe
from flashgate.crypto.api_key_tokens import KEY_ID_PREFIX
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.errors import (
    FlashgateError,
    FleetMismatch,
    NotARewrap,
    NotFound,
    OversizedInput,
    RewrapDisputed,
    StaleEpoch,
    StaleVersion,
    UnknownNode,
)
from flashgate.events import domain as ev
from flashgate.events.envelope import Provenance, jwe_sha256, provenance_of, provenance_text
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
from flashgate.fleet.identity_keys import load_ed25519_public

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


def rewrapped_provenance(
    stored: str | None, request: RewrapRequest, item: RewrapItem
) -> str | None:
    """The provenance of a re-wrapped envelope: the admin's statement of the original with
    the re-wrapping node's attestation (whose signature the nodes check, against the
    roster). None when the original had none or the node sent no attestation that fits:
    the nodes would refuse it either way, so this backend does not pretend otherwise."""
    provenance = provenance_of(stored)
    attestation = item.attestation
    if (
        provenance is None
        or attestation is None
        or attestation.node_id != request.node_id
        or attestation.epoch != request.to_epoch
        or attestation.jwe_sha256 != jwe_sha256(item.jwe)
        or attestation.statement_signature != provenance.statement.signature
    ):
        return None
    return provenance_text(Provenance(statement=provenance.statement, rewrap=attestation))


def _is_barred(barred: str, node_id: str, active: frozenset[str]) -> bool:
    """``barred`` holds ``culprit>reporter`` pairs: a node whose re-wrap of an envelope was
    disputed may not re-wrap it again while the node that disputed it is active. Revoking a
    node that disputes everything (it cannot be told from an honest one) lifts its bars."""
    for pair in barred.split():
        culprit, _, reporter = pair.partition(">")
        if culprit == node_id and reporter in active:
            return True
    return False


@dataclass
class _Target:
    """The row holding a live envelope: a secret's current version, or an API key."""

    repo: str
    row: SecretVersion | ApiKey
    secret: Secret | None  # None for an API key


@dataclass
class RewrapService:
    store: Store
    state: FleetState
    source: str
    on_commit: Callable[[], None] | None = None
    accepted: int = 0

    async def answer(self, raw: bytes) -> bytes:
        """Handle one request; always returns a reply (never raises for bad input)."""
        request_id = b"\x00" * 16
        try:
            request = REWRAP_REQUEST_CODEC.decode(raw)
            request_id = request.request_id
            with structlog.contextvars.bound_contextvars(node=request.node_id):
                reply = await self._handle(request)
        except (FlashgateError, OversizedInput) as exc:
            log.warning("re-wrap request refused", reason=exc.code, detail=exc.message[:200])
            reply = RewrapReply(request_id=request_id, ok=False, error=exc.code)
        return REWRAP_REPLY_CODEC.encode(reply)

    async def _handle(self, request: RewrapRequest) -> RewrapReply:
        state = self.state
        if request.fleet != state.names.fleet:
            raise FleetMismatch(f"re-wrap request for fleet {request.fleet!r}")
        if abs(int(time.time() * 1000) - request.issued_at) > MAX_CLOCK_SKEW_MS:
            raise StaleEpoch("re-wrap request is too old or from the future")
        # The signature first, without a lock: unsigned requests never queue on the fleet row.
        async with self.store.sessions() as session:
            roster_text = await session.scalar(
                select(Fleet.roster).where(Fleet.id == state.fleet_id)
            )
        self._check_sender(roster_text, request, signature=True)
        async with self.store.transaction() as session:
            # The fleet row lock orders re-wraps against fleet.rotation.finish.
            fleet = await session.get(Fleet, state.fleet_id, with_for_update=True)
            assert fleet is not None
            active = self._check_sender(fleet.roster, request, signature=False)
            if fleet.rotating_to != request.to_epoch or fleet.epoch != request.from_epoch:
                raise StaleEpoch(
                    f"no rotation {request.from_epoch} -> {request.to_epoch} is running"
                )
            if request.to_epoch not in state.keys:
                await state.refresh(session)
            new_key = state.keys[request.to_epoch]
            refusals: list[RewrapRefusal] = []
            accepted = 0
            for item in request.items:
                try:
                    if request.action == "revert":
                        await self._revert(session, request, item)
                    else:
                        await self._apply(session, request, item, new_key, active)
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
                if request.action == "rewrap":
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
        if request.action == "rewrap":
            self.accepted += accepted
        log.info(
            "envelopes re-wrapped" if request.action == "rewrap" else "re-wraps reverted",
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

    @staticmethod
    def _check_sender(
        roster_text: str | None, request: RewrapRequest, *, signature: bool
    ) -> frozenset[str]:
        """The sender is an active node (and, with ``signature``, signed the request).
        Returns the active nodes of the roster."""
        if not roster_text:
            raise UnknownNode("no roster is pinned; cannot authenticate nodes")
        roster = ROSTER_CODEC.decode(roster_text.encode())
        entry = roster.node(request.node_id)
        if entry is None or entry.status != "active":
            raise UnknownNode(f"{request.node_id!r} is not an active node")
        if signature:
            verify(request, load_ed25519_public(entry.signing_key, "node key"))
        return frozenset(n.id for n in roster.nodes if n.status == "active")

    async def _target(self, session: AsyncSession, key: str, version: int) -> _Target:
        """The current envelope row of a live secret or API key (the caller holds the
        fleet row lock, which orders re-wraps, reverts and the retirement)."""
        repo, name = split_secret_key(key)
        fleet_id = self.state.fleet_id
        if name.startswith(KEY_ID_PREFIX):
            api_key = await session.scalar(
                select(ApiKey)
                .join(Repository, Repository.id == ApiKey.repository_id)
                .where(
                    Repository.fleet_id == fleet_id,
                    Repository.name == repo,
                    ApiKey.key_id == name,
                    ApiKey.revoked_at.is_(None),
                )
            )
            if api_key is None:
                raise NotFound(f"API key {key} does not exist or is revoked")
            if version != 1:
                raise StaleVersion("API keys have version 1")
            return _Target(repo, api_key, None)
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
                    Repository.fleet_id == fleet_id,
                    Repository.name == repo,
                    Secret.name == name,
                    Secret.deleted.is_(False),
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"secret {key} does not exist")
        secret, current = row
        if current.version != version:
            raise StaleVersion(f"{key} is at version {current.version}")
        return _Target(repo, current, secret)

    async def _origin(
        self, session: AsyncSession, item: RewrapItem, to_epoch: int
    ) -> RewrapOrigin | None:
        return await session.scalar(
            select(RewrapOrigin).where(
                RewrapOrigin.fleet_id == self.state.fleet_id,
                RewrapOrigin.key == item.key,
                RewrapOrigin.version == item.version,
                RewrapOrigin.to_epoch == to_epoch,
            )
        )

    def _publish(
        self, session: AsyncSession, target: _Target, request: RewrapRequest, what: str
    ) -> None:
        names = self.state.names
        if target.secret is None:
            assert isinstance(target.row, ApiKey)
            envelope = api_key_envelope(names, target.repo, target.row)
        else:
            assert isinstance(target.row, SecretVersion)
            envelope = secret_envelope(names, target.repo, target.secret, target.row)
        # The same version and epoch can be published again after a revert: a unique id.
        outbox.add_kv_put(session, names, envelope, tag=f":{what}{request.request_id.hex()}")

    async def _apply(
        self,
        session: AsyncSession,
        request: RewrapRequest,
        item: RewrapItem,
        new_key: FleetPublicKey,
        active: frozenset[str],
    ) -> None:
        target = await self._target(session, item.key, item.version)
        self._check_epoch(target.row.epoch, request)
        origin = await self._origin(session, item, request.to_epoch)
        if origin is not None and _is_barred(origin.barred, request.node_id, active):
            raise RewrapDisputed(f"{request.node_id}'s re-wrap of {item.key} was disputed")
        check_rewrap(target.row.jwe, item.jwe, new_key)
        if origin is None:
            origin = RewrapOrigin(
                fleet_id=self.state.fleet_id,
                key=item.key,
                version=item.version,
                to_epoch=request.to_epoch,
                barred="",
            )
            session.add(origin)
        origin.prior_jwe, origin.rewrapped_by = target.row.jwe, request.node_id
        origin.prior_provenance = target.row.provenance
        target.row.provenance = rewrapped_provenance(target.row.provenance, request, item)
        target.row.jwe, target.row.epoch = item.jwe, request.to_epoch
        self._publish(session, target, request, "rw")

    async def _revert(
        self, session: AsyncSession, request: RewrapRequest, item: RewrapItem
    ) -> None:
        """Put back the original of a re-wrap that the sender could not open."""
        target = await self._target(session, item.key, item.version)
        if target.row.epoch != request.to_epoch or target.row.jwe != item.jwe:
            raise StaleVersion(f"the disputed envelope of {item.key} is no longer current")
        origin = await self._origin(session, item, request.to_epoch)
        if origin is None or origin.prior_jwe is None or origin.rewrapped_by is None:
            raise NotFound(f"{item.key} was not re-wrapped in this rotation")
        culprit = origin.rewrapped_by
        target.row.jwe, target.row.epoch = origin.prior_jwe, request.from_epoch
        target.row.provenance = origin.prior_provenance
        origin.barred = " ".join([*origin.barred.split(), f"{culprit}>{request.node_id}"])
        origin.prior_jwe = origin.rewrapped_by = origin.prior_provenance = None
        self._publish(session, target, request, "rv")
        state = self.state
        session.add(
            AuditEvent(
                fleet=state.names.fleet,
                actor=f"node:{request.node_id}",
                command_type="fleet.rewrap.revert",
                target=item.key,
                result="applied",
                reason=RewrapDisputed.code,
                detail=f"re-wrapped by node:{culprit} to epoch {request.to_epoch}; "
                "the reporting node could not open it",
            )
        )
        event = ev.make_event(
            ev.NodeMisbehaved(
                node_id=culprit,
                reporter=request.node_id,
                reason=RewrapDisputed.code,
                secret_key=item.key,
                epoch=request.to_epoch,
            ),
            event_id=f"revert.{request.request_id.hex()}.{secrets.token_hex(4)}",
            source=self.source,
        )
        outbox.add_event(session, state.names, event)
        log.warning(
            "re-wrap disputed and reverted",
            key=item.key,
            rewrapped_by=culprit,
            reporter=request.node_id,
            to_epoch=request.to_epoch,
        )

    @staticmethod
    def _check_epoch(epoch: int, request: RewrapRequest) -> None:
        if epoch == request.to_epoch:
            raise StaleEpoch("already re-wrapped")
        if epoch != request.from_epoch:
            raise StaleEpoch(f"envelope is at epoch {epoch}")

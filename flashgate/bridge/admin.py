"""A node's admin RPCs: status, API key check, and the metrics snapshot. No I/O.

``fg.<f>.node.<node>.status`` and ``...apikey-check`` carry admin-signed requests
(:mod:`flashgate.events.node_status`). Each goes through one :class:`RequestScreen` (signature
under the pinned admin key first, then freshness within :data:`ADMIN_SKEW_MS` of the
injected clock, then the replay cache):

- a status request that fails any check gets no answer; a good one gets a node-signed
  :class:`StatusResponse` (names, versions, counters: never a value);
- an API key check that is not admin-signed gets no answer; a signed one always gets a
  node-signed :class:`ApiKeyCheckResult`: refused (``stale``, ``replay``, ``wrong_node``,
  ``unreadable``) or the vault's constant-time verdict on the presented secret (sealed to
  this node's X25519 key, so the broker never sees it).

The metrics snapshot (``--metrics-port``) is the node's own status, rendered by
:mod:`flashgate.bridge.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from prometheus_client.metrics_core import Metric

from flashgate.bridge import metrics
from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder
from flashgate.bridge.screening import ADMIN_SKEW_MS, Clock, RequestScreen
from flashgate.bridge.store import EnvelopeStore
from flashgate.bridge.vault import Vault
from flashgate.crypto import box
from flashgate.errors import FlashgateError, Refused
from flashgate.events.fleet import Roster
from flashgate.events.node_status import (
    APIKEY_CHECK_CODEC,
    STATUS_REQUEST_CODEC,
    ApiKeyCheck,
    ApiKeyCheckResult,
    FastPathStatus,
    HeldSecret,
    PeerStatus,
    PendingSecret,
    StatusResponse,
    apikey_check_aad,
)
from flashgate.events.signing import sign


@dataclass
class AdminRpcs:
    fleet: str
    node_id: str
    admin_key: Ed25519PublicKey
    signing_key: Ed25519PrivateKey
    exchange_key: X25519PrivateKey
    vault: Vault
    store: EnvelopeStore
    peers: PeerBook
    ring: KeyRing
    responder: Responder
    roster: Callable[[], Roster]
    pending: Callable[[], Mapping[str, str]]  # the loader's pending secrets and reasons
    started_at: int
    clock: Clock
    #: Buckets bound and their initial values loaded (the node's readiness).
    ready: Callable[[], bool] = lambda: False
    #: How many tombstones this node keeps (:mod:`flashgate.bridge.tombstones`).
    tombstones: Callable[[], int] = lambda: 0
    #: The fast path's status (None: a node without one).
    fast_path: Callable[[], FastPathStatus | None] = lambda: None

    def __post_init__(self) -> None:
        self.screen = RequestScreen(
            skew_ms=ADMIN_SKEW_MS, clock=self.clock, authenticate_first=True
        )

    # --- status ----------------------------------------------------------------------------

    def answer_status(self, raw: bytes) -> StatusResponse | None:
        """The signed status for an admin-signed, fresh, first-seen request; else None."""
        try:
            request = STATUS_REQUEST_CODEC.decode(raw)
            if request.fleet != self.fleet:
                return None
            self.screen.check(request, self.admin_key)
        except FlashgateError:  # Refused included: such requests get no answer
            return None
        return self.status(request.request_id, request.include_secrets)

    def status(
        self, request_id: bytes = b"\x00" * 16, include_secrets: bool = True
    ) -> StatusResponse:
        """The node's status, signed with its identity key (what an admin is answered)."""
        return sign(self.snapshot(request_id, include_secrets), self.signing_key)

    def snapshot(
        self, request_id: bytes = b"\x00" * 16, include_secrets: bool = True
    ) -> StatusResponse:
        """The node's status, unsigned: for the metrics scrape, which nobody verifies."""
        held = self.vault.held() if include_secrets else []
        pending = dict(self.pending())
        pending.update(self.store.rejected)
        peers = [
            PeerStatus(
                p.node_id,
                p.last_seen_wall_ms,
                round(p.latency_ms, 3) if p.latency_ms is not None else None,
            )
            for p in self.peers.peers.values()
            if p.node_id != self.node_id
        ]
        response = StatusResponse(
            fleet=self.fleet,
            node_id=self.node_id,
            request_id=request_id,
            issued_at=self.clock(),
            started_at=self.started_at,
            epoch=self.ring.current.epoch,
            roster_serial=self.roster().serial,
            peers=peers,
            secrets=[HeldSecret(h.key, h.version, h.epoch) for h in held]
            if include_secrets
            else [],
            pending=[PendingSecret(k, r) for k, r in sorted(pending.items())]
            if include_secrets
            else [],
            secrets_held=len(self.vault),
            share_requests_served=self.responder.served,
            share_requests_refused=dict(self.responder.refused),
            misbehaviour=dict(self.peers.misbehaviour),
            tombstones=self.tombstones(),
            ready=self.ready(),
            fast_path=self.fast_path(),
        )
        return response

    def metrics_text(self, extra: Iterable[Metric] = ()) -> bytes:
        """The node's metrics, and ``extra`` families (its gateway's)."""
        return metrics.render([*metrics.families(self.snapshot(), self.ring.computed), *extra])

    # --- API key check -----------------------------------------------------------------------

    def check_api_key(self, raw: bytes) -> ApiKeyCheckResult | None:
        """An admin-signed API key check: the presented secret (sealed to this node) against
        the vault, in constant time. Unsigned or malformed requests get no answer."""
        try:
            request = APIKEY_CHECK_CODEC.decode(raw)
        except FlashgateError:
            return None
        try:
            self.screen.check(request, self.admin_key)
        except Refused as refusal:  # past the signature, refusals are answered
            if refusal.reason == "bad_signature":
                return None
            return self._apikey_answer(request, False, refusal.reason)
        if request.fleet != self.fleet or request.node_id != self.node_id:
            return self._apikey_answer(request, False, "wrong_node")
        try:
            presented = box.open_sealed(
                self.exchange_key,
                box.Sealed(request.sender_key, request.nonce, request.sealed),
                apikey_check_aad(self.fleet, self.node_id, request.request_id, request.key_id),
            )
        except FlashgateError:
            return self._apikey_answer(request, False, "unreadable")
        return self._apikey_answer(request, self.vault.verify_api_key(request.key_id, presented))

    def _apikey_answer(
        self, request: ApiKeyCheck, valid: bool, refused: str | None = None
    ) -> ApiKeyCheckResult:
        return sign(
            ApiKeyCheckResult(
                fleet=self.fleet,
                node_id=self.node_id,
                request_id=request.request_id,
                key_id=request.key_id,
                valid=valid,
                refused=refused,
            ),
            self.signing_key,
        )

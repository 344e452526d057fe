"""The share protocol's rules, without I/O (DESIGN §2.4). Clock and randomness come in.

Responder, cheapest checks first (:meth:`Responder.screen`):
    size limit -> schema -> fleet and epoch (one this node holds) -> requester not us, in
    the roster and active there, and a member of the requested epoch (dealt a share of it:
    the epoch's admin-signed descriptor) -> addressed to this node (the responder is signed
    into the request) -> each key at most once, and at most ``max_proof_items`` items when
    proofs are asked for -> issued-at within the skew window -> Ed25519 signature ->
    request id not seen (replay; after the signature, so a forged request cannot burn a
    real id) -> per-requester rate limit, charged per item (an item with a proof costs
    ``proof_cost``; a request at least ``request_cost``) -> the id remembered (a request
    refused by the rate limit leaves none; a full cache refuses, it never forgets an id
    inside the window). Freshness, signature and replay are
    :class:`~flashgate.bridge.screening.RequestScreen`, the same screening every admin RPC
    goes through.
Each refusal is a :class:`Refused` with a reason code, counted by reason. Only a request
that passes all of them reaches the per-item checks (the node's own copy of each envelope
and its digest, done by the caller) and then the partial decryptions.

Requester: :func:`build_request` signs a request with a fresh X25519 reply key;
:func:`open_response` checks the response (schema, request id, responder signature
under the roster key) and opens the sealed results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.bridge.screening import Clock, RequestScreen, wall_clock_ms
from flashgate.crypto import box
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import FlashgateError, Refused, SignatureInvalid
from flashgate.events.fleet import Roster
from flashgate.events.share import (
    SHARE_REQUEST_CODEC,
    SHARE_RESPONSE_CODEC,
    SHARE_RESULTS_CODEC,
    ShareItem,
    ShareItemRefusal,
    SharePartial,
    ShareRequest,
    ShareResponse,
    ShareResults,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public


@dataclass(frozen=True)
class ProtocolLimits:
    skew_ms: int = 30_000  # |now - issued_at| allowed
    #: Tokens per requester: one per item (a partial is computed once per ciphertext and
    #: cached, so asking again for the store's envelopes costs lookups only). The burst
    #: covers a peer's cold start at 10,000 secrets (each node asks each peer for about
    #: two thirds of them at once, t = 2 of 3), the rate 64 requests of 64 items a second.
    rate_per_second: float = 4096.0
    burst: int = 16_384
    request_cost: int = 4  # the least a request costs (its signature check, its id)
    proof_cost: int = 32  # per item with a proof (two secret-exponent powmods, uncached)
    max_proof_items: int = 8  # items per request when proofs are asked for
    replay_ids: int = 200_000  # request ids remembered within the window, per requester

    def cost(self, items: int, proofs: bool) -> int:
        return items * self.proof_cost if proofs else max(self.request_cost, items)


class RateLimiter:
    """A token bucket per requester."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, int]] = {}

    def allow(self, who: str, now: int, cost: int = 1) -> bool:
        tokens, last = self._buckets.get(who, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + max(0, now - last) / 1000.0 * self._rate)
        if tokens < cost:
            self._buckets[who] = (tokens, now)
            return False
        self._buckets[who] = (tokens - cost, now)
        return True


def response_aad(response: ShareResponse) -> bytes:
    """What the sealed results are bound to: the response header."""
    return b"|".join(
        [
            b"flashgate/share-results/v1",
            response.fleet.encode(),
            str(response.epoch).encode(),
            response.request_id,
            response.responder.encode(),
        ]
    )


@dataclass
class Responder:
    """Screens share requests and seals responses for one node."""

    node_id: str
    fleet: str
    signing_key: Ed25519PrivateKey
    roster: Callable[[], Roster]
    #: Node id -> share index of the nodes dealt a share of an epoch; None for an epoch
    #: this node holds no share of.
    members: Callable[[int], Mapping[str, int] | None]
    clock: Clock = wall_clock_ms
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)
    rng: Rng = SYSTEM_RNG
    refused: Counter[str] = field(default_factory=Counter)
    served: int = 0

    def __post_init__(self) -> None:
        self._requests = RequestScreen(
            skew_ms=self.limits.skew_ms, clock=self.clock, max_ids=self.limits.replay_ids
        )
        self._rates = RateLimiter(self.limits.rate_per_second, self.limits.burst)

    def screen(self, raw: bytes) -> ShareRequest:
        """Every check before the per-item phase. Raises :class:`Refused` (counted)."""
        try:
            return self._screen(raw)
        except Refused as exc:
            self.refused[exc.reason] += 1
            raise

    def _screen(self, raw: bytes) -> ShareRequest:
        try:
            request = SHARE_REQUEST_CODEC.decode(raw)
        except FlashgateError as exc:
            raise Refused(
                "oversized" if exc.code == "oversized" else "malformed", exc.message
            ) from exc
        if request.fleet != self.fleet:
            raise Refused("wrong_fleet", f"request for fleet {request.fleet!r}")
        members = self.members(request.epoch)
        if members is None:
            raise Refused("wrong_epoch", f"request for epoch {request.epoch}")
        if request.requester == self.node_id:
            raise Refused("self_request")
        entry = self.roster().node(request.requester)
        if entry is None:
            raise Refused("unknown_requester", f"{request.requester} is not in the roster")
        if entry.status != "active":
            raise Refused("revoked_requester", f"{request.requester} is revoked")
        if request.requester not in members:
            raise Refused("not_a_member", f"{request.requester} holds no share of this epoch")
        if request.responder != self.node_id:
            raise Refused("wrong_responder", f"request for {request.responder!r}")
        if len({item.key for item in request.items}) != len(request.items):
            raise Refused("duplicate_items", "a key appears more than once")
        if request.proofs and len(request.items) > self.limits.max_proof_items:
            raise Refused("too_many_proofs", f"at most {self.limits.max_proof_items} items")
        cost = self.limits.cost(len(request.items), request.proofs)

        def admit(now: int) -> None:
            if not self._rates.allow(request.requester, now, cost):
                raise Refused("rate_limited")

        # Freshness, signature, replay (a forged request cannot burn a real id), the rate
        # (a replay costs nothing), then the id is remembered (a refused one is not).
        self._requests.check(request, load_ed25519_public(entry.signing_key), admit)
        return request

    def respond(
        self,
        request: ShareRequest,
        partials: Sequence[SharePartial],
        refusals: Sequence[ShareItemRefusal],
    ) -> bytes:
        results = ShareResults(
            request_id=request.request_id, partials=list(partials), refusals=list(refusals)
        )
        header = ShareResponse(
            fleet=self.fleet,
            epoch=request.epoch,
            request_id=request.request_id,
            responder=self.node_id,
            issued_at=self.clock(),
            status="ok",
        )
        sealed = box.seal(
            request.reply_key, SHARE_RESULTS_CODEC.encode(results), response_aad(header), self.rng
        )
        response = msgspec.structs.replace(
            header, sender_key=sealed.sender_key, nonce=sealed.nonce, sealed=sealed.ciphertext
        )
        self.served += 1
        return SHARE_RESPONSE_CODEC.encode(sign(response, self.signing_key))

    def refuse(self, raw: bytes, reason: str) -> bytes:
        """A signed refusal; echoes the request id when the request could be read."""
        request_id, epoch = b"\x00" * 16, 1
        try:
            request = SHARE_REQUEST_CODEC.decode(raw)
            request_id, epoch = request.request_id, request.epoch
        except FlashgateError:
            pass
        response = ShareResponse(
            fleet=self.fleet,
            epoch=epoch,
            request_id=request_id,
            responder=self.node_id,
            issued_at=self.clock(),
            status="refused",
            reason=reason,
        )
        return SHARE_RESPONSE_CODEC.encode(sign(response, self.signing_key))


def build_request(
    *,
    node_id: str,
    responder: str,
    fleet: str,
    epoch: int,
    signing_key: Ed25519PrivateKey,
    items: Sequence[ShareItem],
    proofs: bool = False,
    source: Literal["secrets", "ring"] = "secrets",
    clock: Clock = wall_clock_ms,
    rng: Rng = SYSTEM_RNG,
) -> tuple[bytes, ShareRequest, X25519PrivateKey]:
    reply_private, reply_key = box.new_keypair(rng)
    request = sign(
        ShareRequest(
            fleet=fleet,
            epoch=epoch,
            request_id=rng.token_bytes(16),
            requester=node_id,
            responder=responder,
            issued_at=clock(),
            reply_key=reply_key,
            proofs=proofs,
            source=source,
            items=list(items),
        ),
        signing_key,
    )
    return SHARE_REQUEST_CODEC.encode(request), request, reply_private


def open_response(
    raw: bytes,
    request: ShareRequest,
    reply_private: X25519PrivateKey,
    responder: str,
    roster: Roster,
) -> ShareResults:
    """Check a response and open its sealed results. Raises :class:`Refused` with the
    reason (the responder's own refusal reason, or why the response is unacceptable)."""
    try:
        response = SHARE_RESPONSE_CODEC.decode(raw)
    except FlashgateError as exc:
        raise Refused("malformed_response", exc.message) from exc
    entry = roster.node(responder)
    if entry is None or response.responder != responder:
        raise Refused("wrong_responder", f"response names {response.responder!r}")
    try:
        verify(response, load_ed25519_public(entry.signing_key))
    except SignatureInvalid as exc:
        raise Refused("bad_response_signature") from exc
    if response.status == "refused":
        if response.request_id != request.request_id:
            raise Refused("mismatched_response")
        raise Refused(response.reason or "refused", f"{responder} refused: {response.reason}")
    if (
        (response.fleet, response.epoch, response.request_id)
        != (request.fleet, request.epoch, request.request_id)
        or response.sender_key is None
        or response.nonce is None
        or response.sealed is None
    ):
        raise Refused("mismatched_response")
    try:
        plain = box.open_sealed(
            reply_private,
            box.Sealed(response.sender_key, response.nonce, response.sealed),
            response_aad(response),
        )
        results = SHARE_RESULTS_CODEC.decode(plain)
    except FlashgateError as exc:
        raise Refused("unreadable_response", exc.message) from exc
    if results.request_id != request.request_id:
        raise Refused("mismatched_response")
    return results

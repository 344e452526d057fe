"""Screening of signed requests: freshness, signature, replay. No I/O; the clock comes in.

Every request a node answers is signed and carries a random ``request_id`` and an
``issued_at`` (milliseconds since the epoch): a peer's share request (node-signed, DESIGN
§2.4) and each admin RPC (admin-signed: status, API key check). One
:class:`RequestScreen` per kind of request checks, and raises :class:`Refused` with the
reason:

    ``stale``          |now - issued_at| > skew (now from the injected clock)
    ``bad_signature``  the Ed25519 signature does not verify under the given key
    ``replay``         the request id was seen within the replay window (2 x skew: an
                       older request is refused as stale anyway)
    ``replay_cache_full``  the signer's cache holds as many ids as it may, none of them older
                       than the window: a request is refused rather than an id forgotten
                       while a replay of it would still be fresh

The replay check comes after the signature, so a forged request cannot burn a real id.
A caller's admission check (the share protocol's rate limit) runs after the replay
lookup and before the id is remembered: a replay costs the requester nothing, and a
request refused by it leaves no id behind (it does not fill the cache).
Freshness comes first by default (it is the cheapest check; the share protocol's order);
``authenticate_first`` verifies the signature before anything else, for requests whose
refusals are answered only when they are authentic (the API key check answers "stale" or
"replay" to the admin, and nothing to anyone else). The replay cache is bounded and
forgets ids older than its window; it never forgets a younger one.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flashgate.errors import Refused, SignatureInvalid
from flashgate.events.signing import verify

Clock = Callable[[], int]  # milliseconds since the epoch


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


#: Skew allowed for admin RPCs (status, API key check): admin tooling runs on operators'
#: machines, whose clocks are further off than the fleet's.
ADMIN_SKEW_MS = 60_000


class SignedRequest(Protocol):
    """What a screened request has (a msgspec Struct with a ``signing_domain``)."""

    @property
    def request_id(self) -> bytes: ...

    @property
    def issued_at(self) -> int: ...


class ReplayCache:
    """Request ids seen within ``ttl_ms`` (an older request is refused as stale). At most
    ``max_entries``: when full of ids younger than the window, :meth:`add` refuses."""

    def __init__(self, ttl_ms: int, max_entries: int = 200_000) -> None:
        self._ttl = ttl_ms
        self._max = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def _expire(self, now: int) -> None:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self._ttl:
                break
            del self._seen[oldest]

    def seen(self, request_id: bytes, now: int) -> bool:
        self._expire(now)
        return request_id in self._seen

    def add(self, request_id: bytes, now: int) -> bool:
        """Remember ``request_id``; False (nothing forgotten) when the cache is full."""
        self._expire(now)
        if len(self._seen) >= self._max:
            return False
        self._seen[request_id] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class RequestScreen:
    """Freshness within ``skew_ms`` of ``clock()``, signature, and replay, for one kind
    of signed request; refusals are counted by reason in :attr:`refused`."""

    def __init__(
        self,
        *,
        skew_ms: int,
        clock: Clock,
        authenticate_first: bool = False,
        max_ids: int = 200_000,
    ) -> None:
        self.skew_ms = skew_ms
        self.clock = clock
        self.authenticate_first = authenticate_first
        self.refused: Counter[str] = Counter()
        self._max_ids = max_ids
        # One cache per signing key: the signature binds a request id to its signer, so a
        # signer (a peer at its rate limit, a compromised node) can fill only its own.
        self._replays: dict[bytes, ReplayCache] = {}

    def _replays_of(self, key: Ed25519PublicKey) -> ReplayCache:
        signer = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        cache = self._replays.get(signer)
        if cache is None:
            cache = self._replays[signer] = ReplayCache(2 * self.skew_ms, self._max_ids)
        return cache

    def check(
        self,
        request: SignedRequest,
        key: Ed25519PublicKey,
        admit: Callable[[int], None] | None = None,
    ) -> int:
        """Raise :class:`Refused` unless ``request`` is fresh, signed under ``key`` and
        not seen before, and ``admit(now)`` (when given) does not raise; returns the clock
        reading it was checked against."""
        try:
            return self._check(request, key, admit)
        except Refused as exc:
            self.refused[exc.reason] += 1
            raise

    def _check(
        self,
        request: SignedRequest,
        key: Ed25519PublicKey,
        admit: Callable[[int], None] | None,
    ) -> int:
        if self.authenticate_first:
            self._authentic(request, key)
        now = self.clock()
        if abs(now - request.issued_at) > self.skew_ms:
            raise Refused("stale", "issued-at outside the skew window")
        if not self.authenticate_first:
            self._authentic(request, key)
        replays = self._replays_of(key)
        if replays.seen(request.request_id, now):
            raise Refused("replay")
        if admit is not None:
            admit(now)
        if not replays.add(request.request_id, now):
            raise Refused("replay_cache_full", "too many requests within the replay window")
        return now

    @staticmethod
    def _authentic(request: SignedRequest, key: Ed25519PublicKey) -> None:
        try:
            verify(request, key)  # type: ignore[arg-type]  # a signed msgspec Struct
        except SignatureInvalid as exc:
            raise Refused("bad_signature") from exc

"""How many requests one API key may have in flight on this gateway (DESIGN §7).

The upstream connection pool is shared by every repository on the node: without a bound
per key, one key holder could take all of it (slow bodies, slow readers) and stall the
others. So each authenticated key gets at most ``per_key`` requests in flight
(``GatewayLimits.key_concurrency``, 32 by default, well below the pool's 256); one more is
refused at once, never queued: S3 ``SlowDown`` (503, ``Retry-After``), OpenAI 429.

How it is applied: :func:`limit_middleware` (the server core) opens a slot holder for each
request; a handler calls :func:`admit` right after it authenticated the key (after the
signature or the secret verified: counting an unverified key id would let anyone who knows
a key id, which is not secret, use up its slots). The slot is released when the request's
handler returns (its streamed answer written, or the request cut). The OpenAI handler
authenticates through ``Authority.verify``: :class:`AdmittingAuthority` admits there, so
that handler needs no change. Outside the server (a handler hosted by a test), :func:`admit`
admits everything.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

from flashgate.errors import KeyBusy
from flashgate.events.values import AiCredential, StorageValue
from flashgate.gateway.authority import Authority, Grant

__all__ = ["AdmittingAuthority", "KeyBusy", "KeyLimiter", "admit", "limit_middleware"]

#: Requests one key may have in flight at once.
PER_KEY = 32


@dataclass
class KeyLimiter:
    """A bounded count of requests in flight per key id (a semaphore that never waits)."""

    per_key: int = PER_KEY
    _in_flight: dict[str, int] = field(default_factory=dict)

    def try_acquire(self, key_id: str) -> bool:
        count = self._in_flight.get(key_id, 0)
        if count >= self.per_key:
            return False
        self._in_flight[key_id] = count + 1
        return True

    def release(self, key_id: str) -> None:
        count = self._in_flight.get(key_id, 0) - 1
        if count > 0:
            self._in_flight[key_id] = count
        else:
            self._in_flight.pop(key_id, None)  # the table holds only keys in flight

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)


@dataclass
class _Slots:
    limiter: KeyLimiter
    held: list[str] = field(default_factory=list)


_current: contextvars.ContextVar[_Slots | None] = contextvars.ContextVar(
    "flashgate_gateway_slots", default=None
)


def admit(grant: Grant) -> None:
    """Take a slot for the authenticated ``grant``'s key for the current request (once per
    request). Raises :class:`KeyBusy` when the key has no slot left."""
    slots = _current.get()
    if slots is None or grant.key_id in slots.held:
        return
    if not slots.limiter.try_acquire(grant.key_id):
        raise KeyBusy(grant.key_id, slots.limiter.per_key, grant)
    slots.held.append(grant.key_id)


def limit_middleware(limiter: KeyLimiter) -> Middleware:
    """Opens each request's slot holder, releases what its handler took."""

    @web.middleware
    async def limit(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        slots = _Slots(limiter)
        token = _current.set(slots)
        try:
            return await handler(request)
        finally:
            _current.reset(token)
            for key_id in slots.held:
                limiter.release(key_id)

    return limit


@dataclass(frozen=True)
class AdmittingAuthority:
    """``authority`` whose :meth:`verify` (an authentication) also :func:`admit`\\ s the key."""

    authority: Authority

    def ready(self) -> bool:
        return self.authority.ready()

    def grant(self, key_id: str) -> Grant | None:
        return self.authority.grant(key_id)

    def verify(self, key_id: str, presented: bytes) -> Grant | None:
        grant = self.authority.verify(key_id, presented)
        if grant is not None:
            admit(grant)
        return grant

    def key_secret(self, key_id: str) -> AbstractContextManager[memoryview]:
        return self.authority.key_secret(key_id)

    def storage_names(self, repo: str) -> list[str]:
        return self.authority.storage_names(repo)

    def storage(self, repo: str, name: str) -> AbstractContextManager[StorageValue]:
        return self.authority.storage(repo, name)

    def ai(self, repo: str, provider: str) -> AbstractContextManager[AiCredential]:
        return self.authority.ai(repo, provider)

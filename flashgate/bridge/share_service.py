"""Answering share requests: the responder side of DESIGN §2.4, without the transport.

:meth:`ShareService.answer` takes the raw request and always returns a signed reply: the
partials, or a refusal with its reason (screening failures, a node not ready, even an
unexpected error), so a requester never waits out a timeout for nothing. A request is
screened when it arrives, before it waits for a turn (``gate``, the node's bound on
requests answered at once): its freshness is checked against its travel time, not against
the time it queued behind earlier requests while this node computed their partials. Each item is
looked up in this node's own copy of the store (its current revision or the one that
replaced, :class:`~flashgate.bridge.store.EnvelopeStore`; a revision it has not seen yet is
read from the bucket, and served only if it is the key's latest there) and its digest
checked before any partial is computed; partials come from the shared
:class:`PartialCache`, so each is computed once. A superseded, deleted or retired revision
still in the bucket's history is refused (``unknown_secret``), and so is a version older
than the one this node holds (``stale_version``: an old proven envelope written back).

A request whose ``source`` is ``ring`` names ring terms of the fast path (DESIGN §6):
each is looked up in this node's own :class:`~flashgate.bridge.ring_terms.TermStore`
(``lookup_term``), which holds only terms whose maker is active in this node's roster and a
member of the epoch (re-checked at look-up) and not expired; anything else is refused per
item (``unknown_term``), so the ring bucket is no decryption oracle either. Without a term
store, ring requests are refused (``no_ring``).

Proofs are served only for items whose partial this node answered to the same requester
recently (the last :data:`ANSWERED_PER_REQUESTER` items it answered to it): a proof is
asked for when a combination fails, about partials the requester got; anything else is
refused per item (``no_recent_partial``) without computing. Proofs are cached per
ciphertext (:meth:`PartialCache.proof`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from flashgate.bridge.collector import encode_partial
from flashgate.bridge.partials import PartialCache
from flashgate.bridge.protocol import Responder
from flashgate.bridge.ring_terms import Term
from flashgate.bridge.store import Entry, EnvelopeStore
from flashgate.crypto.encoding import int_to_bytes
from flashgate.errors import FlashgateError, Refused
from flashgate.events.share import ShareItemRefusal, SharePartial, ShareProof, ShareRequest

log = structlog.get_logger("flashgate.bridge.share")

FetchLatest = Callable[[str], Awaitable[Entry | None]]
LookupTerm = Callable[[str, int], Awaitable["Term | None"]]

#: Items remembered per requester as answered (a proof is served only for one of them).
ANSWERED_PER_REQUESTER = 4_096


@dataclass
class ShareService:
    responder: Responder
    store: EnvelopeStore
    partials_for: Callable[[int], PartialCache | None]  # this node's partials, per epoch
    fetch_latest: FetchLatest | None = None  # a key's latest revision, from the bucket
    on_request: Callable[[str], None] | None = None  # a screened requester was heard from
    #: The version this node holds of a key (its vault): an older one is never served, so
    #: an old proven envelope written back opens nowhere unless t nodes lack the newer one.
    held_version: Callable[[str], int | None] = lambda _key: None
    #: A proven ring term at exactly (key, revision), or None (the fast path's terms).
    lookup_term: LookupTerm | None = None
    _answered: dict[str, OrderedDict[tuple[str, str, int], None]] = field(
        default_factory=dict, init=False, repr=False
    )

    async def answer(self, raw: bytes, gate: asyncio.Semaphore | None = None) -> bytes:
        try:
            request = self.responder.screen(raw)
        except Refused as refusal:
            return self.responder.refuse(raw, refusal.reason)
        if self.on_request is not None:
            self.on_request(request.requester)
        async with gate if gate is not None else contextlib.nullcontext():
            return await self._answer(raw, request)

    async def _answer(self, raw: bytes, request: ShareRequest) -> bytes:
        cache = self.partials_for(request.epoch)
        if cache is None:  # retired between the screening and now
            self.responder.refused["wrong_epoch"] += 1
            return self.responder.refuse(raw, "wrong_epoch")
        if request.source == "ring":
            return await self._answer_ring(raw, request, cache)
        try:
            refusals: list[ShareItemRefusal] = []
            entries: list[Entry] = []
            for item in request.items:
                entry = self.store.lookup(item.key, item.revision)
                if entry is None and self.fetch_latest is not None:
                    entry = await self.fetch_latest(item.key)  # a revision not seen yet
                    if entry is not None and entry.revision != item.revision:
                        entry = None
                if entry is None:
                    reason = "unknown_secret"
                elif entry.epoch != request.epoch:
                    reason = "other_epoch"
                elif not hmac.compare_digest(entry.digest, item.digest):
                    reason = "digest_mismatch"
                elif entry.version < (self.held_version(entry.key) or 0):
                    reason = "stale_version"
                elif request.proofs and not self._was_answered(request.requester, entry):
                    reason = "no_recent_partial"
                else:
                    entries.append(entry)
                    continue
                refusals.append(ShareItemRefusal(item.key, item.revision, reason))
            return await self._partials(request, cache, entries, refusals)
        except FlashgateError as exc:
            self.responder.refused[exc.code] += 1
            return self.responder.refuse(raw, exc.code)
        except Exception as exc:  # never leave a requester waiting: refuse, log, go on
            log.error("share request failed internally", error=type(exc).__name__)
            self.responder.refused["internal_error"] += 1
            return self.responder.refuse(raw, "internal_error")

    async def _answer_ring(self, raw: bytes, request: ShareRequest, cache: PartialCache) -> bytes:
        """Partials for ring terms: proven terms of this node's own term store only."""
        if self.lookup_term is None:
            self.responder.refused["no_ring"] += 1
            return self.responder.refuse(raw, "no_ring")
        try:
            refusals: list[ShareItemRefusal] = []
            terms: list[Term] = []
            for item in request.items:
                term = await self.lookup_term(item.key, item.revision)
                if term is None:
                    reason = "unknown_term"
                elif term.epoch != request.epoch:
                    reason = "other_epoch"
                elif not hmac.compare_digest(term.digest, item.digest):
                    reason = "digest_mismatch"
                elif request.proofs and not self._was_answered(request.requester, term):
                    reason = "no_recent_partial"
                else:
                    terms.append(term)
                    continue
                refusals.append(ShareItemRefusal(item.key, item.revision, reason))
            return await self._partials(request, cache, terms, refusals)
        except FlashgateError as exc:
            self.responder.refused[exc.code] += 1
            return self.responder.refuse(raw, exc.code)
        except Exception as exc:  # never leave a requester waiting: refuse, log, go on
            log.error("ring share request failed internally", error=type(exc).__name__)
            self.responder.refused["internal_error"] += 1
            return self.responder.refuse(raw, "internal_error")

    async def _partials(
        self,
        request: ShareRequest,
        cache: PartialCache,
        entries: Sequence[Entry | Term],
        refusals: list[ShareItemRefusal],
    ) -> bytes:
        xs = await cache.partials([e.ciphertext for e in entries])
        partials = []
        for entry, x in zip(entries, xs, strict=True):
            proof = None
            if request.proofs:
                p = await cache.proof(entry.ciphertext, x)
                size = (p.response.bit_length() + 7) // 8
                proof = ShareProof(int_to_bytes(p.challenge, 32), int_to_bytes(p.response, size))
            partials.append(
                SharePartial(entry.key, entry.revision, encode_partial(x, cache.public), proof)
            )
        if not request.proofs:
            self._remember_answered(request.requester, entries)
        return self.responder.respond(request, partials, refusals)

    def _was_answered(self, requester: str, entry: Entry | Term) -> bool:
        answered = self._answered.get(requester)
        return answered is not None and (entry.source, entry.key, entry.revision) in answered

    def _remember_answered(self, requester: str, entries: Sequence[Entry | Term]) -> None:
        answered = self._answered.setdefault(requester, OrderedDict())
        for entry in entries:
            ident = (entry.source, entry.key, entry.revision)
            answered[ident] = None
            answered.move_to_end(ident)
        while len(answered) > ANSWERED_PER_REQUESTER:
            answered.popitem(last=False)

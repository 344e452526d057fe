"""Collecting t partial decryptions per envelope and combining them (DESIGN §2.4).

For a batch of envelopes the collector:

1. ranks the candidate nodes per ciphertext (rendezvous hashing, :mod:`peers`) and
   assigns the first t to it: this node's own partial when it is among them, peers for
   the rest; items for the same peer travel together, in requests of up to 64 items (the
   wire allows 256), and its own partials are asked for in groups of 32: answers then
   come in as the partials are computed, and are combined as they come;
2. sends the requests concurrently; a peer that has not answered within the hedge delay
   gets a stand-in: the affected items go to the next candidate too, and the first t
   partials to arrive win; a refusal, a timeout or a bad response moves on to the next
   candidate as well. A request's timeout counts the items queued ahead of it: those
   this collector already has in flight at that peer, and as many as it has queued for
   itself (nodes starting together load the same envelopes, and rendezvous hashing gives
   each about the same share), so a busy peer is not taken for a dead one. At start-up,
   a peer never heard from whose subject has no subscriber yet ("no responders") is
   asked again for up to ``start_grace_s`` rather than skipped: nodes started together
   come up a little apart, and skipping would push work onto other candidates;
3. combines optimistically (y^e = c); when that check fails, it asks the contributors for
   proofs, names the faulty node(s), excludes them from then on, reports them, and goes
   on with other candidates.

Entries that cannot reach t partials are returned as failed with a reason, to be retried.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge.partials import PartialCache
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import build_request, open_response
from flashgate.crypto.encoding import int_to_bytes
from flashgate.crypto.threshold.combine import combine, identify_faulty
from flashgate.crypto.threshold.keys import ThresholdPublicKey
from flashgate.crypto.threshold.partial import Proof
from flashgate.errors import CombineCheckFailed, FlashgateError, NoResponders, Refused
from flashgate.events.fleet import Roster
from flashgate.events.share import MAX_SHARE_ITEMS, ShareItem, ShareResults

log = structlog.get_logger("flashgate.bridge.collector")

#: This node's own partials are asked for in groups of this many, and a peer for at most
#: PEER_GROUP items per request (<= MAX_SHARE_ITEMS): each group is combined once done.
OWN_GROUP = 32
PEER_GROUP = 64


class ShareTarget(Protocol):
    """What partials are collected for: an envelope of the secrets bucket
    (:class:`~flashgate.bridge.store.Entry`) or a ring term of the fast path
    (:class:`~flashgate.bridge.ring_terms.Term`); ``source`` says which bucket the
    responders look it up in."""

    @property
    def key(self) -> str: ...
    @property
    def revision(self) -> int: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def ciphertext(self) -> int: ...
    @property
    def source(self) -> Literal["secrets", "ring"]: ...


class Transport(Protocol):
    async def request(self, node_id: str, payload: bytes, timeout: float) -> bytes: ...


Report = Callable[[str, str, str | None], Awaitable[None]]
"""report(node_id, reason, secret_key): a peer proven to have misbehaved."""


@dataclass
class _Wanted:
    entry: ShareTarget
    ranking: list[str]
    partials: dict[int, int] = field(default_factory=dict)  # share index -> x
    sources: dict[int, str] = field(default_factory=dict)  # share index -> node id
    inflight: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)
    extra: int = 0
    cursor: int = 0

    def next_nodes(self, t: int, skip: set[str]) -> list[str]:
        """The next candidates, skipping nodes already tried and nodes that failed."""
        picked: list[str] = []
        while len(self.partials) + len(self.inflight) + len(picked) < t + self.extra:
            if self.cursor >= len(self.ranking):
                break
            node = self.ranking[self.cursor]
            self.cursor += 1
            if node not in self.tried and node not in skip:
                picked.append(node)
        return picked


@dataclass
class CollectResult:
    values: dict[str, int] = field(default_factory=dict)  # key -> y
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason


@dataclass
class Collector:
    node_id: str
    fleet: str
    epoch: int
    signing_key: Ed25519PrivateKey
    public: ThresholdPublicKey
    peers: PeerBook
    partials: PartialCache
    transport: Transport
    roster: Callable[[], Roster]
    report: Report
    #: node id -> share index in this collector's epoch (from the epoch's descriptor);
    #: None: the roster's indices (a node with a single epoch dealt by the ceremony).
    members: dict[str, int] | None = None
    per_item_ms: float = 25.0  # learned: ms a peer needs per item of ours, for timeouts
    hedge_floor_s: float = 0.3
    #: From this collector's creation (the node's start), how long a peer never heard from
    #: that has no responder yet is waited for, asked again every ``grace_poll_s``.
    start_grace_s: float = 5.0
    grace_poll_s: float = 0.1
    clock: Callable[[], float] = time.monotonic
    own_group: int = OWN_GROUP
    peer_group: int = PEER_GROUP

    def __post_init__(self) -> None:
        self._started = self.clock()
        self._queued: dict[str, int] = defaultdict(int)  # node -> our items in flight there

    # --- public --------------------------------------------------------------------------

    async def collect(self, entries: Sequence[ShareTarget]) -> CollectResult:
        t = self.public.threshold
        self._failed_now: set[str] = set()  # peers that failed during this call
        wanted = {e.key: _Wanted(e, self._ranking(e.digest)) for e in entries}
        result = CollectResult()
        tasks: dict[asyncio.Task[dict[str, int]], tuple[str, list[_Wanted]]] = {}
        while True:
            self._launch(wanted, tasks, t)
            if not tasks:
                break
            done, _ = await asyncio.wait(
                tasks, timeout=self._hedge_delay(tasks), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # slow peers: give each waiting entry one stand-in candidate (once)
                for want in wanted.values():
                    if want.inflight and len(want.partials) < t and want.extra == 0:
                        want.extra = 1
                continue
            for task in done:
                node, group = tasks.pop(task)
                got = self._task_result(task, node)
                index = self._index(node)
                for want in group:
                    want.inflight.discard(node)
                    x = got.get(want.entry.key)
                    if x is not None and index is not None and want.entry.key in wanted:
                        want.partials[index] = x
                        want.sources[index] = node
            for key in [k for k, w in wanted.items() if len(w.partials) >= t]:
                want = wanted[key]
                y = await self._combine(want)
                if y is not None:
                    result.values[key] = y
                    del wanted[key]
            if not wanted:  # done: do not wait for slow peers that were hedged around
                break
        for key, want in wanted.items():
            result.failed[key] = "no_quorum" if len(want.partials) < t else "combine_failed"
        for task in tasks:
            task.cancel()
        return result

    # --- requests --------------------------------------------------------------------------

    def _launch(
        self,
        wanted: dict[str, _Wanted],
        tasks: dict[asyncio.Task[dict[str, int]], tuple[str, list[_Wanted]]],
        t: int,
    ) -> None:
        by_node: dict[tuple[str, str], list[_Wanted]] = defaultdict(list)
        for want in wanted.values():
            if len(want.partials) >= t:
                continue
            for node in want.next_nodes(t, self._failed_now):
                want.tried.add(node)
                want.inflight.add(node)
                by_node[(node, want.entry.source)].append(want)
        for (node, _source), group in by_node.items():
            size = self.own_group if node == self.node_id else min(self.peer_group, MAX_SHARE_ITEMS)
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                if node == self.node_id:
                    # Counted at once, before any request goes out: their timeouts count
                    # this node's own queue (see _request).
                    task = asyncio.create_task(self._own(chunk))
                    self._queued[node] += len(chunk)
                    task.add_done_callback(functools.partial(self._dequeue, len(chunk)))
                else:
                    task = asyncio.create_task(self._ask(node, chunk))
                tasks[task] = (node, chunk)

    def _dequeue(self, items: int, _: object) -> None:
        self._queued[self.node_id] -= items

    def _hedge_delay(
        self, tasks: dict[asyncio.Task[dict[str, int]], tuple[str, list[_Wanted]]]
    ) -> float:
        # A peer answers our requests in order: the next answer from it may wait on every
        # item of ours queued there, not just on its own request's (this node's own groups
        # are computed here, one after another).
        largest = max(
            (
                len(group) if node == self.node_id else max(len(group), self._queued[node])
                for node, group in tasks.values()
            ),
            default=1,
        )
        return max(self.hedge_floor_s, 2.0 * largest * self.per_item_ms / 1000.0 + 0.2)

    def _task_result(self, task: asyncio.Task[dict[str, int]], node: str) -> dict[str, int]:
        if task.cancelled():
            return {}
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, Refused):
            log.info("share request refused", peer=node, reason=exc.reason)
        else:
            log.warning("share request failed", peer=node, error=type(exc).__name__)
        self.peers.failed(node)
        self._failed_now.add(node)
        return {}

    def _ranking(self, digest: bytes) -> list[str]:
        ranking = self.peers.ranking(digest)
        if self.members is None:
            return ranking
        return [n for n in ranking if n in self.members]

    def _index(self, node: str) -> int | None:
        if self.members is not None:
            return self.members.get(node)
        entry = self.roster().node(node)
        return None if entry is None else entry.index

    async def _own(self, group: list[_Wanted]) -> dict[str, int]:
        values = await self.partials.partials([w.entry.ciphertext for w in group])
        return {w.entry.key: x for w, x in zip(group, values, strict=True)}

    async def _ask(
        self, node: str, group: list[_Wanted], *, proofs: bool = False
    ) -> dict[str, int]:
        results = await self._request(node, [w.entry for w in group], proofs=proofs)
        out = {}
        k = self.public.key.byte_length
        for partial in results.partials:
            if len(partial.partial) == k:
                out[partial.key] = int.from_bytes(partial.partial, "big")
        if results.refusals:  # e.g. a peer that has not seen this revision yet
            reasons: dict[str, int] = {}
            for refusal in results.refusals:
                reasons[refusal.reason] = reasons.get(refusal.reason, 0) + 1
            log.info("peer refused items", peer=node, reasons=reasons)
        return out

    async def _request(
        self, node: str, entries: Sequence[ShareTarget], *, proofs: bool = False
    ) -> ShareResults:
        items = [ShareItem(e.key, e.revision, e.digest) for e in entries]
        sources = {e.source for e in entries}
        if len(sources) != 1:  # never: _launch groups by source
            raise ValueError("a share request names items of one bucket")
        payload, request, reply_key = build_request(
            node_id=self.node_id,
            responder=node,
            fleet=self.fleet,
            epoch=self.epoch,
            signing_key=self.signing_key,
            items=items,
            proofs=proofs,
            source=sources.pop(),
        )
        ahead = self._queued[node]  # ours, sent to this peer earlier and not answered yet
        timeout = self._timeout(ahead + self._queued[self.node_id] + len(items), proofs=proofs)
        self._queued[node] += len(items)
        try:
            started = time.monotonic()
            raw = await self._send(node, payload, timeout)
            results = open_response(raw, request, reply_key, node, self.roster())
            elapsed_ms = (time.monotonic() - started) * 1000
        finally:
            self._queued[node] -= len(items)
        self.peers.seen(node, latency_ms=elapsed_ms)
        if items and not proofs:  # learn the per-item time peers need (bounded)
            observed = elapsed_ms / (ahead + len(items))
            self.per_item_ms = min(200.0, max(2.0, 0.8 * self.per_item_ms + 0.2 * observed))
        return results

    def _timeout(self, items: int, *, proofs: bool = False) -> float:
        """Seconds to wait for a peer that has ``items`` of work queued up to our answer."""
        return 5.0 + items * self.per_item_ms / 1000.0 * (4 if proofs else 2)

    async def _send(self, node: str, payload: bytes, timeout: float) -> bytes:
        """The request; during the start grace, "no responders" from a peer never heard
        from means it is not up yet: ask again until it answers or the grace is over."""
        while True:
            try:
                return await self.transport.request(node, payload, timeout)
            except NoResponders:
                if not self._in_start_grace(node):
                    raise
            await asyncio.sleep(self.grace_poll_s)

    def _in_start_grace(self, node: str) -> bool:
        state = self.peers.peers.get(node)
        return (
            state is not None
            and state.last_seen is None
            and self.clock() - self._started < self.start_grace_s
        )

    # --- combining and the proof fallback -----------------------------------------------

    async def _combine(self, want: _Wanted) -> int | None:
        c = want.entry.ciphertext
        try:
            return combine(self.public, c, want.partials)
        except CombineCheckFailed:
            pass
        except FlashgateError as exc:
            log.warning("combine refused", key=want.entry.key, reason=exc.code)
        faulty, unverified = await self._find_faulty(want)
        for index in unverified:  # not proven wrong: use someone else, blame no one
            node = want.sources.pop(index, None)
            want.partials.pop(index, None)
            if node is not None:
                self._failed_now.add(node)
        for index in faulty:
            node = want.sources.pop(index, None)
            want.partials.pop(index, None)
            if node is None:
                continue
            self.peers.misbehaved(node)
            if node == self.node_id:  # our own partial failed its proof: a local fault
                log.critical(
                    "this node's own partial decryption is wrong (damaged share or "
                    "hardware fault); it no longer uses its own partials",
                    key=want.entry.key,
                )
                continue
            log.error("node sent a faulty partial decryption", peer=node, key=want.entry.key)
            await self.report(node, "invalid_partial", want.entry.key)
        if not faulty and not unverified:  # all proofs verify, yet the check failed
            want.partials.clear()
            want.sources.clear()
        return None

    async def _find_faulty(self, want: _Wanted) -> tuple[list[int], list[int]]:
        """(faulty, unverified) share indices. Faulty: a proof that fails, or a different
        partial when asked again; those nodes are blamed. Unverified: no answer to the
        proof request (slow or down, not proven wrong); their partials are only dropped."""
        c = want.entry.ciphertext
        proofs: dict[int, Proof] = {}
        changed: list[int] = []
        silent: list[int] = []

        async def fetch(index: int, node: str) -> None:
            if node == self.node_id:
                proofs[index] = await self.partials.proof(c, want.partials[index])
                return
            try:
                results = await self._request(node, [want.entry], proofs=True)
            except (FlashgateError, TimeoutError, OSError):
                silent.append(index)
                return
            for partial in results.partials:
                if partial.key == want.entry.key and partial.proof is not None:
                    x = int.from_bytes(partial.partial, "big")
                    if x != want.partials[index]:
                        changed.append(index)  # a different partial this time
                        return
                    proofs[index] = Proof(
                        int.from_bytes(partial.proof.challenge, "big"),
                        int.from_bytes(partial.proof.response, "big"),
                    )
                    return
            silent.append(index)  # answered without the item: nothing proven

        await asyncio.gather(*(fetch(i, n) for i, n in want.sources.items()))
        answered = {i: x for i, x in want.partials.items() if i in proofs}
        faulty = sorted(set(identify_faulty(self.public, c, answered, proofs)) | set(changed))
        return faulty, sorted(silent)


def encode_partial(x: int, public: ThresholdPublicKey) -> bytes:
    return int_to_bytes(x, public.key.byte_length)

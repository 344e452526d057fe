"""The fast path (DESIGN §6): a fleet key ring of symmetric terms, and fast wraps.

Per-secret threshold decryption at every start costs t full-size exponentiations per
secret. The fast path costs one threshold decryption per live ring **term** per start,
then symmetric work per secret:

- **Terms** (ring bucket ``fg-<f>-ring``, :mod:`flashgate.bridge.ring_terms`): AES-256
  keys, each a JWE under the fleet public key of an epoch, signed by the active member
  that made it. A node opens each proven term through the ordinary share protocol
  (``source="ring"``: responders serve partials for proven terms only).
- **Fast wraps** (wraps bucket ``fg-<f>-wraps``, one key per envelope): after a node opens
  an envelope (by either path) it keeps the content key, and the node ranked first for
  that envelope (rendezvous over the active members of the epoch; the next ones take over
  after :data:`WRAP_TAKEOVER_S` each) writes it under the **current term**, signed
  (:class:`~flashgate.events.ring.FastWrap`).
- **Opening** (:meth:`FastPath.open`, the loader's first try for every envelope, after the
  store's provenance check): the wrap must name the envelope's version, epoch and
  wrapped-key digest, its term must be proven and opened; the content key is unwrapped
  (AES-GCM, additional data binding all of that, the term and the writer) and the
  payload opened with the JWE's own tag and context
  (:func:`flashgate.crypto.fastwrap.open_payload`). Any failure sends that envelope down
  the cold path; a wrap that matches the envelope and still fails is a **bad wrap**: its
  writer's signature is checked and the writer counted, logged and reported
  (``bad_fast_wrap``); a wrap whose signature does not verify is counted as unattributed.
- **The current term** is the newest proven term (by ``created_at``, then id) that this
  node has opened, is for the current epoch and the roster serial this node holds, and is
  within its limits (age, number of wraps). None: the first-ranked live active member of the
  epoch makes one (the next after :data:`TERM_TAKEOVER_S` each). So a revocation (a new
  roster) and a fleet key rotation (a new epoch) each make a new term; a term also ends at
  its age or use limit. Wraps under an older term are re-made under the new one (each node
  keeps the content keys it opened, wiped on purge), and a term older than the current one
  that no wrap refers to any more is purged from the bucket.

Term keys and content keys are ``bytearray``s, wiped when dropped; none is logged or in a
repr. The cold path stays the root of trust: with no ring, or a damaged one, the node
starts exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sys
import time
from collections import Counter
from collections.abc import Callable, Container, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.errors import NoRespondersError
from nats.js.kv import KeyValue

from flashgate.bridge.collector import Collector, Report
from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.ring_terms import Term, TermStore
from flashgate.bridge.store import Entry
from flashgate.bridge.wrap_snapshots import (
    SNAPSHOT_CHECK_MS,
    SNAPSHOT_INTERVAL_MS,
    SNAPSHOT_MIN_TAIL,
    BucketFacts,
    check_head,
    head_entry,
    read_snapshot,
    write_snapshot,
)
from flashgate.broker.watch import Deleted, InitialDone, follow, follow_batches
from flashgate.crypto import fastwrap
from flashgate.crypto.rng import Rng
from flashgate.errors import FlashgateError, SignatureInvalid, SnapshotRefused
from flashgate.events.envelope import jwe_sha256
from flashgate.events.fleet import Roster
from flashgate.events.node_status import FastPathStatus
from flashgate.events.ring import (
    FAST_WRAP_CODEC,
    STORED_TERM_CODEC,
    TERM_KEY_PREFIX,
    WRAP_SNAPSHOT_CODEC,
    FastWrap,
    RingTerm,
    StoredTerm,
    WrapSnapshot,
    term_key,
)
from flashgate.events.signing import sign, verify
from flashgate.fleet.identity_keys import load_ed25519_public

log = structlog.get_logger("flashgate.bridge.fastpath")

#: A term is used for new wraps this long after it was made (then a new one is made).
TERM_MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: At most this many wraps under one term (random 96-bit GCM nonces: far below 2^32).
TERM_MAX_WRAPS = 1 << 24
#: With no current term, the node ranked p-th makes one after p times this long.
TERM_TAKEOVER_S = 5.0
#: An envelope's wrap is written by the node ranked p-th after p times this long.
WRAP_TAKEOVER_S = 10.0
#: Wraps written at once (each is a KV put with its acknowledgement).
WRITE_CONCURRENCY = 64
MAINTAIN_EVERY_S = 1.0
#: A term that could not be opened is asked for again after this long (not every pass).
TERM_RETRY_S = 10.0
#: At start, a term that did not open is asked for again this often, this many times.
START_RETRY_S = 0.5
START_RETRIES = 10
#: A wrap whose envelope this node does not have (deleted while it was down) is purged
#: once it is this old: a wrap just written may come before its envelope does.
ORPHAN_GRACE_MS = 60_000
#: Wraps are searched for orphans this often (each search reads every wrap).
ORPHAN_SCAN_MS = ORPHAN_GRACE_MS // 4


Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass(repr=False, slots=True)
class _HeldKey:
    """A content key this node opened, and the envelope it opens."""

    version: int
    epoch: int
    digest: bytes
    cek: bytearray
    since: float  # monotonic: when it became this node's to wrap (takeover clock)

    def wipe(self) -> None:
        fastwrap.wipe(self.cek)


class WrapSeen(msgspec.Struct, frozen=True, gc=False):
    """What is kept of a wrap once this node holds the content key it wraps (it is not
    opened again): enough to know whether the wrap is current and whose turn a rewrite
    is. A node holding 100k secrets kept each whole wrap otherwise (about 650 bytes).
    A struct out of the cycle collector (it holds no container): one is made per secret
    at a start, ten times faster than a frozen dataclass, and 16 bytes smaller."""

    term_id: str
    version: int
    epoch: int
    wrapped_key_sha256: bytes
    nonce: bytes
    written_at: int

    @classmethod
    def of(cls, wrap: FastWrap, digest: bytes) -> WrapSeen:
        """``digest``: the held envelope's wrapped-key digest (equal to the wrap's; one
        object is kept for both)."""
        return cls(
            sys.intern(wrap.term_id), wrap.version, wrap.epoch, digest, wrap.nonce, wrap.written_at
        )


@dataclass
class FastPathStats:
    opened: int = 0  # envelopes opened by the fast path
    fallbacks: Counter[str] = field(default_factory=Counter)  # reason -> envelopes
    bad_wraps: Counter[str] = field(default_factory=Counter)  # writer -> wraps
    unattributed_bad_wraps: int = 0
    wraps_written: int = 0
    terms_made: int = 0
    terms_opened: int = 0
    terms_deleted: int = 0
    snapshot_wraps: int = 0  # wraps taken from a snapshot at start
    wraps_read: int = 0  # wraps read one by one at start (all, or a snapshot's tail)
    snapshots_refused: Counter[str] = field(default_factory=Counter)  # reason -> snapshots
    snapshots_written: int = 0


@dataclass
class FastPath:
    node_id: str
    fleet: str
    signing_key: Ed25519PrivateKey
    terms: TermStore
    ring: KeyRing
    peers: PeerBook
    roster: Callable[[], Roster]
    collectors: dict[int, Collector]
    report: Report
    spawn: Spawn
    rng: Rng
    clock: Callable[[], int]  # ms since the epoch
    max_age_ms: int = TERM_MAX_AGE_MS
    max_wraps: int = TERM_MAX_WRAPS
    term_takeover_s: float = TERM_TAKEOVER_S
    wrap_takeover_s: float = WRAP_TAKEOVER_S
    stats: FastPathStats = field(default_factory=FastPathStats)
    ring_kv: KeyValue | None = None
    wraps_kv: KeyValue | None = None
    #: Snapshots of the wraps bucket (:mod:`flashgate.bridge.wrap_snapshots`); None: the
    #: bucket is not there (a backend older than snapshots): every wrap is read.
    snaps_kv: KeyValue | None = None
    snapshot_interval_ms: int = SNAPSHOT_INTERVAL_MS
    snapshot_min_tail: int = SNAPSHOT_MIN_TAIL
    #: Whether a snapshot is due is looked at this often, the first time this long after
    #: the start (the peers' heartbeats have come: the first-ranked node knows it is).
    snapshot_check_ms: int = SNAPSHOT_CHECK_MS
    #: The envelope keys this node holds in its store once its initial values are read
    #: (None before): a wrap of any other key is an orphan, purged after ORPHAN_GRACE_MS.
    live_keys: Callable[[], Container[str] | None] = lambda: None
    #: True while the node's initial load runs: wraps are written (and old terms purged)
    #: once it is done (or has run for a while), so that the load has the loop to itself.
    loading: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self._opened: dict[str, bytearray] = {}  # term id -> term key
        #: term id -> its key as AES-GCM (:meth:`_set_opened`: set up once per term)
        self._ciphers: dict[str, fastwrap.TermCipher] = {}
        #: envelope key -> its wrap in the bucket (what is kept of it once its key is held)
        self.wraps: dict[str, FastWrap | WrapSeen] = {}
        self.per_term: Counter[str] = Counter()  # term id -> wraps in the bucket
        #: term id -> wraps seen written under it (overwritten ones too): its use count
        self.uses: Counter[str] = Counter()
        self._held: dict[str, _HeldKey] = {}  # envelope key -> its content key
        self.ready = asyncio.Event()  # terms read and opened (or given up): start loading
        self._ring_read = asyncio.Event()
        self._wraps_read = asyncio.Event()
        #: Both buckets' initial values read (the terms may not be opened yet).
        self.buckets_read = asyncio.Event()
        self._wake = asyncio.Event()
        self._no_term_since: float | None = None
        self._open_failed: dict[str, float] = {}  # term id -> monotonic time it failed
        self._gone: set[str] = set()  # envelopes deleted: their wraps are purged
        # What the last pass over the held keys left (a pass is skipped when nothing it
        # reads changed since): the term it wrapped under, whether a held key or a wrap
        # changed since, and whether a key was left waiting for its takeover time.
        self._orphans_scanned_at = -ORPHAN_SCAN_MS  # by self.clock()
        self._scanned_term: str | None = None
        self._dirty = True
        self._takeovers_waiting = False
        #: The wraps bucket's stream sequence of the last message this node took.
        self.wraps_sequence = 0
        #: by self.clock(): when a snapshot was last looked at (the start, at first)
        self._snapshot_checked_at = self.clock()
        self._snapshotting = False  # a snapshot is being written (in a task of its own)
        self._snapshot_written_at = -float("inf")  # monotonic: when this node last wrote one
        #: The head last seen, and when (monotonic) it was first seen: its age, by this
        #: node's clock.
        self._head_seen: tuple[str, float] | None = None
        self._node_keys: dict[str, tuple[str, Ed25519PublicKey]] = {}

    def __repr__(self) -> str:
        return (
            f"FastPath(terms_opened={len(self._opened)}, wraps={len(self.wraps)}, "
            f"keys_held={len(self._held)})"
        )

    # --- running ---------------------------------------------------------------------------

    async def run(
        self, ring_kv: KeyValue, wraps_kv: KeyValue, snaps_kv: KeyValue | None = None
    ) -> None:
        """Follow both buckets (the wraps from their newest snapshot on, if there is one
        this node accepts); open the terms once the ring is read (while the wraps are
        still being read: the peers' partials are a round trip), and set ``ready`` once
        both are done; then keep the ring current."""
        self.ring_kv, self.wraps_kv, self.snaps_kv = ring_kv, wraps_kv, snaps_kv
        self.spawn(self._follow_terms(ring_kv))
        self.spawn(self._follow_wraps(wraps_kv))
        await self._ring_read.wait()
        opening = asyncio.ensure_future(self._open_terms_at_start())
        try:
            await self._wraps_read.wait()
            self.buckets_read.set()
            await opening
        finally:
            opening.cancel()
            self.ready.set()
        log.info(
            "fast path ready",
            terms_opened=len(self._opened),
            wraps=len(self.wraps),
            terms_refused=dict(Counter(self.terms.rejected.values())) or None,
        )
        await self.maintain()

    def wake(self) -> None:
        """Something changed (a roster, an epoch, a new term): re-check the ring now."""
        self._wake.set()

    async def _follow_terms(self, kv: KeyValue) -> None:
        async with contextlib.aclosing(follow(kv)) as events:
            async for event in events:
                if isinstance(event, InitialDone):
                    self._ring_read.set()
                elif isinstance(event, Deleted):
                    self._drop_term(event.key)
                elif event.key.startswith(TERM_KEY_PREFIX):
                    term = self.terms.ingest(event.key, event.revision, event.value)
                    if term is None:
                        log.warning(
                            "ring term refused",
                            key=event.key,
                            reason=self.terms.rejected.get(event.key),
                        )
                    elif self._ring_read.is_set():
                        self.wake()  # a new term: open it

    async def _follow_wraps(self, kv: KeyValue) -> None:
        # From the newest snapshot, then its tail; or the whole bucket. Streamed: the
        # wraps taken as they arrive (not every raw wrap held until the last).
        start = await self._read_snapshot(kv)
        lists = follow_batches(kv, stream=True, start_sequence=start)
        async with contextlib.aclosing(lists):
            async for events in lists:
                for event in events:
                    if isinstance(event, InitialDone):
                        self._wraps_read.set()
                        self.stats.wraps_read = event.count
                        log.info(
                            "wraps read",
                            from_snapshot=self.stats.snapshot_wraps,
                            read_one_by_one=event.count,
                        )
                        continue
                    self.wraps_sequence = max(self.wraps_sequence, event.revision)
                    if isinstance(event, Deleted):
                        self._set_wrap(event.key, None)
                    else:
                        self._take_wrap(event.key, event.value)

    async def _read_snapshot(self, kv: KeyValue) -> int:
        """Take the wraps of the newest snapshot this node accepts; the stream sequence
        its tail starts at (0: no snapshot taken, read the whole bucket)."""
        if self.snaps_kv is None:
            return 0
        try:
            read = await read_snapshot(
                self.snaps_kv,
                fleet=self.fleet,
                writer_key=self._node_key,
                bucket=lambda: BucketFacts.of(kv),
            )
        except SnapshotRefused as exc:
            self.stats.snapshots_refused[exc.reason] += 1
            log.warning(
                "wraps snapshot refused; reading every wrap", reason=exc.reason, detail=exc.message
            )
            return 0
        except NoRespondersError:
            # A bucket just made on a cluster (a fleet's first start): its stream is still
            # electing a leader, and it holds no snapshot yet anyway.
            log.info("wraps snapshot bucket not answering yet; reading every wrap")
            return 0
        except Exception as exc:  # the broker: the whole bucket is read instead
            log.warning("wraps snapshot not read; reading every wrap", error=type(exc).__name__)
            return 0
        if read is None:
            return 0
        for wrap in read.wraps:
            self._set_wrap(wrap.key, wrap)
        self.stats.snapshot_wraps = len(read.wraps)
        self.wraps_sequence = read.head.stream_sequence
        log.info(
            "wraps snapshot read",
            snapshot=read.head.snapshot_id,
            wraps=len(read.wraps),
            stream_sequence=read.head.stream_sequence,
            writer=read.head.writer,
        )
        return read.next_sequence

    def _node_key(self, node_id: str) -> Ed25519PublicKey | None:
        """The signing key of ``node_id`` if it is active in this node's roster."""
        node = self.roster().node(node_id)
        if node is None or node.status != "active":
            return None
        cached = self._node_keys.get(node_id)
        if cached is None or cached[0] != node.signing_key:
            try:
                cached = (node.signing_key, load_ed25519_public(node.signing_key, "node key"))
            except FlashgateError:
                return None
            self._node_keys[node_id] = cached
        return cached[1]

    def _take_wrap(self, key: str, raw: bytes) -> None:
        try:
            wrap = FAST_WRAP_CODEC.decode(raw)
        except FlashgateError:
            self.stats.fallbacks["malformed_wrap"] += 1
            self._set_wrap(key, None)
            return
        if wrap.key != key or wrap.fleet != self.fleet:
            self.stats.fallbacks["misplaced_wrap"] += 1
            self._set_wrap(key, None)
            return
        self._set_wrap(key, wrap)

    def _set_wrap(self, key: str, wrap: FastWrap | None) -> None:
        old = self.wraps.pop(key, None)
        if old is not None:
            self.per_term[old.term_id] -= 1
            if self.per_term[old.term_id] <= 0:
                del self.per_term[old.term_id]
        held = self._held.get(key)
        if wrap is not None:
            self.wraps[key] = (
                WrapSeen.of(wrap, held.digest) if held is not None and _wraps(wrap, held) else wrap
            )
            self.per_term[wrap.term_id] += 1
            if old is None or old.nonce != wrap.nonce:  # not the echo of our own write
                self.uses[wrap.term_id] += 1
        self._dirty = True
        if held is not None:  # its takeover clock starts now, should the wrap be wrong
            held.since = time.monotonic()

    def _drop_term(self, key: str) -> None:
        term = self.terms.remove(key)
        if term is not None:
            self._ciphers.pop(term.term_id, None)
            opened = self._opened.pop(term.term_id, None)
            if opened is not None:
                fastwrap.wipe(opened)

    def _set_opened(self, term_id: str, key: bytearray) -> None:
        """Hold an opened term's key, and its cipher for the wraps under it."""
        self._ciphers[term_id] = fastwrap.TermCipher(key)
        self._opened[term_id] = key

    # --- opening terms ---------------------------------------------------------------------

    async def open_terms(self) -> None:
        """One threshold decryption per proven term not opened yet (its epoch held); a
        term that failed is asked for again only after TERM_RETRY_S."""
        wanted: dict[int, list[Term]] = {}
        now = time.monotonic()
        for term in list(self.terms.current.values()):
            if term.term_id in self._opened or not self.terms.is_proven(term):
                continue
            failed = self._open_failed.get(term.term_id)
            if failed is not None and now - failed < TERM_RETRY_S:
                continue
            if term.epoch in self.collectors:
                wanted.setdefault(term.epoch, []).append(term)
        for epoch, terms in wanted.items():
            collector = self.collectors.get(epoch)
            if collector is None:
                continue
            result = await collector.collect(terms)
            for term in terms:
                y = result.values.get(term.key)
                if y is None:
                    self._open_failed[term.term_id] = time.monotonic()
                    log.warning(
                        "ring term not opened",
                        term=term.term_id,
                        reason=result.failed.get(term.key, "no_quorum"),
                    )
                    continue
                try:
                    self._set_opened(
                        term.term_id, fastwrap.open_term(term.parsed, y, collector.public.key)
                    )
                except FlashgateError as exc:
                    self._open_failed[term.term_id] = time.monotonic()
                    log.error("ring term does not open", term=term.term_id, reason=exc.code)
                    continue
                self._open_failed.pop(term.term_id, None)
                self.stats.terms_opened += 1
                log.info("ring term opened", term=term.term_id, epoch=term.epoch)

    async def _open_terms_at_start(self) -> None:
        """Open the terms; peers starting at the same moment may not have read the ring
        yet (they refuse ``unknown_term``), so one that failed is asked for again every
        START_RETRY_S, for up to START_RETRIES times, before loading starts without it."""
        await self.open_terms()
        for _ in range(START_RETRIES):
            if not self._open_failed:
                return
            await asyncio.sleep(START_RETRY_S)
            self._open_failed.clear()
            await self.open_terms()

    async def lookup_term(self, key: str, revision: int) -> Term | None:
        """A responder's look-up (the share service): a proven term at ``revision``; one
        not seen yet is read from the bucket (its latest revision only) and checked."""
        term = self.terms.lookup(key, revision)
        if term is not None or self.ring_kv is None:
            return term
        with contextlib.suppress(Exception):
            stored = await self.ring_kv.get(key)
            if stored.value and stored.operation is None and stored.revision == revision:
                self.terms.ingest(key, revision, stored.value)
        return self.terms.lookup(key, revision)

    # --- the loader's fast path ------------------------------------------------------------

    def open(self, entry: Entry) -> bytearray | None:
        """The plaintext of ``entry`` by its fast wrap, or None (then the cold path)."""
        if not entry.retained:  # opened already: nothing to open, nobody to blame
            return None
        wrap = self.wraps.get(entry.key)
        if not isinstance(wrap, FastWrap):  # none, or one whose key is held already
            self.stats.fallbacks["no_wrap"] += 1
            return None
        if (
            wrap.version != entry.version
            or wrap.epoch != entry.epoch
            or not hmac.compare_digest(wrap.wrapped_key_sha256, entry.digest)
        ):
            self.stats.fallbacks["stale_wrap"] += 1  # another version or wrapped key
            return None
        cipher = self._ciphers.get(wrap.term_id)
        term = self.terms.by_id(wrap.term_id)
        if cipher is None or term is None or not self.terms.is_proven(term):
            self.stats.fallbacks["no_term"] += 1
            return None
        aad = self._aad(entry, wrap.term_id, wrap.writer)
        try:
            cek = fastwrap.unwrap_cek(cipher, wrap.nonce, wrap.sealed, aad)
        except FlashgateError:
            self._bad_wrap(entry, wrap, "wrap_does_not_open")
            return None
        try:
            plaintext = fastwrap.open_payload(entry.parsed, cek, entry.envelope)
        except FlashgateError:
            fastwrap.wipe(cek)
            self._bad_wrap(entry, wrap, "wrong_content_key")
            return None
        self.stats.opened += 1
        self._keep(entry, cek)
        self.wraps[entry.key] = WrapSeen.of(wrap, entry.digest)
        return plaintext

    def opened_cold(self, entry: Entry, cek: bytearray) -> None:
        """The loader opened ``entry`` by the cold path with ``cek`` (copied here)."""
        self._keep(entry, bytearray(cek))
        self.wake()

    def forget(self, key: str) -> None:
        """The envelope was deleted: drop its content key, and purge its wrap (a wrap
        left behind would keep its term from ever being purged)."""
        held = self._held.pop(key, None)
        if held is not None:
            held.wipe()
        if key in self.wraps:
            self._gone.add(key)
            self.wake()

    def _keep(self, entry: Entry, cek: bytearray) -> None:
        old = self._held.get(entry.key)
        if old is not None:
            old.wipe()
        self._held[entry.key] = _HeldKey(
            entry.version, entry.epoch, entry.digest, cek, time.monotonic()
        )
        self._dirty = True

    def _aad(self, entry: Entry, term_id: str, writer: str) -> bytes:
        return fastwrap.wrap_aad(
            fleet=self.fleet,
            key=entry.key,
            version=entry.version,
            epoch=entry.epoch,
            wrapped_key_sha256=entry.digest,
            term_id=term_id,
            writer=writer,
        )

    def _bad_wrap(self, entry: Entry, wrap: FastWrap, reason: str) -> None:
        """A wrap for exactly this envelope that does not open it: blame its writer if
        the writer signed it, else count it as unattributed (forged or damaged)."""
        self.stats.fallbacks[reason] += 1
        node = self.roster().node(wrap.writer)
        signed = False
        if node is not None:
            try:
                verify(wrap, load_ed25519_public(node.signing_key, "node key"))
                signed = True
            except (SignatureInvalid, FlashgateError):
                signed = False
        if not signed:
            self.stats.unattributed_bad_wraps += 1
            log.warning(
                "fast wrap does not open and is not signed by the node it names; cold path",
                key=entry.key,
                named_writer=wrap.writer,
                reason=reason,
            )
            return
        self.stats.bad_wraps[wrap.writer] += 1
        log.error(
            "bad fast wrap; cold path, writer reported",
            key=entry.key,
            writer=wrap.writer,
            term=wrap.term_id,
            reason=reason,
        )
        if wrap.writer != self.node_id:
            self.spawn(self._report(wrap.writer, entry.key))

    async def _report(self, writer: str, key: str) -> None:
        await self.report(writer, "bad_fast_wrap", key)

    # --- keeping the ring current ----------------------------------------------------------

    def _eligible(self, term: Term, now: int) -> bool:
        """Whether new wraps may go under ``term`` (opened or not): proven, for the
        current epoch and the roster serial this node holds, within its limits."""
        t = term.term
        return (
            t.epoch == self.ring.current.epoch
            and t.roster_serial == self.roster().serial
            and now < t.created_at + t.max_age_ms
            and self.uses.get(term.term_id, 0) < t.max_wraps
            and self.terms.is_proven(term)
        )

    def current_term(self) -> Term | None:
        """The term new wraps go under (module docstring), or None."""
        now = self.clock()
        best: Term | None = None
        for term in self.terms.current.values():
            if term.term_id not in self._opened or not self._eligible(term, now):
                continue
            if best is None or (term.term.created_at, term.term_id) > (
                best.term.created_at,
                best.term_id,
            ):
                best = term
        return best

    def _awaiting_open(self) -> bool:
        """An eligible term exists that this node has not opened (yet): it is opened (or
        retried), not replaced by a new one."""
        now = self.clock()
        return any(
            term.term_id not in self._opened and self._eligible(term, now)
            for term in self.terms.current.values()
        )

    async def maintain(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tend()
            except FlashgateError as exc:
                log.warning("fast path upkeep failed; retrying", reason=exc.code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), MAINTAIN_EVERY_S)

    async def tend(self) -> None:
        """One pass: open new terms, make a term if none is current and it is this node's
        turn, write the wraps that are this node's, purge old terms nothing refers to."""
        await self.open_terms()
        if self.loading():
            return
        await self._purge_gone_wraps()
        current = self.current_term()
        if current is None:
            current = await self._maybe_make_term()
        if current is None:
            return
        self._no_term_since = None
        await self._write_wraps(current)
        await self._purge_old_terms(current)
        await self._maybe_snapshot()

    def _term_rank(self, purpose: str = "ring-term") -> int | None:
        """This node's place among the live active members of the current epoch for
        making the next term, or for ``purpose`` (None: not a member)."""
        members = self.ring.current.members
        serial = self.roster().serial
        epoch = self.ring.current.epoch
        now = time.monotonic()
        live = [
            n.id
            for n in self.roster().nodes
            if n.status == "active"
            and n.id in members
            and (n.id == self.node_id or self._alive(n.id, now))
        ]
        if self.node_id not in live:
            return None

        def score(node_id: str) -> bytes:
            return hashlib.sha256(f"{purpose}|{serial}|{epoch}|{node_id}".encode()).digest()

        return sorted(live, key=score).index(self.node_id)

    async def _maybe_snapshot(self) -> bool:
        """Start writing a snapshot of the wraps bucket if one is due and it is this
        node's turn (:mod:`flashgate.bridge.wrap_snapshots`); True if one was started.
        Looked at every ``snapshot_check_ms``, not every pass (a look at the head is a
        round trip). The interval is kept by this node's clock, never the writer's."""
        kv, wraps_kv = self.snaps_kv, self.wraps_kv
        now = self.clock()
        if (
            kv is None
            or wraps_kv is None
            or self._snapshotting
            or now - self._snapshot_checked_at < self.snapshot_check_ms
            or self._term_rank("wraps-snapshot") != 0
        ):
            return False
        self._snapshot_checked_at = now
        interval_s = self.snapshot_interval_ms / 1000
        if time.monotonic() - self._snapshot_written_at < interval_s:
            return False
        try:
            entry = await head_entry(kv)
            facts = await BucketFacts.of(wraps_kv)
        except Exception:
            return False
        head: WrapSnapshot | None = None
        if entry is not None:
            try:
                head = WRAP_SNAPSHOT_CODEC.decode(entry[0])
                check_head(head, fleet=self.fleet, writer_key=self._node_key, bucket=facts)
            except FlashgateError:
                head = None  # refused by any reader: replaced (its parts not kept)
        if head is not None:
            if self._head_seen is None or self._head_seen[0] != head.snapshot_id:
                self._head_seen = (head.snapshot_id, time.monotonic())
            tail = self.wraps_sequence - head.stream_sequence
            if tail < max(self.snapshot_min_tail, len(self.wraps) // 10):
                return False
            if time.monotonic() - self._head_seen[1] < interval_s:
                return False
        elif facts.last_sequence < self.snapshot_min_tail:
            return False
        self._snapshotting = True
        self.spawn(self._write_snapshot(head, None if entry is None else entry[1]))
        return True

    async def _write_snapshot(self, replaces: WrapSnapshot | None, revision: int | None) -> None:
        kv, wraps_kv = self.snaps_kv, self.wraps_kv
        try:
            if kv is None or wraps_kv is None:
                return
            written = await write_snapshot(
                kv,
                wraps_kv,
                fleet=self.fleet,
                node_id=self.node_id,
                signing_key=self.signing_key,
                rng=self.rng,
                clock=self.clock,
                replaces=replaces,
                revision=revision,
            )
            if written is not None:
                self.stats.snapshots_written += 1
        except Exception as exc:  # the broker: tried again at the next interval
            log.warning("wraps snapshot not written", error=type(exc).__name__)
        finally:
            self._snapshotting = False
            self._snapshot_written_at = time.monotonic()

    def _alive(self, node_id: str, now: float) -> bool:
        state = self.peers.peers.get(node_id)
        return state is not None and state.alive(now)

    async def _maybe_make_term(self) -> Term | None:
        rank = self._term_rank()
        if rank is None or self.ring_kv is None or self._awaiting_open():
            return None
        now = time.monotonic()
        if self._no_term_since is None:
            self._no_term_since = now
        if now - self._no_term_since < rank * self.term_takeover_s:
            return None
        return await self.make_term()

    async def make_term(self) -> Term | None:
        """Make, sign and publish a new term for the current epoch and roster."""
        if self.ring_kv is None:
            return None
        slot = self.ring.current
        key = bytearray(self.rng.token_bytes(fastwrap.TERM_KEY_BYTES))
        term_id = self.rng.token_bytes(16).hex()
        token = fastwrap.seal_term(slot.key.public.key, key, self.rng)
        signed = sign(
            RingTerm(
                fleet=self.fleet,
                term_id=term_id,
                epoch=slot.epoch,
                jwe_sha256=jwe_sha256(token),
                creator=self.node_id,
                roster_serial=self.roster().serial,
                created_at=self.clock(),
                max_age_ms=self.max_age_ms,
                max_wraps=self.max_wraps,
            ),
            self.signing_key,
        )
        raw = STORED_TERM_CODEC.encode(StoredTerm(term=signed, jwe=token))
        try:
            revision = await self.ring_kv.create(term_key(term_id), raw)
        except Exception as exc:
            fastwrap.wipe(key)
            log.warning("could not publish a ring term", error=type(exc).__name__)
            return None
        term = self.terms.ingest(term_key(term_id), revision, raw)
        if term is None:
            fastwrap.wipe(key)
            return None
        self._set_opened(term_id, key)
        self.stats.terms_made += 1
        log.info(
            "ring term made",
            term=term_id,
            epoch=slot.epoch,
            roster_serial=signed.roster_serial,
        )
        return term

    def _mine_to_wrap(self, current: Term) -> list[tuple[str, _HeldKey]]:
        """Held content keys whose wrap in the bucket is missing, stale or under another
        term, and that are this node's to write now (rendezvous rank, with takeover)."""
        members = self.ring.current.members
        now = time.monotonic()
        if current.term_id != self._scanned_term:  # every wrap was right until now
            for held in self._held.values():
                held.since = now
            self._scanned_term = current.term_id
            self._dirty = True
        if not self._dirty and not self._takeovers_waiting:
            return []  # nothing this pass reads has changed: nothing to write
        self._dirty = self._takeovers_waiting = False
        mine: list[tuple[str, _HeldKey]] = []
        for key, held in list(self._held.items()):
            if held.epoch != current.epoch:
                continue  # under another epoch than the term's: waits for its re-wrap
            wrap = self.wraps.get(key)
            if (
                wrap is not None
                and wrap.term_id == current.term_id
                and wrap.version == held.version
                and wrap.epoch == held.epoch
                and hmac.compare_digest(wrap.wrapped_key_sha256, held.digest)
            ):
                continue
            ranking = [n for n in self.peers.ranking(held.digest) if n in members]
            if self.node_id not in ranking:
                continue
            if ranking.index(self.node_id) * self.wrap_takeover_s > now - held.since:
                self._takeovers_waiting = True
                continue
            mine.append((key, held))
        return mine

    async def _write_wraps(self, current: Term) -> None:
        kv = self.wraps_kv
        cipher = self._ciphers.get(current.term_id)
        if kv is None or cipher is None:
            return
        mine = self._mine_to_wrap(current)
        if not mine:
            return
        semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)

        written = 0

        async def write(key: str, held: _HeldKey) -> None:
            nonlocal written
            async with semaphore:
                # Made when its turn comes, from the key still held: one let go meanwhile
                # (deleted, or opened again at a newer version) is wiped already.
                if self._held.get(key) is not held:
                    return
                wrap = self._make_wrap(key, held, current.term_id, cipher)
                try:
                    revision = await kv.put(key, FAST_WRAP_CODEC.encode(wrap))
                except Exception:
                    self._dirty = True  # not written: the next pass tries again
                    return
                self.wraps_sequence = max(self.wraps_sequence, revision)
                if self._held.get(key) is held:
                    self._set_wrap(key, wrap)
                self.stats.wraps_written += 1
                written += 1

        await asyncio.gather(*(write(k, h) for k, h in mine))
        log.info("fast wraps written", count=written, term=current.term_id)

    def _make_wrap(
        self, key: str, held: _HeldKey, term_id: str, term: fastwrap.TermCipher
    ) -> FastWrap:
        aad = fastwrap.wrap_aad(
            fleet=self.fleet,
            key=key,
            version=held.version,
            epoch=held.epoch,
            wrapped_key_sha256=held.digest,
            term_id=term_id,
            writer=self.node_id,
        )
        nonce, sealed = fastwrap.wrap_cek(term, held.cek, aad, self.rng)
        return sign(
            FastWrap(
                fleet=self.fleet,
                key=key,
                version=held.version,
                epoch=held.epoch,
                wrapped_key_sha256=held.digest,
                term_id=term_id,
                writer=self.node_id,
                written_at=self.clock(),
                nonce=nonce,
                sealed=sealed,
            ),
            self.signing_key,
        )

    async def _purge_gone_wraps(self) -> None:
        """Purge the wraps of deleted envelopes, and orphans (an envelope deleted while
        this node was down) past ORPHAN_GRACE_MS."""
        kv = self.wraps_kv
        if kv is None:
            return
        gone = set(self._gone)
        live = self.live_keys()
        now = self.clock()
        if live is not None and now - self._orphans_scanned_at >= ORPHAN_SCAN_MS:
            self._orphans_scanned_at = now  # a pass over every wrap: not every second
            oldest = now - ORPHAN_GRACE_MS
            gone |= {k for k, w in self.wraps.items() if k not in live and w.written_at < oldest}
        for key in gone:
            self._gone.discard(key)
            if key not in self.wraps:
                continue
            with contextlib.suppress(Exception):
                await kv.purge(key)
                self._set_wrap(key, None)
                log.info("fast wrap purged: its envelope is gone", key=key)

    async def _purge_old_terms(self, current: Term) -> None:
        """Purge terms older than the current one (or refused) that no wrap refers to."""
        kv = self.ring_kv
        if kv is None:
            return
        newest = (current.term.created_at, current.term_id)
        old: list[str] = []
        for key, term in list(self.terms.current.items()):
            if term is current or (term.term.created_at, term.term_id) >= newest:
                continue
            if self.per_term.get(term.term_id, 0) == 0:
                old.append(key)
        # Refused terms (a revoked maker, a damaged value) made before the current one: a
        # term made later may be one this node's roster is not up to yet, and stays.
        for key, made_at in list(self.terms.refused_made_at.items()):
            term_id = key.removeprefix(TERM_KEY_PREFIX)
            if made_at < current.term.created_at and self.per_term.get(term_id, 0) == 0:
                old.append(key)
        for key in old:
            with contextlib.suppress(Exception):
                await kv.purge(key)
                self._drop_term(key)
                self.stats.terms_deleted += 1
                log.info("ring term purged: no wrap refers to it", key=key)

    # --- status ----------------------------------------------------------------------------

    def on_terms(self) -> dict[str, int]:
        """Wraps in the bucket per term id (what ``fleet status`` shows)."""
        return {term_id: count for term_id, count in sorted(self.per_term.items()) if count}

    def on_old_terms(self) -> int:
        """Wraps in the bucket under any term but the current one."""
        current = self.current_term()
        current_id = None if current is None else current.term_id
        return sum(c for term_id, c in self.per_term.items() if term_id != current_id)

    def status(self) -> FastPathStatus:
        current = self.current_term()
        return FastPathStatus(
            current_term=None if current is None else current.term_id,
            terms_opened=len(self._opened),
            wraps_per_term=self.on_terms(),
            on_old_terms=self.on_old_terms(),
            opened_fast=self.stats.opened,
            fallbacks=dict(self.stats.fallbacks),
            bad_wraps=dict(self.stats.bad_wraps),
            unattributed_bad_wraps=self.stats.unattributed_bad_wraps,
        )

    def purge(self) -> None:
        """Wipe every term key and content key held (the node stops)."""
        self._ciphers.clear()
        for key in self._opened.values():
            fastwrap.wipe(key)
        self._opened.clear()
        for held in self._held.values():
            held.wipe()
        self._held.clear()


def _wraps(wrap: FastWrap, held: _HeldKey) -> bool:
    """Whether ``wrap`` is of the very envelope ``held`` was opened from."""
    return (
        wrap.version == held.version
        and wrap.epoch == held.epoch
        and hmac.compare_digest(wrap.wrapped_key_sha256, held.digest)
    )

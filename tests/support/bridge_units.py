"""Shared helpers for the bridge unit tests (``test_unit_*.py``): no NATS, no processes.

- a small, cached, INSECURE 3-of-5 test fleet (1024-bit key from fixed primes);
- envelopes and store entries for it (one bucket value per secret, shared by all stores);
- a manual millisecond clock for the share protocol;
- in-memory share peers and a fake :class:`~flashgate.bridge.collector.Transport` that
  routes a request to the named peer, which answers the way ``BridgeNode._on_share`` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from flashgate.bridge.collector import Collector, encode_partial
from flashgate.bridge.partials import PartialCache
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder
from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.bridge.store import Entry, EnvelopeStore, make_entry
from flashgate.crypto.context import SecretContext
from flashgate.crypto.encoding import int_to_bytes
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.publickey import FleetPublicKey
from flashgate.crypto.rng import DeterministicRng
from flashgate.errors import FlashgateError, Refused
from flashgate.events.envelope import ENVELOPE_CODEC, ApiKeyInfo, SecretEnvelope
from flashgate.events.fleet import Roster, RosterNode
from flashgate.events.share import ShareItemRefusal, SharePartial, ShareProof
from flashgate.events.signing import sign
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key
from tests.support.material import TEST_BITS, fixed_primes, proven, reference_private_key

FLEET = "unit"
EPOCH = 1
THRESHOLD = 3
NODE_IDS: tuple[str, ...] = tuple(f"node-{i}" for i in range(1, 6))
T0 = 1_790_000_000_000  # ms since the epoch, a fixed "now" for protocol tests
#: Node id -> share index: every node of the test fleet holds a share of EPOCH.
MEMBERS = {node_id: i for i, node_id in enumerate(NODE_IDS, 1)}


# --- the fleet ----------------------------------------------------------------------------


@cache
def fleet() -> Ceremony:
    """A 3-of-5 fleet, dealt once per test session (fixed primes: fast, insecure)."""
    return run_ceremony(
        fleet=FLEET,
        node_ids=list(NODE_IDS),
        threshold=THRESHOLD,
        bits=TEST_BITS,
        primes=fixed_primes(),
        allow_insecure=True,
        rng=DeterministicRng(b"bridge-unit-fleet"),
    )


def bundle(node_id: str) -> NodeBundle:
    for candidate in fleet().bundles:
        if candidate.node_id == node_id:
            return candidate
    raise KeyError(node_id)


def public_key() -> FleetPublicKey:
    return fleet_public_key(fleet().descriptor)


def roster(*, revoked: Iterable[str] = (), serial: int = 2) -> Roster:
    """An admin-signed roster of the test fleet with ``revoked`` nodes marked revoked."""
    gone = set(revoked)
    nodes = [
        RosterNode(
            id=n.id,
            index=n.index,
            signing_key=n.signing_key,
            exchange_key=n.exchange_key,
            status="revoked" if n.id in gone else "active",
        )
        for n in fleet().descriptor.nodes
    ]
    unsigned = Roster(fleet=FLEET, epoch=EPOCH, serial=serial, issued_at=T0, nodes=nodes)
    return sign(unsigned, fleet().admin_key)


def prove_check() -> ProvenanceCheck:
    """The provenance check of a node of the test fleet (every node active, every epoch
    dealt to all)."""
    return ProvenanceCheck(
        admin=fleet().admin_key.public_key(), roster=roster, members=lambda _epoch: MEMBERS
    )


def reference_y(c: int) -> int:
    """c^d mod N with the full private key (tests only): what t partials combine to."""
    numbers = reference_private_key().private_numbers()
    return pow(c, numbers.d, numbers.public_numbers.n)


def rendezvous_order(digest: bytes, node_ids: Iterable[str] = NODE_IDS) -> list[str]:
    """The rendezvous ranking (DESIGN §2.4), computed independently of ``PeerBook``."""
    return sorted(
        node_ids, key=lambda n: hashlib.sha256(digest + n.encode()).digest(), reverse=True
    )


# --- envelopes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretSpec:
    repo: str
    name: str
    value: bytes
    version: int = 1
    kind: str = "ai"
    epoch: int = EPOCH
    api_key_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.repo}.{self.name}"


@cache
def envelope_bytes(spec: SecretSpec) -> bytes:
    """The secrets-bucket value for ``spec`` (JWE under the test fleet key).

    Made once per session and shared by every node's store, like one bucket value: RSA-OAEP
    draws its own randomness, so the wrapped key (and with it the rendezvous ranking) is
    new in every session. Tests therefore pick "the slow node", "the liar" etc. from the
    ranking rather than by name."""
    context = SecretContext(
        fleet=FLEET, repo=spec.repo, name=spec.name, kind=spec.kind, version=spec.version
    )
    token = encrypt_secret(public_key(), context, spec.value)
    api_key = (
        ApiKeyInfo(key_id=spec.api_key_id, scope="storage", access="read", label="unit test")
        if spec.api_key_id is not None
        else None
    )
    envelope = SecretEnvelope(
        fleet=FLEET,
        repo=spec.repo,
        name=spec.name,
        kind=spec.kind,  # type: ignore[arg-type]
        version=spec.version,
        epoch=spec.epoch,
        jwe=token,
        written_at=T0,
        api_key=api_key,
    )
    return ENVELOPE_CODEC.encode(proven(envelope, fleet().admin_key))


def make_test_entry(spec: SecretSpec, revision: int = 1) -> Entry:
    """A checked store entry for ``spec`` (every epoch maps to the test fleet key)."""
    keys = {spec.epoch: public_key()}
    return make_entry(FLEET, spec.key, revision, envelope_bytes(spec), keys, prove=prove_check())


def new_store(specs: Iterable[SecretSpec] = ()) -> EnvelopeStore:
    """A node's own copy of the secrets bucket holding ``specs`` (revisions 1, 2, ...)."""
    store = EnvelopeStore(FLEET, {EPOCH: public_key()}, prove_check())
    for revision, spec in enumerate(specs, start=1):
        assert store.ingest(spec.key, revision, envelope_bytes(spec)) is not None
    return store


SAMPLE_SECRETS: tuple[SecretSpec, ...] = (
    SecretSpec("payments", "s3", b'{"access_key":"AKIA-unit","secret":"s3-unit"}', kind="storage"),
    SecretSpec("payments", "openai", b"sk-unit-openai-0001"),
    SecretSpec("search", "anthropic", b"sk-ant-unit-0002"),
    SecretSpec("search", "gcs", b"gcs-service-account-json", kind="storage"),
    SecretSpec("ops", "webhook", b"whsec-unit-0003", kind="integration"),
)


# --- a clock ------------------------------------------------------------------------------


@dataclass
class ManualClock:
    """A millisecond clock that only moves when told to."""

    now: int = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


# --- in-memory share peers -----------------------------------------------------------------


class RecordingPartialCache(PartialCache):
    """A node's real partial cache that remembers which ciphertexts it was asked about."""

    def __init__(self, node: NodeBundle) -> None:
        super().__init__(node.share, node.public, workers=1)
        self.asked: set[int] = set()

    async def partials(self, cs: Sequence[int]) -> list[int]:
        self.asked.update(cs)
        return await super().partials(cs)


@dataclass
class InMemoryPeer:
    """One node's share service: what ``BridgeNode._on_share`` does, without NATS.

    ``lie`` makes it byzantine (partials multiplied by 2 mod N, proofs computed for the
    wrong values, so they cannot verify); ``refuse_with`` makes it refuse every request
    that passes screening, with a signed refusal carrying that reason.
    """

    node: NodeBundle
    store: EnvelopeStore
    partials: RecordingPartialCache
    roster: Roster
    lie: bool = False
    refuse_with: str | None = None
    served: Counter[str] = field(default_factory=Counter)  # key -> partials returned
    item_refusals: list[ShareItemRefusal] = field(default_factory=list)
    proofs_requested: int = 0

    def __post_init__(self) -> None:
        self.responder = Responder(
            node_id=self.node.node_id,
            fleet=FLEET,
            signing_key=self.node.signing_key,
            roster=lambda: self.roster,
            members=lambda epoch: MEMBERS if epoch == EPOCH else None,
        )

    async def handle(self, raw: bytes) -> bytes:
        try:
            request = self.responder.screen(raw)
            if self.refuse_with is not None:
                raise Refused(self.refuse_with)
        except Refused as refusal:
            return self.responder.refuse(raw, refusal.reason)
        entries: list[Entry] = []
        refusals: list[ShareItemRefusal] = []
        for item in request.items:
            entry = self.store.lookup(item.key, item.revision)
            if entry is None:
                refusals.append(ShareItemRefusal(item.key, item.revision, "unknown_secret"))
            elif entry.epoch != request.epoch:
                refusals.append(ShareItemRefusal(item.key, item.revision, "other_epoch"))
            elif not hmac.compare_digest(entry.digest, item.digest):
                refusals.append(ShareItemRefusal(item.key, item.revision, "digest_mismatch"))
            else:
                entries.append(entry)
        self.item_refusals += refusals
        if request.proofs:
            self.proofs_requested += 1
        public = self.node.public
        try:
            xs = await self.partials.partials([e.ciphertext for e in entries])
            if self.lie:
                xs = [x * 2 % public.modulus for x in xs]
            results: list[SharePartial] = []
            for entry, x in zip(entries, xs, strict=True):
                proof = None
                if request.proofs:
                    p = await self.partials.proof(entry.ciphertext, x)
                    proof = ShareProof(
                        int_to_bytes(p.challenge, 32),
                        int_to_bytes(p.response, (p.response.bit_length() + 7) // 8),
                    )
                results.append(
                    SharePartial(entry.key, entry.revision, encode_partial(x, public), proof)
                )
                self.served[entry.key] += 1
            return self.responder.respond(request, results, refusals)
        except FlashgateError as exc:
            return self.responder.refuse(raw, exc.code)


@dataclass
class SlowGate:
    """Holds a peer's answers back until ``release`` is set (or ``limit_s`` passes, which
    ends the request with TimeoutError, as the NATS transport would)."""

    limit_s: float
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: str | None = None  # "answered", "timed_out" or "cancelled" once it ends


class InMemoryTransport:
    """The collector's transport, routing each request to an :class:`InMemoryPeer`."""

    def __init__(self, peers: Mapping[str, InMemoryPeer]) -> None:
        self.peers = dict(peers)
        self.down: dict[str, Exception] = {}  # node -> what a request to it raises
        self.slow: dict[str, SlowGate] = {}
        self.calls: Counter[str] = Counter()
        #: called with (node id, payload) for every request, before it is routed
        self.on_request: Callable[[str, bytes], None] | None = None

    async def request(self, node_id: str, payload: bytes, timeout: float) -> bytes:
        self.calls[node_id] += 1
        if self.on_request is not None:
            self.on_request(node_id, payload)
        failure = self.down.get(node_id)
        if failure is not None:
            raise failure
        gate = self.slow.get(node_id)
        if gate is not None:
            await self._hold(gate)
        return await self.peers[node_id].handle(bytes(payload))

    @staticmethod
    async def _hold(gate: SlowGate) -> None:
        gate.started.set()
        try:
            async with asyncio.timeout(gate.limit_s):
                await gate.release.wait()
        except TimeoutError:
            gate.outcome = "timed_out"
            raise
        except asyncio.CancelledError:
            gate.outcome = "cancelled"
            raise
        gate.outcome = "answered"


class FleetHarness:
    """Every node of the test fleet in memory: its store, partial cache and share service,
    plus collectors for any of them. ``close()`` stops the partial engines."""

    def __init__(self, specs: Sequence[SecretSpec], *, empty_stores: Iterable[str] = ()) -> None:
        self.specs = list(specs)
        self.roster = roster(serial=1)
        empty = set(empty_stores)
        self.caches = {n: RecordingPartialCache(bundle(n)) for n in NODE_IDS}
        self.stores = {n: new_store(() if n in empty else self.specs) for n in NODE_IDS}
        self.peers = {
            n: InMemoryPeer(bundle(n), self.stores[n], self.caches[n], self.roster)
            for n in NODE_IDS
        }
        self.transport = InMemoryTransport(self.peers)
        self.reports: list[tuple[str, str, str | None]] = []

    def entries(self, node_id: str = "node-1") -> list[Entry]:
        store = self.stores[node_id]
        return [store.current[spec.key] for spec in self.specs]

    def collector(
        self, node_id: str = "node-1", *, per_item_ms: float = 1.0, hedge_floor_s: float = 0.05
    ) -> Collector:
        node = bundle(node_id)
        return Collector(
            node_id=node_id,
            fleet=FLEET,
            epoch=EPOCH,
            signing_key=node.signing_key,
            public=node.public,
            peers=PeerBook(node_id, self.roster),
            partials=self.caches[node_id],
            transport=self.transport,
            roster=lambda: self.roster,
            report=self._report,
            per_item_ms=per_item_ms,
            hedge_floor_s=hedge_floor_s,
        )

    async def _report(self, node_id: str, reason: str, key: str | None) -> None:
        self.reports.append((node_id, reason, key))

    def close(self) -> None:
        for partial_cache in self.caches.values():
            partial_cache.close()

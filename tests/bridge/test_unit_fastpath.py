"""Unit tests of the fast path (flashgate/bridge/fastpath.py, ring_terms.py; DESIGN §6).

Five nodes of the 3-of-5 unit fleet, in memory: each has its own term store and fast
path; the ring and wraps buckets are in-memory stand-ins (what a node's watch would
deliver is fed to it by :meth:`Scene.sync`), and ring terms are opened through the real
share protocol: each node's real :class:`ShareService` answers ring requests from its own
term store.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.bridge import metrics
from flashgate.bridge.collector import Collector, CollectResult
from flashgate.bridge.fastpath import FastPath
from flashgate.bridge.loader import Loader
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder
from flashgate.bridge.ring_terms import TermStore
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.store import Entry
from flashgate.bridge.vault import Vault
from flashgate.bridge.wrap_snapshots import read_head
from flashgate.crypto import fastwrap
from flashgate.crypto.decrypt import open_jwe
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.errors import DecryptionError
from flashgate.events.envelope import jwe_sha256
from flashgate.events.fleet import Roster
from flashgate.events.node_status import StatusResponse
from flashgate.events.ring import (
    FAST_WRAP_CODEC,
    STORED_TERM_CODEC,
    WRAP_SNAPSHOT_CODEC,
    RingTerm,
    StoredTerm,
    term_key,
)
from flashgate.events.signing import sign
from tests.support.bridge_units import (
    EPOCH,
    FLEET,
    MEMBERS,
    NODE_IDS,
    RecordingPartialCache,
    SecretSpec,
    bundle,
    make_test_entry,
    public_key,
    reference_y,
    roster,
)
from tests.support.material import CANARY

SPECS = [
    SecretSpec("payments", f"k{i}", CANARY + b"-" + str(i).encode(), kind="generic")
    for i in range(6)
]


def wall_ms() -> int:
    import time

    return int(time.time() * 1000)


@dataclass
class FakeKV:
    """A KV bucket in memory: what the fast path calls (create, put, purge, get)."""

    values: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    revision: int = 0

    async def create(self, key: str, value: bytes) -> int:
        if key in self.values:
            raise KeyError(key)
        return await self.put(key, value)

    async def put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.values[key] = (self.revision, bytes(value))
        return self.revision

    async def purge(self, key: str) -> None:
        self.values.pop(key, None)

    async def get(self, key: str) -> Any:
        revision, value = self.values[key]
        return SimpleNamespace(value=value, revision=revision, operation=None)


class RingTransport:
    """Routes share requests to each node's real ShareService."""

    def __init__(self) -> None:
        self.services: dict[str, ShareService] = {}

    async def request(self, node_id: str, payload: bytes, timeout: float) -> bytes:
        return await self.services[node_id].answer(bytes(payload))


@dataclass
class Scene:
    roster: Roster
    ring_kv: FakeKV
    wraps_kv: FakeKV
    paths: dict[str, FastPath]
    caches: dict[str, RecordingPartialCache]
    reports: list[tuple[str, str, str | None]]
    epoch: int = EPOCH

    def sync(self, *node_ids: str) -> None:
        """Deliver both buckets' contents to the nodes (what their watches do)."""
        for node_id in node_ids or NODE_IDS:
            fp = self.paths[node_id]
            for key in list(fp.terms.current) + list(fp.terms.rejected):
                if key not in self.ring_kv.values:
                    fp._drop_term(key)
            for key, (revision, raw) in self.ring_kv.values.items():
                known = fp.terms.current.get(key)
                if known is None or known.revision != revision:
                    fp.terms.ingest(key, revision, raw)
            for key in list(fp.wraps):
                if key not in self.wraps_kv.values:
                    fp._set_wrap(key, None)
            for key, (_, raw) in self.wraps_kv.values.items():
                fp._take_wrap(key, raw)

    def close(self) -> None:
        for fp in self.paths.values():
            fp.purge()
        for cache in self.caches.values():
            cache.close()


def cold_cek(entry: Entry) -> bytearray:
    return fastwrap.content_key(entry.parsed, reference_y(entry.ciphertext), public_key())


def cold_plaintext(entry: Entry) -> bytes:
    y = reference_y(entry.ciphertext)
    return open_jwe(entry.parsed, y, public_key(), entry.envelope.context).plaintext


class _Ring:
    def __init__(self) -> None:
        self.epoch = EPOCH

    @property
    def current(self) -> Any:
        return SimpleNamespace(
            epoch=self.epoch,
            members=MEMBERS,
            key=SimpleNamespace(public=SimpleNamespace(key=public_key())),
        )


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    ring_kv, wraps_kv = FakeKV(), FakeKV()
    holder: dict[str, Roster] = {"roster": roster(serial=2)}
    transport = RingTransport()
    reports: list[tuple[str, str, str | None]] = []
    ring = _Ring()

    async def report(node: str, reason: str, key: str | None) -> None:
        reports.append((node, reason, key))

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)

    paths: dict[str, FastPath] = {}
    caches: dict[str, RecordingPartialCache] = {}
    for node_id in NODE_IDS:
        node = bundle(node_id)
        caches[node_id] = RecordingPartialCache(node)
        peers = PeerBook(node_id, holder["roster"])
        collectors = {
            epoch: Collector(
                node_id=node_id,
                fleet=FLEET,
                epoch=epoch,
                signing_key=node.signing_key,
                public=node.public,
                peers=peers,
                partials=caches[node_id],
                transport=transport,
                roster=lambda: holder["roster"],
                report=report,
                per_item_ms=1.0,
                hedge_floor_s=0.05,
            )
            for epoch in (EPOCH, EPOCH + 1)
        }
        fp = FastPath(
            node_id=node_id,
            fleet=FLEET,
            signing_key=node.signing_key,
            terms=TermStore(
                FLEET,
                {EPOCH: public_key(), EPOCH + 1: public_key()},
                roster=lambda: holder["roster"],
                members=lambda _epoch: MEMBERS,
                clock=wall_ms,
            ),
            ring=cast(Any, ring),
            peers=peers,
            roster=lambda: holder["roster"],
            collectors=collectors,
            report=report,
            spawn=spawn,
            rng=SYSTEM_RNG,
            clock=wall_ms,
            term_takeover_s=0.0,
            wrap_takeover_s=0.0,
            ring_kv=cast(Any, ring_kv),
            wraps_kv=cast(Any, wraps_kv),
        )
        responder = Responder(
            node_id=node_id,
            fleet=FLEET,
            signing_key=node.signing_key,
            roster=lambda: holder["roster"],
            members=lambda _epoch: MEMBERS,
        )
        transport.services[node_id] = ShareService(
            responder=responder,
            store=cast(Any, SimpleNamespace(lookup=lambda _k, _r: None)),
            partials_for=lambda _epoch, c=caches[node_id]: c,
            lookup_term=fp.lookup_term,
        )
        paths[node_id] = fp
    s = Scene(holder["roster"], ring_kv, wraps_kv, paths, caches, reports)

    def set_roster(new: Roster) -> None:
        holder["roster"] = new
        s.roster = new
        for fp in paths.values():
            fp.peers.set_roster(new)

    s.set_roster = set_roster  # type: ignore[attr-defined]
    s.ring = ring  # type: ignore[attr-defined]
    yield s
    for task in tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    s.close()


def entries(specs: Iterable[SecretSpec] = SPECS) -> list[Entry]:
    return [make_test_entry(spec) for spec in specs]


async def written(
    scene: Scene, writer: str = "node-1", specs: Iterable[SecretSpec] = SPECS
) -> list[Entry]:
    """``writer`` makes a term, opens every envelope by the cold path and writes the
    wraps; every node then sees both buckets."""
    fp = scene.paths[writer]
    made = entries(specs)
    for entry in made:
        fp.opened_cold(entry, cold_cek(entry))
    await fp.tend()
    scene.sync()
    return made


# --- the ring ------------------------------------------------------------------------------


async def test_a_term_is_opened_by_threshold_and_wraps_open_on_another_node(scene: Scene) -> None:
    made = await written(scene)
    term = scene.paths["node-1"].current_term()
    assert term is not None and term.term.creator == "node-1"
    assert len(scene.wraps_kv.values) == len(SPECS)
    reader = scene.paths["node-4"]
    assert reader.current_term() is None  # known, not opened yet
    await reader.open_terms()  # one threshold decryption, through the share protocol
    assert reader.stats.terms_opened == 1
    assert reader.current_term() is term or reader.current_term().term_id == term.term_id
    for entry in made:
        plaintext = reader.open(entry)
        assert plaintext is not None and bytes(plaintext) == cold_plaintext(entry)
    assert reader.stats.opened == len(SPECS) and not reader.stats.fallbacks
    assert reader.on_terms() == {term.term_id: len(SPECS)} and reader.on_old_terms() == 0
    status = reader.status()
    assert status.current_term == term.term_id and status.opened_fast == len(SPECS)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_cold_and_fast_paths_give_the_same_plaintexts(values: list[bytes]) -> None:
    """Property: for any values, what the fast path opens is what the cold path opens."""
    term_id = secrets.token_hex(16)
    term = bytearray(secrets.token_bytes(32))
    prefix = secrets.token_hex(4)
    for i, value in enumerate(values):
        spec = SecretSpec("prop", f"p{prefix}-{i}", value, kind="generic")
        entry = make_test_entry(spec)
        cek = cold_cek(entry)
        aad = fastwrap.wrap_aad(
            fleet=FLEET,
            key=entry.key,
            version=entry.version,
            epoch=entry.epoch,
            wrapped_key_sha256=entry.digest,
            term_id=term_id,
            writer="node-2",
        )
        nonce, sealed = fastwrap.wrap_cek(term, cek, aad, SYSTEM_RNG)
        unwrapped = fastwrap.unwrap_cek(term, nonce, sealed, aad)
        fast = fastwrap.open_payload(entry.parsed, unwrapped, entry.envelope.context)
        assert bytes(fast) == cold_plaintext(entry) == value


# --- what falls back, and who is reported ---------------------------------------------------


def forged_wrap(scene: Scene, entry: Entry, writer: str, cek: bytes, **changes: Any) -> bytes:
    """A wrap of ``cek`` for ``entry`` under node-1's current term, signed by ``writer``."""
    fp = scene.paths["node-1"]
    term = fp.current_term()
    assert term is not None
    aad = fastwrap.wrap_aad(
        fleet=FLEET,
        key=entry.key,
        version=entry.version,
        epoch=entry.epoch,
        wrapped_key_sha256=entry.digest,
        term_id=term.term_id,
        writer=writer,
    )
    nonce, sealed = fastwrap.wrap_cek(fp._opened[term.term_id], cek, aad, SYSTEM_RNG)
    from flashgate.events.ring import FastWrap

    wrap = FastWrap(
        fleet=FLEET,
        key=entry.key,
        version=entry.version,
        epoch=entry.epoch,
        wrapped_key_sha256=entry.digest,
        term_id=term.term_id,
        writer=writer,
        written_at=wall_ms(),
        nonce=nonce,
        sealed=sealed,
    )
    signed = sign(wrap, bundle(writer).signing_key)
    if changes:
        signed = msgspec.structs.replace(signed, **changes)
    return FAST_WRAP_CODEC.encode(signed)


async def test_a_wrong_content_key_falls_back_and_its_writer_is_reported(scene: Scene) -> None:
    made = await written(scene)
    fp = scene.paths["node-2"]  # a node that does not hold the key yet (it opens wraps)
    await fp.open_terms()
    bad = made[0]
    fp._take_wrap(bad.key, forged_wrap(scene, bad, "node-3", secrets.token_bytes(32)))
    assert fp.open(bad) is None
    assert fp.stats.bad_wraps == {"node-3": 1}
    assert fp.stats.fallbacks["wrong_content_key"] == 1
    await asyncio.sleep(0)  # the report is sent in a task
    assert scene.reports == [("node-3", "bad_fast_wrap", bad.key)]
    assert fp.open(made[1]) is not None  # the others still open


async def test_a_damaged_wrap_falls_back_unattributed(scene: Scene) -> None:
    made = await written(scene)
    fp = scene.paths["node-2"]  # a node that does not hold the key yet (it opens wraps)
    await fp.open_terms()
    entry = made[0]
    wrap = FAST_WRAP_CODEC.decode(scene.wraps_kv.values[entry.key][1])
    damaged = bytearray(wrap.sealed)
    damaged[0] ^= 1
    fp._take_wrap(
        entry.key, FAST_WRAP_CODEC.encode(msgspec.structs.replace(wrap, sealed=bytes(damaged)))
    )
    assert fp.open(entry) is None
    assert fp.stats.fallbacks["wrap_does_not_open"] == 1
    assert fp.stats.unattributed_bad_wraps == 1 and not fp.stats.bad_wraps
    await asyncio.sleep(0)
    assert scene.reports == []  # nobody to blame: the signature names no one


async def test_foreign_and_replayed_wraps_fall_back_without_blame(scene: Scene) -> None:
    made = await written(scene)
    fp = scene.paths["node-2"]
    await fp.open_terms()
    a, b = made[0], made[1]
    # a wrap moved to another envelope's key: refused as misplaced
    fp._take_wrap(b.key, scene.wraps_kv.values[a.key][1])
    assert fp.open(b) is None and fp.stats.fallbacks["misplaced_wrap"] == 1
    # a wrap of another fleet
    other = FAST_WRAP_CODEC.decode(scene.wraps_kv.values[a.key][1])
    fp._take_wrap(a.key, FAST_WRAP_CODEC.encode(msgspec.structs.replace(other, fleet="other")))
    assert fp.open(a) is None and fp.stats.fallbacks["misplaced_wrap"] == 2
    # a replayed wrap of version 1 once version 2 is the envelope: stale, nobody blamed
    v2 = make_test_entry(
        SecretSpec(a.envelope.repo, a.envelope.name, b"v2", version=2, kind="generic")
    )
    fp._take_wrap(a.key, scene.wraps_kv.values[a.key][1])
    assert fp.open(v2) is None and fp.stats.fallbacks["stale_wrap"] == 1
    # the same wrap claiming version 2 (re-signed metadata is not possible without the
    # writer's key; unsigned, its AAD no longer matches): unattributed
    claimed = msgspec.structs.replace(
        FAST_WRAP_CODEC.decode(scene.wraps_kv.values[a.key][1]),
        version=2,
        wrapped_key_sha256=v2.digest,
    )
    fp._take_wrap(a.key, FAST_WRAP_CODEC.encode(claimed))
    assert fp.open(v2) is None and fp.stats.unattributed_bad_wraps == 1
    # a wrap under a term nobody proved
    unknown = msgspec.structs.replace(
        FAST_WRAP_CODEC.decode(scene.wraps_kv.values[b.key][1]), term_id="0" * 32
    )
    fp._take_wrap(b.key, FAST_WRAP_CODEC.encode(unknown))
    assert fp.open(b) is None and fp.stats.fallbacks["no_term"] == 1
    await asyncio.sleep(0)
    assert scene.reports == []


def stored_term(
    maker: str, *, signer: str | None = None, epoch: int = EPOCH, serial: int = 2, **changes: Any
) -> tuple[str, bytes]:
    term_id = secrets.token_hex(16)
    token = fastwrap.seal_term(public_key(), secrets.token_bytes(32), SYSTEM_RNG)
    signed = sign(
        RingTerm(
            fleet=FLEET,
            term_id=term_id,
            epoch=epoch,
            jwe_sha256=jwe_sha256(token),
            creator=maker,
            roster_serial=serial,
            created_at=wall_ms(),
            max_age_ms=3_600_000,
            max_wraps=1000,
        ),
        bundle(signer or maker).signing_key,
    )
    if changes:
        signed = msgspec.structs.replace(signed, **changes)
    return term_key(term_id), STORED_TERM_CODEC.encode(StoredTerm(term=signed, jwe=token))


async def test_terms_without_proof_are_refused_and_never_decrypted(scene: Scene) -> None:
    other_token = fastwrap.seal_term(public_key(), secrets.token_bytes(32), SYSTEM_RNG)
    cases = {
        "wrongly signed": stored_term("node-2", signer="node-3"),
        "foreign fleet": stored_term("node-2", fleet="other"),
        "made in the future": stored_term("node-2", created_at=wall_ms() + 3_600_000),
        "unknown maker": stored_term("node-2", creator="node-9"),
    }
    key, raw = stored_term("node-2")
    stored = STORED_TERM_CODEC.decode(raw)
    cases["damaged JWE"] = (
        key,
        STORED_TERM_CODEC.encode(msgspec.structs.replace(stored, jwe=other_token)),
    )
    _, moved_raw = stored_term("node-2")
    cases["moved"] = (term_key(secrets.token_hex(16)), moved_raw)
    for key, raw in cases.values():
        await scene.ring_kv.put(key, raw)
    scene.sync()
    for fp in scene.paths.values():
        assert not fp.terms.current, fp.terms.current
        assert set(fp.terms.rejected.values()) <= {"unproven", "malformed_message"}
    # and nobody computes a partial for them: asked anyway, every responder refuses
    reader = scene.paths["node-1"]
    asked_before = {n: set(c.asked) for n, c in scene.caches.items()}
    key, raw = cases["wrongly signed"]
    planted = STORED_TERM_CODEC.decode(raw)
    parsed = fastwrap.parse_term(planted.jwe)
    fake_term = SimpleNamespace(
        key=key,
        revision=scene.ring_kv.values[key][0],
        digest=fastwrap.wrapped_key_sha256(parsed),
        ciphertext=parsed.wrapped_key(public_key()),
        source="ring",
    )
    collector = reader.collectors[EPOCH]
    result: CollectResult = await collector.collect([cast(Any, fake_term)])
    assert key in result.failed and not result.values
    for node_id, cache in scene.caches.items():
        if node_id != "node-1":
            assert cache.asked == asked_before[node_id], node_id


async def test_a_revoked_makers_term_is_refused(scene: Scene) -> None:
    key, raw = stored_term("node-5")
    await scene.ring_kv.put(key, raw)
    scene.sync()
    assert scene.paths["node-1"].terms.current  # node-5 active: proven
    scene.set_roster(roster(revoked=["node-5"], serial=3))
    fp = scene.paths["node-1"]
    term = fp.terms.current[key]
    assert not fp.terms.is_proven(term)
    assert fp.terms.lookup(key, term.revision) is None  # responders refuse it now


# --- rotation --------------------------------------------------------------------------------


async def test_revocation_makes_a_new_term_and_the_old_one_opens_no_later_wrap(
    scene: Scene,
) -> None:
    made = await written(scene)
    old = scene.paths["node-1"].current_term()
    assert old is not None
    revoked = scene.paths["node-5"]
    await revoked.open_terms()  # node-5 knew the old term
    old_key = bytes(revoked._opened[old.term_id])
    for node_id in ("node-2", "node-3"):
        await scene.paths[node_id].open_terms()
        for entry in made:
            assert scene.paths[node_id].open(entry) is not None  # they hold the keys too
    scene.set_roster(roster(revoked=["node-5"], serial=3))
    for node_id in ("node-1", "node-2", "node-3"):
        assert scene.paths[node_id].current_term() is None  # a new roster: no current term
    writer = scene.paths["node-1"]
    await writer.tend()  # makes the new term, re-makes its wraps
    scene.sync()
    new = writer.current_term()
    assert new is not None and new.term_id != old.term_id and new.term.roster_serial == 3
    for node_id in ("node-2", "node-3"):
        await scene.paths[node_id].tend()
    scene.sync()
    wraps = [FAST_WRAP_CODEC.decode(raw) for _, raw in scene.wraps_kv.values.values()]
    assert {w.term_id for w in wraps} == {new.term_id}
    # the revoked node's old term opens none of them
    for wrap, entry in zip(
        sorted(wraps, key=lambda w: w.key), sorted(made, key=lambda e: e.key), strict=True
    ):
        aad = fastwrap.wrap_aad(
            fleet=FLEET,
            key=entry.key,
            version=entry.version,
            epoch=entry.epoch,
            wrapped_key_sha256=entry.digest,
            term_id=old.term_id,  # even with the old term named in the AAD
            writer=wrap.writer,
        )
        with pytest.raises(DecryptionError):
            fastwrap.unwrap_cek(old_key, wrap.nonce, wrap.sealed, aad)
    # and it cannot open the new term: every responder refuses it (revoked)
    await revoked.open_terms()
    assert new.term_id not in revoked._opened
    # the old term, which no wrap refers to any more, is purged from the bucket
    await writer.tend()
    assert term_key(old.term_id) not in scene.ring_kv.values
    assert term_key(new.term_id) in scene.ring_kv.values
    # another node loading now opens everything by the new term
    reader = scene.paths["node-4"]
    scene.sync("node-4")
    await reader.open_terms()
    assert all(reader.open(entry) is not None for entry in made)


async def test_a_fleet_key_rotation_moves_the_ring(scene: Scene) -> None:
    await written(scene)
    writer = scene.paths["node-1"]
    old = writer.current_term()
    assert old is not None and old.epoch == EPOCH
    scene.ring.epoch = EPOCH + 1  # type: ignore[attr-defined]
    assert writer.current_term() is None
    await writer.tend()
    new = writer.current_term()
    assert new is not None and new.epoch == EPOCH + 1
    # envelopes not re-wrapped yet keep their wraps under the old term (still readable)
    assert writer.on_terms() == {old.term_id: len(SPECS)}
    assert writer.on_old_terms() == len(SPECS)
    # re-wrapped envelopes (epoch 2) opened by the cold path go under the new term
    rewrapped = [
        make_test_entry(SecretSpec(s.repo, s.name, s.value, kind=s.kind, epoch=EPOCH + 1))
        for s in SPECS
    ]
    for entry in rewrapped:
        writer.opened_cold(entry, cold_cek(entry))
    await writer.tend()
    scene.sync()
    assert writer.on_terms() == {new.term_id: len(SPECS)} and writer.on_old_terms() == 0
    await writer.tend()
    assert term_key(old.term_id) not in scene.ring_kv.values  # nothing refers to it
    reader = scene.paths["node-3"]
    scene.sync("node-3")
    await reader.open_terms()
    assert all(bytes(reader.open(e) or b"") == cold_plaintext(e) for e in rewrapped)


# --- the loader ----------------------------------------------------------------------------


@dataclass
class CountingCollector:
    calls: int = 0
    items: int = 0
    public: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(key=public_key()))

    async def collect(self, entries: list[Entry]) -> CollectResult:
        self.calls += 1
        self.items += len(entries)
        result = CollectResult()
        for entry in entries:
            result.values[entry.key] = reference_y(entry.ciphertext)
        return result


async def load(fp: FastPath | None, made: list[Entry]) -> tuple[Vault, Loader, CountingCollector]:
    vault, stub = Vault(), CountingCollector()
    loader = Loader(vault=vault, collectors={EPOCH: cast(Collector, stub)}, fast=fp)
    task = asyncio.create_task(loader.run())
    for entry in made:
        loader.offer(entry)
    assert await loader.wait_idle(10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return vault, loader, stub


async def test_a_node_with_no_ring_starts_by_the_cold_path(scene: Scene) -> None:
    made = entries()
    fp = scene.paths["node-2"]  # empty buckets
    vault, loader, stub = await load(fp, made)
    assert len(vault) == len(SPECS) and loader.loaded_fast == 0
    assert stub.items == len(SPECS)
    assert fp.stats.fallbacks["no_wrap"] == len(SPECS)
    # it kept the content keys: once a term exists, it writes the wraps
    await fp.tend()
    scene.sync()
    assert len(scene.wraps_kv.values) == len(SPECS)
    # a node starting now takes the fast path for every secret, no partial at all
    reader = scene.paths["node-4"]
    await reader.open_terms()
    vault2, loader2, stub2 = await load(reader, entries())  # its own store's entries
    assert loader2.loaded_fast == len(SPECS) and stub2.calls == 0
    for spec in SPECS:
        with vault2.use(spec.key) as view:
            assert bytes(view) == spec.value


async def test_a_damaged_ring_falls_back_to_the_cold_path(scene: Scene) -> None:
    made = await written(scene)
    for key, (_, raw) in list(scene.wraps_kv.values.items()):
        wrap = FAST_WRAP_CODEC.decode(raw)
        await scene.wraps_kv.put(
            key, FAST_WRAP_CODEC.encode(msgspec.structs.replace(wrap, nonce=bytes(12)))
        )
    reader = scene.paths["node-3"]
    scene.sync("node-3")
    await reader.open_terms()
    vault, loader, stub = await load(reader, made)
    assert len(vault) == len(SPECS) and loader.loaded_fast == 0 and stub.items == len(SPECS)
    assert reader.stats.unattributed_bad_wraps == len(SPECS)


async def test_fast_path_repr_and_purge_hold_no_secret(scene: Scene) -> None:
    made = await written(scene)
    fp = scene.paths["node-1"]
    term = fp.current_term()
    assert term is not None
    key = fp._opened[term.term_id]
    held = [h.cek for h in fp._held.values()]
    text = repr(fp) + repr(term) + repr(fp.wraps[made[0].key]) + repr(fp._held[made[0].key])
    assert key.hex() not in text and bytes(key).hex() not in text
    assert all(cek.hex() not in text for cek in held)
    fp.purge()
    assert key == bytearray(32) and all(cek == bytearray(32) for cek in held)
    assert fp._opened == {} and fp._ciphers == {}


async def test_a_key_let_go_while_the_wraps_are_written_is_not_wrapped(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A content key let go after it was picked for wrapping (its envelope deleted, or
    opened again at a newer version) is wiped at once. Its wrap is not made from it later:
    neither a wrap of the wiped, all-zero key is published, nor one of an envelope this
    node no longer holds; the others are written."""
    fp = scene.paths["node-1"]
    made = entries()
    for entry in made:
        fp.opened_cold(entry, cold_cek(entry))
    await fp.tend()  # a term, and the wraps under it
    scene.wraps_kv.values.clear()
    gone = made[0].key
    scene.set_roster(roster(revoked=["node-5"], serial=3))  # type: ignore[attr-defined]
    real = fp._mine_to_wrap

    def mine_then_forget(current: Any) -> Any:
        picked = real(current)
        assert gone in dict(picked)
        asyncio.get_running_loop().call_soon(fp.forget, gone)  # before the writes
        return picked

    monkeypatch.setattr(fp, "_mine_to_wrap", mine_then_forget)
    await fp.tend()  # a new term (the roster changed): every wrap made again
    assert gone not in scene.wraps_kv.values
    assert set(scene.wraps_kv.values) == {entry.key for entry in made[1:]}


async def test_a_dropped_term_leaves_neither_its_key_nor_its_cipher(scene: Scene) -> None:
    await written(scene)
    fp = scene.paths["node-1"]
    term = fp.current_term()
    assert term is not None and term.term_id in fp._ciphers
    key = fp._opened[term.term_id]
    fp._drop_term(term.key)
    assert key == bytearray(32)
    assert term.term_id not in fp._opened and term.term_id not in fp._ciphers


async def test_a_term_dropped_while_its_wraps_are_written_seals_none_under_a_wiped_key(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A term's key is wiped when the term is dropped (deleted from the ring bucket, which
    whoever can write the bucket can do, or the node stopping). Wraps being written at
    that moment were sealed under the wiped key, all zeros: content keys published under
    a key anyone knows. They are sealed with the term's cipher, set up when the term was
    opened, so none opens under zeros."""
    fp = scene.paths["node-1"]
    for entry in entries():
        fp.opened_cold(entry, cold_cek(entry))
    real = fp._mine_to_wrap
    keys: list[bytes] = []

    def mine_then_drop(current: Any) -> Any:
        keys.append(bytes(fp._opened[current.term_id]))
        asyncio.get_running_loop().call_soon(fp._drop_term, current.key)  # before the writes
        return real(current)

    monkeypatch.setattr(fp, "_mine_to_wrap", mine_then_drop)
    await fp.tend()
    assert keys and keys[0] != bytes(32)
    assert len(scene.wraps_kv.values) == len(SPECS)
    for _, raw in scene.wraps_kv.values.values():
        wrap = FAST_WRAP_CODEC.decode(raw)
        aad = fastwrap.wrap_aad(
            fleet=wrap.fleet,
            key=wrap.key,
            version=wrap.version,
            epoch=wrap.epoch,
            wrapped_key_sha256=wrap.wrapped_key_sha256,
            term_id=wrap.term_id,
            writer=wrap.writer,
        )
        with pytest.raises(DecryptionError):
            fastwrap.unwrap_cek(bytes(32), wrap.nonce, wrap.sealed, aad)
        assert len(fastwrap.unwrap_cek(keys[0], wrap.nonce, wrap.sealed, aad)) == 32


async def test_metrics_count_secrets_per_term_and_on_old_terms(scene: Scene) -> None:
    await written(scene)
    fp = scene.paths["node-1"]
    scene.set_roster(roster(revoked=["node-5"], serial=3))  # type: ignore[attr-defined]
    await fp.tend()  # a new term; its own wraps re-made, none by the others yet
    status = StatusResponse(
        fleet=FLEET,
        node_id="node-1",
        request_id=b"r" * 16,
        issued_at=0,
        started_at=0,
        epoch=EPOCH,
        roster_serial=3,
        fast_path=fp.status(),
    )
    text = metrics.render(metrics.families(status, 0)).decode()
    assert "flashgate_fast_path_secrets{" in text
    old = fp.on_old_terms()
    assert f'flashgate_fast_path_old_term_secrets{{node="node-1"}} {float(old)}' in text
    assert old == sum(fp.on_terms().values()) - fp.on_terms().get(fp.status().current_term, 0)


async def test_the_log_pipeline_refuses_term_and_content_keys(scene: Scene) -> None:
    from flashgate.logs import refuse_secrets

    made = await written(scene)
    fp = scene.paths["node-1"]
    event = refuse_secrets(
        None,
        "info",
        {"event": "x", "path": fp, "held": fp._held[made[0].key], "cek": bytearray(32)},
    )
    assert event["path"].startswith("<refused") and event["held"].startswith("<refused")
    assert event["cek"].startswith("<refused")
    assert event["secrets_refused"] == ["cek", "held", "path"]


async def test_a_term_ends_at_its_age_and_use_limits(scene: Scene) -> None:
    """AWS Encryption SDK caching rules: a term takes no new wraps past its age or its
    number of wraps; a new term is made, and past twice its age it is refused outright."""
    await written(scene)
    fp = scene.paths["node-1"]
    first = fp.current_term()
    assert first is not None and first.term.max_wraps == fp.max_wraps
    fp.uses[first.term_id] = first.term.max_wraps  # its use count reached
    assert fp.current_term() is None
    await fp.tend()
    second = fp.current_term()
    assert second is not None and second.term_id != first.term_id
    later = second.term.created_at + second.term.max_age_ms
    fp.clock = lambda: later  # its age reached
    assert fp.current_term() is None
    fp.terms.clock = lambda: later + second.term.max_age_ms + 1  # past its hard expiry
    assert not fp.terms.is_proven(second)
    assert fp.terms.lookup(second.key, second.revision) is None  # no partial for it either


async def test_a_deleted_secrets_wrap_is_purged_and_its_term_can_go(scene: Scene) -> None:
    made = await written(scene)
    fp = scene.paths["node-1"]
    gone = made[0]
    fp.forget(gone.key)  # deleted upstream (the loader forgets it)
    await fp.tend()
    assert gone.key not in scene.wraps_kv.values and gone.key not in fp.wraps
    # a wrap whose envelope another node never saw (deleted while it was down): an
    # orphan, purged once it is older than the grace, never before
    other = scene.paths["node-2"]
    scene.sync("node-2")
    orphan = made[1]
    live = {e.key for e in made[2:]}
    other.live_keys = lambda: live
    await other.tend()
    assert orphan.key in scene.wraps_kv.values  # too recent
    other.clock = lambda: wall_ms() + 61_000
    await other.tend()
    assert orphan.key not in scene.wraps_kv.values
    assert all(e.key in scene.wraps_kv.values for e in made[2:])


async def test_no_new_term_while_an_eligible_one_waits_to_be_opened(scene: Scene) -> None:
    """Nodes starting together: one that could not open the current term yet (its peers
    had not read the ring) opens it later; it does not replace it with a term of its own."""
    await written(scene)
    fp = scene.paths["node-2"]
    term = scene.paths["node-1"].current_term()
    assert term is not None and fp.current_term() is None  # known to node-2, not opened
    assert await fp._maybe_make_term() is None
    assert len(scene.ring_kv.values) == 1
    await fp.tend()
    current = fp.current_term()
    assert current is not None and current.term_id == term.term_id


async def test_a_used_wrap_is_kept_small_and_still_counts(scene: Scene) -> None:
    """Once a node holds a content key it keeps only what tells whether the wrap is
    current (memory: 100k whole wraps were ~65 MB); the counts and the upkeep still see it."""
    from flashgate.bridge.fastpath import WrapSeen
    from flashgate.events.ring import FastWrap

    made = await written(scene)
    reader = scene.paths["node-2"]
    await reader.open_terms()
    assert isinstance(reader.wraps[made[0].key], FastWrap)
    assert reader.open(made[0]) is not None
    kept = reader.wraps[made[0].key]
    assert isinstance(kept, WrapSeen) and kept.wrapped_key_sha256 is made[0].digest
    assert sum(reader.on_terms().values()) == len(made)
    current = reader.current_term()
    assert current is not None
    assert all(key != made[0].key for key, _ in reader._mine_to_wrap(current))
    # a node holding the key (the writer) keeps what it reads back small at once
    writer = scene.paths["node-1"]
    assert all(isinstance(w, WrapSeen) for w in writer.wraps.values())


async def test_an_entry_opened_already_blames_no_wrap_writer(scene: Scene) -> None:
    """Found in review: an entry offered again while in flight reached the fast path after
    it was loaded (its envelope let go) and its honest writer was reported."""
    made = await written(scene)
    fp = scene.paths["node-2"]
    await fp.open_terms()
    entry = made[0]
    entry.release()  # loaded meanwhile
    assert fp.open(entry) is None
    await asyncio.sleep(0)
    assert fp.stats.bad_wraps == {} and scene.reports == []


# --- snapshots of the wraps bucket (real buckets on a real server) --------------------------


async def real_buckets(scene: Scene, js: JetStreamContext, *node_ids: str) -> KeyValue:
    """The wraps and snapshots buckets on the server, for ``node_ids``; the wraps bucket."""
    suffix = secrets.token_hex(4)
    wraps = await js.create_key_value(bucket=f"t-wraps-{suffix}", history=1)
    snaps = await js.create_key_value(bucket=f"t-snaps-{suffix}", history=1)
    for node_id in node_ids:
        fp = scene.paths[node_id]
        fp.wraps_kv, fp.snaps_kv = wraps, snaps
    return wraps


def snapshot_writer(scene: Scene, gone: str | None = None) -> str:
    """The node ranked first to write snapshots (every unit node is live to the others;
    ``gone`` is not)."""
    ranked = [
        n for n, fp in scene.paths.items() if n != gone and fp._term_rank("wraps-snapshot") == 0
    ]
    assert len(ranked) == 1
    return ranked[0]


async def snapshot_pass(fp: FastPath) -> bool:
    """One look at whether a snapshot is due (now), and its write if one was started."""
    fp._snapshot_checked_at = -fp.snapshot_check_ms
    started = await fp._maybe_snapshot()
    async with asyncio.timeout(10):
        while fp._snapshotting:
            await asyncio.sleep(0.01)
    return started


async def wrapped_by(scene: Scene, writer: str) -> list[Entry]:
    """``writer`` makes a term and writes every wrap (to its real wraps bucket); the
    other nodes get the ring (the wraps they read from the server themselves)."""
    fp = scene.paths[writer]
    made = entries()
    for entry in made:
        fp.opened_cold(entry, cold_cek(entry))
    fp._snapshot_checked_at = fp.clock()  # (its snapshot is looked at by the test)
    await fp.tend()
    for node_id in NODE_IDS:
        if node_id != writer:
            scene.sync(node_id)
    return made


async def wraps_read(fp: FastPath) -> asyncio.Task[None]:
    """Run the node's wraps watch until its initial wraps are read (it keeps following)."""
    assert fp.wraps_kv is not None
    task = asyncio.create_task(fp._follow_wraps(fp.wraps_kv))
    async with asyncio.timeout(10):
        await fp._wraps_read.wait()
    return task


async def test_the_first_ranked_node_snapshots_the_wraps_and_a_starting_node_reads_it(
    scene: Scene, js: JetStreamContext
) -> None:
    """The first-ranked node writes the wraps, then (due: a tail of at least the minimum)
    a snapshot; a starting node takes every wrap from it (its tail empty) and opens every
    secret by the fast path; a wrap written after it comes on top."""
    first = snapshot_writer(scene)
    writer = scene.paths[first]
    writer.snapshot_min_tail = 1
    reader_id = next(n for n in NODE_IDS if n != first)
    wraps = await real_buckets(scene, js, first, reader_id)
    made = await wrapped_by(scene, first)
    assert writer.wraps_sequence == len(SPECS)
    assert await snapshot_pass(writer) and writer.stats.snapshots_written == 1
    assert not await snapshot_pass(writer)  # nothing after it: not due

    reader = scene.paths[reader_id]
    follower = await wraps_read(reader)
    try:
        assert reader.stats.snapshot_wraps == len(SPECS)
        assert reader.wraps_sequence == len(SPECS)  # the snapshot's: no wrap came after
        assert reader.stats.wraps_read == 0  # its tail: empty
        assert not reader.stats.snapshots_refused
        await reader.open_terms()
        _, loader, stub = await load(reader, made)
        assert loader.loaded_fast == len(SPECS) and stub.calls == 0
        late = make_test_entry(SecretSpec("payments", "late", CANARY + b"-late", kind="generic"))
        writer.opened_cold(late, cold_cek(late))
        await writer.tend()
        async with asyncio.timeout(10):
            while "payments.late" not in reader.wraps:
                await asyncio.sleep(0.02)
        assert reader.wraps_sequence == len(SPECS) + 1
        assert len(await wraps.keys()) == len(SPECS) + 1
    finally:
        follower.cancel()


async def test_a_refused_snapshot_means_every_wrap_is_read(
    scene: Scene, js: JetStreamContext
) -> None:
    """A snapshot whose writer this node does not hold active (revoked since) is refused,
    counted, and the node reads the whole bucket: the same wraps, every secret fast."""
    first = snapshot_writer(scene)
    scene.paths[first].snapshot_min_tail = 1
    reader_id, maker = [n for n in NODE_IDS if n != first][:2]
    await real_buckets(scene, js, first, reader_id, maker)
    made = await wrapped_by(scene, maker)  # the term and wraps: by another node
    assert await snapshot_pass(scene.paths[first])
    reader = scene.paths[reader_id]
    revoked = scene.roster.node(first)
    assert revoked is not None
    scene.set_roster(  # type: ignore[attr-defined]
        msgspec.structs.replace(
            scene.roster,
            serial=scene.roster.serial + 1,
            nodes=[
                msgspec.structs.replace(n, status="revoked") if n.id == first else n
                for n in scene.roster.nodes
            ],
        )
    )
    assert reader._node_key(first) is None and reader._node_key(reader_id) is not None
    follower = await wraps_read(reader)
    try:
        assert reader.stats.snapshots_refused == {"writer_not_active": 1}
        assert reader.stats.snapshot_wraps == 0 and len(reader.wraps) == len(SPECS)
        assert reader.stats.wraps_read == len(SPECS)
        await reader.open_terms()
        _, loader, stub = await load(reader, made)
        assert loader.loaded_fast == len(SPECS) and stub.calls == 0
    finally:
        follower.cancel()


async def test_snapshots_are_written_when_due_by_the_first_ranked_node_only(
    scene: Scene, js: JetStreamContext
) -> None:
    """Not below the minimum tail; only by the first-ranked node; not again within the
    interval by this node's clock (whatever time the head says); a head that any reader
    would refuse is replaced at once, and its parts are not kept."""
    first = snapshot_writer(scene)
    await real_buckets(scene, js, *NODE_IDS)
    await wrapped_by(scene, first)
    assert not await snapshot_pass(scene.paths[first])  # a tail of 6: below 1,000
    for fp in scene.paths.values():
        fp.snapshot_min_tail = 1
        fp.wraps_sequence = len(SPECS)
    started = [n for n, fp in scene.paths.items() if await snapshot_pass(fp)]
    assert started == [first] and scene.paths[first].stats.snapshots_written == 1

    writer = scene.paths[first]
    assert writer.wraps_kv is not None and writer.snaps_kv is not None
    raw = (await writer.wraps_kv.get("payments.k0")).value
    writer.wraps_sequence = await writer.wraps_kv.put("payments.k0", raw or b"")
    assert not await snapshot_pass(writer)  # within the interval (since its last write)
    writer._snapshot_written_at = -float("inf")
    assert not await snapshot_pass(writer)  # and since it first saw this head
    head = await read_head(writer.snaps_kv)
    assert head is not None
    writer._head_seen = (head.snapshot_id, time.monotonic() - 61)
    assert await snapshot_pass(writer) and writer.stats.snapshots_written == 2

    # a head dated far ahead by its writer's clock does not hold snapshots back
    future = sign(
        msgspec.structs.replace(
            (await read_head(writer.snaps_kv)) or head, written_at=wall_ms() + 10**9
        ),
        bundle(first).signing_key,
    )
    await writer.snaps_kv.put("head", WRAP_SNAPSHOT_CODEC.encode(future))
    writer.wraps_sequence = await writer.wraps_kv.put("payments.k1", raw or b"")
    writer._snapshot_written_at = -float("inf")
    writer._head_seen = (future.snapshot_id, time.monotonic() - 61)
    assert await snapshot_pass(writer) and writer.stats.snapshots_written == 3

    # a refused head (not signed) is replaced without waiting for a tail, parts not kept
    current = await read_head(writer.snaps_kv)
    assert current is not None
    await writer.snaps_kv.put(
        "head",
        WRAP_SNAPSHOT_CODEC.encode(msgspec.structs.replace(current, signature=bytes(64))),
    )
    writer._snapshot_written_at = -float("inf")
    assert await snapshot_pass(writer) and writer.stats.snapshots_written == 4
    newest = await read_head(writer.snaps_kv)
    assert newest is not None and newest.snapshot_id != current.snapshot_id
    parts = {k.split(".")[1] for k in await writer.snaps_kv.keys() if k.startswith("part.")}
    assert parts == {newest.snapshot_id}

    # the first-ranked one gone (not live to the others): the next one writes
    for fp in scene.paths.values():
        fp._alive = lambda node, _now, gone=first: node != gone  # type: ignore[method-assign]
    second = snapshot_writer(scene, gone=first)
    again = scene.paths[second]
    again.wraps_sequence = await writer.wraps_kv.put("payments.k2", raw or b"")
    again._head_seen = (newest.snapshot_id, time.monotonic() - 61)
    assert await snapshot_pass(again) and again.stats.snapshots_written == 1


async def test_a_snapshot_bucket_not_answering_yet_is_said_calmly_and_every_wrap_read(
    scene: Scene,
) -> None:
    """A fleet's first start on a cluster: the new bucket's stream is still electing (no
    responders). Not a warning: the node reads every wrap, and nothing is refused."""
    import structlog
    from nats.errors import NoRespondersError
    from structlog.testing import capture_logs

    class Electing:
        async def get(self, key: str) -> Any:
            raise NoRespondersError

    fp = scene.paths["node-2"]
    fp.snaps_kv = cast(Any, Electing())
    saved = structlog.get_config() if structlog.is_configured() else None
    structlog.reset_defaults()
    try:
        with capture_logs() as logs:
            assert await fp._read_snapshot(cast(Any, scene.wraps_kv)) == 0
    finally:
        if saved is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved)
    assert not fp.stats.snapshots_refused
    said = [(x["log_level"], x["event"]) for x in logs]
    assert said == [("info", "wraps snapshot bucket not answering yet; reading every wrap")]

"""The share service (flashgate/bridge/share_service.py): screening at arrival.

A node answers a bounded number of share requests at once (``gate``); the others wait for
a turn while it computes. A request is screened when it arrives, so its freshness is its
travel time: one that waited its turn longer than the skew window is still answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flashgate.bridge.partials import PartialCache
from flashgate.bridge.protocol import Responder, build_request, open_response
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.store import Entry
from flashgate.errors import Refused
from flashgate.events.share import ShareItem, ShareRequest
from tests.support.bridge_units import (
    EPOCH,
    FLEET,
    MEMBERS,
    SAMPLE_SECRETS,
    ManualClock,
    SecretSpec,
    bundle,
    envelope_bytes,
    make_test_entry,
    new_store,
    roster,
)

WAIT_S = 5.0  # upper bound for anything awaited here; never reached when things work
RESPONDER = "node-2"
REQUESTER = "node-1"


@pytest.fixture
def service() -> Iterator[tuple[ShareService, ManualClock]]:
    node = bundle(RESPONDER)
    clock = ManualClock()
    fleet_roster = roster()
    responder = Responder(
        node_id=RESPONDER,
        fleet=FLEET,
        signing_key=node.signing_key,
        roster=lambda: fleet_roster,
        members=lambda epoch: MEMBERS if epoch == EPOCH else None,
        clock=clock,
    )
    cache = PartialCache(node.share, node.public, workers=1)
    store = new_store(SAMPLE_SECRETS)
    yield ShareService(responder, store, lambda epoch: cache if epoch == EPOCH else None), clock
    cache.close()


def request(
    service: ShareService, clock: ManualClock, *, proofs: bool = False
) -> tuple[bytes, ShareRequest, X25519PrivateKey]:
    entry = service.store.current[SAMPLE_SECRETS[0].key]
    return build_request(
        proofs=proofs,
        node_id=REQUESTER,
        responder=RESPONDER,
        fleet=FLEET,
        epoch=EPOCH,
        signing_key=bundle(REQUESTER).signing_key,
        items=[ShareItem(entry.key, entry.revision, entry.digest)],
        clock=clock,
    )


async def test_a_request_that_waited_its_turn_past_the_skew_window_is_answered(
    service: tuple[ShareService, ManualClock],
) -> None:
    share_service, clock = service
    gate = asyncio.Semaphore(1)
    await gate.acquire()  # the node is busy answering another request
    payload, sent, reply_key = request(share_service, clock)
    answer = asyncio.create_task(share_service.answer(payload, gate))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not answer.done()  # waiting for its turn
    clock.advance(share_service.responder.limits.skew_ms + 10_000)
    gate.release()
    raw = await asyncio.wait_for(answer, WAIT_S)
    results = open_response(raw, sent, reply_key, RESPONDER, roster())
    assert [p.key for p in results.partials] == [SAMPLE_SECRETS[0].key]
    assert share_service.responder.refused == {}


async def test_a_stale_request_is_refused_at_once_without_waiting_for_a_turn(
    service: tuple[ShareService, ManualClock],
) -> None:
    share_service, clock = service
    gate = asyncio.Semaphore(1)
    await gate.acquire()  # busy, and never released: a refusal must not need a turn
    payload, sent, reply_key = request(share_service, clock)
    clock.advance(share_service.responder.limits.skew_ms + 10_000)
    raw = await asyncio.wait_for(share_service.answer(payload, gate), WAIT_S)
    with pytest.raises(Refused) as refused:
        open_response(raw, sent, reply_key, RESPONDER, roster())
    assert refused.value.reason == "stale"


async def test_a_proof_is_served_only_for_a_partial_recently_answered_to_that_requester(
    service: tuple[ShareService, ManualClock],
) -> None:
    share_service, clock = service
    payload, sent, reply_key = request(share_service, clock, proofs=True)
    raw = await asyncio.wait_for(share_service.answer(payload), WAIT_S)
    results = open_response(raw, sent, reply_key, RESPONDER, roster())
    assert results.partials == []
    assert [r.reason for r in results.refusals] == ["no_recent_partial"]
    cache = share_service.partials_for(EPOCH)
    assert cache is not None and cache.proofs_computed == 0

    payload, sent, reply_key = request(share_service, clock)  # the partial first
    await asyncio.wait_for(share_service.answer(payload), WAIT_S)
    for _ in range(2):  # then its proof, twice: computed once
        payload, sent, reply_key = request(share_service, clock, proofs=True)
        raw = await asyncio.wait_for(share_service.answer(payload), WAIT_S)
        results = open_response(raw, sent, reply_key, RESPONDER, roster())
        assert [p.proof is not None for p in results.partials] == [True]
    assert cache.proofs_computed == 1


async def test_a_proof_is_computed_with_the_gil_released(
    service: tuple[ShareService, ManualClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """prove()'s secret-exponent powmods run in gmpy2 with allow_release_gil: a proof does
    not stall the event loop (nor the other threads)."""
    import gmpy2

    seen: list[bool] = []
    real = gmpy2.powmod_sec

    def recording(*args: object) -> object:
        seen.append(gmpy2.get_context().allow_release_gil)
        return real(*args)

    monkeypatch.setattr(gmpy2, "powmod_sec", recording)
    share_service, clock = service
    payload, _, _ = request(share_service, clock)
    await asyncio.wait_for(share_service.answer(payload), WAIT_S)
    seen.clear()
    payload, _, _ = request(share_service, clock, proofs=True)
    await asyncio.wait_for(share_service.answer(payload), WAIT_S)
    assert seen and all(seen)


# --- which revisions are served (issue 14 §4): the current one, and the one it replaced ---

ROTATED = tuple(
    SecretSpec(SAMPLE_SECRETS[0].repo, SAMPLE_SECRETS[0].name, value, version=v)
    for v, value in ((1, b"sk-unit-v1"), (2, b"sk-unit-v2"), (3, b"sk-unit-v3"))
)


def item_request(
    clock: ManualClock, entries: list[Entry]
) -> tuple[bytes, ShareRequest, X25519PrivateKey]:
    return build_request(
        proofs=False,
        node_id=REQUESTER,
        responder=RESPONDER,
        fleet=FLEET,
        epoch=EPOCH,
        signing_key=bundle(REQUESTER).signing_key,
        items=[ShareItem(e.key, e.revision, e.digest) for e in entries],
        clock=clock,
    )


async def served(
    share_service: ShareService, clock: ManualClock, entries: list[Entry]
) -> tuple[list[int], list[tuple[int, str]]]:
    """Each entry asked for in a request of its own: (revisions served, (revision, reason)
    of each refused item)."""
    partials: list[int] = []
    refusals: list[tuple[int, str]] = []
    for entry in entries:
        payload, sent, reply_key = item_request(clock, [entry])
        raw = await asyncio.wait_for(share_service.answer(payload), WAIT_S)
        results = open_response(raw, sent, reply_key, RESPONDER, roster())
        partials += [p.revision for p in results.partials]
        refusals += [(r.revision, r.reason) for r in results.refusals]
    return partials, refusals


async def test_only_the_current_revision_and_the_one_it_replaced_are_served(
    service: tuple[ShareService, ManualClock],
) -> None:
    share_service, clock = service
    store = share_service.store
    entries = []
    for revision, spec in enumerate(ROTATED, start=100):
        entry = store.ingest(spec.key, revision, envelope_bytes(spec))
        assert entry is not None
        entries.append(entry)
    partials, refusals = await served(share_service, clock, entries)
    assert partials == [101, 102]  # the one in flight, the current one
    assert refusals == [(100, "unknown_secret")]


async def test_an_older_version_than_the_one_held_is_not_served(
    service: tuple[ShareService, ManualClock],
) -> None:
    """An old proven envelope written back as the key's latest revision: a node holding
    the newer version computes no partial for it (a fresh node needs t - 1 of those)."""
    share_service, clock = service
    store = share_service.store
    old = store.ingest(ROTATED[0].key, 100, envelope_bytes(ROTATED[0]))
    assert old is not None
    share_service.held_version = lambda key: ROTATED[1].version if key == old.key else None
    partials, refusals = await served(share_service, clock, [old])
    assert partials == []
    assert refusals == [(100, "stale_version")]


async def test_a_deleted_secret_is_not_served_at_any_revision(
    service: tuple[ShareService, ManualClock],
) -> None:
    share_service, clock = service
    store = share_service.store
    entries = [store.ingest(s.key, r, envelope_bytes(s)) for r, s in enumerate(ROTATED[:2], 100)]
    assert None not in entries
    store.remove(ROTATED[0].key)
    partials, refusals = await served(share_service, clock, entries)  # type: ignore[arg-type]
    assert partials == []
    assert refusals == [(100, "unknown_secret"), (101, "unknown_secret")]


async def test_the_bucket_is_asked_only_for_the_latest_revision(
    service: tuple[ShareService, ManualClock],
) -> None:
    """A revision this node has not seen is fetched only when it is the bucket's latest."""
    share_service, clock = service
    older, latest = (make_test_entry(s, revision=r) for s, r in ((ROTATED[1], 7), (ROTATED[2], 8)))
    bucket = {older.key: latest}

    async def latest_of(key: str) -> Entry | None:
        return bucket.get(key)

    share_service.fetch_latest = latest_of
    partials, refusals = await served(share_service, clock, [older, latest])
    assert partials == [8]
    assert refusals == [(7, "unknown_secret")]


def test_an_unusable_newer_value_leaves_the_current_revision_only_in_flight() -> None:
    store = new_store()
    key = ROTATED[0].key
    first = store.ingest(key, 10, envelope_bytes(ROTATED[0]))
    assert first is not None
    assert store.ingest(key, 11, b"not an envelope") is None  # unusable: refused
    assert key in store.rejected
    assert store.lookup(key, 10) is first  # the one replaced, still answered for a while
    assert store.ingest(key, 9, envelope_bytes(ROTATED[1])) is None  # older: changes nothing
    assert store.lookup(key, 9) is None and store.lookup(key, 10) is first
    third = store.ingest(key, 12, envelope_bytes(ROTATED[2]))
    assert third is not None and store.current[key] is third
    assert store.lookup(key, 10) is None and store.lookup(key, 12) is third

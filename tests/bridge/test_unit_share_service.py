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
from flashgate.errors import Refused
from flashgate.events.share import ShareItem, ShareRequest
from tests.support.bridge_units import (
    EPOCH,
    FLEET,
    MEMBERS,
    SAMPLE_SECRETS,
    ManualClock,
    bundle,
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

"""The share collector end to end against in-memory peers (flashgate/bridge/collector.py).

A 3-of-5 test fleet; every node has its own envelope store, partial cache and share service
(:class:`~tests.support.bridge_units.InMemoryPeer`); the transport routes each request to the
named node, or fails, refuses, stalls or lies for the nodes a test picks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from flashgate.bridge.collector import Collector, CollectResult, _Wanted
from flashgate.bridge.store import Entry
from flashgate.crypto.decrypt import open_jwe
from flashgate.errors import BrokerUnavailable, NoResponders
from flashgate.events.share import SHARE_REQUEST_CODEC
from tests.support.bridge_units import (
    NODE_IDS,
    SAMPLE_SECRETS,
    THRESHOLD,
    FleetHarness,
    SlowGate,
    make_test_entry,
    public_key,
    rendezvous_order,
    roster,
)

SELF = "node-1"


@pytest.fixture
async def harness() -> AsyncIterator[FleetHarness]:
    fleet = FleetHarness(SAMPLE_SECRETS)
    yield fleet
    fleet.close()


def assert_all_open(result: CollectResult, entries: Sequence[Entry]) -> None:
    """Every entry has a combined y, and it opens the JWE to the original value."""
    assert result.failed == {}
    expected = {spec.key: spec.value for spec in SAMPLE_SECRETS}
    assert set(result.values) == {e.key for e in entries}
    for entry in entries:
        opened = open_jwe(
            entry.parsed, result.values[entry.key], public_key(), entry.envelope.context
        )
        assert opened.plaintext == expected[entry.key]


def top(entry: Entry, count: int = THRESHOLD) -> list[str]:
    return rendezvous_order(entry.digest)[:count]


def first_peer_in_top_t(entry: Entry) -> str:
    """A peer (not this node) among the t nodes asked first for ``entry``."""
    return next(n for n in top(entry) if n != SELF)


def asked_for(harness: FleetHarness, entry: Entry) -> set[str]:
    """The nodes that computed (or looked up) a partial of ``entry``'s ciphertext."""
    return {n for n, cache in harness.caches.items() if entry.ciphertext in cache.asked}


# --- (a) all peers up ---------------------------------------------------------------------


async def test_all_peers_up_every_entry_opens(harness: FleetHarness) -> None:
    entries = harness.entries()
    result = await harness.collector().collect(entries)
    assert_all_open(result, entries)
    assert harness.reports == []


async def test_each_entry_is_asked_of_exactly_its_first_t_ranked_nodes(
    harness: FleetHarness,
) -> None:
    entries = harness.entries()
    await harness.collector().collect(entries)
    for entry in entries:
        assert asked_for(harness, entry) == set(top(entry))


async def test_items_for_the_same_peer_travel_in_one_request(harness: FleetHarness) -> None:
    entries = harness.entries()
    await harness.collector().collect(entries)
    for node in NODE_IDS:
        if node == SELF:
            assert harness.transport.calls[node] == 0  # its own partials are computed locally
        else:
            wanted = any(node in top(e) for e in entries)
            assert harness.transport.calls[node] == (1 if wanted else 0)


async def test_collecting_nothing_returns_nothing(harness: FleetHarness) -> None:
    result = await harness.collector().collect([])
    assert result.values == {} and result.failed == {}
    assert sum(harness.transport.calls.values()) == 0


# --- (b) rendezvous: every node asks the same t nodes --------------------------------------


async def test_two_collectors_ask_the_same_t_nodes_and_each_partial_is_computed_once(
    harness: FleetHarness,
) -> None:
    first = await harness.collector("node-1").collect(harness.entries("node-1"))
    second = await harness.collector("node-2").collect(harness.entries("node-2"))
    assert first.values == second.values
    assert_all_open(second, harness.entries("node-2"))
    for entry in harness.entries():
        assert asked_for(harness, entry) == set(top(entry))
    for node, cache in harness.caches.items():
        wanted = sum(1 for e in harness.entries() if node in top(e))
        assert cache.computed == wanted, f"{node} computed a partial twice or needlessly"


# --- (c)/(d) peers down ---------------------------------------------------------------------


async def test_two_peers_down_still_succeeds(harness: FleetHarness) -> None:
    harness.transport.down = {
        "node-4": TimeoutError("no answer"),
        "node-5": BrokerUnavailable("connection lost"),
    }
    entries = harness.entries()
    collector = harness.collector()
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    for entry in entries:
        assert asked_for(harness, entry) == {"node-1", "node-2", "node-3"}
    assert collector.peers.peers["node-4"].failures >= 1
    assert collector.peers.peers["node-5"].failures >= 1
    assert collector.peers.excluded == set()  # down is not misbehaving


async def test_three_peers_down_is_no_quorum(harness: FleetHarness) -> None:
    harness.transport.down = {
        node: TimeoutError("no answer") for node in ("node-3", "node-4", "node-5")
    }
    entries = harness.entries()
    result = await harness.collector().collect(entries)
    assert result.values == {}
    assert result.failed == {e.key: "no_quorum" for e in entries}
    assert set(harness.transport.calls) == {"node-2", "node-3", "node-4", "node-5"}
    assert harness.reports == []


async def test_revoked_nodes_are_never_asked(harness: FleetHarness) -> None:
    harness.roster = roster(revoked=["node-2"])
    for peer in harness.peers.values():
        peer.roster = harness.roster
    entries = harness.entries()
    result = await harness.collector().collect(entries)
    assert_all_open(result, entries)
    assert harness.transport.calls["node-2"] == 0
    assert harness.caches["node-2"].asked == set()


# --- (e) hedging a slow peer ----------------------------------------------------------------


async def test_a_slow_peer_is_hedged_and_not_waited_for(harness: FleetHarness) -> None:
    entries = harness.entries()
    slow = first_peer_in_top_t(entries[0])
    # Held back far longer than the hedge delay (~0.2 s here); released only after collect()
    # returns. If collect() waits for it anyway, the gate times out and says so.
    gate = SlowGate(limit_s=2.0)
    harness.transport.slow[slow] = gate
    collector = harness.collector(per_item_ms=0.5, hedge_floor_s=0.01)
    result = await collector.collect(entries)
    assert gate.started.is_set()
    assert gate.outcome is None, f"collect() waited for the slow peer ({gate.outcome})"
    assert_all_open(result, entries)
    assert harness.peers[slow].served == {}
    gate.release.set()


async def test_a_stand_in_is_asked_while_the_slow_peer_is_pending(harness: FleetHarness) -> None:
    # Seen from the node ranked last for the first secret, so that the slow node (ranked
    # first) and its stand-in (ranked t+1) are both peers, whatever the ranking.
    order = rendezvous_order(harness.entries()[0].digest)
    requester, slow, stand_in = order[-1], order[0], order[THRESHOLD]
    entries = harness.entries(requester)
    gate = SlowGate(limit_s=10.0)
    harness.transport.slow[slow] = gate
    pending_when_stand_in_asked: list[bool] = []

    def watch(node_id: str, payload: bytes) -> None:
        keys = {item.key for item in SHARE_REQUEST_CODEC.decode(payload).items}
        if node_id == stand_in and entries[0].key in keys:  # the hedge: slow may answer now
            pending_when_stand_in_asked.append(gate.outcome is None)
            gate.release.set()

    harness.transport.on_request = watch
    collector = harness.collector(requester, per_item_ms=0.5, hedge_floor_s=0.01)
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert pending_when_stand_in_asked[:1] == [True]
    assert entries[0].ciphertext in harness.caches[stand_in].asked


# --- (f) a byzantine peer -------------------------------------------------------------------


async def test_a_byzantine_peer_is_caught_excluded_and_reported(harness: FleetHarness) -> None:
    entries = harness.entries()
    liar = first_peer_in_top_t(entries[0])
    harness.peers[liar].lie = True
    collector = harness.collector()
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert liar in collector.peers.excluded
    assert collector.peers.misbehaviour[liar] >= 1
    assert (liar, "invalid_partial", entries[0].key) in harness.reports
    assert {node for node, _, _ in harness.reports} == {liar}  # honest nodes are not blamed
    assert harness.peers[liar].proofs_requested >= 1


async def test_an_excluded_peer_is_not_asked_again(harness: FleetHarness) -> None:
    entries = harness.entries()
    liar = first_peer_in_top_t(entries[0])
    harness.peers[liar].lie = True
    collector = harness.collector()
    await collector.collect(entries)
    calls = harness.transport.calls[liar]
    harness.caches[SELF].purge()  # a later load of the same ciphertexts
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert harness.transport.calls[liar] == calls


# --- (g)/(h) refusals -----------------------------------------------------------------------


async def test_a_refusing_peer_is_replaced_by_the_next_candidate(harness: FleetHarness) -> None:
    entries = harness.entries()
    refuser = first_peer_in_top_t(entries[0])
    harness.peers[refuser].refuse_with = "rate_limited"
    collector = harness.collector()
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert harness.peers[refuser].responder.refused == {}  # screened fine, then refused
    assert harness.peers[refuser].served == {}
    assert collector.peers.peers[refuser].failures == 1
    for entry in entries:
        if refuser in top(entry):
            next_candidate = top(entry, THRESHOLD + 1)[THRESHOLD]
            assert entry.ciphertext in harness.caches[next_candidate].asked
    assert harness.reports == []


async def test_a_peer_refusing_the_requester_is_replaced(harness: FleetHarness) -> None:
    """A real screening refusal: the peer's roster says the requester is revoked."""
    entries = harness.entries()
    refuser = first_peer_in_top_t(entries[0])
    harness.peers[refuser].roster = roster(revoked=[SELF])
    result = await harness.collector().collect(entries)
    assert_all_open(result, entries)
    assert harness.peers[refuser].responder.refused["revoked_requester"] == 1


async def test_a_peer_without_the_envelope_is_replaced_by_the_next_candidate() -> None:
    lacking = first_peer_in_top_t(make_test_entry(SAMPLE_SECRETS[0]))
    harness = FleetHarness(SAMPLE_SECRETS, empty_stores=[lacking])
    try:
        entries = harness.entries()
        collector = harness.collector()
        result = await collector.collect(entries)
        assert_all_open(result, entries)
        refused = {(r.key, r.reason) for r in harness.peers[lacking].item_refusals}
        assert (entries[0].key, "unknown_secret") in refused
        assert harness.peers[lacking].served == {}
        for entry in entries:
            if lacking in top(entry):
                next_candidate = top(entry, THRESHOLD + 1)[THRESHOLD]
                assert entry.ciphertext in harness.caches[next_candidate].asked
        assert collector.peers.excluded == set()  # lacking an envelope is not misbehaving
        assert harness.reports == []
    finally:
        harness.close()


# --- (i) start-up: peers not up yet ----------------------------------------------------------


class NotUpYet:
    """What a request to a node meets before it subscribes: NoResponders, ``times`` times
    (for ever if None); each attempt moves the collector's clock by ``step_s``."""

    def __init__(self, clock: list[float], times: int | None = None, step_s: float = 0.0):
        self.clock = clock
        self.times = times
        self.step_s = step_s
        self.attempts = 0

    def __call__(self, node_id: str, payload: bytes) -> None:
        self.attempts += 1
        self.clock[0] += self.step_s
        if self.times is None or self.attempts <= self.times:
            raise NoResponders(f"share request to {node_id}: nobody listens")


def routed_with(harness: FleetHarness, node: str, hook: NotUpYet) -> None:
    """Route requests to ``node`` through ``hook`` first (it may raise)."""
    transport = harness.transport
    original = transport.request

    async def request(node_id: str, payload: bytes, timeout: float) -> bytes:
        if node_id == node:
            transport.calls[node_id] += 1
            hook(node_id, payload)
            transport.calls[node_id] -= 1  # counted again by the real route
        return await original(node_id, payload, timeout)

    transport.request = request  # type: ignore[method-assign]


def graceful_collector(harness: FleetHarness, clock: list[float], **kwargs: float) -> Collector:
    collector = harness.collector(**kwargs)  # type: ignore[arg-type]
    collector.clock = lambda: clock[0]
    collector.grace_poll_s = 0.0
    collector.__post_init__()  # restart the grace on this clock
    return collector


async def test_a_peer_not_up_yet_is_waited_for_during_the_start_grace(
    harness: FleetHarness,
) -> None:
    entries = harness.entries()
    late = first_peer_in_top_t(entries[0])
    clock = [100.0]
    hook = NotUpYet(clock, times=3, step_s=0.5)  # up after 1.5 s of the 5 s grace
    routed_with(harness, late, hook)
    collector = graceful_collector(harness, clock)
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    for entry in entries:  # nobody stood in for it: each partial computed where it belongs
        assert asked_for(harness, entry) == set(top(entry))
    assert hook.attempts > 3
    assert collector.peers.peers[late].failures == 0


async def test_a_peer_not_up_after_the_start_grace_is_skipped(harness: FleetHarness) -> None:
    entries = harness.entries()
    late = first_peer_in_top_t(entries[0])
    clock = [100.0]
    hook = NotUpYet(clock, times=None, step_s=1.0)
    routed_with(harness, late, hook)
    collector = graceful_collector(harness, clock)
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert 1 < hook.attempts <= 7  # asked again for about 5 s of the clock, then skipped
    assert collector.peers.peers[late].failures >= 1
    assert late not in asked_for(harness, entries[0])


async def test_no_responders_from_a_peer_heard_from_is_not_waited_for(
    harness: FleetHarness,
) -> None:
    entries = harness.entries()
    gone = first_peer_in_top_t(entries[0])
    clock = [100.0]
    hook = NotUpYet(clock, times=None)
    routed_with(harness, gone, hook)
    collector = graceful_collector(harness, clock)
    collector.peers.seen(gone)  # it was up: no responders now means it went away
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert hook.attempts == 1
    assert collector.peers.peers[gone].failures == 1


async def test_no_responders_after_the_start_grace_is_not_waited_for(
    harness: FleetHarness,
) -> None:
    entries = harness.entries()
    late = first_peer_in_top_t(entries[0])
    clock = [100.0]
    hook = NotUpYet(clock, times=None)
    routed_with(harness, late, hook)
    collector = graceful_collector(harness, clock)
    clock[0] += collector.start_grace_s  # the node has been running for a while
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    assert hook.attempts == 1


# --- (j) timeouts count the work queued ahead ------------------------------------------------


async def test_a_request_queued_behind_others_at_a_peer_gets_a_longer_timeout(
    harness: FleetHarness,
) -> None:
    entries = harness.entries()
    collector = harness.collector(per_item_ms=10.0)
    collector.peer_group = 1  # one item per request: several requests per peer
    seen: dict[str, list[float]] = {}
    original = harness.transport.request

    async def request(node_id: str, payload: bytes, timeout: float) -> bytes:
        seen.setdefault(node_id, []).append(timeout)
        return await original(node_id, payload, timeout)

    harness.transport.request = request  # type: ignore[method-assign]
    own = sum(1 for e in entries if SELF in top(e))
    result = await collector.collect(entries)
    assert_all_open(result, entries)
    for node, timeouts in seen.items():
        # k-th request to a node: this node's own queue, k-1 of ours ahead of it, itself
        # (all sent before any answer: at the starting estimate of 10 ms per item, x2)
        expected = [5.0 + (own + k + 1) * 0.010 * 2 for k in range(len(timeouts))]
        assert timeouts == pytest.approx(expected), node
    assert any(len(timeouts) > 1 for timeouts in seen.values())


async def test_the_hedge_delay_counts_the_items_queued_at_a_peer(harness: FleetHarness) -> None:
    """No answer yet from a peer that has 300 items of ours queued is no reason to hedge
    when only one 64-item request's time has passed: its answers come in order."""
    collector = harness.collector(per_item_ms=10.0, hedge_floor_s=0.01)
    entries = harness.entries()
    peer = first_peer_in_top_t(entries[0])
    group = [_Wanted(e, [peer]) for e in entries]
    task: asyncio.Task[dict[str, int]] = asyncio.create_task(asyncio.sleep(0, {}))
    collector._queued[peer] = 300
    delay = collector._hedge_delay({task: (peer, group)})
    assert delay >= 2 * 300 * 0.010
    collector._queued[peer] = 0
    assert collector._hedge_delay({task: (peer, group)}) == pytest.approx(
        2 * len(group) * 0.010 + 0.2
    )
    await task

"""The partial cache (flashgate/bridge/partials.py) against an engine the test drives.

The engine is replaced by one that records each submission and leaves it pending until the
test resolves (or fails) it, so what is released when is decided here, not by a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future

import pytest

from flashgate.bridge.partials import SLICE_PER_WORKER, PartialCache
from flashgate.errors import FlashgateError
from tests.support.bridge_units import bundle

WAIT_S = 5.0  # upper bound for anything awaited here; never reached when things work


class HeldEngine:
    """Stands in for PartialEngine: each submit() stays pending until the test says."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.submitted: list[tuple[list[int], Future[list[int]]]] = []
        self.submission = asyncio.Event()

    def submit(self, cs: Sequence[int]) -> Future[list[int]]:
        future: Future[list[int]] = Future()
        self.submitted.append((list(cs), future))
        self.submission.set()
        return future

    def finish(self, index: int) -> None:
        cs, future = self.submitted[index]
        if future.cancelled():  # given up by the caller
            return
        future.set_result([c + 1 for c in cs])  # any value: the cache does not check it

    def fail(self, index: int, exc: Exception) -> None:
        self.submitted[index][1].set_exception(exc)

    def close(self) -> None:
        pass


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[tuple[PartialCache, HeldEngine]]:
    node = bundle("node-1")
    partial_cache = PartialCache(node.share, node.public, workers=1)
    partial_cache.engine.close()
    engine = HeldEngine(request.param)
    partial_cache.engine = engine  # type: ignore[assignment]
    yield partial_cache, engine
    partial_cache.purge()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_large_batch_goes_to_the_engine_in_slices_of_8_per_worker(
    cache: tuple[PartialCache, HeldEngine],
) -> None:
    partial_cache, engine = cache
    step = SLICE_PER_WORKER * engine.workers
    cs = list(range(100, 100 + 3 * step + 1))
    whole = asyncio.create_task(partial_cache.partials(cs))
    await settle()
    assert [len(part) for part, _ in engine.submitted] == [step, step, step, 1]
    assert [c for part, _ in engine.submitted for c in part] == cs  # in order
    for index in range(len(engine.submitted)):
        engine.finish(index)
    assert await asyncio.wait_for(whole, WAIT_S) == [c + 1 for c in cs]
    assert partial_cache.computed == len(cs)


async def test_each_slice_is_released_as_soon_as_it_is_done(
    cache: tuple[PartialCache, HeldEngine],
) -> None:
    partial_cache, engine = cache
    step = SLICE_PER_WORKER * engine.workers
    cs = list(range(100, 100 + 3 * step))
    whole = asyncio.create_task(partial_cache.partials(cs))
    await settle()
    # A peer asks for the first slice's ciphertexts: it shares the computation under way
    # and gets its answer once that slice is done, while the rest is still computing.
    first = asyncio.create_task(partial_cache.partials(cs[:step]))
    last = asyncio.create_task(partial_cache.partials(cs[-step:]))
    engine.finish(0)
    assert await asyncio.wait_for(first, WAIT_S) == [c + 1 for c in cs[:step]]
    assert not whole.done() and not last.done()
    assert len(engine.submitted) == 3  # nothing computed twice
    engine.finish(1)
    engine.finish(2)
    assert await asyncio.wait_for(last, WAIT_S) == [c + 1 for c in cs[-step:]]
    assert await asyncio.wait_for(whole, WAIT_S) == [c + 1 for c in cs]


async def test_a_failed_slice_fails_only_its_own_items_and_is_computed_again_when_asked(
    cache: tuple[PartialCache, HeldEngine],
) -> None:
    partial_cache, engine = cache
    step = SLICE_PER_WORKER * engine.workers
    cs = list(range(100, 100 + 3 * step))
    slices = [cs[i : i + step] for i in range(0, len(cs), step)]
    asks = [asyncio.create_task(partial_cache.partials(part)) for part in slices]
    await settle()
    whole = asyncio.create_task(partial_cache.partials(cs))
    await settle()
    assert len(engine.submitted) == 3  # one computation per slice, shared by `whole`
    engine.finish(0)
    engine.fail(1, FlashgateError("engine fault"))
    engine.finish(2)
    assert await asyncio.wait_for(asks[0], WAIT_S) == [c + 1 for c in slices[0]]
    with pytest.raises(FlashgateError):
        await asyncio.wait_for(asks[1], WAIT_S)
    assert await asyncio.wait_for(asks[2], WAIT_S) == [c + 1 for c in slices[2]]
    with pytest.raises(FlashgateError):
        await asyncio.wait_for(whole, WAIT_S)
    again = asyncio.create_task(partial_cache.partials(cs))
    await settle()
    assert [part for part, _ in engine.submitted[3:]] == [slices[1]]  # only what failed
    engine.finish(3)
    assert await asyncio.wait_for(again, WAIT_S) == [c + 1 for c in cs]


async def test_purge_cancels_what_is_still_computing(
    cache: tuple[PartialCache, HeldEngine],
) -> None:
    partial_cache, engine = cache
    step = SLICE_PER_WORKER * engine.workers
    cs = list(range(100, 100 + 2 * step))
    whole = asyncio.create_task(partial_cache.partials(cs))
    await settle()
    engine.finish(0)
    await settle()
    partial_cache.purge()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(whole, WAIT_S)
    assert engine.submitted[1][1].cancelled() or not engine.submitted[1][1].done()
    engine.finish(1)  # the engine finishing later harms no one
    await settle()
    assert partial_cache.computed == step

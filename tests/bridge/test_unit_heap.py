"""flashgate.bridge.heap: a node process keeps its long-lived heap out of the collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from flashgate.bridge import heap


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # this test process owns its collector again
    gc.set_threshold(*thresholds)


class Held:
    """Stands for what a node holds: tracked by the collector."""


@pytest.mark.usefixtures("collector")
def test_the_start_up_heap_and_then_the_held_set_are_frozen() -> None:
    usual = gc.get_threshold()
    thresholds = heap.before_load()
    assert thresholds == usual
    frozen_at_start = gc.get_freeze_count()
    assert frozen_at_start > 0
    assert gc.get_threshold()[0] == heap.LOAD_THRESHOLD

    held = [Held() for _ in range(1000)]
    heap.after_load(thresholds)
    assert gc.get_freeze_count() >= frozen_at_start + len(held)
    assert gc.get_threshold() == usual


@pytest.mark.usefixtures("collector")
def test_garbage_cycles_are_collected_before_each_freeze() -> None:
    """A cycle let go before a freeze is collected, not frozen for the process's life."""

    class Cycle:
        me: object

    thresholds = heap.before_load()
    cycle = Cycle()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    del cycle
    heap.after_load(thresholds)
    assert alive() is None

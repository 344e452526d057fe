"""The services' task group (flashgate/taskgroup.py): close cancels and waits for
every task; a failing task stops the others and the node; nothing starts once closing."""

from __future__ import annotations

import asyncio
import contextlib

from flashgate.taskgroup import HeldTaskGroup


async def test_close_cancels_every_task_and_waits_for_it() -> None:
    tasks, stopped = HeldTaskGroup("test"), asyncio.Event()
    await tasks.open(on_failure=stopped.set)
    started, cleaned = asyncio.Event(), []

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)

    tasks.spawn(forever("a"), "a")
    tasks.spawn(forever("b"), "b")
    await started.wait()
    await tasks.close()
    assert sorted(cleaned) == ["a", "b"]
    assert not tasks.failed and not stopped.is_set()


async def test_a_failing_task_cancels_the_others_and_calls_on_failure() -> None:
    tasks, stopped = HeldTaskGroup("test"), asyncio.Event()
    await tasks.open(on_failure=stopped.set)
    cancelled = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken() -> None:
        raise ValueError("boom")

    tasks.spawn(sibling())
    await asyncio.sleep(0)
    tasks.spawn(broken(), "broken")
    await stopped.wait()
    assert cancelled.is_set() and tasks.failures == ["broken"]
    await tasks.close()


async def test_nothing_is_started_before_open_or_after_close() -> None:
    tasks, ran = HeldTaskGroup("test"), []

    async def work() -> None:
        ran.append(1)

    tasks.spawn(work())
    await tasks.open(on_failure=lambda: None)
    await tasks.close()
    tasks.spawn(work())
    await asyncio.sleep(0)
    assert ran == []


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    """Python 3.11's asyncio.wait_for can swallow a cancellation; stop must still end."""
    tasks = HeldTaskGroup("test")
    await tasks.open(on_failure=lambda: None)
    started, ended = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # the first cancellation is lost here
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    tasks.spawn(stubborn())
    await started.wait()
    await asyncio.wait_for(tasks.close(), 30)  # a hang is the failure, not a slow stop
    assert ended.is_set()


async def test_cancel_ends_one_task_and_the_group_goes_on() -> None:
    tasks = HeldTaskGroup("test")
    await tasks.open(on_failure=lambda: None)
    one = tasks.spawn(asyncio.Event().wait(), "one")  # type: ignore[arg-type]
    other = tasks.spawn(asyncio.Event().wait(), "other")  # type: ignore[arg-type]
    assert one is not None and other is not None
    await tasks.cancel(one)
    assert one.cancelled() and not other.done() and not tasks.failed
    await tasks.close()
    assert other.cancelled()

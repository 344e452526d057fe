"""An :class:`asyncio.TaskGroup` held open between a service's ``start()`` and ``stop()``.

The Bridge Node and the backend start in one call and stop in another, so their tasks
cannot live inside one ``async with``: a supervising task holds the group open from
:meth:`HeldTaskGroup.open` until :meth:`HeldTaskGroup.close` cancels it, and the group then
cancels every task and waits for it. A task that fails (raises anything but a
cancellation) cancels the others, as a task group does; it is logged with its name and
``on_failure`` is called, so that the service does not run on without one of its parts.
A task spawned before :meth:`~HeldTaskGroup.open` or once the group is closing is not
started (e.g. a request arriving during the stop).

On Python 3.11 a cancellation can be swallowed by ``asyncio.wait_for`` (fixed in 3.12):
:meth:`~HeldTaskGroup.close` and :meth:`~HeldTaskGroup.cancel` cancel again, every
:data:`CANCEL_AGAIN_AFTER_S`, a task that has not ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("flashgate.tasks")

#: Seconds between cancellations of a task that has not ended.
CANCEL_AGAIN_AFTER_S = 0.5


class HeldTaskGroup:
    def __init__(self, name: str) -> None:
        self.name = name
        self._group: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Names of the tasks that failed.
        self.failures: list[str] = []

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    async def open(self, on_failure: Callable[[], None]) -> None:
        opened: asyncio.Future[asyncio.TaskGroup] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._hold(opened, on_failure), name=self.name)
        self._group = await opened

    async def _hold(
        self, opened: asyncio.Future[asyncio.TaskGroup], on_failure: Callable[[], None]
    ) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                opened.set_result(group)
                await asyncio.Event().wait()  # until close() cancels the group
        except* Exception:
            log.error(f"a {self.name} task failed; stopping", tasks=self.failures)
            on_failure()
        finally:
            self._group = None

    def spawn(
        self, coro: Coroutine[Any, Any, None], name: str | None = None
    ) -> asyncio.Task[None] | None:
        """Start ``coro`` in the group; None (and ``coro`` closed) when not open."""
        try:
            if self._group is None:
                raise RuntimeError("no task group")
            task = self._group.create_task(coro, name=name)
        except RuntimeError:  # not open, or closing: the task is not started
            coro.close()
            return None
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.get_name())

    async def cancel(self, task: asyncio.Task[None]) -> None:
        """Cancel one task of the group and wait for it (the group goes on)."""
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_AGAIN_AFTER_S)

    async def close(self) -> None:
        """Cancel every task and wait for them all."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.cancel()
        # wait, not gather or a suppressed await: the group's own CancelledError stays in
        # the supervisor, and a cancellation of close() itself (its caller's timeout) is
        # not swallowed.
        while not supervisor.done():
            await asyncio.wait({supervisor}, timeout=CANCEL_AGAIN_AFTER_S)
            for task in list(self._running):
                task.cancel()

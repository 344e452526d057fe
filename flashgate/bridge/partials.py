"""This node's partial decryptions, computed once per ciphertext and shared.

The same partial x_i = c^(2·Delta·s_i) serves this node and every peer that asks for it,
so the fleet computes each one once. Work is batched onto the :class:`PartialEngine`
(all cores; gmpy2 releases the GIL); concurrent askers of the same ciphertext wait on the
same future. Entries are kept for a while (bounded) and wiped on stop. A partial is not a
plaintext (t of them are needed), but it is key material: it lives only in this process.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from flashgate.crypto.threshold.engine import PartialEngine
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import Proof, prove

MAX_CACHED = 50_000


class PartialCache:
    def __init__(
        self, share: KeyShare, public: ThresholdPublicKey, *, workers: int | None = None
    ) -> None:
        self.share = share
        self.public = public
        self.engine = PartialEngine(share, public, workers=workers)
        self._cache: OrderedDict[int, asyncio.Future[int]] = OrderedDict()
        self._computing: set[asyncio.Task[None]] = set()
        self.computed = 0

    @property
    def index(self) -> int:
        return self.share.index

    async def partials(self, cs: Sequence[int]) -> list[int]:
        """x_i for every c, computing only those not cached or under way.

        The computation runs in a task of its own and callers wait through
        ``asyncio.shield``: a caller that is cancelled (a collector giving up) does not
        cancel or fail the computation that other callers (a peer's request) wait on.
        """
        loop = asyncio.get_running_loop()
        todo: list[int] = []
        futures: list[asyncio.Future[int]] = []
        for c in cs:
            future = self._cache.get(c)
            if (
                future is None
                or future.cancelled()
                or (future.done() and future.exception() is not None)
            ):
                future = loop.create_future()
                self._cache[c] = future
                todo.append(c)
            else:
                self._cache.move_to_end(c)
            futures.append(future)
        if todo:
            task = asyncio.create_task(self._compute(todo))
            self._computing.add(task)
            task.add_done_callback(self._computing.discard)
        return [await asyncio.shield(f) for f in futures]

    async def _compute(self, todo: list[int]) -> None:
        try:
            values = await asyncio.wrap_future(self.engine.submit(todo))
        except BaseException as exc:
            for c in todo:
                future = self._cache.pop(c, None)
                if future is not None and not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                        future.exception()  # retrieved: no "never retrieved" warning
            if not isinstance(exc, Exception):
                raise
            return
        for c, x in zip(todo, values, strict=True):
            future = self._cache.get(c)
            if future is not None and not future.done():
                future.set_result(x)
        self.computed += len(todo)
        self._trim()

    async def proof(self, c: int, x: int) -> Proof:
        return await asyncio.to_thread(prove, self.share, self.public, c, x)

    def _trim(self) -> None:
        while len(self._cache) > MAX_CACHED:
            _, future = self._cache.popitem(last=False)
            if not future.done():
                future.cancel()

    def purge(self) -> None:
        for task in self._computing:
            task.cancel()
        for future in self._cache.values():
            if not future.done():
                future.cancel()
        self._cache.clear()

    def close(self) -> None:
        self.purge()
        self.engine.close()

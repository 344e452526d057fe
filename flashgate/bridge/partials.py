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
        self.computed = 0

    @property
    def index(self) -> int:
        return self.share.index

    async def partials(self, cs: Sequence[int]) -> list[int]:
        """x_i for every c, computing only those not cached or under way."""
        loop = asyncio.get_running_loop()
        todo: list[int] = []
        futures: list[asyncio.Future[int]] = []
        for c in cs:
            future = self._cache.get(c)
            if future is None or (future.done() and future.exception() is not None):
                future = loop.create_future()
                self._cache[c] = future
                todo.append(c)
            else:
                self._cache.move_to_end(c)
            futures.append(future)
        if todo:
            batch = asyncio.wrap_future(self.engine.submit(todo))
            try:
                values = await batch
            except BaseException as exc:
                for c in todo:
                    fut = self._cache.pop(c, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                raise
            for c, x in zip(todo, values, strict=True):
                fut = self._cache.get(c)
                if fut is not None and not fut.done():
                    fut.set_result(x)
            self.computed += len(todo)
            self._trim()
        return [await f for f in futures]

    async def proof(self, c: int, x: int) -> Proof:
        return await asyncio.to_thread(prove, self.share, self.public, c, x)

    def _trim(self) -> None:
        while len(self._cache) > MAX_CACHED:
            _, future = self._cache.popitem(last=False)
            if not future.done():
                future.cancel()

    def purge(self) -> None:
        for future in self._cache.values():
            if not future.done():
                future.cancel()
        self._cache.clear()

    def close(self) -> None:
        self.purge()
        self.engine.close()

"""This node's partial decryptions, computed once per ciphertext and shared.

The same partial x_i = c^(2·Delta·s_i) serves this node and every peer that asks for it,
so the fleet computes each one once. Work goes to the :class:`PartialEngine` (all cores;
gmpy2 releases the GIL) in slices of :data:`SLICE_PER_WORKER` items per worker, and each
slice's results are released as soon as it is done: a large batch does not hold back its
first partials until its last one is computed, so combining and answering peers overlap
the computing. Concurrent askers of the same ciphertext wait on the same future. Entries
are kept for a while (bounded) and wiped on stop. A partial is not a plaintext (t of them
are needed), but it is key material: it lives only in this process.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from flashgate.bridge.partial_engine import PartialEngine
from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import Proof

MAX_CACHED = 50_000
#: Proofs kept (one per ciphertext: the partial it proves is fixed), newest first.
MAX_PROOFS = 4_096
#: Items per worker thread in one engine submission; each submission's results are
#: released when it is done. Small enough that results flow out while a large batch is
#: being computed, large enough that the per-submission overhead stays negligible.
SLICE_PER_WORKER = 8


class PartialCache:
    def __init__(
        self, share: KeyShare, public: ThresholdPublicKey, *, workers: int | None = None
    ) -> None:
        self.share = share
        self.public = public
        self.engine = PartialEngine(share, public, workers=workers)
        self._cache: OrderedDict[int, asyncio.Future[int]] = OrderedDict()
        self._computing: set[asyncio.Task[None]] = set()
        self._proofs: OrderedDict[int, Proof] = OrderedDict()
        self.computed = 0
        self.proofs_computed = 0

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
        todo: list[tuple[int, asyncio.Future[int]]] = []
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
                todo.append((c, future))
            else:
                self._cache.move_to_end(c)
            futures.append(future)
        if todo:
            task = asyncio.create_task(self._compute(todo))
            self._computing.add(task)
            task.add_done_callback(self._computing.discard)
        return [await asyncio.shield(f) for f in futures]

    async def _compute(self, todo: list[tuple[int, asyncio.Future[int]]]) -> None:
        """Submit ``todo`` in slices (all at once: the engine's pool queues them in order)
        and resolve each slice's futures as soon as that slice is done."""
        step = SLICE_PER_WORKER * self.engine.workers
        slices = [todo[i : i + step] for i in range(0, len(todo), step)]
        submitted: list[tuple[list[tuple[int, asyncio.Future[int]]], asyncio.Future[list[int]]]]
        submitted = []
        try:
            for part in slices:
                try:
                    cs = [c for c, _ in part]
                    submitted.append((part, asyncio.wrap_future(self.engine.submit(cs))))
                except Exception as exc:  # e.g. a ciphertext out of range: fail this slice
                    self._fail(part, exc)
            for part, future in submitted:
                try:
                    values = await future
                except Exception as exc:
                    self._fail(part, exc)
                    continue
                for (_, waiting), x in zip(part, values, strict=True):
                    if not waiting.done():
                        waiting.set_result(x)
                self.computed += len(part)
        except BaseException as exc:  # cancelled (purge, stop): nothing more will resolve
            for part, future in submitted:
                future.add_done_callback(_retrieve)  # the engine may still finish (or fail)
                self._fail(part, exc)
            raise
        finally:
            self._trim()

    def _fail(self, part: Sequence[tuple[int, asyncio.Future[int]]], exc: BaseException) -> None:
        """Fail (or cancel) the futures of ``part`` not yet resolved and drop them from the
        cache: a later ask computes them again."""
        for c, future in part:
            if future.done():
                continue
            if self._cache.get(c) is future:
                del self._cache[c]
            if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning

    async def proof(self, c: int, x: int) -> Proof:
        """A proof that ``x`` (this share's partial of ``c``) is right: computed on the
        engine's pool with the GIL released, once per ciphertext (kept, bounded)."""
        cached = self._proofs.get(c)
        if cached is not None:
            self._proofs.move_to_end(c)
            return cached
        made = await asyncio.wrap_future(self.engine.prove(c, x))
        self.proofs_computed += 1
        self._proofs[c] = made
        while len(self._proofs) > MAX_PROOFS:
            self._proofs.popitem(last=False)
        return made

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
        self._proofs.clear()

    def close(self) -> None:
        self.purge()
        self.engine.close()


def _retrieve(future: asyncio.Future[list[int]]) -> None:
    """Mark an abandoned slice's outcome as seen (no "exception was never retrieved")."""
    if not future.cancelled():
        future.exception()

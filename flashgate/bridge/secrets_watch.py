"""Following the secrets bucket: every current envelope, then live puts and deletes.

Each value is checked into this node's own copy of the store
(:class:`~flashgate.bridge.store.EnvelopeStore`) and offered to the loader. The check is
pipelined: values are checked as they come (all but their signatures,
:meth:`~flashgate.bridge.store.EnvelopeStore.check`), their signatures verified in batches
by the checker (a worker process on another core while the initial values are read,
:class:`~flashgate.bridge.signatures.SignatureWorker`; in this process after that), and
each value admitted or refused once its batch is verified, in the order the values, the
deletes and the end of the initial values arrived. An unusable one
is recorded with its reason (and read again when the epoch it was refused for arrives,
:meth:`SecretsWatch.reingest_rejected`). The initial values are streamed
(:func:`flashgate.broker.watch.follow` with ``stream=True``: the latest revision of each
key, checked as it arrives rather than held until the last one is in; a secret written
while the node starts may come just after the end marker, as a live put). After the
initial values (one end marker, which does not trust nats-py's), ``initial_load_done`` is
set once the loader is idle. A share request for a revision this node has not seen yet
is answered from the bucket when it is the key's latest revision there
(:meth:`SecretsWatch.fetch_latest`); the bucket's history is never read for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js.kv import KeyValue

from flashgate.bridge.loader import Loader
from flashgate.bridge.signatures import InlineChecker, SignatureChecker
from flashgate.bridge.store import Checked, Entry, EnvelopeStore, make_entry
from flashgate.bridge.vault import Vault
from flashgate.broker.watch import Deleted, InitialDone, Value, follow
from flashgate.errors import FlashgateError

log = structlog.get_logger("flashgate.bridge")

#: Envelopes checked between two yields to the event loop (the loader, heartbeats and
#: share requests run meanwhile; a node starting with 100k envelopes would otherwise
#: hold the loop for all of them, and every checked-but-unloaded entry at once).
YIELD_EVERY = 256
#: Values whose signatures are verified together (one message to the worker and back).
SIGNATURE_BATCH = 256
#: Checked values waiting for a batch, and batches being verified (bounded: the watch
#: waits rather than holding every checked value of a large bucket at once).
PIPELINE_ITEMS = 2 * SIGNATURE_BATCH
PIPELINE_BATCHES = 4

Spawn = Callable[[Coroutine[Any, Any, None]], None]
_Item = Checked | Deleted | InitialDone
_Batch = tuple[list[_Item], "asyncio.Future[list[bool]]"]


@dataclass
class SecretsWatch:
    fleet: str
    store: EnvelopeStore
    loader: Loader
    vault: Vault
    spawn: Spawn  # a task of the node's
    #: Verifies the signatures of the initial values (then closed: live values are
    #: verified in this process). Started by :meth:`run`.
    checker: SignatureChecker = field(default_factory=InlineChecker)
    initial_load_done: asyncio.Event = field(default_factory=asyncio.Event)
    #: When every initial value was admitted or refused (monotonic; the loader may still be
    #: working on them, or retrying some for a long while: see ``initial_load_done``).
    initial_values_taken_at: float | None = None
    #: The secrets bucket, once bound (before that this node knows no envelope at all).
    kv: KeyValue | None = None

    async def run(self, kv: KeyValue) -> None:
        self.kv = kv
        checked: asyncio.Queue[_Item] = asyncio.Queue(PIPELINE_ITEMS)
        verifying: asyncio.Queue[_Batch] = asyncio.Queue(PIPELINE_BATCHES)
        await self.checker.start()
        stages = [
            asyncio.create_task(self._batch(checked, verifying)),
            asyncio.create_task(self._admit(verifying)),
        ]
        try:
            taken = 0
            async with contextlib.aclosing(follow(kv, stream=True)) as events:
                async for event in events:
                    taken += 1
                    if taken % YIELD_EVERY == 0:  # the initial values come without a pause
                        await asyncio.sleep(0)
                    if isinstance(event, Value):
                        item: _Item = self.store.check(event.key, event.revision, event.value)
                    else:
                        item = event
                    await checked.put(item)
                    for stage in stages:  # a stage that failed fails the watch
                        if stage.done():
                            stage.result()
        finally:
            for stage in stages:
                stage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*stages, return_exceptions=True)
            await self.checker.close()

    async def _batch(self, checked: asyncio.Queue[_Item], verifying: asyncio.Queue[_Batch]) -> None:
        """Take what has been checked (up to SIGNATURE_BATCH values at once) and start the
        verification of its signatures; the next batch is checked meanwhile."""
        while True:
            items = [await checked.get()]
            while not checked.empty() and len(items) < SIGNATURE_BATCH:
                items.append(checked.get_nowait())
            signatures = [s for item in items if isinstance(item, Checked) for s in item.signatures]
            verified = asyncio.ensure_future(self.checker.check(signatures))
            await verifying.put((items, verified))

    async def _admit(self, verifying: asyncio.Queue[_Batch]) -> None:
        """Admit each batch once verified, in order."""
        while True:
            items, verified = await verifying.get()
            valid = iter(await verified)
            for item in items:
                if isinstance(item, Checked):
                    self._take(item, [next(valid) for _ in item.signatures])
                elif isinstance(item, InitialDone):
                    log.info(
                        "initial envelopes read",
                        count=item.count,
                        unusable=len(self.store.rejected),
                    )
                    self.initial_values_taken_at = time.monotonic()
                    # Live values come one by one: verified here from now on.
                    self.spawn(self.checker.close())
                    self.checker = InlineChecker()
                    self.spawn(self._mark_initial_load())
                else:  # deleted: no revision of it is served any more
                    self.store.remove(item.key)
                    self.loader.forget(item.key)

    def _take(self, checked: Checked, valid: list[bool]) -> None:
        stored = self.store.admit(checked, valid)
        if stored is None:
            reason = self.store.rejected.get(checked.key, "malformed")
            log.warning("unusable envelope", key=checked.key, reason=reason)
            self.loader.reject(checked.key, reason)
            return
        if stored is checked.entry:  # else an older revision: the current one stays
            self.loader.offer(stored)

    async def _mark_initial_load(self) -> None:
        await self.loader.wait_idle()
        self.initial_load_done.set()
        log.info("initial load complete", held=len(self.vault), pending=len(self.loader.pending))

    async def reingest_rejected(self) -> None:
        """Envelopes refused for an epoch this node did not have yet: read them again."""
        if self.kv is None:
            return
        for key, reason in list(self.store.rejected.items()):
            if reason != "stale_epoch":
                continue
            with contextlib.suppress(Exception):
                entry = await self.kv.get(key)
                if entry.value and entry.operation is None and entry.revision is not None:
                    stored = self.store.ingest(key, entry.revision, entry.value)
                    if stored is not None:
                        self.loader.offer(stored)

    async def fetch_latest(self, key: str) -> Entry | None:
        """The latest revision of ``key`` in the bucket (checked, not kept): a peer may be
        ahead of this node's watch. None for a deleted key or an unusable value."""
        if self.kv is None:
            return None
        try:
            entry = await self.kv.get(key)
        except Exception:
            return None
        if entry.value is None or entry.operation is not None or entry.revision is None:
            return None
        try:
            return make_entry(
                self.fleet,
                key,
                entry.revision,
                entry.value,
                self.store.keys,
                prove=self.store.prove,
            )
        except FlashgateError:
            return None

"""Following the secrets bucket: every current envelope, then live puts and deletes.

Each value is checked into this node's own copy of the store
(:class:`~flashgate.bridge.store.EnvelopeStore`) and offered to the loader. The check is
pipelined, in batches of up to SIGNATURE_BATCH values:

1. **proved** (:meth:`SecretsWatch._dispatch`): values this node never proved go to the
   checker (a worker process on another core while the initial values are read,
   :class:`~flashgate.bridge.signatures.SignatureWorker`), which proves their stateless
   part (:func:`~flashgate.bridge.value_proof.value_proven`); a batch that comes while the
   worker has PROVE_AHEAD batches to prove is not sent (this process checks it in full).
   While the node reads the fast
   path's wraps, checks are held back (``checking``): values are only proved, up to
   HELD_BATCHES batches ahead, so that the worker is busy from the start;
2. **checked** (:meth:`SecretsWatch._check`): each value checked in this process, all but
   its signatures (:meth:`~flashgate.bridge.store.EnvelopeStore.check`): against this
   node's state only for a value proven (by the worker, or at an earlier start), in full
   otherwise; the signatures left are verified by the checker;
3. **admitted** (:meth:`SecretsWatch._admit`): each value admitted or refused once its
   batch is verified, in the order the values, the deletes and the end of the initial
   values arrived.

An unusable value is recorded with its reason (and read again when the epoch it was
refused for arrives, :meth:`SecretsWatch.reingest_rejected`). The initial values are
streamed (:func:`flashgate.broker.watch.follow` with ``stream=True``: the latest revision
of each key, checked as it arrives rather than held until the last one is in; a secret
written while the node starts may come just after the end marker, as a live put). After
the initial values (one end marker, which does not trust nats-py's), the worker is
stopped (live values are proved and verified in this process) and ``initial_load_done``
is set once the loader is idle. A share request for a revision this node has not seen yet
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
from flashgate.broker.watch import Deleted, InitialDone, Value, follow_batches
from flashgate.errors import FlashgateError

log = structlog.get_logger("flashgate.bridge")

#: Values whose signatures are verified together (one message to the worker and back),
#: and values read at once from the watch, with one yield to the event loop each time
#: (the loader, heartbeats and share requests run meanwhile; a node starting with 100k
#: envelopes would otherwise hold the loop for all of them).
SIGNATURE_BATCH = 256
#: Values waiting for a batch, and batches being proved, checked or verified (bounded:
#: the watch waits rather than holding every value of a large bucket at once).
PIPELINE_ITEMS = 2 * SIGNATURE_BATCH
PIPELINE_BATCHES = 8
#: Batches that may wait, proved, while checks are held back (``checking`` clear: the node
#: reads the fast path's wraps first); the worker proves this many values ahead meanwhile.
HELD_BATCHES = 16
#: Batches of values the worker may be proving at once: a batch that comes while it has
#: this many is checked in full here at once (its signatures still verified by the
#: worker), so that neither this process nor the worker waits on the other.
PROVE_AHEAD = 4

Spawn = Callable[[Coroutine[Any, Any, None]], None]
_Event = Value | Deleted | InitialDone
_Item = Checked | Deleted | InitialDone
#: A batch checked: its items, and the verification of the signatures they still need.
_Checking = tuple[list[_Item], "asyncio.Future[list[bool]]"]


@dataclass(slots=True)
class _Held:
    """A batch proved while checks were held back: checked when it is admitted (so that
    the batches held do not all become decoded entries at once when checks resume)."""

    events: list[_Event]
    found: list[tuple[bytes, bool] | None]


#: A batch on its way: checked at once, or once the checker has proved its values.
_Batch = asyncio.Future[_Checking | _Held]


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


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
    #: The pinned admin key (raw): values not proven at an earlier start are proven under
    #: it by the checker first (empty: every value is checked in full here).
    admin: bytes = b""
    #: Values whose stateless part the checker proved (the signature worker).
    proven_by_worker: int = 0
    #: Clear: values are only proved (by the checker) and wait, up to HELD_BATCHES
    #: batches, to be checked and admitted once it is set. The node holds the checks back
    #: while it reads the fast path's wraps, so that the worker proves values meanwhile
    #: rather than wait for the first ones, and this process reads the wraps first.
    checking: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))
    _proving: list[asyncio.Future[list[bool]]] = field(default_factory=list, repr=False)
    _verifying: set[asyncio.Future[list[bool]]] = field(default_factory=set, repr=False)
    _taken: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def run(self, kv: KeyValue) -> None:
        self.kv = kv
        # Lists of what arrived together (follow_batches), at most SIGNATURE_BATCH each.
        arrived: asyncio.Queue[list[_Event]] = asyncio.Queue(PIPELINE_ITEMS // SIGNATURE_BATCH)
        batches: asyncio.Queue[_Batch] = asyncio.Queue(HELD_BATCHES)
        await self.checker.start()
        stages = [
            asyncio.create_task(self._dispatch(arrived, batches)),
            asyncio.create_task(self._admit(batches)),
        ]
        try:
            lists = follow_batches(kv, stream=True, limit=SIGNATURE_BATCH)
            async with contextlib.aclosing(lists):
                async for events in lists:
                    await asyncio.sleep(0)  # the initial values come without a pause
                    await arrived.put(events)
                    for stage in stages:  # a stage that failed fails the watch
                        if stage.done():
                            stage.result()
        finally:
            for stage in stages:
                stage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*stages, return_exceptions=True)
            pending: list[asyncio.Future[Any]] = [*self._proving, *self._verifying]
            while not batches.empty():
                pending.append(batches.get_nowait())
            for future in pending:
                future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
            await self.checker.close()

    async def _dispatch(
        self, arrived: asyncio.Queue[list[_Event]], batches: asyncio.Queue[_Batch]
    ) -> None:
        """Take what has arrived (up to SIGNATURE_BATCH events at once) as one batch, in
        order: the checker proves its values not proven at an earlier start and this
        process then checks them against its state. While the checker has PROVE_AHEAD
        batches to prove, the batch is checked in full here at once (a full check costs
        this process about half what it saves the worker, whose signature checks stay),
        or, while checks are held back (``checking``), waits for the checker. Either way
        the next batch is taken meanwhile; batches are admitted in the order they arrived.
        Up to PIPELINE_BATCHES batches wait to be admitted (HELD_BATCHES while checks are
        held back: they are checked when admitted)."""
        carry: list[_Event] = []  # taken from ``arrived``, past the last batch's end
        while True:
            while batches.qsize() >= (PIPELINE_BATCHES if self.checking.is_set() else HELD_BATCHES):
                await self._taken.wait()
                self._taken.clear()
            events = carry or await arrived.get()
            while not arrived.empty() and len(events) < SIGNATURE_BATCH:
                events = events + arrived.get_nowait()
            events, carry = events[:SIGNATURE_BATCH], events[SIGNATURE_BATCH:]
            found = [
                self.store.fingerprint(e.key, e.value) if isinstance(e, Value) else None
                for e in events
            ]
            ask = [i for i, f in enumerate(found) if f is not None and not f[1]]
            self._proving = [f for f in self._proving if not f.done()]
            while ask and self.admin and not self.checking.is_set() and not self._has_room():
                await asyncio.wait(self._proving, return_when=asyncio.FIRST_COMPLETED)
            if ask and self.admin and self._has_room():
                asked = [events[i] for i in ask]
                values = [(e.key, e.value) for e in asked if isinstance(e, Value)]
                proven = asyncio.ensure_future(self.checker.prove(self.admin, self.fleet, values))
                self._proving.append(proven)
                batch: _Batch = asyncio.ensure_future(
                    self._check_proven(events, found, ask, proven)
                )
            elif self.checking.is_set():
                batch = asyncio.get_running_loop().create_future()
                batch.set_result(self._check(events, found))
            else:
                batch = asyncio.get_running_loop().create_future()
                batch.set_result(_Held(events, found))
            await batches.put(batch)

    def _has_room(self) -> bool:
        """Whether the checker has fewer than PROVE_AHEAD batches to prove."""
        self._proving = [f for f in self._proving if not f.done()]
        return len(self._proving) < PROVE_AHEAD

    async def _check_proven(
        self,
        events: list[_Event],
        found: list[tuple[bytes, bool] | None],
        ask: list[int],
        proven: asyncio.Future[list[bool]],
    ) -> _Checking | _Held:
        """:meth:`_check` once the checker has said which of the values at ``ask`` it
        proved (a value it did not prove is checked in full here); held back: later."""
        for i, ok in zip(ask, await proven, strict=True):
            fingerprint = found[i]
            if ok and fingerprint is not None:
                found[i] = (fingerprint[0], True)
                self.proven_by_worker += 1
        if not self.checking.is_set():
            return _Held(events, found)
        return self._check(events, found)

    def _check(self, events: list[_Event], found: list[tuple[bytes, bool] | None]) -> _Checking:
        """Check a batch's values, all but the signatures still to verify, whose
        verification then starts."""
        items: list[_Item] = [
            self.store.check(event.key, event.revision, event.value, found=f)
            if isinstance(event, Value)
            else event
            for event, f in zip(events, found, strict=True)
        ]
        signatures = [s for item in items if isinstance(item, Checked) for s in item.signatures]
        verified = asyncio.ensure_future(self.checker.check(signatures))
        self._verifying.add(verified)
        verified.add_done_callback(self._verifying.discard)
        return items, verified

    async def _admit(self, batches: asyncio.Queue[_Batch]) -> None:
        """Admit each batch once checked and verified, in the order the batches arrived."""
        while True:
            batch = await batches.get()
            self._taken.set()
            ready = await batch
            if isinstance(ready, _Held):
                await self.checking.wait()
                ready = self._check(ready.events, ready.found)
                await asyncio.sleep(0)  # the loader opens what came before meanwhile
            items, verified = ready
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

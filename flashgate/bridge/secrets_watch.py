"""Following the secrets bucket: every current envelope, then live puts and deletes.

Each value is checked into this node's own copy of the store
(:class:`~flashgate.bridge.store.EnvelopeStore`) and offered to the loader; an unusable one
is recorded with its reason (and read again when the epoch it was refused for arrives,
:meth:`SecretsWatch.reingest_rejected`). After the initial values (one end marker,
:func:`flashgate.broker.watch.follow`, which does not trust nats-py's), ``initial_load_done``
is set once the loader is idle. A share request for a revision this node has not seen yet
is answered from the bucket when it is the key's latest revision there
(:meth:`SecretsWatch.fetch_latest`); the bucket's history is never read for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.js.kv import KeyValue

from flashgate.bridge.loader import Loader
from flashgate.bridge.store import Entry, EnvelopeStore, make_entry
from flashgate.bridge.vault import Vault
from flashgate.broker.watch import Deleted, InitialDone, follow
from flashgate.errors import FlashgateError

log = structlog.get_logger("flashgate.bridge")

#: Envelopes checked between two yields to the event loop (the loader, heartbeats and
#: share requests run meanwhile; a node starting with 100k envelopes would otherwise
#: hold the loop for all of them, and every checked-but-unloaded entry at once).
YIELD_EVERY = 256

Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class SecretsWatch:
    fleet: str
    store: EnvelopeStore
    loader: Loader
    vault: Vault
    spawn: Spawn  # a task of the node's
    initial_load_done: asyncio.Event = field(default_factory=asyncio.Event)
    #: The secrets bucket, once bound (before that this node knows no envelope at all).
    kv: KeyValue | None = None

    async def run(self, kv: KeyValue) -> None:
        self.kv = kv
        taken = 0
        async with contextlib.aclosing(follow(kv)) as events:
            async for event in events:
                taken += 1
                if taken % YIELD_EVERY == 0:  # the initial values come without a pause
                    await asyncio.sleep(0)
                if isinstance(event, InitialDone):
                    log.info(
                        "initial envelopes read",
                        count=event.count,
                        unusable=len(self.store.rejected),
                    )
                    self.spawn(self._mark_initial_load())
                elif isinstance(event, Deleted):  # no revision of it is served any more
                    self.store.remove(event.key)
                    self.loader.forget(event.key)
                else:
                    stored = self.store.ingest(event.key, event.revision, event.value)
                    if stored is None:
                        reason = self.store.rejected.get(event.key, "malformed")
                        log.warning("unusable envelope", key=event.key, reason=reason)
                        self.loader.reject(event.key, reason)
                        continue
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

"""Turning envelopes into held secrets: the queue between the store and the vault.

Every envelope that arrives (initial values and live updates) is queued; the loader takes
batches, has the collector gather and combine partials, opens each JWE with the context
it was found under, checks the plaintext against the envelope's kind (a value that does
not match, :func:`flashgate.events.values.check_value`, is never held: it is logged
without the value, counted, and reported as pending ``invalid_value``), and hands the
plaintext to the vault (newer versions replace older ones; a lower version is refused
as a rollback). What cannot be loaded yet stays pending
with a reason and is retried with backoff, and at once when a peer comes back.

With the fast path (DESIGN §6, :mod:`flashgate.bridge.fastpath`), each batch is first
offered to it: an envelope whose fast wrap opens its payload (under the JWE's own tag) is
held at once, the rest go the cold path as above. Every envelope opened by the cold path
hands its content key to the fast path (to be wrapped under the ring's current term).
Both paths end in the same place (:meth:`Loader._hold`): the value checked against its
kind, then the vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from flashgate.bridge.collector import Collector, CollectResult
from flashgate.bridge.store import Entry
from flashgate.bridge.vault import Vault
from flashgate.crypto import fastwrap
from flashgate.errors import (
    DecryptionError,
    FlashgateError,
    InvalidSecretValue,
    StaleVersion,
    VersionConflict,
)
from flashgate.events.values import check_value

log = structlog.get_logger("flashgate.bridge.loader")

BATCH = 1024
# The backoff is kept by hand rather than with tenacity (as the backend's retries are): wake()
# (a peer is back) cuts the wait short and resets it, and a batch can partly succeed.
MAX_BACKOFF_S = 10.0
#: Envelopes opened by the fast path between two yields to the event loop.
FAST_SLICE = 256


class FastOpener(Protocol):
    """The fast path as the loader sees it (:class:`flashgate.bridge.fastpath.FastPath`)."""

    def open(self, entry: Entry) -> bytearray | None: ...
    def opened_cold(self, entry: Entry, cek: bytearray) -> None: ...
    def forget(self, key: str) -> None: ...


@dataclass
class Loader:
    vault: Vault
    collectors: dict[int, Collector]  # one per fleet key epoch this node holds a share of
    pending: dict[str, str] = field(default_factory=dict)  # key -> reason
    loaded: int = 0
    # Envelopes that opened to a value that is not of their kind (never held).
    invalid_values: int = 0
    # Told of an envelope whose threshold result checked (y^e = c) and whose payload still
    # does not open: its wrapped key is not its content key (a bad re-wrap, DESIGN §5).
    on_unopenable: Callable[[Entry], None] | None = None
    #: The fast path, tried first for every envelope (None: the cold path only).
    fast: FastOpener | None = None
    loaded_fast: int = 0  # envelopes held by the fast path
    _queue: dict[str, Entry] = field(default_factory=dict)
    _latest: dict[str, Entry] = field(default_factory=dict)  # the entry each key should end as
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _backoff: float = 0.5

    def offer(self, entry: Entry) -> None:
        """A new or changed envelope: (re)load it unless the vault holds it from this very
        envelope. The same version with another wrapped key (re-wrapped during a fleet key
        rotation, or a re-wrap put back) is loaded again: every envelope a node reports
        holding is one it has opened, so a re-wrap that does not open is always seen; one
        that opens to another value is no re-wrap and replaces nothing (the vault refuses
        it, pending ``version_conflict``)."""
        if not entry.retained:
            return  # opened once already (held or refused): a new value comes as a new entry
        held = self.vault.held_as(entry.key)
        if held is not None:
            version, _, source = held
            if entry.version < version:
                self.vault.rollbacks_refused += 1
                log.warning("rollback refused", key=entry.key, version=entry.version, held=version)
                self.pending.pop(entry.key, None)
                return
            if entry.version == version and entry.digest == source:
                self.pending.pop(entry.key, None)
                return
        if entry.epoch not in self.collectors:
            self.pending[entry.key] = "other_epoch"
            return
        self._queue[entry.key] = entry
        self._latest[entry.key] = entry
        self.pending[entry.key] = "loading"
        self._idle.clear()
        self._wake.set()

    def forget(self, key: str) -> None:
        """Deleted upstream: drop from the queue, purge from the vault."""
        self._queue.pop(key, None)
        self._latest.pop(key, None)
        self.pending.pop(key, None)
        if self.fast is not None:
            self.fast.forget(key)
        if self.vault.delete(key):
            log.info("secret purged", key=key)

    def reject(self, key: str, reason: str) -> None:
        self._queue.pop(key, None)
        self._latest.pop(key, None)
        self.pending[key] = reason

    def wake(self) -> None:
        """Something changed (a peer is back): retry pending work now."""
        self._backoff = 0.5
        self._wake.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(itertools.islice(self._queue.values(), BATCH))  # (not a copy of all)
            for entry in batch:
                self._queue.pop(entry.key, None)
            # One opened meanwhile (offered again while it was being collected) is done.
            batch = [entry for entry in batch if entry.retained]
            started = time.monotonic()
            self._wake.clear()  # a wake() during the collection must not be lost
            fast = 0
            if self.fast is not None:
                batch, fast = await self._open_fast(batch)
            result = await self._collect(batch) if batch else CollectResult()
            retry = []
            for entry in batch:
                if self._latest.get(entry.key) is not entry:
                    continue  # deleted or superseded while it was being collected
                y = result.values.get(entry.key)
                if y is None:
                    self.pending[entry.key] = result.failed.get(entry.key, "no_quorum")
                    retry.append(entry)
                    continue
                self._open(entry, y)
            if result.values or fast:
                log.info(
                    "secrets loaded",
                    count=len(result.values) + fast,
                    fast=fast,
                    pending=len(retry),
                    seconds=round(time.monotonic() - started, 3),
                )
            if retry:
                for entry in retry:  # a newer value may have arrived meanwhile
                    self._queue.setdefault(entry.key, entry)
                log.warning(
                    "secrets pending",
                    count=len(retry),
                    reason=self.pending.get(retry[0].key),
                    retry_in=self._backoff,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            else:
                self._backoff = 0.5

    async def _collect(self, batch: list[Entry]) -> CollectResult:
        """Collect each epoch's entries with that epoch's collector (at once)."""
        by_epoch: dict[int, list[Entry]] = {}
        for entry in batch:
            by_epoch.setdefault(entry.epoch, []).append(entry)
        result = CollectResult()
        missing = [e for e in by_epoch if e not in self.collectors]
        for epoch in missing:  # retired while queued
            for entry in by_epoch.pop(epoch):
                result.failed[entry.key] = "other_epoch"
        parts = await asyncio.gather(
            *(self.collectors[epoch].collect(entries) for epoch, entries in by_epoch.items())
        )
        for part in parts:
            result.values.update(part.values)
            result.failed.update(part.failed)
        return result

    async def _open_fast(self, batch: list[Entry]) -> tuple[list[Entry], int]:
        """Hold what the fast path opens; returns (the rest, for the cold path, and how
        many were held). Yields to the event loop every FAST_SLICE envelopes."""
        assert self.fast is not None
        cold: list[Entry] = []
        held = 0
        for i, entry in enumerate(batch):
            if i and i % FAST_SLICE == 0:
                await asyncio.sleep(0)
            if self._latest.get(entry.key) is not entry or not entry.retained:
                continue  # deleted, superseded or opened meanwhile
            plaintext = self.fast.open(entry)
            if plaintext is None:
                cold.append(entry)
                continue
            if self._hold(entry, plaintext):
                held += 1
                self.loaded_fast += 1
            entry.release()  # opened: its envelope is not needed any more
        return cold, held

    def _open(self, entry: Entry, y: int) -> None:
        """The cold path's end: open the JWE with the combined result y, hold the value,
        and give the content key to the fast path."""
        if not entry.retained:
            return  # opened meanwhile (offered again while it was being collected)
        collector = self.collectors.get(entry.epoch)
        if collector is None:
            self.pending[entry.key] = "other_epoch"
            return
        try:
            cek = fastwrap.content_key(entry.parsed, y, collector.public.key)
            try:
                plaintext = fastwrap.open_payload(entry.parsed, cek, entry.envelope)
            except FlashgateError:
                fastwrap.wipe(cek)
                raise
        except FlashgateError as exc:
            self.pending[entry.key] = exc.code
            log.error("envelope does not open", key=entry.key, reason=exc.code)
            if isinstance(exc, DecryptionError) and self.on_unopenable is not None:
                self.on_unopenable(entry)
            return
        try:
            if self._hold(entry, plaintext) and self.fast is not None:
                self.fast.opened_cold(entry, cek)
        finally:
            fastwrap.wipe(cek)
        entry.release()  # opened: its envelope is not needed any more

    def _hold(self, entry: Entry, plaintext: bytearray) -> bool:
        """Check ``plaintext`` against the envelope's kind and put it in the vault (the
        buffer is wiped either way). Returns whether the vault holds it now."""
        envelope = entry.envelope
        try:
            try:
                check_value(envelope.kind, plaintext)
            except InvalidSecretValue as exc:
                plaintext[:] = bytes(len(plaintext))
                self.invalid_values += 1
                self.pending[entry.key] = exc.code
                # The reason's code and the kind only: the message may quote the value.
                log.error(
                    "secret value does not match its kind; not served",
                    key=entry.key,
                    kind=envelope.kind,
                    version=envelope.version,
                    reason=exc.code,
                )
                return False
            api_key_id = envelope.api_key.key_id if envelope.api_key is not None else None
            # What the admin's statement proves of the key (check_provenance checked it
            # equals the envelope's metadata): a gateway authorizes with it.
            proven = envelope.provenance.statement.api_key if envelope.provenance else None
            replaced = self.vault.put(
                entry.key,
                envelope.version,
                envelope.epoch,
                envelope.kind,
                plaintext,
                api_key_id=api_key_id,
                source=entry.digest,
                api_key=proven,
            )
        except StaleVersion:
            self.pending.pop(entry.key, None)
            log.warning("rollback refused", key=entry.key, version=envelope.version)
            return False
        except VersionConflict as exc:  # not a re-wrap: the held value stays
            self.pending[entry.key] = exc.code
            log.error(
                "another value at the held version refused", key=entry.key, version=envelope.version
            )
            return False
        self.pending.pop(entry.key, None)
        if replaced:
            self.loaded += 1
        return True

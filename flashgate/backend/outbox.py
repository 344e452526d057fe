"""The transactional outbox: what to publish, written in the same transaction as the change.

A command's rows, its audit row and its outbox rows commit together; :class:`Relay`
publishes committed rows afterwards, in id order, each with a ``Nats-Msg-Id`` so that a
crash between publish and marking the row published duplicates nothing (JetStream drops
the second copy within the duplicate window). KV writes are publishes to the bucket's
stream subject ``$KV.<bucket>.<key>`` (a delete marker carries ``KV-Operation: DEL``), so
they get the same deduplication as events.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flashgate.backend.models import OutboxMessage
from flashgate.events.domain import DomainEvent, encode_event
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.subjects import FleetNames

log = structlog.get_logger("flashgate.backend.outbox")

KV_DELETE_HEADERS = {"KV-Operation": "DEL"}
#: A purge also drops the key's earlier revisions from the bucket's stream.
KV_PURGE_HEADERS = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def add_kv_put(
    session: AsyncSession, names: FleetNames, envelope: SecretEnvelope, *, tag: str = ""
) -> None:
    """``tag`` makes the message id unique where the same version and epoch can be put
    twice (a re-wrap, its revert, the next re-wrap)."""
    session.add(
        OutboxMessage(
            subject=kv_subject(names.secrets_bucket, envelope.key),
            msg_id=f"kv:{envelope.key}:v{envelope.version}:e{envelope.epoch}{tag}",
            operation="put",
            payload=ENVELOPE_CODEC.encode(envelope),
        )
    )


def add_kv_delete(session: AsyncSession, names: FleetNames, key: str, last_version: int) -> None:
    session.add(
        OutboxMessage(
            subject=kv_subject(names.secrets_bucket, key),
            msg_id=f"kv-del:{key}:v{last_version}",
            operation="del",
            payload=b"",
        )
    )


def add_fleet_document(
    session: AsyncSession, names: FleetNames, key: str, payload: bytes, msg_id: str
) -> None:
    session.add(
        OutboxMessage(
            subject=kv_subject(names.fleet_bucket, key),
            msg_id=msg_id,
            operation="put",
            payload=payload,
        )
    )


def add_fleet_purge(session: AsyncSession, names: FleetNames, key: str, msg_id: str) -> None:
    session.add(
        OutboxMessage(
            subject=kv_subject(names.fleet_bucket, key),
            msg_id=msg_id,
            operation="purge",
            payload=b"",
        )
    )


def add_event(session: AsyncSession, names: FleetNames, event: DomainEvent) -> OutboxMessage:
    row = OutboxMessage(
        subject=names.event_subject(event.short_type),
        msg_id=f"evt:{event.id}",
        operation="event",
        payload=encode_event(event),
    )
    session.add(row)
    return row


Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
"""publish(subject, payload, headers): a JetStream publish that raises on failure."""


class Relay:
    """Publishes committed outbox rows in id order; retries with backoff while NATS is away.

    With several backend replicas only one relays at a time: the caller holds the relay
    lease (:mod:`flashgate.backend.lease`) while running it, which keeps the order.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        batch: int = 256,
        idle_interval: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._batch = batch
        self._idle = idle_interval
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._stopped = False
        self.published = 0

    def wake(self) -> None:
        """Called after a commit that added outbox rows: relay now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ask :meth:`run` to end at its next step (cancellation alone can be lost on
        Python 3.11, where ``asyncio.wait_for`` may swallow it)."""
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopped:
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, database hiccup: retry with backoff
                log.warning(
                    "outbox relay failed; retrying",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    retry_in=round(backoff, 2),
                )
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if sent == 0 and not self._stopped:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                try:  # asyncio.wait, not wait_for: it never swallows a cancellation
                    await asyncio.wait({waiter}, timeout=self._idle)
                finally:
                    waiter.cancel()

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; returns how many were published."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    .order_by(OutboxMessage.id)
                    .limit(self._batch)
                )
            ).all()
            pending = [(r.id, r.subject, r.payload, r.msg_id, r.operation) for r in rows]
        done: list[int] = []
        try:
            for row_id, subject, payload, msg_id, operation in pending:
                headers = {"Nats-Msg-Id": msg_id}
                if operation == "del":
                    headers |= KV_DELETE_HEADERS
                elif operation == "purge":
                    headers |= KV_PURGE_HEADERS
                await self._publish(subject, payload, headers)
                done.append(row_id)
        finally:
            if done:
                await self._mark_published(done)
        self.published += len(done)
        return len(done)

    async def _mark_published(self, ids: list[int]) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids))
                .values(published_at=datetime.now(UTC))
            )

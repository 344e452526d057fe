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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.js import api, kv
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random_exponential,
)

from flashgate.backend.models import OutboxMessage
from flashgate.backend.store import Store
from flashgate.errors import BrokerUnavailable
from flashgate.events.domain import DomainEvent, encode_event
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.subjects import FleetNames

log = structlog.get_logger("flashgate.backend.outbox")

OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]

_OUTBOX_INSERT = insert(OUTBOX)
_PENDING = (
    select(OUTBOX.c.id, OUTBOX.c.subject, OUTBOX.c.payload, OUTBOX.c.msg_id, OUTBOX.c.operation)
    .where(OUTBOX.c.published_at.is_(None))
    .order_by(OUTBOX.c.id)
    .limit(bindparam("b_limit"))
)
_MARK_PUBLISHED = update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("b_ids", expanding=True)))

# What nats-py's own KeyValue.delete and KeyValue.purge send, with its constants.
KV_DELETE_HEADERS = {kv.KV_OP: kv.KV_DEL}
#: A purge also drops the key's earlier revisions from the bucket's stream.
KV_PURGE_HEADERS = {kv.KV_OP: kv.KV_PURGE, api.Header.ROLLUP.value: kv.MSG_ROLLUP_SUBJECT}
#: A put that replaces the key's earlier revisions in the bucket's stream (a value, no marker).
KV_ROLLUP_HEADERS = {api.Header.ROLLUP.value: kv.MSG_ROLLUP_SUBJECT}


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_put_row(names: FleetNames, envelope: SecretEnvelope, *, tag: str = "") -> dict[str, Any]:
    """The outbox row of a KV put, as column values (for :func:`insert_rows`). ``tag``
    makes the message id unique where the same version and epoch can be put twice (a
    re-wrap, its revert, the next re-wrap)."""
    return {
        "subject": kv_subject(names.secrets_bucket, envelope.key),
        "msg_id": f"kv:{envelope.key}:v{envelope.version}:e{envelope.epoch}{tag}",
        "operation": "put",
        "payload": ENVELOPE_CODEC.encode(envelope),
    }


def event_msg_id(event_id: str) -> str:
    return f"evt:{event_id}"


def event_row(names: FleetNames, event: DomainEvent) -> dict[str, Any]:
    """The outbox row of a domain event, as column values (for :func:`insert_rows`)."""
    return {
        "subject": names.event_subject(event.short_type),
        "msg_id": event_msg_id(event.id),
        "operation": "event",
        "payload": encode_event(event),
    }


async def insert_rows(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows with one Core statement, ids in list order. Rows added to the
    session with the ``add_*`` functions are flushed first, so they keep their place."""
    if not rows:
        return
    await session.flush()
    now = datetime.now(UTC)
    connection = await session.connection()
    await connection.execute(_OUTBOX_INSERT, [{**row, "created_at": now} for row in rows])


def add_kv_put(
    session: AsyncSession, names: FleetNames, envelope: SecretEnvelope, *, tag: str = ""
) -> None:
    session.add(OutboxMessage(**kv_put_row(names, envelope, tag=tag)))


def kv_delete_row(names: FleetNames, key: str, last_version: int) -> dict[str, Any]:
    """The outbox row of a KV delete marker."""
    return {
        "subject": kv_subject(names.secrets_bucket, key),
        "msg_id": f"kv-del:{key}:v{last_version}",
        "operation": "del",
        "payload": b"",
    }


def kv_rollup_row(names: FleetNames, envelope: SecretEnvelope, *, tag: str) -> dict[str, Any]:
    """The outbox row that puts ``envelope`` again as the only revision its key keeps."""
    return {**kv_put_row(names, envelope, tag=tag), "operation": "rollup"}


def kv_purge_row(names: FleetNames, key: str, msg_id: str) -> dict[str, Any]:
    """The outbox row that purges a secrets-bucket key and every earlier revision of it."""
    return {
        "subject": kv_subject(names.secrets_bucket, key),
        "msg_id": msg_id,
        "operation": "purge",
        "payload": b"",
    }


def fleet_document_row(names: FleetNames, key: str, payload: bytes, msg_id: str) -> dict[str, Any]:
    """The outbox row of a fleet-bucket document (descriptor, roster, rotation, epoch)."""
    return {
        "subject": kv_subject(names.fleet_bucket, key),
        "msg_id": msg_id,
        "operation": "put",
        "payload": payload,
    }


def fleet_purge_row(names: FleetNames, key: str, msg_id: str) -> dict[str, Any]:
    """The outbox row that purges a fleet-bucket key (and its earlier revisions)."""
    return {
        "subject": kv_subject(names.fleet_bucket, key),
        "msg_id": msg_id,
        "operation": "purge",
        "payload": b"",
    }


def add_event(session: AsyncSession, names: FleetNames, event: DomainEvent) -> OutboxMessage:
    row = OutboxMessage(**event_row(names, event))
    session.add(row)
    return row


Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
"""publish(subject, payload, headers): a JetStream publish that raises on failure."""

#: Publishes a relay keeps in flight at once (one group at most this large).
MAX_IN_FLIGHT = 64


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A committed, not yet published outbox row."""

    id: int
    subject: str
    payload: bytes
    msg_id: str
    operation: str  # put | rollup | del | purge | event

    @property
    def headers(self) -> dict[str, str]:
        headers = {api.Header.MSG_ID.value: self.msg_id}
        if self.operation == "del":
            headers |= KV_DELETE_HEADERS
        elif self.operation == "purge":
            headers |= KV_PURGE_HEADERS
        elif self.operation == "rollup":
            headers |= KV_ROLLUP_HEADERS
        return headers


def plan_groups(
    rows: Sequence[PendingRow], keyed_prefix: str | None, *, limit: int = MAX_IN_FLIGHT
) -> list[list[PendingRow]]:
    """Split pending rows (in id order) into groups that are published one after another,
    the rows of a group concurrently, a group only once every row of the one before is
    acknowledged. The cuts keep three orders:

    * **keyed** rows (subject under ``keyed_prefix``: the secrets bucket) stay in order per
      subject: a group never holds two rows of one subject;
    * an **event** is published only after every row before it (it may state what the
      buckets already show), so it always starts a group, and events keep their order;
      keyed rows after it may share its group;
    * any **other** row (a fleet-bucket document, a purge) is published alone, after every
      row before it and before every row after it.

    ``keyed_prefix=None`` makes every non-event row "other": one row at a time, in order.
    """
    groups: list[list[PendingRow]] = []
    group: list[PendingRow] = []
    subjects: set[str] = set()
    solo = False  # the current group holds an "other" row: nothing may join it
    for row in rows:
        keyed = (
            keyed_prefix is not None
            and row.operation != "event"
            and row.subject.startswith(keyed_prefix)
        )
        if group and (solo or not keyed or row.subject in subjects or len(group) >= limit):
            groups.append(group)
            group, subjects = [], set()
        solo = not keyed and row.operation != "event"
        group.append(row)
        subjects.add(row.subject)
    if group:
        groups.append(group)
    return groups


#: Longest backoff step (seconds) while NATS does not take the relay's publishes: the
#: relay resumes within about a second of a stream having a leader again.
BROKER_BACKOFF = 0.6


def _log_relay_failure(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "outbox relay failed; retrying",
        error=type(exc).__name__,
        detail=str(exc)[:200],
        retry_in=round(state.next_action.sleep, 2) if state.next_action is not None else None,
    )


class Relay:
    """Publishes committed outbox rows in id order; retries with backoff while NATS is away.

    Rows are published in groups (:func:`plan_groups`), up to :data:`MAX_IN_FLIGHT` at
    once. When a publish fails, the rest of its group is still awaited, every acknowledged
    row is marked published (each depends only on rows of earlier, fully acknowledged
    groups) and the error is raised; the next attempt republishes the unacknowledged rows,
    in order, under the same ``Nats-Msg-Id``, so a row that was stored but whose
    acknowledgement was lost is dropped by JetStream as a duplicate.

    With several backend replicas only one relays at a time: the caller holds the relay
    lease (:mod:`flashgate.backend.lease`) while running it, which keeps the order.
    """

    def __init__(
        self,
        store: Store,
        publish: Publish,
        *,
        keyed_prefix: str | None = None,
        batch: int = 256,
        max_in_flight: int = MAX_IN_FLIGHT,
        idle_interval: float = 0.05,
        max_backoff: float = 5.0,
        broker_backoff: float = BROKER_BACKOFF,
    ) -> None:
        self._store = store
        self._publish = publish
        self._keyed_prefix = keyed_prefix
        self._batch = batch
        self._max_in_flight = max_in_flight
        self._idle = idle_interval
        self._max_backoff = max_backoff
        self._broker_backoff = broker_backoff
        self._wake = asyncio.Event()
        self._stopped = False
        self.published = 0
        self._unmarked: list[int] = []  # published, to be marked with the next read

    def wake(self) -> None:
        """Called after a commit that added outbox rows: relay now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ask :meth:`run` to end at its next step (cancellation alone can be lost on
        Python 3.11, where ``asyncio.wait_for`` may swallow it)."""
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopped:
            # Cleared before the read, so that a commit made while this pass runs ends
            # the wait below at once (cleared after, it would wait for the idle poll).
            self._wake.clear()
            sent = await self._relay_retrying()
            if sent == 0 and not self._stopped:
                waiter = asyncio.ensure_future(self._wake.wait())
                try:  # asyncio.wait, not wait_for: it never swallows a cancellation
                    await asyncio.wait({waiter}, timeout=self._idle)
                finally:
                    waiter.cancel()

    async def _relay_retrying(self) -> int:
        """One pass of :meth:`relay_once`, retried while it fails (NATS away, a database
        hiccup) until it succeeds or the relay is stopped (then: 0); see :meth:`retry_wait`.
        A cancellation is never retried."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=self.retry_wait,
            stop=lambda _: self._stopped,
            before_sleep=_log_relay_failure,
            retry_error_callback=lambda _: 0,
        )
        sent: int = await retrying(self.relay_once)
        return sent

    def retry_wait(self, state: RetryCallState) -> float:
        """The wait before retry n: b/2 + uniform(0, b), b = 0.1 s · 2^(n-1), exponential
        with jitter so that replicas do not retry in step. b stops at ``max_backoff`` after
        a database failure, at ``broker_backoff`` when NATS did not take the publish (no
        stream leader during a failover, a reconnect): a retry costs NATS one refused
        request, and a long wait would idle the relay after the new leader is elected."""
        exc = state.outcome.exception() if state.outcome is not None else None
        cap = self._broker_backoff if isinstance(exc, BrokerUnavailable) else self._max_backoff
        return float(
            wait_exponential(multiplier=0.05, max=cap / 2)(state)
            + wait_random_exponential(multiplier=0.1, max=cap)(state)
        )

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; returns how many were published.

        The rows of a batch that all went out are marked published in the transaction
        that reads the next batch (one transaction per batch, not two); rows of a batch
        that failed are marked at once. Until marked, a row is only republished (a crash,
        another replica taking the lease), and JetStream drops the copy.
        """
        unmarked = self._unmarked
        # A pass that marks rows is a write transaction; one that only reads is not.
        async with self._store.transaction(writes=bool(unmarked)) as session:
            connection = await session.connection()
            if unmarked:
                await connection.execute(
                    _MARK_PUBLISHED, {"b_ids": unmarked, "published_at": datetime.now(UTC)}
                )
            result = await connection.execute(_PENDING, {"b_limit": self._batch})
            pending = [PendingRow(*row) for row in result]
        if unmarked is self._unmarked:
            self._unmarked = []
        done: list[int] = []

        async def publish(row: PendingRow) -> None:
            await self._publish(row.subject, row.payload, row.headers)
            done.append(row.id)

        try:
            for group in plan_groups(pending, self._keyed_prefix, limit=self._max_in_flight):
                if len(group) == 1:
                    await publish(group[0])
                    continue
                results = await asyncio.gather(
                    *(publish(row) for row in group), return_exceptions=True
                )
                for outcome in results:
                    if isinstance(outcome, BaseException):
                        raise outcome
        except BaseException:
            if done:
                await self._mark_published(done)
            raise
        self._unmarked = done
        self.published += len(done)
        return len(done)

    async def _mark_published(self, ids: list[int]) -> None:
        async with self._store.transaction() as session:
            connection = await session.connection()
            await connection.execute(
                _MARK_PUBLISHED, {"b_ids": ids, "published_at": datetime.now(UTC)}
            )

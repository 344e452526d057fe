"""The outbox relay against a real nats-server, on SQLite and PostgreSQL: pipelined
publishing keeps per-key order and event order, and a failure in the middle of a group
stops the relay, marks exactly the acknowledged rows, and a retry publishes everything
exactly once (JetStream drops the republished copy of a row whose ack was lost)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flashgate.backend.models import OutboxMessage
from flashgate.backend.outbox import PendingRow, Relay, kv_subject, plan_groups
from flashgate.backend.store import Store, open_store
from flashgate.broker.connection import broker_errors
from flashgate.broker.declare import declare_fleet
from flashgate.errors import BrokerUnavailable
from flashgate.events.subjects import FleetNames

pytestmark = pytest.mark.nats

# --------------------------------------------------------------------------- planning


def _row(i: int, subject: str, operation: str = "put") -> PendingRow:
    return PendingRow(i, subject, b"", f"m{i}", operation)


def test_plan_groups_cuts_at_repeated_keys_events_and_other_rows() -> None:
    k = "$KV.s."
    rows = [
        _row(1, k + "a"),
        _row(2, k + "b"),
        _row(3, k + "a"),  # same key as 1: new group
        _row(4, "evt.x", "event"),  # an event starts a group ...
        _row(5, k + "b"),  # ... keyed rows after it may join
        _row(6, "evt.y", "event"),  # the next event: a new group
        _row(7, "$KV.f.epoch"),  # another bucket: alone
        _row(8, k + "c"),
    ]
    groups = [[r.id for r in g] for g in plan_groups(rows, k)]
    assert groups == [[1, 2], [3], [4, 5], [6], [7], [8]]


def test_plan_groups_limit_and_sequential_without_prefix() -> None:
    rows = [_row(i, f"$KV.s.k{i}") for i in range(10)]
    assert [len(g) for g in plan_groups(rows, "$KV.s.", limit=4)] == [4, 4, 2]
    assert [len(g) for g in plan_groups(rows, None)] == [1] * 10


def test_plan_groups_headers_of_deletes_and_purges() -> None:
    assert _row(1, "$KV.s.a", "del").headers == {"Nats-Msg-Id": "m1", "KV-Operation": "DEL"}
    assert _row(2, "$KV.f.r", "purge").headers == {
        "Nats-Msg-Id": "m2",
        "KV-Operation": "PURGE",
        "Nats-Rollup": "sub",
    }
    assert _row(3, "evt.x", "event").headers == {"Nats-Msg-Id": "m3"}


# --------------------------------------------------------------------------- with NATS


@dataclass
class Recorder:
    """A JetStream publish that records what it saw, completes in a shuffled order (a
    random short sleep first) and fails on request: ``before`` (nothing stored) or
    ``after`` (stored, the acknowledgement lost)."""

    js: JetStreamContext
    order: list[str]  # msg ids in outbox id order
    fail: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    started: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    violations: list[str] = field(default_factory=list)

    async def __call__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        msg_id = headers["Nats-Msg-Id"]
        if msg_id.startswith("evt:"):
            earlier = self.order[: self.order.index(msg_id)]
            missing = set(earlier) - set(self.acked)
            if missing:
                self.violations.append(f"{msg_id} started before {sorted(missing)} acked")
        self.started.append(msg_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rng.random() * 0.003)
            mode = self.fail.pop(msg_id, None)
            if mode == "before":
                raise BrokerUnavailable(f"injected failure before publishing {msg_id}")
            with broker_errors("test publish"):
                await self.js.publish(subject, payload, headers=headers, timeout=5)
            if mode == "after":
                raise BrokerUnavailable(f"injected failure after publishing {msg_id}")
            self.acked.append(msg_id)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = open_store(db_url)
    yield opened
    await opened.close()


@pytest.fixture
def sessions(store: Store) -> async_sessionmaker[AsyncSession]:
    return store.sessions


async def add_rows(
    sessions: async_sessionmaker[AsyncSession], rows: list[tuple[str, str, str]]
) -> list[str]:
    """(subject, msg_id, operation) rows in this id order; returns the msg ids."""
    async with sessions() as session, session.begin():
        for subject, msg_id, operation in rows:
            session.add(
                OutboxMessage(
                    subject=subject, msg_id=msg_id, operation=operation, payload=msg_id.encode()
                )
            )
            await session.flush()  # ids in exactly this order
    return [msg_id for _, msg_id, _ in rows]


def workload(names: FleetNames) -> list[tuple[str, str, str]]:
    """Ten distinct keys first (one full group), a burst of writes to two keys, then
    commands of a few hot keys, each a KV write followed by its event, a delete and a
    fleet-bucket document among them."""
    secrets = names.secrets_bucket
    rows = [(kv_subject(secrets, f"r.k{i}"), f"kv:r.k{i}:v1", "put") for i in range(10)]
    versions = Counter[str]({f"r.k{i}": 1 for i in range(10)})
    for n in range(12):  # a burst of KV writes to two keys, no event between (a re-wrap)
        key = f"r.k{7 + n % 2}"
        versions[key] += 1
        rows.append((kv_subject(secrets, key), f"kv:{key}:v{versions[key]}", "put"))
    for n in range(40):
        key = f"r.k{n % 4}" if n % 5 else f"r.k{6 + n % 3}"
        versions[key] += 1
        rows.append((kv_subject(secrets, key), f"kv:{key}:v{versions[key]}", "put"))
        rows.append((names.event_subject("secret.rotated"), f"evt:{n}", "event"))
        if n == 17:
            rows.append((kv_subject(secrets, "r.k9"), "kv-del:r.k9:v1", "del"))
        if n == 23:
            doc = kv_subject(names.fleet_bucket, FleetNames.CURRENT_EPOCH_KEY)
            rows.append((doc, "epoch:2", "put"))
    return rows


async def stream_ids(js: JetStreamContext, stream: str) -> list[tuple[str, str, str | None]]:
    """Every message of ``stream``: (subject, Nats-Msg-Id, KV-Operation)."""
    last = (await js.stream_info(stream)).state.last_seq
    out = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(stream, seq)
        headers = msg.headers or {}
        out.append((msg.subject or "", headers["Nats-Msg-Id"], headers.get("KV-Operation")))
    return out


async def published(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return set(
            await session.scalars(
                select(OutboxMessage.msg_id).where(OutboxMessage.published_at.is_not(None))
            )
        )


async def check_streams(js: JetStreamContext, names: FleetNames, rows: list[tuple[str, str, str]]):
    """Every row stored exactly once; per subject (and for all events) in outbox order."""
    stored = (
        await stream_ids(js, f"KV_{names.secrets_bucket}")
        + await stream_ids(js, f"KV_{names.fleet_bucket}")
        + await stream_ids(js, names.event_stream)
    )
    counts = Counter(msg_id for _, msg_id, _ in stored)
    assert sorted(counts.elements()) == sorted(msg_id for _, msg_id, _ in rows)
    assert all(n == 1 for n in counts.values())
    position = {msg_id: i for i, (_, msg_id, _) in enumerate(rows)}
    by_subject: dict[str, list[int]] = {}
    for subject, msg_id, _ in stored:
        is_event = subject.startswith(names.event_subjects[:-1])
        by_subject.setdefault("events" if is_event else subject, []).append(position[msg_id])
    for subject, positions in by_subject.items():
        assert positions == sorted(positions), f"{subject} out of order"
    assert len(by_subject["events"]) == 40
    operations = {msg_id: op for _, msg_id, op in stored}
    assert operations["kv-del:r.k9:v1"] == "DEL"
    assert operations["kv:r.k9:v1"] is None


async def test_pipelined_relay_keeps_per_key_and_event_order(
    sessions: async_sessionmaker[AsyncSession],
    store: Store,
    js: JetStreamContext,
    fleet_names: FleetNames,
) -> None:
    await declare_fleet(js, fleet_names, secrets_history=64)  # keep every revision
    rows = workload(fleet_names)
    order = await add_rows(sessions, rows)
    recorder = Recorder(js, order)
    relay = Relay(store, recorder, keyed_prefix=kv_subject(fleet_names.secrets_bucket, ""))
    total = 0
    while sent := await relay.relay_once():
        total += sent
    assert total == len(rows)
    await check_streams(js, fleet_names, rows)
    assert recorder.violations == []
    assert await published(sessions) == set(order)
    assert recorder.max_in_flight == 10  # the first ten distinct keys went out together


async def test_failure_mid_group_stops_and_retry_publishes_everything_once(
    sessions: async_sessionmaker[AsyncSession],
    store: Store,
    js: JetStreamContext,
    fleet_names: FleetNames,
) -> None:
    await declare_fleet(js, fleet_names, secrets_history=64)  # keep every revision
    rows = workload(fleet_names)
    order = await add_rows(sessions, rows)
    # In the first group (the ten distinct keys): r.k3 is stored but its ack is lost,
    # r.k6 is not stored at all; r.k6 has later versions that must stay behind it.
    recorder = Recorder(js, order, fail={"kv:r.k3:v1": "after", "kv:r.k6:v1": "before"})
    relay = Relay(store, recorder, keyed_prefix=kv_subject(fleet_names.secrets_bucket, ""))
    with pytest.raises(BrokerUnavailable):
        await relay.relay_once()
    first_group = set(order[:10])
    assert set(recorder.started) == first_group  # the relay stopped after the group
    assert set(recorder.acked) == first_group - {"kv:r.k3:v1", "kv:r.k6:v1"}
    assert await published(sessions) == set(recorder.acked)
    while await relay.relay_once():
        pass
    assert recorder.violations == []
    assert recorder.started.count("kv:r.k3:v1") == 2  # republished under the same msg id
    assert await published(sessions) == set(order)
    await check_streams(js, fleet_names, rows)  # ... and stored once


async def test_a_commit_during_an_empty_pass_is_relayed_without_waiting_for_the_poll(
    sessions: async_sessionmaker[AsyncSession],
    store: Store,
    js: JetStreamContext,
    fleet_names: FleetNames,
) -> None:
    await declare_fleet(js, fleet_names)
    recorder = Recorder(js, [])
    relay = Relay(
        store,
        recorder,
        keyed_prefix=kv_subject(fleet_names.secrets_bucket, ""),
        idle_interval=60.0,  # only a wake can end the wait in time
    )
    relay_once = relay.relay_once
    committed = asyncio.Event()

    async def commit_during_first_empty_pass() -> int:
        sent = await relay_once()
        if sent == 0 and not committed.is_set():
            # A command commits after this pass read nothing, before the relay waits.
            await add_rows(sessions, [(kv_subject(fleet_names.secrets_bucket, "r.x"), "m1", "put")])
            relay.wake()
            committed.set()
        return sent

    relay.relay_once = commit_during_first_empty_pass  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(committed.wait(), 10)
        for _ in range(100):
            if recorder.acked == ["m1"]:
                break
            await asyncio.sleep(0.05)
        assert recorder.acked == ["m1"], "the wake was lost: the row waits for the idle poll"
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)


def test_the_relay_retries_within_a_second_while_nats_refuses_and_backs_off_for_the_database() -> (
    None
):
    """A failover refuses the relay's publishes (no stream leader) for seconds: its backoff
    must stay short, or it idles after the new leader is elected. A database failure
    still backs off to ``max_backoff``. (Bounds of the wait, not a timing measurement.)"""

    async def never(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        raise AssertionError("not called")

    relay = Relay(None, never, max_backoff=5.0)  # type: ignore[arg-type] # never reads

    def wait_after(exc: BaseException, attempt: int) -> float:
        outcome = SimpleNamespace(exception=lambda: exc)
        return relay.retry_wait(SimpleNamespace(attempt_number=attempt, outcome=outcome))  # type: ignore[arg-type]

    nats_refused = [wait_after(BrokerUnavailable("no leader"), n) for n in range(1, 30)]
    assert max(nats_refused) <= 1.0
    assert wait_after(OSError("database away"), 20) > 1.0

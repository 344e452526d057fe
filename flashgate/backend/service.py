"""The backend service: commands in, database + outbox, outbox out to JetStream.

Start-up, in order: pin the fleet (fleet directory, checked against the database's pin),
check the database schema, take the SQLite single-replica lock, connect to NATS and
declare the fleet's streams and buckets, publish the descriptors and roster to the fleet
bucket, drain the outbox, reconcile the secrets bucket, then consume commands, relay the
outbox, answer metadata queries and relay the nodes' signed reports into the event stream
(nodes may not publish there: :mod:`flashgate.backend.node_reports`) until stopped.

Every event it publishes is signed on its way out with the backend's event key
(``backend.key``, :mod:`flashgate.fleet.backend_key`), so the admin tooling can tell its
outcomes from forgeries. Its durable command consumer is recreated when someone deletes
it, and while commands cannot be fetched the health file says so.

The backend holds the fleet public key only. It imports the encrypt side of
``flashgate.crypto`` and nothing that could decrypt (a test checks the import graph).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_fixed

from flashgate.backend import db, health
from flashgate.backend.fleet_state import FleetState
from flashgate.backend.lease import PostgresRelayLease
from flashgate.backend.models import Fleet, FleetEpoch
from flashgate.backend.node_reports import (
    REPORT_BURST_BYTES,
    REPORT_RATE_BYTES_PER_S,
    NodeReportRelay,
)
from flashgate.backend.ordering import Sequencer, Step
from flashgate.backend.outbox import Relay, kv_subject
from flashgate.backend.processor import CommandProcessor, Outcome
from flashgate.backend.query_answers import Queries
from flashgate.backend.reconcile import reconcile
from flashgate.backend.rewrap import RewrapService
from flashgate.backend.store import Store, open_store
from flashgate.broker.connection import broker_errors, connect, inbox_replies_only
from flashgate.broker.declare import declare_fleet
from flashgate.errors import FlashgateError, FleetMismatch
from flashgate.events.domain import decode_event, encode_event
from flashgate.events.event_auth import sign_event
from flashgate.events.fleet import (
    ROSTER_CODEC,
    decode_descriptor,
    encode_descriptor,
    encode_roster,
)
from flashgate.events.queries import QUERY_KINDS
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.backend_key import load_backend_signing_key
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.files import ROSTER_FILE, load_descriptor, load_roster
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.taskgroup import HeldTaskGroup

log = structlog.get_logger("flashgate.backend")
_T = TypeVar("_T")

DURABLE = FleetNames.COMMAND_CONSUMER
#: Seconds the relay waits for a publish's acknowledgement: one sent to a stream leader
#: that dies is sent again (same Nats-Msg-Id) after this, not after nats-py's 5 s.
PUBLISH_TIMEOUT = 2.0


@dataclass
class BackendSettings:
    nats_urls: list[str]
    db_url: str
    fleet_dir: Path
    nats_user: str | None = None
    nats_password: str | None = None
    #: None: follow the NATS cluster (flashgate.broker.declare.default_replicas).
    stream_replicas: int | None = None
    instance: str = field(default_factory=lambda: f"backend-{socket.gethostname()}-{os.getpid()}")
    batch: int = 64
    concurrency: int | None = None  # commands applied at once; default 1 on SQLite, 8 on PG
    ack_wait: float = 30.0
    health_file: Path | None = None  # rewritten while running (flashgate.backend.health)
    #: Bytes of node reports relayed per node: at once, then per second
    #: (flashgate.backend.node_reports)
    node_report_burst_bytes: int = REPORT_BURST_BYTES
    node_report_rate_bytes: float = REPORT_RATE_BYTES_PER_S


class Backend:
    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.processor: CommandProcessor | None = None
        self.relay: Relay | None = None
        self.rewrap: RewrapService | None = None
        self.node_reports: NodeReportRelay | None = None
        self._relay_lease: PostgresRelayLease | None = None
        self._tasks = HeldTaskGroup("backend")
        self._long: list[asyncio.Task[None]] = []  # the long-running ones (health reads them)
        self._stopping = asyncio.Event()
        self.applied = 0
        self._event_key: Ed25519PrivateKey | None = None
        self._event_prefix = ""
        #: monotonic time since when commands could not be fetched (None: they can)
        self._consume_failing_since: float | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        descriptor = load_descriptor(s.fleet_dir)
        names = FleetNames(descriptor.fleet)
        self._event_key = load_backend_signing_key(s.fleet_dir, descriptor)
        self._event_prefix = names.event_subjects[:-1]
        self.store = store = open_store(s.db_url)
        await db.check_schema(store.engine)
        store.lock_out_other_backends()
        state = await self._load_state(names)
        self.nc = await connect(
            s.nats_urls,
            role="backend",
            name=s.instance,
            user=s.nats_user,
            password=s.nats_password,
            error_cb=self._on_nats_error,
        )
        self.js = self.nc.jetstream()
        declared = await declare_fleet(self.js, names, replicas=s.stream_replicas)
        await self._publish_fleet_documents(declared.fleet, state)
        await self._tasks.open(on_failure=self._on_task_failure)
        self.relay = Relay(store, self._publish, keyed_prefix=kv_subject(names.secrets_bucket, ""))
        self.processor = CommandProcessor(
            store, state, source=f"flashgate/{names.fleet}/backend", on_commit=self.relay.wake
        )
        if store.shared:
            self._spawn(self._relay_when_leader(declared.secrets), "relay-lease")
        else:
            await self._drain_outbox()
            await reconcile(store.sessions, self.js, declared.secrets, names, state.fleet_id)
            self._spawn(self.relay.run(), "relay")
        await self._start_queries(names, state.fleet_id)
        await self._start_rewrap(names)
        await self._start_node_reports(names, state.fleet_id)
        self._spawn(self._consume(names), "consumer")
        if s.health_file is not None:
            self._spawn(health.run(self, s.health_file), "health")
        log.info(
            "backend started",
            fleet=names.fleet,
            epoch=state.epoch,
            instance=s.instance,
            database=store.dialect,
        )

    @property
    def engine(self) -> AsyncEngine | None:
        return self.store.engine if self.store is not None else None

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession] | None:
        return self.store.sessions if self.store is not None else None

    async def stop(self) -> None:
        self._stopping.set()
        if self.relay is not None:
            self.relay.stop()
        await self._tasks.close()
        if self.node_reports is not None:
            self.node_reports.log_summary()
        if self.relay is not None and self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):  # best effort: the next start relays the rest
                await asyncio.wait_for(self._drain_outbox(), 3)
        if self.nc is not None:
            # nats-py's close() can wait forever on a connection that is reconnecting or
            # has a fetch in flight; the tasks that used it are already stopped.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        if self._relay_lease is not None:
            await self._relay_lease.release()
        if self.store is not None:
            await self.store.close()
        log.info("backend stopped", instance=self.settings.instance)

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        """The long-running tasks (read by flashgate.backend.health)."""
        return tuple(self._long)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self._tasks.spawn(coro, name)
        if task is not None:
            self._long.append(task)

    def _on_task_failure(self) -> None:
        """A task failed and the group cancelled the others (the health task too): say so
        in the health file at once, as the next check would have."""
        path = self.settings.health_file
        if path is not None:
            ended = [t.get_name() for t in self._long if t.done() and not t.cancelled()]
            with contextlib.suppress(OSError):
                health.write(path, [f"its {name} task has ended" for name in ended])

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    # --- fleet state ----------------------------------------------------------------------

    async def _load_state(self, names: FleetNames) -> FleetState:
        assert self.sessions is not None
        descriptor = load_descriptor(self.settings.fleet_dir)
        roster = (
            load_roster(self.settings.fleet_dir, descriptor)
            if (self.settings.fleet_dir / ROSTER_FILE).exists()
            else None
        )
        async with self.sessions() as session, session.begin():
            fleet = await session.scalar(select(Fleet).where(Fleet.name == names.fleet))
            if fleet is None:
                fleet = Fleet(
                    name=names.fleet,
                    epoch=descriptor.epoch,
                    admin_key=descriptor.admin_key,
                    roster=encode_roster(roster).decode() if roster else None,
                    roster_serial=roster.serial if roster else 0,
                )
                session.add(fleet)
                await session.flush()
                session.add(
                    FleetEpoch(
                        fleet_id=fleet.id,
                        epoch=descriptor.epoch,
                        descriptor=encode_descriptor(descriptor).decode(),
                    )
                )
                log.info("fleet pinned", fleet=names.fleet, epoch=descriptor.epoch)
            elif fleet.admin_key != descriptor.admin_key:
                raise FleetMismatch(
                    f"the fleet directory's admin key differs from the one this database "
                    f"pinned for fleet {names.fleet!r}; refusing to start"
                )
            elif roster is not None and roster.serial > fleet.roster_serial:
                fleet.roster, fleet.roster_serial = encode_roster(roster).decode(), roster.serial
            epochs = (
                await session.scalars(
                    select(FleetEpoch).where(
                        FleetEpoch.fleet_id == fleet.id, FleetEpoch.retired_at.is_(None)
                    )
                )
            ).all()
            keys = {
                e.epoch: fleet_public_key(decode_descriptor(e.descriptor.encode())) for e in epochs
            }
            return FleetState(
                names=names,
                fleet_id=fleet.id,
                admin_key=fleet.admin_key,
                epoch=fleet.epoch,
                keys=keys,
                roster_serial=fleet.roster_serial,
                rotating_to=fleet.rotating_to,
            )

    async def _publish_fleet_documents(self, kv: KeyValue, state: FleetState) -> None:
        """Descriptors of live epochs and the roster into the fleet bucket (idempotent)."""
        assert self.sessions is not None
        async with self.sessions() as session:
            fleet = await session.get(Fleet, state.fleet_id)
            epochs = (
                await session.scalars(
                    select(FleetEpoch).where(FleetEpoch.fleet_id == state.fleet_id)
                )
            ).all()
        assert fleet is not None
        documents = {state.names.descriptor_key(e.epoch): e.descriptor.encode() for e in epochs}
        if fleet.roster and not await self._newer_roster_in_bucket(kv, fleet):
            documents[FleetNames.ROSTER_KEY] = fleet.roster.encode()
        documents[FleetNames.CURRENT_EPOCH_KEY] = str(fleet.epoch).encode()
        with broker_errors("publishing fleet documents"):
            for key, value in documents.items():
                with contextlib.suppress(KeyNotFoundError):
                    if (await kv.get(key)).value == value:
                        continue
                await kv.put(key, value)

    async def _newer_roster_in_bucket(self, kv: KeyValue, fleet: Fleet) -> bool:
        """Whether the fleet bucket holds an admin-signed roster with a higher serial than
        the database's (a database restored from before a revocation): then the backend
        does not publish its own, which would undo the revocation. Anything else under
        the key (unsigned, another fleet's) is replaced."""
        with broker_errors("reading the fleet bucket's roster"):
            try:
                raw = (await kv.get(FleetNames.ROSTER_KEY)).value
            except KeyNotFoundError:
                return False
        try:
            held = ROSTER_CODEC.decode(raw or b"")
            verify(held, load_ed25519_public(fleet.admin_key, "admin key"))
        except FlashgateError:
            return False
        if held.fleet != fleet.name or held.serial <= fleet.roster_serial:
            return False
        log.error(
            f"not publishing roster serial {fleet.roster_serial}: the fleet bucket holds serial "
            f"{held.serial} (is the database restored from before a revocation?); put the "
            "newest roster.json into the fleet directory and restart the backend",
            fleet=fleet.name,
        )
        return True

    # --- outbox ---------------------------------------------------------------------------

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        assert self.js is not None
        if subject.startswith(self._event_prefix):
            payload = self._sign_event(payload)
        with broker_errors(f"publishing to {subject.split('.')[0]}"):
            await self.js.publish(subject, payload, headers=headers, timeout=PUBLISH_TIMEOUT)

    def _sign_event(self, payload: bytes) -> bytes:
        """An outbox event, signed with the backend's event key (Ed25519 is deterministic:
        a row published twice is the same bytes, and JetStream drops the repeat)."""
        assert self._event_key is not None
        return encode_event(sign_event(decode_event(payload), self._event_key))

    @property
    def consumer_problem(self) -> str | None:
        """Why commands cannot be consumed now (read by flashgate.backend.health)."""
        since = self._consume_failing_since
        if since is None:
            return None
        return f"cannot fetch commands for {time.monotonic() - since:.0f}s (command consumer)"

    async def _drain_outbox(self) -> None:
        assert self.relay is not None
        while await self.relay.relay_once():
            pass

    async def _relay_when_leader(self, secrets_kv: KeyValue) -> None:
        """PostgreSQL: relay (and reconcile) only while holding the relay lease."""
        assert self.engine is not None and self.sessions is not None and self.relay is not None
        while not self._stopping.is_set():
            self._relay_lease = PostgresRelayLease(self.engine)
            await self._relay_lease.wait()
            relay: asyncio.Task[None] | None = None
            failed = False
            try:
                assert self.processor is not None
                await self._drain_outbox()
                assert self.js is not None
                await reconcile(
                    self.sessions,
                    self.js,
                    secrets_kv,
                    self.processor.state.names,
                    self.processor.state.fleet_id,
                )
                relay = self._tasks.spawn(self.relay.run(), "relay")
                while await self._relay_lease.still_held():
                    await asyncio.sleep(1.0)
                log.warning("outbox relay lease lost; standing by")
            except Exception as exc:  # the database or NATS went away mid-way: start over
                failed = True
                log.warning(
                    "outbox relay interrupted; taking the lease again",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                )
            finally:
                if relay is not None:
                    await self._tasks.cancel(relay)
                await self._relay_lease.release()
            if failed:
                await asyncio.sleep(1.0)

    # --- commands -------------------------------------------------------------------------

    async def _consume(self, names: FleetNames) -> None:
        assert self.js is not None and self.processor is not None
        assert self.store is not None
        concurrency = self.settings.concurrency or self.store.default_concurrency
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.ack_wait,
            max_ack_pending=max(1024, self.settings.batch * 4),
            filter_subject=names.command_subjects,
        )
        js = self.js

        async def subscribe() -> JetStreamContext.PullSubscription:
            with broker_errors("subscribing to commands"):
                return await js.pull_subscribe(
                    names.command_subjects,
                    durable=DURABLE,
                    stream=names.command_stream,
                    config=config,
                )

        self._consume_failing_since = time.monotonic()
        first = await self._retry_until_stopped("command consumer not ready", subscribe)
        if first is None:
            return
        self._consume_failing_since = None
        sub = first
        gate = asyncio.Semaphore(concurrency)
        sequencer = Sequencer(self.js, names.command_stream, lambda: sub.consumer_info())
        # First what a previous backend left unacknowledged, on SQLite, where this is the
        # fleet's one backend. PostgreSQL replicas could be holding those very commands:
        # there, a dead replica's come back after ack_wait, unless a later command of
        # their target fetched meanwhile pulls them ahead (Sequencer.plan).
        if not self.store.shared:

            async def catch_up() -> list[list[Step]]:
                with broker_errors("reading unacknowledged commands"):
                    return await sequencer.catch_up()

            lanes = await self._retry_until_stopped("unacknowledged commands not read", catch_up)
            if lanes is None:
                return
            await asyncio.gather(*(self._run_lane(lane, gate, sequencer) for lane in lanes))
        while not self._stopping.is_set():
            messages = await self._fetch(sub)
            if self._consume_failing_since is not None:
                sub = await self._recreated(sub, names, config, sequencer.settled)
            if not messages:
                continue
            try:
                with broker_errors("reading earlier commands"):
                    lanes = await sequencer.plan(messages)
            except Exception as exc:
                # Which earlier commands these wait for is unknown: not now.
                log.warning("earlier commands not read; retrying", error=str(exc)[:200])
                for msg in messages:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                continue
            await asyncio.gather(*(self._run_lane(lane, gate, sequencer) for lane in lanes))

    async def _recreated(
        self,
        sub: JetStreamContext.PullSubscription,
        names: FleetNames,
        config: ConsumerConfig,
        settled: int,
    ) -> JetStreamContext.PullSubscription:
        """After a failed fetch: the durable consumer again, created anew (from the first
        command not yet settled here) when someone deleted it; else ``sub`` as it was."""
        assert self.js is not None
        try:
            await self.js.consumer_info(names.command_stream, DURABLE)
            return sub
        except NotFoundError:
            pass
        except Exception:  # not connected, no leader: the next fetch says more
            return sub
        log.warning(
            "the command consumer was deleted; recreating it",
            from_stream_seq=settled + 1,
        )
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        fresh = dataclasses.replace(
            config, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=settled + 1
        )
        try:
            with broker_errors("recreating the command consumer"):
                return await self.js.pull_subscribe(
                    names.command_subjects,
                    durable=DURABLE,
                    stream=names.command_stream,
                    config=fresh,
                )
        except FlashgateError as exc:
            log.warning("command consumer not recreated; retrying", error=str(exc)[:200])
            await asyncio.sleep(0.5)
            return sub

    async def _retry_until_stopped(
        self, what: str, attempt: Callable[[], Awaitable[_T]]
    ) -> _T | None:
        """``attempt()`` every second until it succeeds (its result) or the backend is
        stopping (None). A cancellation is never retried."""

        def warn(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning(f"{what}; retrying", error=str(exc)[:200])

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_fixed(1.0),
            stop=lambda _: self._stopping.is_set(),
            before_sleep=warn,
            retry_error_callback=lambda _: None,
        )
        result: _T | None = await retrying(attempt)
        return result

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, timeout: float = 1.0
    ) -> list[Msg]:
        """The next batch of commands; none when there are none for ``timeout`` seconds."""
        try:
            messages = await sub.fetch(self.settings.batch, timeout=timeout)
        except TimeoutError:
            # Nothing to fetch. nats-py raises its own TimeoutError or, when the time runs
            # out between its two pull requests, the builtin one (an OSError, which the
            # clause below would otherwise take for a failure).
            self._consume_failing_since = None
            return []
        except (nats.errors.Error, OSError) as exc:
            log.warning("fetching commands failed; retrying", error=type(exc).__name__)
            if self._consume_failing_since is None:
                self._consume_failing_since = time.monotonic()
            await asyncio.sleep(0.5)
            return []
        self._consume_failing_since = None
        return messages

    async def _run_lane(
        self, steps: list[Step], gate: asyncio.Semaphore, sequencer: Sequencer
    ) -> None:
        """One target's commands, in stream order. One that fails holds the rest: they
        are nak'd and come back after it."""
        assert self.processor is not None
        failed = False
        for step in steps:
            msg = step.msg
            if failed:
                if msg is not None:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                continue
            if msg is not None and sequencer.take_applied(step.seq):
                with contextlib.suppress(Exception):  # applied here from the stream
                    await msg.ack()
                continue
            async with gate:
                try:
                    if msg is None:
                        outcome = await self._process_earlier(step.seq, sequencer)
                    else:
                        outcome = await self.processor.process(msg.data)
                except Exception as exc:
                    log.error(
                        "applying a command failed; it will be redelivered",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                    )
                    failed = True
                    if msg is not None:
                        with contextlib.suppress(Exception):
                            await msg.nak(delay=1.0)
                    continue
            if outcome is not None:
                self._count(outcome)
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.ack()
                sequencer.done(step.seq)

    async def _process_earlier(self, seq: int, sequencer: Sequencer) -> Outcome | None:
        """A command someone else holds (or held) the delivery of, read from the stream."""
        assert self.processor is not None
        with broker_errors("reading an earlier command"):
            raw = await sequencer.read(seq)
        outcome = None if raw is None else await self.processor.process_earlier(raw)
        if outcome is None:
            sequencer.done(seq)
        else:
            log.info("applied ahead of its delivery", stream_seq=seq, result=outcome.result)
            sequencer.applied_from_stream(seq)
        return outcome

    def _count(self, outcome: Outcome) -> None:
        if outcome.result == "applied":
            self.applied += 1

    # --- queries and the in-process API ---------------------------------------------------

    async def _start_queries(self, names: FleetNames, fleet_id: int) -> None:
        assert self.nc is not None and self.sessions is not None
        queries = Queries(self.sessions, fleet_id)
        for what in QUERY_KINDS:

            async def handler(msg: Msg, what: str = what) -> None:
                with contextlib.suppress(Exception):
                    await msg.respond(await queries.answer(what, msg.data))

            await self.nc.subscribe(
                names.query_subject(what),
                queue="backend",
                cb=inbox_replies_only(handler, f"query {what}"),
            )

    async def _start_rewrap(self, names: FleetNames) -> None:
        """Re-wrapped envelopes from the bridges during a fleet key rotation."""
        assert self.nc is not None and self.store is not None and self.processor is not None
        assert self.relay is not None
        self.rewrap = RewrapService(
            self.store,
            self.processor.state,
            source=f"flashgate/{names.fleet}/backend",
            on_commit=self.relay.wake,
        )
        rewrap = self.rewrap

        async def handler(msg: Msg) -> None:
            reply = await rewrap.answer(msg.data)
            with contextlib.suppress(Exception):
                await msg.respond(reply)

        await self.nc.subscribe(
            names.rewrap_subject, queue="backend", cb=inbox_replies_only(handler, "re-wrap")
        )

    async def _start_node_reports(self, names: FleetNames, fleet_id: int) -> None:
        """The bridges' signed reports, checked, rate-limited and relayed into the event
        stream (nodes may not publish there: flashgate.backend.node_reports)."""
        assert self.nc is not None and self.sessions is not None
        sessions, s = self.sessions, self.settings

        async def read_roster() -> str | None:
            async with sessions() as session:
                return await session.scalar(select(Fleet.roster).where(Fleet.id == fleet_id))

        async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
            assert self.js is not None
            with broker_errors("relaying a node report"):  # verbatim: the node's signature
                await self.js.publish(subject, payload, headers=headers, timeout=PUBLISH_TIMEOUT)

        self.node_reports = NodeReportRelay(
            names,
            read_roster,
            publish,
            rate_bytes=s.node_report_rate_bytes,
            burst_bytes=s.node_report_burst_bytes,
        )
        await self.node_reports.start(self.nc)
        self._spawn(self.node_reports.run(self.nc), "node-reports")

    async def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError) and self.node_reports is not None:
            self.node_reports.overflowed(exc.subject)

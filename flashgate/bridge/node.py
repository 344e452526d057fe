"""A Bridge Node: unseal, verify, serve peers, watch the secrets bucket, load, follow.

Start-up order (DESIGN §5): unseal the bundle and verify descriptor and roster against the
pinned admin key; harden the process; connect; start answering share requests at once (so
nodes that start together never wait on each other); start heartbeats; then watch the
secrets bucket (every current envelope, then live updates and deletes) and load
everything through the share protocol. The roster is followed: a revoked peer is refused
at once and never asked. SIGTERM or SIGINT purges the vault and the partial cache and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from flashgate.bridge import metrics
from flashgate.bridge.collector import Collector
from flashgate.bridge.hardening import HardeningReport, harden
from flashgate.bridge.loader import Loader
from flashgate.bridge.partials import PartialCache
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder, wall_clock_ms
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.store import Entry, EnvelopeStore, make_entry
from flashgate.bridge.vault import Vault
from flashgate.broker.connection import broker_errors, connect
from flashgate.broker.watch import Deleted, InitialDone, follow
from flashgate.errors import FlashgateError, SignatureInvalid, StaleRoster
from flashgate.events import domain as ev
from flashgate.events.fleet import ROSTER_CODEC, Roster, RosterNode
from flashgate.events.node import (
    HEARTBEAT_CODEC,
    STATUS_REQUEST_CODEC,
    STATUS_RESPONSE_CODEC,
    Heartbeat,
    HeldSecret,
    PeerStatus,
    PendingSecret,
    StatusResponse,
)
from flashgate.events.signing import sign, verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.signing import load_ed25519_public

log = structlog.get_logger("flashgate.bridge")

HEARTBEAT_INTERVAL_S = 2.0
#: Share requests answered at once (the partial computations themselves share the engine).
SHARE_CONCURRENCY = 16


@dataclass
class BridgeSettings:
    nats_urls: list[str]
    nats_user: str | None = None
    nats_password: str | None = None
    lock_memory: bool = True
    workers: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


@dataclass
class _NatsTransport:
    nc: Client
    names: FleetNames

    async def request(self, node_id: str, payload: bytes, timeout: float) -> bytes:
        with broker_errors(f"share request to {node_id}"):
            msg = await self.nc.request(self.names.share_subject(node_id), payload, timeout=timeout)
        return msg.data


@dataclass
class BridgeNode:
    bundle: NodeBundle
    settings: BridgeSettings
    vault: Vault = field(default_factory=Vault)
    hardening: HardeningReport | None = None
    started_at: int = field(default_factory=wall_clock_ms)

    def __post_init__(self) -> None:
        self.names = FleetNames(self.bundle.fleet)
        self.node_id = self.bundle.node_id
        self.public = self.bundle.public
        self.admin_key = load_ed25519_public(self.bundle.admin_key, "admin key")
        self.roster = self._descriptor_roster()
        self.peers = PeerBook(self.node_id, self.roster)
        self.store = EnvelopeStore(self.names.fleet, {self.bundle.epoch: self.public.key})
        self.partials = PartialCache(self.bundle.share, self.public, workers=self.settings.workers)
        self.responder = Responder(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=self.bundle.signing_key,
            roster=lambda: self.roster,
            epochs=lambda: {self.bundle.epoch},
        )
        self.share_service = ShareService(
            responder=self.responder,
            store=self.store,
            partials=self.partials,
            public=self.public,
            fetch=self._fetch_revision,
            on_request=self.peers.seen,
        )
        self._share_tasks: set[asyncio.Task[None]] = set()
        self._share_gate = asyncio.Semaphore(SHARE_CONCURRENCY)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.loader: Loader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.initial_load_done = asyncio.Event()
        self._metrics: asyncio.Server | None = None
        self.revoked = False

    # --- roster ------------------------------------------------------------------------

    def _descriptor_roster(self) -> Roster:
        """Every node of the (signed) descriptor, active, as serial 1 (what the ceremony's
        initial roster says), until a signed roster is read from the fleet bucket."""
        d = self.bundle.descriptor
        return Roster(
            fleet=d.fleet,
            epoch=d.epoch,
            serial=1,
            issued_at=0,
            nodes=[
                RosterNode(
                    id=n.id, index=n.index, signing_key=n.signing_key, exchange_key=n.exchange_key
                )
                for n in d.nodes
            ],
        )

    def apply_roster(self, raw: bytes, *, initial: bool = False) -> bool:
        """Accept an admin-signed roster with a higher serial (or the first one read)."""
        try:
            roster = ROSTER_CODEC.decode(raw)
            if roster == self.roster:
                return False  # the one we hold (e.g. the watch's first value)
            verify(roster, self.admin_key)
            if roster.fleet != self.names.fleet:
                raise StaleRoster("roster of another fleet")
            if roster.serial < self.roster.serial or (
                roster.serial == self.roster.serial and not initial
            ):
                raise StaleRoster(
                    f"roster serial {roster.serial} is not above {self.roster.serial}"
                )
        except (FlashgateError, SignatureInvalid) as exc:
            log.warning("roster refused", reason=exc.code)
            return False
        revoked = [n.id for n in roster.nodes if n.status == "revoked"]
        self.roster = roster
        self.peers.set_roster(roster)
        log.info("roster applied", serial=roster.serial, revoked=revoked)
        if self.node_id in revoked:
            log.error("this node is revoked; purging and stopping")
            self.revoked = True
            self.vault.purge()
            self._stopped.set()
        return True

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.hardening = harden(lock_memory=self.settings.lock_memory)
        log.info("process hardening", **self.hardening.as_dict())
        s = self.settings
        self.nc = await connect(
            s.nats_urls,
            role="bridge",
            name=f"bridge-{self.node_id}",
            user=s.nats_user,
            password=s.nats_password,
        )
        self.js = self.nc.jetstream()
        # Serve peers first: nodes that start together must not wait on each other.
        await self.nc.subscribe(self.names.share_subject(self.node_id), cb=self._on_share)
        await self.nc.subscribe(self.names.status_subject(self.node_id), cb=self._on_status)
        await self.nc.subscribe(self.names.heartbeat_wildcard, cb=self._on_heartbeat)
        fleet_kv = await self._bucket(self.names.fleet_bucket)
        with contextlib.suppress(KeyNotFoundError):
            entry = await fleet_kv.get(FleetNames.ROSTER_KEY)
            if entry.value:
                self.apply_roster(entry.value, initial=True)
        self.kv = await self._bucket(self.names.secrets_bucket)
        collector = Collector(
            node_id=self.node_id,
            fleet=self.names.fleet,
            epoch=self.bundle.epoch,
            signing_key=self.bundle.signing_key,
            public=self.public,
            peers=self.peers,
            partials=self.partials,
            transport=_NatsTransport(self.nc, self.names),
            roster=lambda: self.roster,
            report=self._report_misbehaviour,
        )
        self.loader = Loader(
            vault=self.vault, collector=collector, key=self.public.key, epoch=self.bundle.epoch
        )
        self._tasks += [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self.loader.run(), name="loader"),
            asyncio.create_task(self._watch_secrets(), name="watch-secrets"),
            asyncio.create_task(self._watch_roster(fleet_kv), name="watch-roster"),
        ]
        if self.settings.metrics_port is not None:
            self._metrics = await metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port, self.metrics_text
            )
        log.info(
            "bridge node started",
            node=self.node_id,
            fleet=self.names.fleet,
            epoch=self.bundle.epoch,
            index=self.bundle.index,
            threshold=self.public.threshold,
            roster_serial=self.roster.serial,
        )

    async def _bucket(self, name: str) -> KeyValue:
        assert self.js is not None
        while True:
            try:
                with broker_errors(f"binding bucket {name}"):
                    return await self.js.key_value(name)
            except FlashgateError as exc:
                log.warning(
                    "bucket not available yet; retrying", bucket=name, error=exc.message[:200]
                )
                await asyncio.sleep(1.0)

    async def stop(self) -> int:
        """Purge everything held, stop tasks, close. Returns how many secrets were purged."""
        purged = self.vault.purge()
        self.partials.purge()
        if self._metrics is not None:
            self._metrics.close()
        for task in [*self._tasks, *self._share_tasks]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2)
        self.partials.close()
        self._stopped.set()
        log.info("bridge node stopped; vault purged", node=self.node_id, purged=purged)
        return purged

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # --- watching the buckets ------------------------------------------------------------

    async def _watch_secrets(self) -> None:
        """Every current envelope, one end marker, then live puts and deletes
        (:func:`flashgate.broker.watch.follow`, which does not trust nats-py's marker)."""
        assert self.kv is not None and self.loader is not None
        async with contextlib.aclosing(follow(self.kv)) as events:
            async for event in events:
                if isinstance(event, InitialDone):
                    log.info(
                        "initial envelopes read",
                        count=event.count,
                        unusable=len(self.store.rejected),
                    )
                    self._tasks.append(asyncio.create_task(self._mark_initial_load()))
                elif isinstance(event, Deleted):
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
        assert self.loader is not None
        await self.loader.wait_idle()
        self.initial_load_done.set()
        log.info("initial load complete", held=len(self.vault), pending=len(self.loader.pending))

    async def _watch_roster(self, fleet_kv: KeyValue) -> None:
        watcher = await fleet_kv.watch(FleetNames.ROSTER_KEY, include_history=False)
        try:
            async for entry in watcher:
                if entry is None or entry.value is None or entry.operation is not None:
                    continue
                if self.apply_roster(entry.value) and self.loader is not None:
                    self.loader.wake()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # --- share service -------------------------------------------------------------------

    async def _on_share(self, msg: Msg) -> None:
        """Answer in a task of its own: nats-py runs a subscription's callbacks one at a
        time, and a request whose partials are cached must not queue behind others."""
        task = asyncio.create_task(self._answer_share(msg))
        self._share_tasks.add(task)
        task.add_done_callback(self._share_tasks.discard)

    async def _answer_share(self, msg: Msg) -> None:
        async with self._share_gate:
            reply = await self.share_service.answer(msg.data)
        with contextlib.suppress(Exception):
            await msg.respond(reply)

    async def _fetch_revision(self, key: str, revision: int) -> Entry | None:
        """A revision this node has not seen (ahead) or no longer keeps (behind)."""
        if self.kv is None:  # not bound yet: this node knows no envelope at all
            return None
        try:
            entry = await self.kv.get(key, revision=revision)
        except Exception:
            return None
        if entry.value is None or entry.operation is not None:
            return None
        try:
            made = make_entry(self.names.fleet, key, revision, entry.value, self.store.keys)
        except FlashgateError:
            return None
        self.store.add_fetched(made)
        return made

    async def _report_misbehaviour(self, node_id: str, reason: str, key: str | None) -> None:
        if self.js is None:
            return
        event = ev.make_event(
            ev.NodeMisbehaved(
                node_id=node_id,
                reporter=self.node_id,
                reason=reason,
                secret_key=key,
                epoch=self.bundle.epoch,
            ),
            event_id=f"{self.node_id}.{node_id}.{secrets.token_hex(8)}",
            source=f"flashgate/{self.names.fleet}/bridge/{self.node_id}",
            subject=node_id,
        )
        with contextlib.suppress(Exception):
            await self.js.publish(
                self.names.event_subject(event.short_type),
                ev.encode_event(event),
                headers={"Nats-Msg-Id": f"evt:{event.id}"},
            )

    # --- liveness and status ---------------------------------------------------------------

    async def _heartbeats(self) -> None:
        assert self.nc is not None
        while True:
            beat = sign(
                Heartbeat(
                    fleet=self.names.fleet,
                    node_id=self.node_id,
                    epoch=self.bundle.epoch,
                    roster_serial=self.roster.serial,
                    issued_at=wall_clock_ms(),
                    started_at=self.started_at,
                    secrets_held=len(self.vault),
                    secrets_pending=len(self.loader.pending) if self.loader else 0,
                ),
                self.bundle.signing_key,
            )
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    self.names.heartbeat_subject(self.node_id), HEARTBEAT_CODEC.encode(beat)
                )
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = HEARTBEAT_CODEC.decode(msg.data)
        except FlashgateError:
            return
        if beat.node_id == self.node_id or beat.fleet != self.names.fleet:
            return
        entry = self.peers.active(beat.node_id)
        if entry is None:
            return
        try:
            verify(beat, load_ed25519_public(entry.signing_key))
        except SignatureInvalid:
            return
        was_alive = self.peers.peers[beat.node_id].last_seen is not None
        self.peers.seen(beat.node_id)
        if not was_alive and self.loader is not None:
            self.loader.wake()

    async def _on_status(self, msg: Msg) -> None:
        try:
            request = STATUS_REQUEST_CODEC.decode(msg.data)
            verify(request, self.admin_key)
            if request.fleet != self.names.fleet:
                return
            if abs(wall_clock_ms() - request.issued_at) > 60_000:
                return
        except FlashgateError:
            return  # unsigned or malformed status requests get no answer
        with contextlib.suppress(Exception):
            await msg.respond(
                STATUS_RESPONSE_CODEC.encode(
                    self.status(request.request_id, request.include_secrets)
                )
            )

    def status(
        self, request_id: bytes = b"\x00" * 16, include_secrets: bool = True
    ) -> StatusResponse:
        held = self.vault.held() if include_secrets else []
        pending = dict(self.loader.pending) if self.loader else {}
        pending.update(self.store.rejected)
        peers = [
            PeerStatus(
                p.node_id,
                p.last_seen_wall_ms,
                round(p.latency_ms, 3) if p.latency_ms is not None else None,
            )
            for p in self.peers.peers.values()
            if p.node_id != self.node_id
        ]
        response = StatusResponse(
            fleet=self.names.fleet,
            node_id=self.node_id,
            request_id=request_id,
            issued_at=wall_clock_ms(),
            started_at=self.started_at,
            epoch=self.bundle.epoch,
            roster_serial=self.roster.serial,
            peers=peers,
            secrets=[HeldSecret(h.key, h.version) for h in held] if include_secrets else [],
            pending=[PendingSecret(k, r) for k, r in sorted(pending.items())]
            if include_secrets
            else [],
            secrets_held=len(self.vault),
            share_requests_served=self.responder.served,
            share_requests_refused=dict(self.responder.refused),
            misbehaviour=dict(self.peers.misbehaviour),
        )
        return sign(response, self.bundle.signing_key)

    def metrics_text(self) -> bytes:
        return metrics.render(metrics.families(self.status(), self.partials.computed))

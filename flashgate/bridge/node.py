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
import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from flashgate.bridge import metrics
from flashgate.bridge.admin import AdminRpcs
from flashgate.bridge.collector import Collector
from flashgate.bridge.hardening import HardeningReport, harden
from flashgate.bridge.keyring import EpochSlot, KeyRing
from flashgate.bridge.loader import Loader
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder
from flashgate.bridge.rewrapper import Rewrapper
from flashgate.bridge.screening import Clock, wall_clock_ms
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.store import Entry, EnvelopeStore, make_entry
from flashgate.bridge.vault import Vault
from flashgate.broker.connection import broker_errors, connect
from flashgate.broker.watch import Deleted, InitialDone, follow
from flashgate.errors import (
    FlashgateError,
    FleetMismatch,
    MalformedDocument,
    SignatureInvalid,
    StaleRoster,
)
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.fleet import ROSTER_CODEC, Roster, RosterNode
from flashgate.events.node import (
    APIKEY_CHECK_RESULT_CODEC,
    HEARTBEAT_CODEC,
    STATUS_RESPONSE_CODEC,
    Heartbeat,
)
from flashgate.events.signing import sign, verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.files import write_atomic
from flashgate.fleet.rotation import EpochKey, open_share
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
    #: Where the bundle lives and its passphrase: after a fleet key rotation retires the
    #: bundle's epoch, the node re-seals it with its new share (and the old one is gone).
    bundle_path: Path | None = None
    passphrase: str | None = field(default=None, repr=False)


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
    #: Milliseconds since the epoch: every freshness check and timestamp of this node.
    clock: Clock = wall_clock_ms

    def __post_init__(self) -> None:
        self.names = FleetNames(self.bundle.fleet)
        self.node_id = self.bundle.node_id
        self.admin_key = load_ed25519_public(self.bundle.admin_key, "admin key")
        self.roster = self._descriptor_roster()
        self.peers = PeerBook(self.node_id, self.roster)
        first = EpochKey(
            descriptor=self.bundle.descriptor, public=self.bundle.public, share=self.bundle.share
        )
        self.ring = KeyRing(first, workers=self.settings.workers)
        self.store = EnvelopeStore(self.names.fleet, {first.epoch: first.public.key})
        self.collectors: dict[int, Collector] = {}
        self.responder = Responder(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=self.bundle.signing_key,
            roster=lambda: self.roster,
            epochs=self.ring.epochs,
            clock=self.clock,
        )
        self.admin = AdminRpcs(
            fleet=self.names.fleet,
            node_id=self.node_id,
            admin_key=self.admin_key,
            signing_key=self.bundle.signing_key,
            exchange_key=self.bundle.exchange_key,
            vault=self.vault,
            store=self.store,
            peers=self.peers,
            ring=self.ring,
            responder=self.responder,
            roster=lambda: self.roster,
            pending=lambda: self.loader.pending if self.loader is not None else {},
            started_at=self.started_at,
            clock=self.clock,
        )
        self.share_service = ShareService(
            responder=self.responder,
            store=self.store,
            partials_for=self.ring.partials_for,
            fetch=self._fetch_revision,
            on_request=self.peers.seen,
        )
        self.rewrapper: Rewrapper | None = None
        self._retire_wanted: set[int] = set()
        self.fleet_synced = asyncio.Event()
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
        await self.nc.subscribe(
            self.names.apikey_check_subject(self.node_id), cb=self._on_apikey_check
        )
        await self.nc.subscribe(self.names.heartbeat_wildcard, cb=self._on_heartbeat)
        for slot in self.ring.slots.values():
            self._add_collector(slot)
        # The fleet documents first (roster, rotations, retirements): the node must know
        # every epoch it holds a share of before it reads the envelopes.
        fleet_kv = await self._bucket(self.names.fleet_bucket)
        self._tasks.append(asyncio.create_task(self._watch_fleet(fleet_kv), name="watch-fleet"))
        await self.fleet_synced.wait()
        self.kv = await self._bucket(self.names.secrets_bucket)
        self.loader = Loader(
            vault=self.vault, collectors=self.collectors, on_unopenable=self._on_unopenable
        )
        self.rewrapper = Rewrapper(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=self.bundle.signing_key,
            store=self.store,
            peers=self.peers,
            ring=self.ring,
            collectors=self.collectors,
            send=self._send_rewrap,
        )
        self._tasks += [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self.loader.run(), name="loader"),
            asyncio.create_task(self._watch_secrets(), name="watch-secrets"),
            asyncio.create_task(self.rewrapper.run(), name="rewrapper"),
        ]
        if self.settings.metrics_port is not None:
            self._metrics = await metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port, self.admin.metrics_text
            )
        log.info(
            "bridge node started",
            node=self.node_id,
            fleet=self.names.fleet,
            epochs=sorted(self.ring.epochs()),
            index=self.ring.current.key.share.index,
            threshold=self.ring.current.key.public.threshold,
            roster_serial=self.roster.serial,
        )

    async def _bucket(self, name: str) -> KeyValue:
        """Bind bucket ``name``, waiting for it: the backend creates the buckets, and a
        bridge may start first. That wait is said once (info), its retries at debug level;
        any other failure to bind is a warning each time."""
        assert self.js is not None
        waiting = False
        while True:
            try:
                with broker_errors(f"binding bucket {name}"):
                    return await self.js.key_value(name)
            except FlashgateError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    log.warning(
                        "bucket not available yet; retrying", bucket=name, error=exc.message[:200]
                    )
                elif not waiting:
                    waiting = True
                    log.info("waiting for the backend to create bucket", bucket=name)
                else:
                    log.debug("bucket not created yet", bucket=name)
                await asyncio.sleep(1.0)

    async def stop(self) -> int:
        """Purge everything held, stop tasks, close. Returns how many secrets were purged."""
        purged = self.vault.purge()
        self.ring.purge()
        if self._metrics is not None:
            self._metrics.close()
        for task in [*self._tasks, *self._share_tasks]:
            task.cancel()
        # gather, not a loop of suppressed awaits: a cancellation of stop() itself (its
        # caller's timeout) must not be swallowed.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 2)
        await asyncio.to_thread(self.ring.close)
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

    async def _watch_fleet(self, fleet_kv: KeyValue) -> None:
        """The fleet bucket: roster updates, rotations (a new epoch's sealed shares) and
        retirements, each admin-signed; ``fleet_synced`` is set after the initial values."""
        async with contextlib.aclosing(follow(fleet_kv)) as events:
            async for event in events:
                if isinstance(event, InitialDone):
                    await self._apply_retirements()
                    self.fleet_synced.set()
                    continue
                if isinstance(event, Deleted):
                    continue
                if event.key == FleetNames.ROSTER_KEY:
                    initial = not self.fleet_synced.is_set()
                    if self.apply_roster(event.value, initial=initial) and self.loader is not None:
                        self.loader.wake()
                elif event.key.startswith("rotation."):
                    await self._on_rotation(event.value)
                elif event.key.startswith("retired."):
                    await self._on_retirement(event.value)

    # --- fleet key rotation ----------------------------------------------------------------

    def _add_collector(self, slot: EpochSlot) -> None:
        assert self.nc is not None
        self.collectors[slot.epoch] = Collector(
            node_id=self.node_id,
            fleet=self.names.fleet,
            epoch=slot.epoch,
            signing_key=self.bundle.signing_key,
            public=slot.key.public,
            peers=self.peers,
            partials=slot.partials,
            transport=_NatsTransport(self.nc, self.names),
            roster=lambda: self.roster,
            report=self._report_misbehaviour,
            members=slot.key.members,
        )

    def _signed_command(self, raw: bytes, kind: type[cmd.Command]) -> cmd.Command:
        command = cmd.COMMAND_CODEC.decode(raw)
        if not isinstance(command, kind):
            raise MalformedDocument(f"expected a {kind.__name__} command")
        if command.fleet != self.names.fleet:
            raise FleetMismatch(f"command for fleet {command.fleet!r}")
        verify(command, self.admin_key)
        return command

    async def _on_rotation(self, raw: bytes) -> None:
        """A new epoch: open this node's sealed share, check it, start using it."""
        try:
            command = self._signed_command(raw, cmd.StartKeyRotation)
            assert isinstance(command, cmd.StartKeyRotation)
            epoch = command.descriptor.epoch
            if epoch in self.ring.slots or epoch <= max(self.ring.slots):
                return  # held already, or older than what this node holds
            if command.from_epoch not in self.ring.slots:
                log.error(
                    "missed a fleet key rotation: this node holds no share of epoch "
                    f"{command.from_epoch}; it needs a new bundle",
                    epoch=epoch,
                )
                return
            key = open_share(command, self.bundle.admin_key, self.node_id, self.bundle.exchange_key)
        except FlashgateError as exc:
            log.warning("fleet key rotation refused", reason=exc.code, detail=exc.message[:200])
            return
        slot = self.ring.add(key)
        self.store.keys[key.epoch] = key.public.key
        if self.nc is not None:
            self._add_collector(slot)
        log.info("fleet key epoch added", epoch=key.epoch, index=key.share.index)
        await self._apply_retirements()
        self._tasks.append(asyncio.create_task(self._reingest_rejected()))
        if self.rewrapper is not None:
            self.rewrapper.wake()

    async def _reingest_rejected(self) -> None:
        """Envelopes refused for an epoch this node did not have yet: read them again."""
        if self.kv is None or self.loader is None:
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

    async def _on_retirement(self, raw: bytes) -> None:
        try:
            command = self._signed_command(raw, cmd.FinishKeyRotation)
            assert isinstance(command, cmd.FinishKeyRotation)
        except FlashgateError as exc:
            log.warning("fleet key retirement refused", reason=exc.code)
            return
        self._retire_wanted.add(command.retired_epoch)
        if self.fleet_synced.is_set():
            await self._apply_retirements()

    async def _apply_retirements(self) -> None:
        retired = False
        for epoch in sorted(self._retire_wanted & self.ring.epochs()):
            slot = self.ring.retire(epoch)
            if slot is None:
                log.error(
                    "asked to retire the only fleet key epoch held; a rotation was missed",
                    epoch=epoch,
                )
                continue
            self.collectors.pop(epoch, None)
            self.store.keys.pop(epoch, None)
            await asyncio.to_thread(slot.partials.close)
            del slot
            retired = True
            log.info("fleet key epoch retired; its share is dropped", epoch=epoch)
        if retired:
            await self._reseal_bundle()

    async def _reseal_bundle(self) -> None:
        """Re-seal the bundle with the current epoch's share, so that the retired share is
        no longer on disk either."""
        current = self.ring.current.key
        if self.bundle.epoch == current.epoch:
            return
        new = dataclasses.replace(
            self.bundle, share=current.share, descriptor=current.descriptor, public=current.public
        )
        path, passphrase = self.settings.bundle_path, self.settings.passphrase
        if path is None or passphrase is None:
            log.warning(
                "the bundle on disk still holds a retired epoch's share; no bundle path or "
                "passphrase to re-seal it with",
                epoch=current.epoch,
            )
            self.bundle = new
            return
        try:
            blob = await asyncio.to_thread(new.seal, passphrase)
            await asyncio.to_thread(write_atomic, path, blob, 0o600)
        except (OSError, FlashgateError) as exc:
            log.error("could not re-seal the bundle", error=type(exc).__name__)
            return
        self.bundle = new
        log.info("bundle re-sealed for the current epoch", epoch=current.epoch, path=str(path))

    def _on_unopenable(self, entry: Entry) -> None:
        """An envelope of the rotation's new epoch that does not open is a bad re-wrap: the
        rewrapper asks the backend to put the original back."""
        plan = self.ring.rotation()
        if self.rewrapper is not None and plan is not None and entry.epoch == plan[1]:
            self.rewrapper.dispute(entry)

    async def _send_rewrap(self, payload: bytes) -> bytes:
        assert self.nc is not None
        with broker_errors("sending re-wrapped envelopes to the backend"):
            msg = await self.nc.request(self.names.rewrap_subject, payload, timeout=15)
        return msg.data

    # --- share service -------------------------------------------------------------------

    async def _on_share(self, msg: Msg) -> None:
        """Answer in a task of its own: nats-py runs a subscription's callbacks one at a
        time, and a request whose partials are cached must not queue behind others."""
        task = asyncio.create_task(self._answer_share(msg))
        self._share_tasks.add(task)
        task.add_done_callback(self._share_tasks.discard)

    async def _answer_share(self, msg: Msg) -> None:
        reply = await self.share_service.answer(msg.data, self._share_gate)
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
                epoch=self.ring.current.epoch,
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
                    epoch=self.ring.current.epoch,
                    roster_serial=self.roster.serial,
                    issued_at=self.clock(),
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
        response = self.admin.answer_status(msg.data)
        if response is not None:
            with contextlib.suppress(Exception):
                await msg.respond(STATUS_RESPONSE_CODEC.encode(response))

    async def _on_apikey_check(self, msg: Msg) -> None:
        result = self.admin.check_api_key(msg.data)
        if result is not None:
            with contextlib.suppress(Exception):
                await msg.respond(APIKEY_CHECK_RESULT_CODEC.encode(result))

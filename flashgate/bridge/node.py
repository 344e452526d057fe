"""A Bridge Node, composed: the parts wired together and started and stopped in order.

Start-up order (DESIGN §5): harden the process (``flashgate bridge`` does it before it
unseals the bundle; a node built without a report hardens at start); unseal the bundle and
verify descriptor and roster against the pinned admin key; connect; start answering share
requests at once (so nodes that start together never wait on each other), status requests
and API key checks, and listen to peers' heartbeats; follow the fleet bucket until its
initial values are read (every epoch this node holds a share of is known); then start
heartbeats, the loader, the secrets bucket watch and the rewrapper, the gateway (when
``gateway_listen`` is set: 503 until the initial load is done) and the metrics endpoint.
The roster is followed: a revoked peer is refused at once and never asked; a
revoked node purges and stops. SIGTERM or SIGINT drains the gateway (requests in flight
finish, up to ``gateway_drain_s``), then purges the vault and the partial cache and
the process exits 0. The node's tasks (watches, loader, rewrapper, heartbeats, each share
answer) run in one task group (:class:`~flashgate.taskgroup.HeldTaskGroup`): stop cancels
and waits for all of them, and a task that fails stops the node (purged; the CLI exits 1).

The parts, each in a module of its own:

- :mod:`~flashgate.bridge.transport`: the NATS connection (a state object) and every call
  to the client;
- :mod:`~flashgate.bridge.fleet_follower`: the roster, fleet key rotations, retirements,
  tombstones (:mod:`~flashgate.bridge.tombstones`);
- :mod:`~flashgate.bridge.secrets_watch`: the secrets bucket into the store and the loader;
- :mod:`~flashgate.bridge.share_service` (with :mod:`~flashgate.bridge.protocol`): answering
  peers' share requests; :mod:`~flashgate.bridge.collector` and
  :mod:`~flashgate.bridge.loader`: asking them and loading the vault;
- :mod:`~flashgate.bridge.admin`: status, API key check, metrics snapshot;
- :mod:`~flashgate.bridge.liveness`: heartbeats and misbehaviour reports;
- :mod:`~flashgate.bridge.fastpath` (with :mod:`~flashgate.bridge.ring_terms`): the fleet key
  ring and fast wraps (DESIGN §6): the loader starts once the ring is read and its terms
  opened (at most :data:`FAST_PATH_START_WAIT_S`; without the ring's buckets, or past
  that, the node loads by the cold path alone);
- :mod:`~flashgate.bridge.screening`: the signed-request screening the share protocol and
  the admin RPCs share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg

from flashgate.bridge import hardening as process_hardening
from flashgate.bridge import metrics
from flashgate.bridge.admin import AdminRpcs
from flashgate.bridge.collector import Collector
from flashgate.bridge.fastpath import FastPath
from flashgate.bridge.fleet_follower import FleetFollower, starting_roster
from flashgate.bridge.gateway_authority import VaultAuthority
from flashgate.bridge.hardening import HardeningReport
from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.liveness import Liveness
from flashgate.bridge.loader import Loader
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.protocol import Responder
from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.bridge.rewrapper import Rewrapper
from flashgate.bridge.ring_terms import TermStore
from flashgate.bridge.screening import Clock, wall_clock_ms
from flashgate.bridge.secrets_watch import SecretsWatch
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.signatures import Signature, SignatureWorker
from flashgate.bridge.store import Entry, EnvelopeStore
from flashgate.bridge.tombstones import Tombstone, Tombstones, tombstones_path
from flashgate.bridge.transport import DROP_LOG_EVERY_S, NatsTransport
from flashgate.bridge.vault import Vault
from flashgate.bridge.verified_statements import (
    StatementVerifier,
    VerifiedStatements,
    file_mac_key,
    verified_path,
)
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.errors import Tombstoned, Unproven
from flashgate.events.envelope import SecretEnvelope
from flashgate.events.fleet import Roster
from flashgate.events.node_status import APIKEY_CHECK_RESULT_CODEC, STATUS_RESPONSE_CODEC
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.epoch_dealing import EpochKey
from flashgate.fleet.identity_keys import load_ed25519_public, private_raw
from flashgate.gateway.server import GatewayLimits, GatewayServer
from flashgate.taskgroup import HeldTaskGroup

log = structlog.get_logger("flashgate.bridge")

#: Share requests answered at once (the partial computations themselves share the engine).
SHARE_CONCURRENCY = 16
#: Share requests taken in (screened, waiting for a turn or being answered) at most; more
#: wait in the subscription's queue, bounded too: beyond SHARE_PENDING messages (or
#: SHARE_PENDING_BYTES) the client drops them, counted (``dropped``) and logged, and the
#: node stays connected (a flood must not make the server cut it off as a slow consumer).
SHARE_IN_FLIGHT = 64
SHARE_PENDING = 1_024
SHARE_PENDING_BYTES = 16 * 1024 * 1024
#: How long the loader waits for the fast path (ring read, terms opened) before it starts
#: by the cold path; and for the ring's buckets to be bound (else it starts at once).
FAST_PATH_START_WAIT_S = 15.0
FAST_PATH_BIND_S = 3.0
#: The fast path's upkeep waits for the initial load at most this long once every initial
#: value is read (BridgeNode._loading).
LOAD_UPKEEP_WAIT_S = 30.0


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
    #: Serve the gateway (S3 and OpenAI-compatible, DESIGN §7) on (host, port); None: off.
    gateway_listen: tuple[str, int] | None = None
    #: How long a stopping node lets gateway requests in flight finish before it purges.
    gateway_drain_s: float = 5.0
    #: The fast path (DESIGN §6); off: every secret by the cold path, no fast wraps.
    fast_path: bool = True


@dataclass
class BridgeNode:
    bundle: NodeBundle
    settings: BridgeSettings
    vault: Vault = field(default_factory=Vault)
    hardening: HardeningReport | None = None
    started_at: int = field(default_factory=wall_clock_ms)
    #: Milliseconds since the epoch: every freshness check and timestamp of this node.
    clock: Clock = wall_clock_ms
    rng: Rng = SYSTEM_RNG

    def __post_init__(self) -> None:
        bundle = self.bundle
        self.names = FleetNames(bundle.fleet)
        self.node_id = bundle.node_id
        self.transport = NatsTransport(self.names, self.node_id)
        first = EpochKey(descriptor=bundle.descriptor, public=bundle.public, share=bundle.share)
        self.ring = KeyRing(first, workers=self.settings.workers)
        self.collectors: dict[int, Collector] = {}
        roster = starting_roster(bundle)
        admin_key = load_ed25519_public(bundle.admin_key, "admin key")
        bundle_path = self.settings.bundle_path
        self.tombstones = Tombstones(
            self.names.fleet,
            admin_key,
            None if bundle_path is None else tombstones_path(bundle_path),
        )
        # Admin statements verified and envelope values proven before, remembered beside
        # the bundle (MAC'd with a key derived from this node's signing key): a statement's
        # signature is not verified again; a proven value is checked only against this
        # node's state (verified_statements.py).
        self.verified_statements = VerifiedStatements(
            None if bundle_path is None else verified_path(bundle_path),
            file_mac_key(private_raw(bundle.signing_key), bundle.fleet, bundle.node_id),
        )
        self.statements = StatementVerifier(admin_key, self.verified_statements)
        self.provenance = provenance = ProvenanceCheck(
            admin=admin_key,
            roster=lambda: self.fleet.roster,
            members=self.ring.members_of,
            statements=self.statements,
        )

        def prove(envelope: SecretEnvelope) -> list[Signature]:  # who wrote it; still alive?
            signatures = provenance.signatures(envelope)
            self.tombstones.check(envelope)
            return signatures

        def prove_rest(envelope: SecretEnvelope) -> list[Signature]:  # a value proven before
            signatures = provenance.signatures(envelope, statement_proven=True)
            self.tombstones.check(envelope)
            return signatures

        self.store = EnvelopeStore(
            self.names.fleet,
            {first.epoch: first.public.key},
            prove,
            prove_rest=prove_rest,
            memo=self.statements,
        )
        self.peers = PeerBook(self.node_id, roster)
        self.fast = FastPath(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=bundle.signing_key,
            terms=TermStore(
                self.names.fleet,
                self.store.keys,
                roster=lambda: self.fleet.roster,
                members=self.ring.members_of,
                clock=self.clock,
            ),
            ring=self.ring,
            peers=self.peers,
            roster=lambda: self.fleet.roster,
            collectors=self.collectors,
            report=self._report,
            spawn=self._spawn,
            rng=self.rng,
            clock=self.clock,
            live_keys=self._live_keys,
            loading=self._loading,
        )
        self.loader = Loader(
            vault=self.vault,
            collectors=self.collectors,
            on_unopenable=self._on_unopenable,
            fast=self.fast,
        )
        self.rewrapper = Rewrapper(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=bundle.signing_key,
            store=self.store,
            peers=self.peers,
            ring=self.ring,
            collectors=self.collectors,
            send=self.transport.send_rewrap,
            fetch=lambda key: self.secrets.fetch_latest(key),
        )
        self.liveness = Liveness(
            node_id=self.node_id,
            signing_key=bundle.signing_key,
            transport=self.transport,
            peers=self.peers,
            ring=self.ring,
            vault=self.vault,
            loader=self.loader,
            roster=lambda: self.fleet.roster,
            started_at=self.started_at,
            clock=self.clock,
            rng=self.rng,
        )
        self.secrets = SecretsWatch(
            fleet=self.names.fleet,
            store=self.store,
            loader=self.loader,
            vault=self.vault,
            spawn=self._spawn,
            checker=SignatureWorker(),
            admin=self.statements.admin_raw,
        )
        self.fleet = FleetFollower(
            bundle=bundle,
            admin_key=admin_key,
            roster=roster,
            peers=self.peers,
            ring=self.ring,
            store=self.store,
            collectors=self.collectors,
            vault=self.vault,
            transport=self.transport,
            report=self.liveness.report_misbehaviour,
            on_roster=self._on_roster,
            on_epoch=self._on_new_epoch,
            on_revoked=self._on_revoked,
            tombstones=self.tombstones,
            on_tombstone=self._on_tombstone,
            bundle_path=self.settings.bundle_path,
            passphrase=self.settings.passphrase,
        )
        self.responder = Responder(
            node_id=self.node_id,
            fleet=self.names.fleet,
            signing_key=bundle.signing_key,
            roster=lambda: self.fleet.roster,
            members=self.ring.members_of,
            clock=self.clock,
            rng=self.rng,
        )
        self.share_service = ShareService(
            responder=self.responder,
            store=self.store,
            partials_for=self.ring.partials_for,
            fetch_latest=self.secrets.fetch_latest,
            on_request=self.peers.seen,
            held_version=self.vault.version_of,
            lookup_term=self.fast.lookup_term,
        )
        self.admin = AdminRpcs(
            fleet=self.names.fleet,
            node_id=self.node_id,
            admin_key=self.fleet.admin_key,
            signing_key=bundle.signing_key,
            exchange_key=bundle.exchange_key,
            vault=self.vault,
            store=self.store,
            peers=self.peers,
            ring=self.ring,
            responder=self.responder,
            roster=lambda: self.fleet.roster,
            pending=lambda: self.loader.pending,
            started_at=self.started_at,
            clock=self.clock,
            ready=lambda: self.ready,
            tombstones=lambda: len(self.tombstones),
            fast_path=self.fast.status,
        )
        self._share_gate = asyncio.Semaphore(SHARE_CONCURRENCY)
        self._share_in_flight = asyncio.Semaphore(SHARE_IN_FLIGHT)
        self._drops_logged_at = 0.0
        self._drops_unlogged = 0
        self._tasks = HeldTaskGroup("bridge")
        self._stopped = asyncio.Event()
        self._metrics: asyncio.Server | None = None
        self.gateway: GatewayServer | None = None
        if self.settings.gateway_listen is not None:
            self.gateway = GatewayServer(
                VaultAuthority(self.vault, lambda: self.ready),
                self.node_id,
                publish_usage=self.liveness.publish_usage,  # signed node events
                limits=GatewayLimits(drain_s=self.settings.gateway_drain_s),
            )

    @property
    def roster(self) -> Roster:
        return self.fleet.roster

    @property
    def revoked(self) -> bool:
        return self.fleet.revoked

    @property
    def initial_load_done(self) -> asyncio.Event:
        return self.secrets.initial_load_done

    @property
    def ready(self) -> bool:
        """Both buckets bound and their initial values loaded: what a status answer, the
        ``/healthz`` endpoint and ``fleet status --wait`` call ready (answering is not)."""
        return self.fleet.synced.is_set() and self.initial_load_done.is_set()

    @property
    def failed(self) -> bool:
        """A task of the node failed: it stopped (and the process exits non-zero)."""
        return self._tasks.failed

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # The node's name is bound once for its log lines: every task and NATS callback
        # started here copies this context (as does stop()'s), no call passes it by hand.
        with structlog.contextvars.bound_contextvars(node=self.node_id):
            await self._start()

    async def _start(self) -> None:
        if self.hardening is None:  # `flashgate bridge` hardens before it unseals the bundle
            self.hardening = process_hardening.harden(lock_memory=self.settings.lock_memory)
            log.info("process hardening", **self.hardening.as_dict())
        await self._tasks.open(on_failure=self._stopped.set)
        # The signature worker's Python starts while this one connects and reads the
        # fleet documents: it is ready for the first envelope values, not 0.2 s after.
        await self.secrets.checker.start()
        s = self.settings
        # Its own NATS identity (the NKey sealed in its bundle) unless told a user to log
        # in as: a bundle from before per-node identities has none.
        own_nkey = self.bundle.nats_seed if s.nats_user is None else None
        await self.transport.connect(
            s.nats_urls, user=s.nats_user, password=s.nats_password, nkey_seed=own_nkey
        )
        # Serve peers first: nodes that start together must not wait on each other.
        names, me = self.names, self.node_id
        await self.transport.subscribe(
            names.share_subject(me),
            self._on_share,
            pending_msgs=SHARE_PENDING,
            pending_bytes=SHARE_PENDING_BYTES,
            on_drop=self._on_share_dropped,
        )
        await self.transport.subscribe(names.status_subject(me), self._on_status)
        await self.transport.subscribe(names.apikey_check_subject(me), self._on_apikey_check)
        await self.transport.subscribe(names.heartbeat_wildcard, self.liveness.on_heartbeat)
        for slot in self.ring.slots.values():
            self.fleet.add_collector(slot)
        # The fleet documents first (roster, rotations, retirements): the node must know
        # every epoch it holds a share of before it reads the envelopes.
        fleet_kv = await self.transport.bucket(names.fleet_bucket)
        self._spawn(self.fleet.run(fleet_kv), "watch-fleet")
        await self.fleet.synced.wait()
        await asyncio.to_thread(self.verified_statements.load)
        # The ring and wraps buckets are read first, then the envelopes are checked while
        # the terms are opened; the loader starts once the fast path is ready (or given
        # up). Meanwhile the envelopes are only proved by the signature worker (up to
        # HELD_BATCHES batches ahead), checks held back: checking them beside the wraps
        # was tried, and both competed for this process, so the fast path was ready
        # later and every envelope waited for it (a 100k join took 20.9 s against 19.3 s
        # in one pair of runs); with no envelope proved meanwhile, the worker waited.
        if await self._start_fast_path():
            self.secrets.checking.clear()
        secrets_kv = await self.transport.bucket(names.secrets_bucket)
        self._spawn(self.secrets.run(secrets_kv), "watch-secrets")
        await self._fast_path_read()
        self.secrets.checking.set()
        await self._fast_path_ready()
        self._spawn(self.liveness.heartbeats(), "heartbeats")
        self._spawn(self.loader.run(), "loader")
        self._spawn(self._keep_verified_statements(), "keep-verified")
        self._spawn(self.rewrapper.run(), "rewrapper")
        if self.gateway is not None and s.gateway_listen is not None:
            # Once loading has begun: it answers 503 (Retry-After) until the load is done.
            await self.gateway.start(*s.gateway_listen)
        if s.metrics_port is not None:
            self._metrics = await metrics.serve(
                s.metrics_host, s.metrics_port, self._metrics_text, ready=lambda: self.ready
            )
        log.info(
            "bridge node started",
            fleet=names.fleet,
            epochs=sorted(self.ring.epochs()),
            index=self.ring.current.key.share.index,
            threshold=self.ring.current.key.public.threshold,
            roster_serial=self.roster.serial,
        )

    async def _start_fast_path(self) -> bool:
        """Bind the ring's buckets and start reading them and opening the terms: the
        loader then tries each envelope's fast wrap first. No buckets yet (a broker
        declared before the fast path, or a backend not started yet), or not ready in time
        (:meth:`_fast_path_read`, :meth:`_fast_path_ready`): the loader starts by the cold
        path, exactly as without it, and the fast path joins in (writing wraps, serving
        ring partials) once its buckets are there. True if the buckets are bound."""
        self._fast_deadline: float | None = None
        if not self.settings.fast_path:
            log.info("fast path off: loading by the cold path only")
            self.loader.fast = None
            return False
        bound = asyncio.Event()
        self._spawn(self._run_fast_path(bound), "fast-path")
        try:
            await asyncio.wait_for(bound.wait(), FAST_PATH_BIND_S)
        except TimeoutError:
            log.warning("no fast-path buckets yet; loading by the cold path meanwhile")
            return False
        self._fast_deadline = time.monotonic() + FAST_PATH_START_WAIT_S
        return True

    async def _fast_path_read(self) -> None:
        """Wait for the ring's buckets to be read, within FAST_PATH_START_WAIT_S; not at
        all when the fast path is off or has no buckets."""
        deadline = self._fast_deadline
        if deadline is None or self.loader.fast is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.fast.buckets_read.wait(), max(0.0, deadline - time.monotonic())
            )

    async def _fast_path_ready(self) -> None:
        """Wait for the fast path to be ready (its terms opened), within the time left of
        FAST_PATH_START_WAIT_S; not at all when it is off or has no buckets."""
        deadline = self._fast_deadline
        if deadline is None or self.loader.fast is None or self.fast.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.fast.ready.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("the ring is not ready; loading by the cold path meanwhile")

    async def _run_fast_path(self, bound: asyncio.Event) -> None:
        ring_kv = await self.transport.bucket(self.names.ring_bucket)
        wraps_kv = await self.transport.bucket(self.names.wraps_bucket)
        # Snapshots of the wraps bucket: made by the backend with the others, but a node
        # may run beside a backend older than them (then every wrap is read, as before).
        snaps_kv = await self.transport.bucket_if_there(self.names.snapshots_bucket)
        if snaps_kv is None:
            log.info(
                "no wraps snapshot bucket; reading every wrap", bucket=self.names.snapshots_bucket
            )
        bound.set()
        await self.fast.run(ring_kv, wraps_kv, snaps_kv)

    async def _keep_verified_statements(self) -> None:
        """Keep the statements verified by the initial load on disk (and at stop)."""
        await self.initial_load_done.wait()
        log.info(
            "admin statements checked",
            verified=self.statements.verified,
            proven_by_worker=self.secrets.proven_by_worker,
            remembered=self.statements.hits,
            values_proven_before=self.statements.values_known,
            file_ignored=self.verified_statements.ignored_file,
        )
        await self._save_verified_statements()

    async def _save_verified_statements(self) -> None:
        data = self.verified_statements.snapshot()
        if data is not None:
            await asyncio.to_thread(self.verified_statements.write, data)

    async def stop(self) -> int:
        """Purge everything held, stop tasks, close. Returns how many secrets were purged."""
        with structlog.contextvars.bound_contextvars(node=self.node_id):
            return await self._stop()

    async def drain_gateway(self) -> None:
        """Let the gateway's requests in flight finish (up to ``gateway_drain_s``) and
        close it: before the purge, on SIGTERM. A revoked node does not wait."""
        if self.gateway is not None:
            await self.gateway.drain(0 if self.revoked else None)

    async def _stop(self) -> int:
        if not self.revoked:
            await self.drain_gateway()
        purged = self.vault.purge()
        self.fast.purge()
        if self.gateway is not None:
            await self.gateway.drain(0)  # revoked: after the purge, without waiting
        self.ring.purge()
        if self._metrics is not None:
            self._metrics.close()
        await self._tasks.close()
        await self.secrets.checker.close()  # started with the node; the watch may not run
        await self.transport.close()
        await asyncio.to_thread(self.ring.close)
        if not self.revoked:
            await self._save_verified_statements()
        self._stopped.set()
        log.info("bridge node stopped; vault purged", purged=purged)
        return purged

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> None:
        self._tasks.spawn(coro, name)

    # --- wiring --------------------------------------------------------------------------

    def _metrics_text(self) -> bytes:
        return self.admin.metrics_text(self.gateway.families() if self.gateway else ())

    def _loading(self) -> bool:
        """Whether the initial load still has the event loop (the fast path's upkeep
        waits): until every initial value is loaded, for at most LOAD_UPKEEP_WAIT_S once
        they are all read (a secret retried for a long while must not stop the upkeep)."""
        if self.secrets.initial_load_done.is_set():
            return False
        taken = self.secrets.initial_values_taken_at
        return taken is None or time.monotonic() - taken < LOAD_UPKEEP_WAIT_S

    def _on_revoked(self) -> None:
        self._stopped.set()

    def _on_roster(self) -> None:
        """A new roster: envelopes re-wrapped by a node it revokes are proven no more, so no
        partial is computed for them from now on (the value held stays: its body is the
        admin's; the rotation that follows a revocation re-wraps them)."""
        for key in self.store.drop_where(self.provenance.rewrap_revoked, Unproven.code):
            log.warning("envelope re-wrapped by a node revoked since; not served", key=key)
        self.loader.wake()
        self.fast.wake()  # a new roster (a revocation): a new term

    def _on_tombstone(self, tombstone: Tombstone) -> None:
        """A secret deleted or an API key revoked by the admin: whatever the bucket does
        next, no envelope of it stated before is held or served from now on."""
        for key in self.store.drop_where(self.tombstones.dead_entry):
            self.loader.forget(key)
            self.loader.reject(key, Tombstoned.code)
            log.info("secret dropped by a tombstone", key=key, target=tombstone.target)

    def _on_new_epoch(self) -> None:
        self._spawn(self.secrets.reingest_rejected())
        self.rewrapper.wake()
        self.fast.wake()  # a new epoch: a new term

    def _live_keys(self) -> dict[str, Entry] | None:
        """The envelopes held in the store, once the secrets bucket is read (the fast
        path purges wraps of any other key, after a grace)."""
        return self.store.current if self.secrets.initial_load_done.is_set() else None

    async def _report(self, node_id: str, reason: str, key: str | None) -> None:
        await self.liveness.report_misbehaviour(node_id, reason, key)

    def _on_unopenable(self, entry: Entry) -> None:
        """An envelope of the rotation's new epoch that does not open is a bad re-wrap: the
        rewrapper asks the backend to put the original back."""
        plan = self.ring.rotation()
        if plan is not None and entry.epoch == plan[1]:
            self.rewrapper.dispute(entry)

    async def _on_share(self, msg: Msg) -> None:
        """Answer in a task of its own: nats-py runs a subscription's callbacks one at a
        time, and a request whose partials are cached must not queue behind others. At
        most SHARE_IN_FLIGHT at once: past that the callback waits, and the subscription's
        bounded queue fills (then sheds) instead of the task group growing without end."""
        await self._share_in_flight.acquire()
        self._spawn(self._answer_share(msg))

    async def _answer_share(self, msg: Msg) -> None:
        try:
            reply = await self.share_service.answer(msg.data, self._share_gate)
            with contextlib.suppress(Exception):
                await msg.respond(reply)
        finally:
            self._share_in_flight.release()

    def _on_share_dropped(self, _subject: str) -> None:
        self.responder.refused["dropped"] += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drops_logged_at >= DROP_LOG_EVERY_S:
            log.warning(
                "share requests dropped: more arrive than this node answers, and its queue "
                f"of {SHARE_PENDING} is full (a flood, or a peer asking too much)",
                dropped=self._drops_unlogged,
                total=self.responder.refused["dropped"],
            )
            self._drops_logged_at, self._drops_unlogged = now, 0

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

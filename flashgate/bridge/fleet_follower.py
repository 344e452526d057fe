"""Following the fleet bucket: the roster, fleet key rotations and retirements.

Each document in the fleet bucket is admin-signed and checked against the pinned admin
key before it changes anything:

- ``roster``: a roster with a higher serial replaces the one held; a revoked peer is
  refused at once and never asked. When this node finds itself revoked it purges its vault
  and stops (the CLI exits 3). The node starts from the newest roster it accepted before,
  kept in its sealed bundle (:func:`starting_roster`), and re-seals the bundle with each
  roster it accepts: a roster with a lower serial (an old one written back into the bucket,
  or republished from a database restored from before a revocation) is refused, across
  restarts too, and so is a roster for an older epoch than the one held with no higher
  serial (the serial-1 roster of epoch 1 does not replace the serial-1 roster this node
  derives from its epoch-2 descriptor). The roster's key may be deleted: the node keeps
  the one it holds.
- ``rotation.<epoch>``: a new fleet key epoch; this node opens its sealed share of it,
  adds the epoch to its key ring (and a collector for it), and reads again the envelopes
  it had refused for want of that epoch.
- ``tombstone.*``: an admin-signed deletion or API key revocation
  (:mod:`flashgate.bridge.tombstones`), kept for good; what it kills is dropped at once
  (``on_tombstone``). Read before ``synced``: no envelope is loaded before the node knows
  every tombstone it has read.
- ``retired.<epoch>``: drop the retired epoch's share and partials once the initial
  values are read, and re-seal the bundle on disk with the current epoch's share (so the
  retired share is not on disk either).

``synced`` is set after the initial values: the node knows every epoch it holds a share of
before it reads the envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js.kv import KeyValue

from flashgate.bridge.collector import Collector, Report
from flashgate.bridge.keyring import EpochSlot, KeyRing
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.store import EnvelopeStore
from flashgate.bridge.tombstones import Tombstone, Tombstones
from flashgate.bridge.transport import NatsTransport
from flashgate.bridge.vault import Vault
from flashgate.broker.watch import Deleted, InitialDone, follow
from flashgate.errors import (
    FlashgateError,
    FleetMismatch,
    MalformedDocument,
    SignatureInvalid,
    StaleRoster,
)
from flashgate.events import commands as cmd
from flashgate.events.fleet import ROSTER_CODEC, FleetDescriptor, Roster, RosterNode
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.epoch_dealing import open_share
from flashgate.fleet.files import write_atomic

log = structlog.get_logger("flashgate.bridge")


def starting_roster(bundle: NodeBundle) -> Roster:
    """The roster a node starts from: the newest one it accepted before (kept in its
    bundle), else the serial-1 roster of its descriptor."""
    if bundle.roster is not None:
        return bundle.roster
    return descriptor_roster(bundle.descriptor)


def descriptor_roster(descriptor: FleetDescriptor) -> Roster:
    """Every node of the (signed) descriptor, active, as serial 1 (what the ceremony's
    initial roster says), until a signed roster is read from the fleet bucket. Unsigned:
    the descriptor's signature covers it."""
    return Roster(
        fleet=descriptor.fleet,
        epoch=descriptor.epoch,
        serial=1,
        issued_at=0,
        nodes=[
            RosterNode(
                id=n.id, index=n.index, signing_key=n.signing_key, exchange_key=n.exchange_key
            )
            for n in descriptor.nodes
        ],
    )


@dataclass
class FleetFollower:
    bundle: NodeBundle
    admin_key: Ed25519PublicKey
    roster: Roster
    peers: PeerBook
    ring: KeyRing
    store: EnvelopeStore
    collectors: dict[int, Collector]
    vault: Vault
    transport: NatsTransport
    report: Report  # a peer's misbehaviour (liveness)
    on_roster: Callable[[], None]  # a roster was applied (the loader tries again)
    on_epoch: Callable[[], None]  # a new epoch is held (read refused envelopes again)
    on_revoked: Callable[[], None]  # this node is revoked (after the purge): stop
    tombstones: Tombstones
    on_tombstone: Callable[[Tombstone], None]  # a new tombstone: drop what it kills
    #: Where the bundle lives and its passphrase, to re-seal it with a newer roster and
    #: after a retirement.
    bundle_path: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    revoked: bool = False

    def __post_init__(self) -> None:
        self.synced = asyncio.Event()
        self._retire_wanted: set[int] = set()
        self._sealing = asyncio.Lock()  # one re-seal of the bundle at a time

    @property
    def names(self) -> FleetNames:
        return self.transport.names

    @property
    def node_id(self) -> str:
        return self.bundle.node_id

    # --- the roster --------------------------------------------------------------------------

    def apply_roster(self, raw: bytes) -> bool:
        """Accept an admin-signed roster newer than the one held. Rosters are ordered by
        serial (the admin raises it with each one): a higher serial, or the serial of the
        unsigned roster derived from the descriptor (the ceremony's roster) when it is for
        no older an epoch than this node's. Returns whether it was applied; the caller
        persists it (:meth:`persist`), then acts on a revocation of this node
        (:meth:`check_revoked`)."""
        held = self.roster
        try:
            roster = ROSTER_CODEC.decode(raw)
            if roster == held:
                return False  # the one we hold (e.g. the watch's first value)
            verify(roster, self.admin_key)
            if roster.fleet != self.names.fleet:
                raise StaleRoster("roster of another fleet")
            if roster.serial < held.serial:
                raise StaleRoster(f"roster serial {roster.serial} is below {held.serial}")
            if roster.serial == held.serial:
                if held.signature:
                    raise StaleRoster(f"roster serial {roster.serial} is not above the held one")
                if roster.epoch < held.epoch:
                    raise StaleRoster(
                        f"roster serial {roster.serial} is for epoch {roster.epoch}, below "
                        f"this node's epoch {held.epoch}"
                    )
        except (FlashgateError, SignatureInvalid) as exc:
            log.warning("roster refused", reason=exc.code, detail=exc.message[:200])
            return False
        self.roster = roster
        self.peers.set_roster(roster)
        log.info(
            "roster applied",
            serial=roster.serial,
            revoked=[n.id for n in roster.nodes if n.status == "revoked"],
        )
        return True

    def check_revoked(self) -> None:
        """This node revoked by the roster held: purge and stop."""
        entry = self.roster.node(self.node_id)
        if entry is not None and entry.status == "revoked" and not self.revoked:
            log.error("this node is revoked; purging and stopping")
            self.revoked = True
            self.vault.purge()
            self.on_revoked()

    # --- the fleet bucket ----------------------------------------------------------------------

    async def run(self, fleet_kv: KeyValue) -> None:
        """The fleet bucket: roster updates, rotations (a new epoch's sealed shares) and
        retirements, each admin-signed; ``synced`` is set after the initial values."""
        self.check_revoked()  # by the roster kept in the bundle, whatever the bucket says
        kept = await asyncio.to_thread(self.tombstones.load)
        if kept:
            log.info("tombstones read back", count=kept)
        async with contextlib.aclosing(follow(fleet_kv)) as events:
            async for event in events:
                if isinstance(event, InitialDone):
                    await asyncio.to_thread(self.tombstones.save)
                    await self._apply_retirements()
                    self.synced.set()
                    continue
                if isinstance(event, Deleted):
                    continue  # a tombstone removed from the bucket is kept all the same
                if event.key == FleetNames.ROSTER_KEY:
                    if self.apply_roster(event.value):
                        await self.persist()
                        self.check_revoked()
                        self.on_roster()
                elif event.key.startswith("rotation."):
                    await self._on_rotation(event.value)
                elif event.key.startswith("retired."):
                    await self._on_retirement(event.value)
                elif event.key.startswith(FleetNames.TOMBSTONE_PREFIX):
                    tombstone = self.tombstones.accept(event.value)
                    if tombstone is not None and self.synced.is_set():
                        await asyncio.to_thread(self.tombstones.save)
                        self.on_tombstone(tombstone)

    # --- fleet key rotation ----------------------------------------------------------------

    def add_collector(self, slot: EpochSlot) -> None:
        self.collectors[slot.epoch] = Collector(
            node_id=self.node_id,
            fleet=self.names.fleet,
            epoch=slot.epoch,
            signing_key=self.bundle.signing_key,
            public=slot.key.public,
            peers=self.peers,
            partials=slot.partials,
            transport=self.transport,
            roster=lambda: self.roster,
            report=self.report,
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
        self.add_collector(slot)
        log.info("fleet key epoch added", epoch=key.epoch, index=key.share.index)
        await self._apply_retirements()
        self.on_epoch()

    async def _on_retirement(self, raw: bytes) -> None:
        try:
            command = self._signed_command(raw, cmd.FinishKeyRotation)
            assert isinstance(command, cmd.FinishKeyRotation)
        except FlashgateError as exc:
            log.warning("fleet key retirement refused", reason=exc.code)
            return
        self._retire_wanted.add(command.retired_epoch)
        if self.synced.is_set():
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
            await self.persist(share=True)

    async def persist(self, *, share: bool = False) -> None:
        """Re-seal the bundle on disk with the roster held when it is newer than the
        bundle's, and with ``share`` (after a retirement) the current epoch's share, so
        that the retired one is no longer on disk either: what this node has accepted
        survives a restart. (During a rotation the bundle keeps the old epoch's share: the
        new one is read again from the fleet bucket after a restart.)"""
        async with self._sealing:
            current = self.ring.current.key
            new = self.bundle
            if share and new.epoch < current.epoch:
                new = dataclasses.replace(
                    new, share=current.share, descriptor=current.descriptor, public=current.public
                )
            if self.roster.signature and (
                new.roster is None or new.roster.serial < self.roster.serial
            ):
                new = dataclasses.replace(new, roster=self.roster)
            if new is self.bundle:
                return
            path, passphrase = self.bundle_path, self.passphrase
            if path is None or passphrase is None:
                log.warning(
                    "the bundle on disk is not re-sealed (no bundle path or passphrase): it "
                    "keeps an older roster or a retired epoch's share",
                    epoch=current.epoch,
                    roster_serial=self.roster.serial,
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
            log.info(
                "bundle re-sealed",
                epoch=new.epoch,
                roster_serial=None if new.roster is None else new.roster.serial,
                path=str(path),
            )

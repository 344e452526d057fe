"""Following the fleet bucket: the roster, fleet key rotations and retirements.

Each document in the fleet bucket is admin-signed and checked against the pinned admin
key before it changes anything:

- ``roster``: a roster with a higher serial replaces the one held (the first one read may
  repeat the serial); a revoked peer is refused at once and never asked. When this node
  finds itself revoked it purges its vault and stops (the CLI exits 3).
- ``rotation.<epoch>``: a new fleet key epoch; this node opens its sealed share of it,
  adds the epoch to its key ring (and a collector for it), and reads again the envelopes
  it had refused for want of that epoch.
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
from flashgate.fleet.files import write_atomic
from flashgate.fleet.rotation import open_share

log = structlog.get_logger("flashgate.bridge")


def descriptor_roster(descriptor: FleetDescriptor) -> Roster:
    """Every node of the (signed) descriptor, active, as serial 1 (what the ceremony's
    initial roster says), until a signed roster is read from the fleet bucket."""
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
    #: Where the bundle lives and its passphrase, to re-seal it after a retirement.
    bundle_path: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    revoked: bool = False

    def __post_init__(self) -> None:
        self.synced = asyncio.Event()
        self._retire_wanted: set[int] = set()

    @property
    def names(self) -> FleetNames:
        return self.transport.names

    @property
    def node_id(self) -> str:
        return self.bundle.node_id

    # --- the roster --------------------------------------------------------------------------

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
            self.on_revoked()
        return True

    # --- the fleet bucket ----------------------------------------------------------------------

    async def run(self, fleet_kv: KeyValue) -> None:
        """The fleet bucket: roster updates, rotations (a new epoch's sealed shares) and
        retirements, each admin-signed; ``synced`` is set after the initial values."""
        async with contextlib.aclosing(follow(fleet_kv)) as events:
            async for event in events:
                if isinstance(event, InitialDone):
                    await self._apply_retirements()
                    self.synced.set()
                    continue
                if isinstance(event, Deleted):
                    continue
                if event.key == FleetNames.ROSTER_KEY:
                    if self.apply_roster(event.value, initial=not self.synced.is_set()):
                        self.on_roster()
                elif event.key.startswith("rotation."):
                    await self._on_rotation(event.value)
                elif event.key.startswith("retired."):
                    await self._on_retirement(event.value)

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
        path, passphrase = self.bundle_path, self.passphrase
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

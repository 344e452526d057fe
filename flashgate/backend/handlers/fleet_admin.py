"""Fleet commands: the roster (``node.revoke``) and fleet key rotation
(``fleet.rotation.start`` and ``fleet.rotation.finish``). Each locks the fleet row, which
orders them against one another, against secret writes (they share-lock it) and re-wraps."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select

from flashgate.backend.models import FleetEpoch, RewrapOrigin
from flashgate.backend.reconcile import count_live_envelopes
from flashgate.backend.transaction import Transaction
from flashgate.errors import (
    AlreadyExists,
    ConfigurationError,
    FleetMismatch,
    StaleEpoch,
    StaleRoster,
)
from flashgate.events import commands as cmd
from flashgate.events import domain as ev
from flashgate.events.fleet import ROSTER_CODEC, encode_descriptor
from flashgate.events.signing import verify
from flashgate.events.subjects import FleetNames
from flashgate.fleet.descriptor import check_sealed_shares, verify_descriptor


async def revoke_node(tx: Transaction, command: cmd.RevokeNode) -> tuple[str, ev.DomainEvent]:
    state = tx.state
    roster = command.roster
    verify(roster, state.admin)
    if roster.fleet != state.names.fleet:
        raise FleetMismatch("the roster is for another fleet")
    fleet = await tx.locked_fleet()
    if roster.serial <= fleet.roster_serial:
        raise StaleRoster(
            f"roster serial {roster.serial} is not above the current {fleet.roster_serial}"
        )
    entry = roster.node(command.node_id)
    if entry is None or entry.status != "revoked":
        raise ConfigurationError(f"the new roster does not revoke node {command.node_id}")
    raw = ROSTER_CODEC.encode(roster)
    fleet.roster = raw.decode()
    fleet.roster_serial = roster.serial
    state.roster_serial = roster.serial
    tx.put_fleet_document(FleetNames.ROSTER_KEY, raw, f"roster:{roster.serial}")
    data = ev.NodeRevoked(
        node_id=command.node_id, roster_serial=roster.serial, command_id=command.command_id
    )
    return command.node_id, tx.event(data, command.node_id)


async def start_rotation(
    tx: Transaction, command: cmd.StartKeyRotation
) -> tuple[str, ev.DomainEvent]:
    state = tx.state
    descriptor = command.descriptor
    public = verify_descriptor(descriptor, state.admin_key)
    if descriptor.fleet != state.names.fleet:
        raise FleetMismatch("the descriptor is for another fleet")
    check_sealed_shares(descriptor, command.shares)
    fleet = await tx.locked_fleet()
    if fleet.rotating_to is not None:
        raise AlreadyExists(f"a rotation to epoch {fleet.rotating_to} is in progress")
    if command.from_epoch != fleet.epoch or descriptor.epoch != fleet.epoch + 1:
        raise StaleEpoch(
            f"rotation {command.from_epoch} -> {descriptor.epoch} does not start from "
            f"the current epoch {fleet.epoch}"
        )
    if fleet.roster:  # the new epoch goes to exactly the active nodes, revoked ones never
        roster = ROSTER_CODEC.decode(fleet.roster.encode())
        active = {n.id for n in roster.nodes if n.status == "active"}
        dealt = {n.id for n in descriptor.nodes}
        if dealt != active:
            raise StaleRoster(
                f"the new epoch is dealt to {sorted(dealt)}, but the active nodes of roster "
                f"serial {roster.serial} are {sorted(active)}: update the home's roster.json "
                "and deal again"
            )
    fleet.rotating_to = descriptor.epoch
    signed = cmd.COMMAND_CODEC.encode(command)
    tx.session.add(
        FleetEpoch(
            fleet_id=fleet.id,
            epoch=descriptor.epoch,
            descriptor=encode_descriptor(descriptor).decode(),
            dealt_by=signed.decode(),
        )
    )
    names = state.names
    tx.put_fleet_document(
        names.descriptor_key(descriptor.epoch),
        encode_descriptor(descriptor),
        f"descriptor:{descriptor.epoch}",
    )
    tx.put_fleet_document(
        names.rotation_key(descriptor.epoch), signed, f"rotation:{descriptor.epoch}"
    )
    total = await count_live_envelopes(tx.session, state.fleet_id)
    state.epoch, state.rotating_to = fleet.epoch, descriptor.epoch
    state.keys[descriptor.epoch] = public
    data = ev.KeyRotationStarted(
        from_epoch=command.from_epoch,
        to_epoch=descriptor.epoch,
        total=total,
        command_id=command.command_id,
    )
    return f"epoch {descriptor.epoch}", tx.event(data, None)


async def finish_rotation(
    tx: Transaction, command: cmd.FinishKeyRotation
) -> tuple[str, ev.DomainEvent]:
    state = tx.state
    session = tx.session
    fleet = await tx.locked_fleet()
    if fleet.rotating_to is None or command.retired_epoch != fleet.epoch:
        raise StaleEpoch(f"no rotation away from epoch {command.retired_epoch} is running")
    remaining = await count_live_envelopes(session, fleet.id, epoch=fleet.epoch)
    if remaining:
        raise ConfigurationError(
            f"{remaining} envelope(s) still use epoch {fleet.epoch}; re-wrap them first"
        )
    retired = await session.scalar(
        select(FleetEpoch).where(FleetEpoch.fleet_id == fleet.id, FleetEpoch.epoch == fleet.epoch)
    )
    names = state.names
    signed = cmd.COMMAND_CODEC.encode(command)
    if retired is not None:
        retired.retired_at = datetime.now(UTC)
        retired.retired_by = signed.decode()
        if retired.dealt_by is not None:  # its sealed shares go with it
            retired.dealt_by = None
            tx.purge_fleet_document(
                names.rotation_key(fleet.epoch), f"rotation-purge:{fleet.epoch}"
            )
    # The originals kept for reverts are under the retired epoch: nothing can use them.
    await session.execute(
        delete(RewrapOrigin).where(
            RewrapOrigin.fleet_id == fleet.id, RewrapOrigin.to_epoch <= fleet.rotating_to
        )
    )
    fleet.epoch, fleet.rotating_to = fleet.rotating_to, None
    tx.put_fleet_document(
        names.retirement_key(command.retired_epoch), signed, f"retired:{command.retired_epoch}"
    )
    tx.put_fleet_document(
        FleetNames.CURRENT_EPOCH_KEY, str(fleet.epoch).encode(), f"epoch:{fleet.epoch}"
    )
    state.epoch, state.rotating_to = fleet.epoch, None
    state.keys.pop(command.retired_epoch, None)
    data = ev.KeyRotationCompleted(
        retired_epoch=command.retired_epoch,
        current_epoch=fleet.epoch,
        command_id=command.command_id,
    )
    return f"epoch {command.retired_epoch}", tx.event(data, None)

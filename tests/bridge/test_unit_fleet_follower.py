"""The roster a node holds only moves forward, across restarts too (issue 14, §1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from flashgate.bridge.fleet_follower import FleetFollower, descriptor_roster, starting_roster
from flashgate.bridge.keyring import KeyRing
from flashgate.bridge.peers import PeerBook
from flashgate.bridge.store import EnvelopeStore
from flashgate.bridge.tombstones import Tombstones
from flashgate.bridge.vault import Vault
from flashgate.events.fleet import ROSTER_CODEC, Roster
from flashgate.events.subjects import FleetNames
from flashgate.fleet.bundle import NodeBundle, open_bundle
from flashgate.fleet.epoch_dealing import EpochKey
from flashgate.fleet.identity_keys import load_ed25519_public
from tests.support.bridge_units import FLEET, bundle, fleet, prove_check, roster
from tests.support.material import FAST_KDF, TEST_PASSPHRASE

NODE = "node-1"


def follower(node: NodeBundle, path: Path | None = None) -> FleetFollower:
    held = starting_roster(node)
    first = EpochKey(descriptor=node.descriptor, public=node.public, share=node.share)
    ring = KeyRing(first, workers=1)
    stopped: list[bool] = []

    async def report(*_: Any) -> None:
        return None

    made = FleetFollower(
        bundle=node,
        admin_key=load_ed25519_public(node.admin_key, "admin key"),
        roster=held,
        peers=PeerBook(node.node_id, held),
        ring=ring,
        store=EnvelopeStore(FLEET, {}, prove_check()),
        collectors={},
        vault=Vault(),
        transport=SimpleNamespace(names=FleetNames(FLEET)),  # type: ignore[arg-type]
        report=report,
        on_roster=lambda: None,
        on_epoch=lambda: None,
        on_revoked=lambda: stopped.append(True),
        tombstones=Tombstones(FLEET, load_ed25519_public(node.admin_key, "admin key")),
        on_tombstone=lambda _t: None,
        bundle_path=path,
        passphrase=TEST_PASSPHRASE,
    )
    return made


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"{NODE}.bundle"
    path.write_bytes(bundle(NODE).seal(TEST_PASSPHRASE, params=FAST_KDF))
    yield path


def encoded(r: Roster) -> bytes:
    return ROSTER_CODEC.encode(r)


async def test_the_newest_roster_is_kept_in_the_bundle_and_never_rolled_back(
    sealed: Path,
) -> None:
    node = follower(open_bundle(sealed.read_bytes(), TEST_PASSPHRASE), sealed)
    assert node.apply_roster(encoded(fleet().roster))  # serial 1 replaces the unsigned one
    revoking = roster(revoked=["node-3"], serial=2)
    assert node.apply_roster(encoded(revoking))
    await node.persist()
    node.ring.close()

    reopened = open_bundle(sealed.read_bytes(), TEST_PASSPHRASE)
    assert reopened.roster == revoking
    again = follower(reopened, sealed)
    assert again.roster == revoking
    # the serial-1 roster written back into the bucket is refused after a restart
    assert not again.apply_roster(encoded(fleet().roster))
    assert again.roster.node("node-3").status == "revoked"  # type: ignore[union-attr]
    # and so is another document under the same serial
    same_serial = roster(revoked=[], serial=2)
    assert not again.apply_roster(encoded(same_serial))
    again.ring.close()


async def test_a_roster_for_an_older_epoch_does_not_replace_the_descriptors() -> None:
    """A node whose bundle is for epoch 2 starts from that epoch's descriptor (serial 1);
    the ceremony's serial-1 roster of epoch 1 is below its epoch and refused."""
    node = follower(bundle(NODE))
    epoch2 = msgspec.structs.replace(fleet().descriptor, epoch=2)
    node.roster = descriptor_roster(epoch2)
    assert not node.apply_roster(encoded(fleet().roster))
    assert node.apply_roster(encoded(roster(serial=2)))  # a newer serial is newer
    node.ring.close()


async def test_a_forged_roster_is_refused() -> None:
    node = follower(bundle(NODE))
    forged = msgspec.structs.replace(roster(revoked=["node-2"], serial=5), serial=6)
    assert not node.apply_roster(encoded(forged))
    node.ring.close()


async def test_a_node_revoked_by_the_roster_in_its_bundle_stops_at_once(sealed: Path) -> None:
    import dataclasses

    revoked = dataclasses.replace(bundle(NODE), roster=roster(revoked=[NODE], serial=3))
    sealed.write_bytes(revoked.seal(TEST_PASSPHRASE, params=FAST_KDF))
    node = follower(open_bundle(sealed.read_bytes(), TEST_PASSPHRASE), sealed)
    node.check_revoked()
    assert node.revoked
    node.ring.close()

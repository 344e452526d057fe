"""Per-node NATS identities from the fleet directory (flashgate.fleet.nats_identity)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from flashgate.broker.permissions import authorization_config
from flashgate.errors import FlashgateError, MalformedDocument
from flashgate.events.fleet import encode_roster
from flashgate.events.signing import sign
from flashgate.events.subjects import FleetNames
from flashgate.fleet.directory import write_fleet_dir
from flashgate.fleet.files import ROSTER_FILE, write_atomic
from flashgate.fleet.identity_keys import new_ed25519
from flashgate.fleet.nats_identity import (
    IDENTITIES_FILE,
    active_identities,
    new_seed,
    public_nkey,
    read_identities,
)
from tests.fleet.test_ceremony import ceremony
from tests.support.material import FAST_KDF, TEST_PASSPHRASE


def _revoke(fleet_dir: Path, node_id: str, *, admin: object) -> None:
    cer = ceremony()
    roster = cer.roster
    nodes = [
        msgspec.structs.replace(n, status="revoked") if n.id == node_id else n for n in roster.nodes
    ]
    revoked = sign(
        msgspec.structs.replace(roster, serial=roster.serial + 1, nodes=nodes, signature=""),
        admin,  # type: ignore[arg-type]
    )
    write_atomic(fleet_dir / ROSTER_FILE, encode_roster(revoked), 0o644)


def test_seeds_are_user_nkeys_and_distinct() -> None:
    seeds = {new_seed() for _ in range(8)}
    assert len(seeds) == 8
    for seed in seeds:
        assert seed.startswith("SU")
        assert public_nkey(seed).startswith("U") and len(public_nkey(seed)) == 56
    with pytest.raises(MalformedDocument) as caught:
        public_nkey("SUnotaseed")
    assert "SUnotaseed" not in caught.value.message


def test_a_revoked_node_loses_its_nats_user(tmp_path: Path) -> None:
    cer = ceremony()
    write_fleet_dir(tmp_path, cer, TEST_PASSPHRASE, params=FAST_KDF)
    everyone = read_identities(tmp_path / IDENTITIES_FILE)
    assert active_identities(tmp_path) == everyone
    assert everyone == {b.node_id: public_nkey(b.nats_seed or "") for b in cer.bundles}

    _revoke(tmp_path, "node-2", admin=cer.admin_key)
    active = active_identities(tmp_path)
    assert sorted(active) == ["node-1", "node-3", "node-4", "node-5"]
    users = authorization_config(FleetNames("acme"), None, active)
    assert everyone["node-2"] not in users
    assert all(f'"nkey": "{active[n]}"' in users for n in active)
    assert "fg.acme.share.node-1" in users and "fg.acme.share.node-2" not in users


def test_a_roster_not_signed_by_the_admin_changes_no_user(tmp_path: Path) -> None:
    cer = ceremony()
    write_fleet_dir(tmp_path, cer, TEST_PASSPHRASE, params=FAST_KDF)
    _revoke(tmp_path, "node-2", admin=new_ed25519())
    with pytest.raises(FlashgateError):
        active_identities(tmp_path)

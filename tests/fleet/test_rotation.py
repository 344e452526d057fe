"""Fleet key rotation, the key material: dealing epoch k+1, sealed shares, re-wrapping."""

from __future__ import annotations

import dataclasses
import itertools
import time
from functools import cache

import msgspec
import pytest

from flashgate.crypto import jwe
from flashgate.crypto.decrypt import open_jwe, rewrap
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.threshold.combine import combine
from flashgate.crypto.threshold.partial import partial_decrypt
from flashgate.errors import (
    ConfigurationError,
    DecryptionError,
    FleetMismatch,
    InvalidKey,
    MalformedDocument,
    NotEnoughShares,
    SignatureInvalid,
)
from flashgate.events import commands as cmd
from flashgate.events.fleet import Roster
from flashgate.events.signing import sign
from flashgate.fleet.bundle import NodeBundle
from flashgate.fleet.ceremony import Ceremony
from flashgate.fleet.descriptor import fleet_public_key
from flashgate.fleet.epoch_dealing import EpochKey, NextEpoch, deal_next_epoch, open_share
from flashgate.fleet.recovery import recover
from tests.fleet.test_ceremony import NOW, ceremony, context
from tests.support.material import CANARY, fixed_primes


def revoked(cer: Ceremony, *node_ids: str) -> Roster:
    roster = cer.roster
    nodes = [
        msgspec.structs.replace(n, status="revoked") if n.id in node_ids else n
        for n in roster.nodes
    ]
    return sign(
        msgspec.structs.replace(roster, serial=roster.serial + 1, nodes=nodes, signature=""),
        cer.admin_key,
    )


@cache
def next_epoch() -> tuple[Ceremony, NextEpoch, cmd.StartKeyRotation]:
    """A 3-of-5 fleet with node-2 revoked, rotated to epoch 2."""
    cer = ceremony()
    dealt = deal_next_epoch(
        current=cer.descriptor,
        roster=revoked(cer, "node-2"),
        admin=cer.admin_key,
        primes=fixed_primes(1),
        allow_insecure=True,
        now=NOW,
    )
    command = sign(
        cmd.StartKeyRotation(
            command_id="test-rotation-0001",
            fleet="acme",
            actor="admin:test",
            issued_at=int(time.time() * 1000),
            from_epoch=1,
            descriptor=dealt.descriptor,
            shares=list(dealt.shares),
        ),
        cer.admin_key,
    )
    return cer, dealt, command


def opened(cer: Ceremony, command: cmd.StartKeyRotation) -> dict[str, EpochKey]:
    return {
        b.node_id: open_share(command, cer.descriptor.admin_key, b.node_id, b.exchange_key)
        for b in cer.bundles
        if b.node_id != "node-2"
    }


def as_bundle(old: NodeBundle, key: EpochKey) -> NodeBundle:
    """What a node re-seals after the old epoch is retired."""
    return dataclasses.replace(old, share=key.share, descriptor=key.descriptor, public=key.public)


def test_new_epoch_goes_to_the_active_nodes_reindexed() -> None:
    cer, dealt, _ = next_epoch()
    d = dealt.descriptor
    assert (d.fleet, d.epoch, d.threshold, d.admin_key) == ("acme", 2, 3, cer.descriptor.admin_key)
    assert [(n.id, n.index) for n in d.nodes] == [
        ("node-1", 1),
        ("node-3", 2),
        ("node-4", 3),
        ("node-5", 4),
    ]
    old = {n.id: n for n in cer.descriptor.nodes}
    for node in d.nodes:  # identity keys stay: existing bundles can open their new share
        assert (node.signing_key, node.exchange_key) == (
            old[node.id].signing_key,
            old[node.id].exchange_key,
        )
    assert fleet_public_key(d) != fleet_public_key(cer.descriptor)
    assert d.public_key_jwk.kid == "flashgate:acme:2"
    assert "share" not in repr(dealt) and len(dealt.shares) == 4


def test_each_node_opens_its_share_and_every_t_subset_recovers() -> None:
    cer, dealt, command = next_epoch()
    keys = opened(cer, command)
    assert {k: v.share.index for k, v in keys.items()} == {
        "node-1": 1,
        "node-3": 2,
        "node-4": 3,
        "node-5": 4,
    }
    bundles = {b.node_id: b for b in cer.bundles}
    new_bundles = [as_bundle(bundles[n], k) for n, k in keys.items()]
    ctx = context()
    token = encrypt_secret(fleet_public_key(dealt.descriptor), ctx, CANARY)
    for subset in itertools.combinations(new_bundles, 3):
        assert recover(dealt.descriptor, subset, token, expected=ctx).secret.plaintext == CANARY
    for subset in itertools.combinations(new_bundles, 2):
        with pytest.raises(NotEnoughShares):
            recover(dealt.descriptor, subset, token, expected=ctx)
    assert "redacted" in repr(keys["node-1"])


def test_a_revoked_node_gets_no_share() -> None:
    cer, _, command = next_epoch()
    revoked_bundle = cer.bundles[1]
    assert revoked_bundle.node_id == "node-2"
    with pytest.raises(FleetMismatch):
        open_share(command, cer.descriptor.admin_key, "node-2", revoked_bundle.exchange_key)


def test_a_share_opens_only_for_its_node_and_its_place() -> None:
    cer, _, command = next_epoch()
    admin_key = cer.descriptor.admin_key
    node1, node3 = cer.bundles[0], cer.bundles[2]
    with pytest.raises(InvalidKey):  # someone else's key
        open_share(command, admin_key, "node-1", node3.exchange_key)
    # a sealed share moved to another node's entry (re-signed: only the AAD stops it)
    shares = list(command.shares)
    shares[0], shares[1] = (
        msgspec.structs.replace(
            shares[0],
            sender_key=shares[1].sender_key,
            nonce=shares[1].nonce,
            ciphertext=shares[1].ciphertext,
        ),
        msgspec.structs.replace(
            shares[1],
            sender_key=shares[0].sender_key,
            nonce=shares[0].nonce,
            ciphertext=shares[0].ciphertext,
        ),
    )
    moved = sign(msgspec.structs.replace(command, shares=shares, signature=""), cer.admin_key)
    with pytest.raises(InvalidKey):
        open_share(moved, admin_key, "node-1", node1.exchange_key)


def test_rotation_commands_are_checked() -> None:
    cer, _, command = next_epoch()
    admin_key = cer.descriptor.admin_key
    node1 = cer.bundles[0]
    forged = msgspec.structs.replace(command, from_epoch=1, actor="admin:someone-else")
    with pytest.raises(SignatureInvalid):
        open_share(forged, admin_key, "node-1", node1.exchange_key)
    missing = sign(
        msgspec.structs.replace(command, shares=command.shares[1:], signature=""), cer.admin_key
    )
    with pytest.raises(MalformedDocument):
        open_share(missing, admin_key, "node-3", cer.bundles[2].exchange_key)
    skipping = sign(msgspec.structs.replace(command, from_epoch=3, signature=""), cer.admin_key)
    with pytest.raises(MalformedDocument):
        open_share(skipping, admin_key, "node-1", node1.exchange_key)
    other = ceremony("other")
    with pytest.raises(SignatureInvalid):  # not signed by this node's pinned admin
        open_share(command, other.descriptor.admin_key, "node-1", node1.exchange_key)


def test_too_few_active_nodes_for_the_threshold() -> None:
    cer = ceremony()
    with pytest.raises(ConfigurationError, match="threshold is 3"):
        deal_next_epoch(
            current=cer.descriptor,
            roster=revoked(cer, "node-1", "node-2", "node-3"),
            admin=cer.admin_key,
            primes=fixed_primes(1),
            allow_insecure=True,
        )
    with pytest.raises(SignatureInvalid):  # a roster not signed by the admin
        deal_next_epoch(
            current=cer.descriptor,
            roster=msgspec.structs.replace(cer.roster, serial=9),
            admin=cer.admin_key,
            primes=fixed_primes(1),
            allow_insecure=True,
        )


def test_rewrap_changes_only_the_wrapped_key() -> None:
    cer, dealt, command = next_epoch()
    old_key, new_key = fleet_public_key(cer.descriptor), fleet_public_key(dealt.descriptor)
    ctx = context()
    token = encrypt_secret(old_key, ctx, CANARY)
    parsed = jwe.parse(token)
    c = parsed.wrapped_key(old_key)
    public = cer.bundles[0].public
    y = combine(public, c, {b.index: partial_decrypt(b.share, public, c) for b in cer.bundles[:3]})
    new_token = rewrap(parsed, y, old_key, new_key)
    new = jwe.parse(new_token)
    assert (new.protected, new.iv, new.ciphertext, new.tag) == (
        parsed.protected,
        parsed.iv,
        parsed.ciphertext,
        parsed.tag,
    )
    keys = opened(cer, command)
    new_public = keys["node-1"].public
    c2 = new.wrapped_key(new_key)
    y2 = combine(
        new_public,
        c2,
        {k.share.index: partial_decrypt(k.share, new_public, c2) for k in list(keys.values())[:3]},
    )
    assert open_jwe(new, y2, new_key, ctx).plaintext == CANARY
    with pytest.raises(DecryptionError):  # a wrong y never yields a re-wrapped envelope
        rewrap(parsed, y + 1, old_key, new_key)

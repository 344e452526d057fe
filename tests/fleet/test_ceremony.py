"""The ceremony, the signed descriptor, sealed bundles and offline recovery."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from functools import cache

import msgspec
import pytest

from flashgate.crypto.context import SecretContext
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.threshold import KeyShare
from flashgate.errors import (
    ConfigurationError,
    ContextMismatch,
    DuplicateShares,
    FleetMismatch,
    InvalidKey,
    MalformedMessage,
    MalformedSealedFile,
    NotEnoughShares,
    SignatureInvalid,
    UnsealError,
)
from flashgate.events.canonical import signed_bytes
from flashgate.events.fleet import decode_descriptor, encode_descriptor
from flashgate.fleet.bundle import open_admin_key, open_bundle, seal_admin_key
from flashgate.fleet.ceremony import Ceremony, run_ceremony
from flashgate.fleet.descriptor import fleet_public_key, verify_descriptor
from flashgate.fleet.directory import read_bundle, write_fleet_dir
from flashgate.fleet.files import load_descriptor, load_roster
from flashgate.fleet.recovery import recover
from flashgate.fleet.threshold_key import verified_threshold_key
from tests.support.material import CANARY, FAST_KDF, TEST_BITS, TEST_PASSPHRASE, fixed_primes

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@cache
def ceremony(
    fleet: str = "acme", parties: int = 5, threshold: int = 3, pair: int = 0, epoch: int = 1
) -> Ceremony:
    return run_ceremony(
        fleet=fleet,
        node_ids=[f"node-{i}" for i in range(1, parties + 1)],
        threshold=threshold,
        bits=TEST_BITS,
        epoch=epoch,
        primes=fixed_primes(pair),
        allow_insecure=True,
        now=NOW,
    )


def context(version: int = 1, fleet: str = "acme") -> SecretContext:
    return SecretContext(
        fleet=fleet, repo="payments", name="s3-creds", kind="storage", version=version
    )


def token(cer: Ceremony, plaintext: bytes = CANARY, ctx: SecretContext | None = None) -> str:
    key = fleet_public_key(cer.descriptor)
    return encrypt_secret(key, ctx or context(fleet=cer.descriptor.fleet), plaintext)


# --- descriptor ----------------------------------------------------------------------------


def test_descriptor_contents_and_signature() -> None:
    d = ceremony().descriptor
    assert (d.fleet, d.epoch, d.threshold) == ("acme", 1, 3)
    assert [n.id for n in d.nodes] == [f"node-{i}" for i in range(1, 6)]
    assert [n.index for n in d.nodes] == [1, 2, 3, 4, 5]
    assert d.public_key_jwk.kid == "flashgate:acme:1"
    assert d.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert d.created_at == "2026-11-28T12:00:00Z"
    public = verified_threshold_key(d, d.admin_key)
    assert public.modulus.bit_length() == TEST_BITS
    assert len(public.verification_keys) == 5


def test_descriptor_round_trips_through_json() -> None:
    d = ceremony().descriptor
    again = decode_descriptor(encode_descriptor(d))
    assert again == d
    verify_descriptor(again, d.admin_key)


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": 2},
        {"epoch": 2},
        {"fleet": "other"},
        {"created_at": "2030-01-01T00:00:00Z"},
    ],
)
def test_any_changed_field_breaks_the_signature(change: dict) -> None:
    d = ceremony().descriptor
    with pytest.raises(SignatureInvalid):
        verify_descriptor(msgspec.structs.replace(d, **change), d.admin_key)


def test_changed_node_key_breaks_the_signature() -> None:
    d = ceremony().descriptor
    nodes = list(d.nodes)
    nodes[0] = msgspec.structs.replace(nodes[0], signing_key=nodes[1].signing_key)
    with pytest.raises(SignatureInvalid):
        verify_descriptor(msgspec.structs.replace(d, nodes=nodes), d.admin_key)


def test_descriptor_signed_by_another_admin_is_refused() -> None:
    mine, theirs = ceremony().descriptor, ceremony("other").descriptor
    with pytest.raises(FleetMismatch):
        verify_descriptor(mine, theirs.admin_key)
    forged = msgspec.structs.replace(mine, admin_key=theirs.admin_key)
    with pytest.raises(SignatureInvalid):
        verify_descriptor(forged, theirs.admin_key)


def test_signed_bytes_are_re_derivable() -> None:
    """Any implementation can rebuild the signed bytes from the JSON document alone."""
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from flashgate.crypto.encoding import b64url_decode

    d = ceremony().descriptor
    doc = json.loads(encode_descriptor(d))
    sig = doc.pop("signature")
    rebuilt = (
        b"flashgate/v1/fleet-descriptor\n"
        + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    )
    assert rebuilt == signed_bytes("fleet-descriptor", d)
    Ed25519PublicKey.from_public_bytes(b64url_decode(doc["admin_key"])).verify(
        b64url_decode(sig), rebuilt
    )


def test_malformed_descriptors_are_refused() -> None:
    d = ceremony().descriptor
    raw = encode_descriptor(d)
    with pytest.raises(MalformedMessage):
        decode_descriptor(b"{not json")
    with pytest.raises(MalformedMessage):
        decode_descriptor(raw.replace(b'"threshold"', b'"threshold_x"'))
    with pytest.raises(MalformedMessage):  # unknown field refused on a signed type
        decode_descriptor(raw[:-2] + b',"extra":1}\n')


# --- ceremony parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 6}, "cannot exceed"),
        ({"threshold": 0}, "at least 1"),
        ({"bits": 1024, "allow_insecure": False}, "insecure"),
        ({"fleet": "Bad.Name"}, "fleet name"),
        ({"node_ids": ["a", "a", "b"]}, "distinct"),
        ({"node_ids": ["a", "b", "with space"]}, "node id"),
    ],
)
def test_ceremony_refuses_bad_parameters(kwargs: dict, match: str) -> None:
    args = {
        "fleet": "acme",
        "node_ids": ["a", "b", "c", "d", "e"],
        "threshold": 3,
        "bits": TEST_BITS,
        "primes": fixed_primes(),
        "allow_insecure": True,
    }
    args.update(kwargs)
    with pytest.raises(ConfigurationError, match=match):
        run_ceremony(**args)


# --- bundles -------------------------------------------------------------------------------


def test_bundle_seal_and_open() -> None:
    cer = ceremony()
    b = cer.bundles[1]
    opened = open_bundle(b.seal(TEST_PASSPHRASE, params=FAST_KDF), TEST_PASSPHRASE)
    assert (opened.node_id, opened.index, opened.fleet, opened.epoch) == ("node-2", 2, "acme", 1)
    assert opened.share.secret_value == b.share.secret_value
    assert str(b.share.secret_value) not in repr(opened)


def test_bundle_wrong_passphrase_and_damage() -> None:
    blob = ceremony().bundles[0].seal(TEST_PASSPHRASE, params=FAST_KDF)
    with pytest.raises(UnsealError, match="passphrase"):
        open_bundle(blob, "not-the-passphrase")
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 1
    with pytest.raises(UnsealError):
        open_bundle(bytes(damaged), TEST_PASSPHRASE)
    with pytest.raises(MalformedSealedFile):
        open_bundle(blob[:30], TEST_PASSPHRASE)


def test_admin_key_file_is_not_a_bundle() -> None:
    cer = ceremony()
    blob = seal_admin_key("acme", cer.admin_key, TEST_PASSPHRASE, params=FAST_KDF)
    with pytest.raises(MalformedSealedFile, match="admin-key"):
        open_bundle(blob, TEST_PASSPHRASE)
    key = open_admin_key(blob, TEST_PASSPHRASE, cer.descriptor)
    assert key.public_key().public_bytes_raw() == cer.admin_key.public_key().public_bytes_raw()
    with pytest.raises(FleetMismatch):
        open_admin_key(blob, TEST_PASSPHRASE, ceremony("other").descriptor)


def test_bundle_with_a_wrong_share_is_refused_on_open() -> None:
    b = ceremony().bundles[0]
    wrong = dataclasses.replace(b, share=KeyShare(1, b.share.secret_value + 1, b.public))
    with pytest.raises(InvalidKey, match="node-1"):
        open_bundle(wrong.seal(TEST_PASSPHRASE, params=FAST_KDF), TEST_PASSPHRASE)


# --- recovery ------------------------------------------------------------------------------


def test_every_t_subset_of_bundles_recovers() -> None:
    cer = ceremony()
    tok = token(cer)
    for subset in itertools.combinations(cer.bundles, 3):
        result = recover(cer.descriptor, subset, tok, expected=context())
        assert result.secret.plaintext == CANARY
        assert result.faulty_nodes == []
    assert recover(cer.descriptor, cer.bundles, tok).secret.context == context()


def test_recovery_refusals() -> None:
    cer, other = ceremony(), ceremony("other")
    tok = token(cer)
    with pytest.raises(NotEnoughShares):
        recover(cer.descriptor, cer.bundles[:2], tok)
    with pytest.raises(DuplicateShares):
        recover(cer.descriptor, [cer.bundles[0], cer.bundles[0], cer.bundles[1]], tok)
    with pytest.raises(FleetMismatch):
        recover(cer.descriptor, [cer.bundles[0], cer.bundles[1], other.bundles[2]], tok)
    with pytest.raises(FleetMismatch):  # envelope written for another fleet
        recover(cer.descriptor, cer.bundles[:3], token(other, ctx=context(fleet="other")))
    with pytest.raises(ContextMismatch):
        recover(cer.descriptor, cer.bundles[:3], tok, expected=context(version=2))


def test_recovery_refuses_bundles_of_another_epoch() -> None:
    cer = ceremony()
    epoch2 = run_ceremony(
        fleet="acme",
        node_ids=[f"node-{i}" for i in range(1, 6)],
        threshold=3,
        bits=TEST_BITS,
        epoch=2,
        primes=fixed_primes(1),
        allow_insecure=True,
        now=NOW,
        admin_key=cer.admin_key,
    )
    mixed = [cer.bundles[0], cer.bundles[1], epoch2.bundles[2]]
    with pytest.raises(FleetMismatch, match="epoch"):
        recover(cer.descriptor, mixed, token(cer))


def test_recovery_names_a_faulty_bundle_and_still_succeeds() -> None:
    cer = ceremony()
    b = cer.bundles[1]
    faulty = dataclasses.replace(b, share=KeyShare(2, b.share.secret_value + 7, b.public))
    bundles = [cer.bundles[0], faulty, *cer.bundles[2:]]
    result = recover(cer.descriptor, bundles, token(cer))
    assert result.secret.plaintext == CANARY
    assert result.faulty_nodes == ["node-2"]


# --- the fleet directory -------------------------------------------------------------------


def test_fleet_dir_round_trip(tmp_path) -> None:
    cer = ceremony()
    written = write_fleet_dir(tmp_path, cer, TEST_PASSPHRASE, params=FAST_KDF)
    top = {
        "fleet.json",
        "roster.json",
        "admin.key",
        "backend.key",
        "backend.json",
        "nats-nodes.json",
    }
    assert {p.name for p in written} == top | {f"node-{i}.bundle" for i in range(1, 6)}
    for path in written:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o644 if path.suffix == ".json" else 0o600)
    descriptor = load_descriptor(tmp_path)
    assert descriptor == cer.descriptor
    roster = load_roster(tmp_path, descriptor)
    assert roster == cer.roster
    assert roster.serial == 1 and all(n.status == "active" for n in roster.nodes)
    assert [n.id for n in roster.nodes] == [n.id for n in descriptor.nodes]
    bundles = [
        read_bundle(tmp_path / "nodes" / f"node-{i}.bundle", TEST_PASSPHRASE) for i in (2, 4, 5)
    ]
    assert recover(descriptor, bundles, token(cer)).secret.plaintext == CANARY
    with pytest.raises(ConfigurationError, match="not empty"):
        write_fleet_dir(tmp_path, cer, TEST_PASSPHRASE, params=FAST_KDF)
    write_fleet_dir(tmp_path, cer, TEST_PASSPHRASE, params=FAST_KDF, force=True)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CANARY not in data
            for b in cer.bundles:  # no share in the clear in any file
                assert b.share.secret_value.to_bytes(128, "big") not in data

"""Envelope values found proven, remembered across restarts: a restarting node checks only
what rests on its own state for a value it proved before (the JWE's header and the admin's
statement are not checked again), and nothing else is skipped."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge import verified_statements as vs
from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.bridge.store import EnvelopeStore
from flashgate.bridge.verified_statements import (
    StatementVerifier,
    VerifiedStatements,
    file_mac_key,
)
from flashgate.crypto.encoding import b64url_encode
from flashgate.errors import Tombstoned
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.fleet import Roster
from flashgate.events.signing import sign
from tests.bridge.test_unit_provenance import SECRET, rewrapped
from tests.support.bridge_units import (
    EPOCH,
    FLEET,
    MEMBERS,
    SecretSpec,
    envelope_bytes,
    fleet,
    public_key,
    roster,
)

SPECS = [SecretSpec("app", f"v{i}", b"value-%d" % i) for i in range(4)]
SEED = bytes(range(32))


class Node:
    """A node's store as the node builds it (full proof, the rest for proven values, the
    memo in an authenticated file), with a tombstone list and a roster it can change."""

    def __init__(self, path: Path) -> None:
        cache = VerifiedStatements(path, file_mac_key(SEED, FLEET, "node-1"))
        cache.load()
        self.verifier = StatementVerifier(fleet().admin_key.public_key(), cache)
        self.dead: set[str] = set()
        self.roster: Roster = roster()
        self.proof = ProvenanceCheck(
            admin=fleet().admin_key.public_key(),
            roster=lambda: self.roster,
            members=lambda epoch: MEMBERS,
            statements=self.verifier,
        )

        def tombstones(envelope: SecretEnvelope) -> None:
            if envelope.key in self.dead:
                raise Tombstoned(f"{envelope.key}: deleted by the admin")

        def prove(envelope: SecretEnvelope) -> list:  # type: ignore[type-arg]
            signatures = self.proof.signatures(envelope)
            tombstones(envelope)
            return signatures

        def prove_rest(envelope: SecretEnvelope) -> list:  # type: ignore[type-arg]
            signatures = self.proof.signatures(envelope, statement_proven=True)
            tombstones(envelope)
            return signatures

        keys = {EPOCH: public_key(), EPOCH + 1: public_key()}
        self.store = EnvelopeStore(FLEET, keys, prove, prove_rest=prove_rest, memo=self.verifier)

    def save(self) -> None:
        assert self.verifier.cache is not None
        data = self.verifier.cache.snapshot()
        if data is not None:
            self.verifier.cache.write(data)


def _first_run(path: Path) -> Node:
    node = Node(path)
    for revision, spec in enumerate(SPECS, start=1):
        assert node.store.ingest(spec.key, revision, envelope_bytes(spec)) is not None
    assert (node.verifier.verified, node.verifier.values_known) == (len(SPECS), 0)
    assert node.verifier.cache is not None and len(node.verifier.cache) == len(SPECS)
    node.save()
    return node


def test_a_restart_checks_a_value_it_proved_before_only_against_its_own_state(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node-1.bundle.verified"
    first = _first_run(path)
    again = Node(path)
    for revision, spec in enumerate(SPECS, start=1):
        entry = again.store.ingest(spec.key, revision, envelope_bytes(spec))
        assert entry is not None
        before = first.store.current[spec.key]
        # the same entry as a full check makes (the JWE split, its context the metadata's)
        assert (entry.digest, entry.version, entry.epoch) == (
            before.digest,
            before.version,
            before.epoch,
        )
        full = first.store.check(spec.key, revision, envelope_bytes(spec)).entry
        assert full is not None and entry.parsed == full.parsed
    assert again.verifier.values_known == len(SPECS)
    assert again.verifier.verified == 0  # no statement checked, no signature verified


def test_only_the_very_value_under_the_very_key_is_known(tmp_path: Path) -> None:
    """Another value (its statement kept, its JWE changed), the same value under another
    key, or under another admin key: checked in full, and refused when it does not prove."""
    path = tmp_path / "v"
    _first_run(path)
    node = Node(path)
    raw = envelope_bytes(SPECS[0])
    envelope = ENVELOPE_CODEC.decode(raw)
    changed = ENVELOPE_CODEC.encode(
        msgspec.structs.replace(envelope, jwe=envelope.jwe[:-4] + "AAAA")
    )
    assert node.store.ingest(SPECS[0].key, 1, changed) is None
    assert node.store.rejected[SPECS[0].key] == "unproven"
    assert node.store.ingest(SPECS[1].key, 2, raw) is None  # found under another key
    assert node.store.rejected[SPECS[1].key] == "context_mismatch"
    assert node.verifier.values_known == 0
    found = node.verifier.proven_value(FLEET, SPECS[0].key, raw)
    assert found is not None and found[1]  # the value itself, where it was: known
    other_admin = StatementVerifier(Ed25519PrivateKey.generate().public_key(), node.verifier.cache)
    found = other_admin.proven_value(FLEET, SPECS[0].key, raw)
    assert found is not None and not found[1]


def test_a_value_not_known_is_decoded_with_every_constraint(tmp_path: Path) -> None:
    """Only a value known proven skips the wire constraints (it passed them then): any
    other is decoded strictly, here one whose only fault is its metadata's command id,
    which no statement covers."""
    path = tmp_path / "v"
    _first_run(path)
    node = Node(path)
    envelope = ENVELOPE_CODEC.decode(envelope_bytes(SPECS[0]))
    bad = ENVELOPE_CODEC.encode(msgspec.structs.replace(envelope, command_id="not a command id!"))
    assert ENVELOPE_CODEC.decode_accepted(bad).command_id == "not a command id!"
    assert node.store.ingest(SPECS[0].key, 1, bad) is None
    assert node.store.rejected[SPECS[0].key] == "malformed_message"
    assert node.store.ingest(SPECS[1].key, 2, envelope_bytes(SPECS[1])) is not None
    assert node.verifier.values_known == 1  # the value known, decoded without them


def test_what_rests_on_the_nodes_state_is_checked_every_time(tmp_path: Path) -> None:
    """A tombstone, a re-wrapping node revoked since, an epoch the node no longer holds:
    a value proven before is refused all the same."""
    path = tmp_path / "v"
    node = Node(path)
    good = ENVELOPE_CODEC.encode(rewrapped("node-3"))
    assert node.store.ingest(SECRET.key, 1, good) is not None
    assert node.verifier.values_known == 0
    node.save()

    again = Node(path)
    assert again.store.ingest(SECRET.key, 1, good) is not None
    assert again.verifier.values_known == 1

    revoked = Node(path)
    revoked.roster = roster(revoked=("node-3",))
    assert revoked.store.ingest(SECRET.key, 1, good) is None
    assert revoked.store.rejected[SECRET.key] == "unproven"
    # known (its statement was not checked again), and refused by the roster
    assert revoked.verifier.values_known == 0 and revoked.verifier.verified == 0

    deleted = Node(path)
    deleted.dead.add(SECRET.key)
    assert deleted.store.ingest(SECRET.key, 1, good) is None
    assert deleted.store.rejected[SECRET.key] == Tombstoned.code

    retired = Node(path)
    del retired.store.keys[EPOCH + 1]
    assert retired.store.ingest(SECRET.key, 1, good) is None
    assert retired.store.rejected[SECRET.key] == "stale_epoch"


def _rekeyed(node_id: str) -> Roster:
    """The test roster with ``node_id`` given another signing key (re-keyed)."""
    base = roster()
    other = b64url_encode(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    nodes = [
        msgspec.structs.replace(n, signing_key=other) if n.id == node_id else n for n in base.nodes
    ]
    return sign(msgspec.structs.replace(base, nodes=nodes, signature=""), fleet().admin_key)


def test_a_rewrap_attestation_verified_before_is_not_verified_again(tmp_path: Path) -> None:
    """After a fleet key rotation every value carries a node's re-wrap attestation. Its
    signature, once verified, is remembered as an admin statement is (the signer's key in
    its fingerprint), beside the value's: a restart verifies no signature at all. Whether
    its node is active is still checked every time, and a node re-keyed since has its
    attestation verified again (and refused: the old key made it)."""
    path = tmp_path / "v"
    good = ENVELOPE_CODEC.encode(rewrapped("node-3"))
    first = Node(path)
    checked = first.store.check(SECRET.key, 1, good)
    assert len(checked.signatures) == 2  # the admin's statement and the attestation
    assert first.store.admit(checked, [s.verify() for s in checked.signatures]) is not None
    first.save()

    again = Node(path)
    checked = again.store.check(SECRET.key, 1, good)
    assert checked.proven and list(checked.signatures) == []
    assert again.store.admit(checked, []) is not None
    assert again.verifier.hits == 1  # the attestation, remembered
    again.save()

    rekeyed = Node(path)
    rekeyed.roster = _rekeyed("node-3")
    checked = rekeyed.store.check(SECRET.key, 1, good)
    assert len(checked.signatures) == 1
    assert rekeyed.store.admit(checked, [s.verify() for s in checked.signatures]) is None
    assert rekeyed.store.rejected[SECRET.key] == "unproven"

    revoked = Node(path)
    revoked.roster = roster(revoked=("node-3",))
    assert revoked.store.ingest(SECRET.key, 1, good) is None
    assert revoked.store.rejected[SECRET.key] == "unproven"


def test_a_remembered_attestation_still_binds_its_own_envelope(tmp_path: Path) -> None:
    """An attestation remembered as verified, moved onto another re-wrap of the same
    envelope (the admin's statement still matches: the body is the same), is refused:
    what binds it to the JWE is checked before the memo is asked."""
    path = tmp_path / "v"
    first, second = rewrapped("node-3"), rewrapped("node-3")  # two re-wraps, one body
    assert first.jwe != second.jwe
    assert first.provenance is not None and second.provenance is not None
    node = Node(path)
    assert node.store.ingest(SECRET.key, 1, ENVELOPE_CODEC.encode(first)) is not None
    node.save()
    moved = msgspec.structs.replace(
        second,
        provenance=msgspec.structs.replace(second.provenance, rewrap=first.provenance.rewrap),
    )
    again = Node(path)
    assert again.store.ingest(SECRET.key, 1, ENVELOPE_CODEC.encode(moved)) is None
    assert again.store.rejected[SECRET.key] == "unproven"


def test_a_remembered_signature_stands_for_its_key_signature_and_bytes_only(
    tmp_path: Path,
) -> None:
    """The memo answers for the very signer, signature and signed bytes it verified: any
    other of the three is verified again."""
    node = Node(tmp_path / "v")
    signer, other = bytes(range(32)), bytes(range(1, 33))
    signature, signed = bytes(64), b"signed bytes"
    job = node.verifier.pending(signature, signed, "refused", signer=signer)
    assert job is not None and job.remember is not None and not job.in_value_proof
    job.remember()
    assert node.verifier.pending(signature, signed, "refused", signer=signer) is None
    assert node.verifier.pending(signature, signed + b"!", "refused", signer=signer) is not None
    assert node.verifier.pending(bytes(63) + b"\x01", signed, "refused", signer=signer) is not None
    assert node.verifier.pending(signature, signed, "refused", signer=other) is not None
    assert node.verifier.pending(signature, signed, "refused") is not None  # the admin's


def test_a_refused_value_is_never_remembered(tmp_path: Path) -> None:
    path = tmp_path / "v"
    node = Node(path)
    node.dead.add(SPECS[0].key)  # proven, but deleted by the admin: not admitted
    assert node.store.ingest(SPECS[0].key, 1, envelope_bytes(SPECS[0])) is None
    node.save()
    again = Node(path)
    assert again.store.ingest(SPECS[0].key, 1, envelope_bytes(SPECS[0])) is not None
    assert again.verifier.values_known == 0


def test_a_known_value_refused_now_is_not_kept_at_the_next_save(tmp_path: Path) -> None:
    """A value proven before and refused now (a tombstone arrived while the node was
    down) drops out of the file: only values admitted in this run are kept."""
    path = tmp_path / "v"
    _first_run(path)
    node = Node(path)
    node.dead.add(SPECS[0].key)
    for revision, spec in enumerate(SPECS, start=1):
        admitted = node.store.ingest(spec.key, revision, envelope_bytes(spec))
        assert (admitted is None) == (spec is SPECS[0])
    assert node.verifier.values_known == len(SPECS) - 1
    node.save()
    assert VerifiedStatements(path, file_mac_key(SEED, FLEET, "node-1")).load() == len(SPECS) - 1


def test_a_known_value_checked_again_after_a_tombstone_is_checked_against_the_state(
    tmp_path: Path,
) -> None:
    """A tombstone arriving between a value's check and its admission re-checks it; for
    a value proven before that is the state-dependent part (no statement counted as
    verified)."""
    path = tmp_path / "v"
    _first_run(path)
    node = Node(path)
    checked = [
        node.store.check(spec.key, revision, envelope_bytes(spec))
        for revision, spec in enumerate(SPECS, start=1)
    ]
    node.dead.add(SPECS[1].key)
    node.store.drop_where(lambda entry: False)  # a tombstone was applied meanwhile
    admitted = [node.store.admit(c, [s.verify() for s in c.signatures]) for c in checked]
    assert [a is None for a in admitted] == [spec is SPECS[1] for spec in SPECS]
    assert node.store.rejected[SPECS[1].key] == Tombstoned.code
    assert node.verifier.verified == 0


def test_values_proven_under_other_rules_are_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v"
    _first_run(path)
    monkeypatch.setattr(vs, "VALUE_TAG", b"flashgate proven envelope value v999\x00")
    node = Node(path)
    for revision, spec in enumerate(SPECS, start=1):
        assert node.store.ingest(spec.key, revision, envelope_bytes(spec)) is not None
    assert node.verifier.values_known == 0
    # proven in full again: one fingerprint is kept per value, none per statement
    assert node.verifier.verified == len(SPECS) and node.verifier.hits == 0


#: What a value proven before is not checked against again, by source. Changing any of it
#: changes what a value must pass: raise ``CHECKS_VERSION`` and update this digest.
# Last changed without raising CHECKS_VERSION (3) by the accepted decode of a proven value
# (codec.py, added to the sources) and its cheaper location check: what a fingerprint
# stands for, the strict checks a value passed once, did not change; only how a value
# known to have passed them is read again.
CHECKS_VERSION_SOURCES_SHA256 = "c3f57aebe81e94b48f8822def4d2877eb37f122795a3299af7e6ff951cc355c8"


def _checks_sources_digest() -> str:
    import hashlib
    import inspect

    from flashgate import names
    from flashgate.bridge import provenance, signature_worker, value_proof
    from flashgate.crypto import context, encoding, jwe
    from flashgate.events import codec, envelope, types

    parts = [
        inspect.getsource(jwe),  # the profile: parse, parse_header, the allowed parameters
        inspect.getsource(encoding),  # strict base64url (parse_proven decodes without it)
        inspect.getsource(context.SecretContext),
        inspect.getsource(codec),  # the strict decode, and the one a proven value takes
        inspect.getsource(envelope),  # the structs, check_envelope_location, check_statement
        inspect.getsource(types),  # the wire constraints of the envelope's fields
        inspect.getsource(names),
        inspect.getsource(provenance.provenance_signatures),
        inspect.getsource(value_proof),  # the statement's checks; what the worker proves
        inspect.getsource(signature_worker.prove_batch),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_checks_version_is_raised_when_the_skipped_checks_change() -> None:
    from flashgate.bridge import value_proof

    assert value_proof.CHECKS_VERSION == 3
    assert _checks_sources_digest() == CHECKS_VERSION_SOURCES_SHA256, (
        "the checks a value proven before skips have changed: raise CHECKS_VERSION in "
        "flashgate/bridge/value_proof.py (values proven under the old rules are "
        "then checked in full again) and update CHECKS_VERSION_SOURCES_SHA256"
    )

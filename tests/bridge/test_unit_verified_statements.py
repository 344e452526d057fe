"""Admin statements verified once, remembered beside the bundle (only their signature check
is skipped; the file is authenticated with a key only the node holds)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge import verified_statements as vs
from flashgate.bridge.provenance import ProvenanceCheck
from flashgate.bridge.verified_statements import (
    StatementVerifier,
    VerifiedStatements,
    file_mac_key,
    verified_path,
)
from flashgate.crypto.ed25519 import verify as ed25519_verify
from flashgate.crypto.encoding import b64url_decode, b64url_encode
from flashgate.errors import SignatureInvalid, Unproven
from flashgate.events.envelope import ENVELOPE_CODEC, EnvelopeStatement, SecretEnvelope
from flashgate.events.signing import sign, signing_bytes
from tests.support.bridge_units import (
    MEMBERS,
    SecretSpec,
    envelope_bytes,
    fleet,
    roster,
)

SPECS = [SecretSpec("app", f"s{i}", b"value-%d" % i) for i in range(6)]
SEED = bytes(range(32))


def _envelopes() -> list[SecretEnvelope]:
    return [ENVELOPE_CODEC.decode(envelope_bytes(spec)) for spec in SPECS]


def _statements() -> list[EnvelopeStatement]:
    statements = []
    for envelope in _envelopes():
        assert envelope.provenance is not None
        statements.append(envelope.provenance.statement)
    return statements


def _cache(path: Path, seed: bytes = SEED) -> VerifiedStatements:
    return VerifiedStatements(path, file_mac_key(seed, "unit", "node-1"))


def _verifier(path: Path, seed: bytes = SEED) -> StatementVerifier:
    cache = _cache(path, seed)
    cache.load()
    return StatementVerifier(fleet().admin_key.public_key(), cache)


def _save(verifier: StatementVerifier) -> None:
    assert verifier.cache is not None
    data = verifier.cache.snapshot()
    assert data is not None
    verifier.cache.write(data)


def _first_run(path: Path) -> None:
    verifier = _verifier(path)
    for statement in _statements():
        verifier(statement)
    assert (verifier.verified, verifier.hits) == (len(SPECS), 0)
    _save(verifier)


def test_a_restart_skips_the_verifications_it_has_kept(tmp_path: Path) -> None:
    path = verified_path(tmp_path / "node-1.bundle")
    assert path.name == "node-1.bundle.verified"
    _first_run(path)
    again = _verifier(path)
    assert again.cache is not None and again.cache.loaded == len(SPECS)
    for statement in _statements():
        again(statement)
    assert (again.verified, again.hits) == (0, len(SPECS))


def test_a_file_not_authenticated_by_this_node_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "node-1.bundle.verified"
    _first_run(path)
    other = _verifier(path, seed=bytes(32))  # another node's key: the MAC does not check
    assert other.cache is not None and other.cache.ignored_file and other.cache.loaded == 0
    for statement in _statements():
        other(statement)
    assert (other.verified, other.hits) == (len(SPECS), 0)


def test_a_forged_entry_is_not_trusted(tmp_path: Path) -> None:
    """Whoever writes the node's disk adds the fingerprint of a forged statement: without
    the node's key its MAC cannot be made, so the file is ignored and the forgery refused."""
    path = tmp_path / "node-1.bundle.verified"
    _first_run(path)
    forged = msgspec.structs.replace(_statements()[0], name="forged")
    forged = sign(forged, Ed25519PrivateKey.generate())  # not the admin's key
    admin_raw = StatementVerifier(fleet().admin_key.public_key())._admin_raw
    fingerprint = hashlib.sha256(
        vs._FINGERPRINT_TAG + admin_raw + b64url_decode(forged.signature) + signing_bytes(forged)
    ).digest()
    data = path.read_bytes()
    head = len(vs.MAGIC)
    count = int.from_bytes(data[head : head + 4], "big")
    body = vs.MAGIC + (count + 1).to_bytes(4, "big") + data[head + 4 : -32] + fingerprint
    for mac in (data[-32:], hmac.new(bytes(32), body, hashlib.sha256).digest()):
        path.write_bytes(body + mac)
        verifier = _verifier(path)
        assert verifier.cache is not None and verifier.cache.ignored_file
        with pytest.raises(SignatureInvalid):
            verifier(forged)
        assert verifier.hits == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "too_many"])
def test_a_damaged_or_oversized_file_is_ignored(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node-1.bundle.verified"
    _first_run(path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(vs.MAGIC) + 10] ^= 1
    elif damage == "truncate":
        del data[-40:]
    elif damage == "magic":
        data[0] ^= 1
    else:
        monkeypatch.setattr(vs, "MAX_ENTRIES", len(SPECS) - 1)
    path.write_bytes(bytes(data))
    verifier = _verifier(path)
    assert verifier.cache is not None and verifier.cache.ignored_file
    for statement in _statements():
        verifier(statement)
    assert (verifier.verified, verifier.hits) == (len(SPECS), 0)


def test_another_admin_key_misses(tmp_path: Path) -> None:
    path = tmp_path / "node-1.bundle.verified"
    _first_run(path)
    cache = _cache(path)
    assert cache.load() == len(SPECS)
    other = StatementVerifier(Ed25519PrivateKey.generate().public_key(), cache)
    for statement in _statements():
        with pytest.raises(SignatureInvalid):
            other(statement)
    assert (other.verified, other.hits) == (len(SPECS), 0)


def test_a_bad_signature_is_refused_and_never_kept(tmp_path: Path) -> None:
    verifier = _verifier(tmp_path / "v")
    statement = _statements()[0]
    raw = bytearray(b64url_decode(statement.signature))
    raw[5] ^= 0x10
    bad = msgspec.structs.replace(statement, signature=b64url_encode(bytes(raw)))
    for _ in range(2):
        with pytest.raises(SignatureInvalid):
            verifier(bad)
    assert (verifier.verified, verifier.hits) == (2, 0)
    assert verifier.cache is not None and len(verifier.cache) == 0
    verifier(statement)  # the genuine one still verifies
    with pytest.raises(SignatureInvalid):
        verifier(msgspec.structs.replace(statement, signature="AAAA"))


def test_libsodium_accepts_what_openssl_accepts_and_refuses_what_it_refuses() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw_public = StatementVerifier(public)._admin_raw
    for i in range(50):
        message = b"message %d" % i
        signature = key.sign(message)
        assert ed25519_verify(raw_public, signature, message)
        for bad_sig, bad_msg in (
            (signature[:-1] + bytes([signature[-1] ^ 1]), message),
            (signature, message + b"!"),
            (signature[:32] + bytes(32), message),
            (signature[:63], message),
        ):
            assert not ed25519_verify(raw_public, bad_sig, bad_msg)
    assert not ed25519_verify(bytes(32), key.sign(b"m"), b"m")  # a small-order key


def test_a_cache_hit_skips_only_the_signature_check(tmp_path: Path) -> None:
    """The statement is still checked against the envelope, the re-wrap attestation, the
    roster and the epoch's members live: a kept fingerprint proves only the signature."""
    path = tmp_path / "v"
    _first_run(path)
    verifier = _verifier(path)
    check = ProvenanceCheck(
        admin=fleet().admin_key.public_key(),
        roster=roster,
        members=lambda _epoch: MEMBERS,
        statements=verifier,
    )
    envelopes = _envelopes()
    check(envelopes[0])
    assert verifier.hits == 1
    # the same (kept) statement on another envelope, or on a changed JWE: refused
    moved = msgspec.structs.replace(envelopes[1], provenance=envelopes[0].provenance)
    with pytest.raises(Unproven):
        check(moved)
    token = envelopes[0].jwe
    changed = msgspec.structs.replace(envelopes[0], jwe=token[:-4] + "AAAA")
    with pytest.raises(Unproven):
        check(changed)
    with pytest.raises(Unproven):
        check(msgspec.structs.replace(envelopes[0], provenance=None))


def test_a_save_keeps_only_what_this_run_used(tmp_path: Path) -> None:
    path = tmp_path / "v"
    _first_run(path)
    verifier = _verifier(path)
    verifier(_statements()[0])  # the others were deleted meanwhile
    _save(verifier)
    assert _cache(path).load() == 1
    nothing_new = _verifier(path)
    nothing_new(_statements()[0])
    assert nothing_new.cache is not None and nothing_new.cache.snapshot() is None

"""Envelope provenance (flashgate/bridge/provenance.py, issue 14 §2): a node loads an
envelope, and computes a partial for it, only when the admin's signed statement proves it
(or an active member of its epoch attests a re-wrap of a proven one)."""

from __future__ import annotations

import dataclasses
import hashlib

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge.partials import PartialCache
from flashgate.bridge.protocol import Responder, build_request, open_response
from flashgate.bridge.provenance import ProvenanceCheck, check_provenance
from flashgate.bridge.share_service import ShareService
from flashgate.bridge.store import EnvelopeStore
from flashgate.crypto.decrypt import rewrap
from flashgate.errors import Unproven
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    ApiKeyInfo,
    Provenance,
    RewrapAttestation,
    SecretEnvelope,
    jwe_sha256,
)
from flashgate.events.share import ShareItem
from flashgate.events.signing import sign
from tests.support.bridge_units import (
    EPOCH,
    FLEET,
    MEMBERS,
    SAMPLE_SECRETS,
    SecretSpec,
    bundle,
    envelope_bytes,
    fleet,
    new_store,
    prove_check,
    public_key,
    reference_y,
    roster,
)
from tests.support.material import proven

KEY_ID = "fgk_" + "k" * 21
API_KEY = SecretSpec("payments", KEY_ID, b"fgs_" + b"s" * 43, kind="apikey", api_key_id=KEY_ID)
SECRET = SecretSpec("payments", "s3", b"value", kind="generic")


def envelope(spec: SecretSpec) -> SecretEnvelope:
    return ENVELOPE_CODEC.decode(envelope_bytes(spec))


def check(env: SecretEnvelope, check: ProvenanceCheck | None = None) -> None:
    (check or prove_check())(env)


def test_an_envelope_the_admin_stated_is_proven() -> None:
    check(envelope(SECRET))
    check(envelope(API_KEY))


def test_an_envelope_without_provenance_is_unproven() -> None:
    with pytest.raises(Unproven, match="no proof"):
        check(msgspec.structs.replace(envelope(SECRET), provenance=None))


def test_a_statement_signed_by_another_key_is_unproven() -> None:
    forged = proven(
        msgspec.structs.replace(envelope(SECRET), provenance=None),
        Ed25519PrivateKey.generate(),
    )
    with pytest.raises(Unproven, match="does not verify"):
        check(forged)


def test_a_statement_moved_to_another_version_or_value_is_unproven() -> None:
    v1 = envelope(SECRET)
    v2 = envelope(dataclasses.replace(SECRET, version=2, value=b"attacker"))
    with pytest.raises(Unproven):
        check(msgspec.structs.replace(v2, provenance=v1.provenance))
    other = envelope(dataclasses.replace(SECRET, value=b"attacker"))
    with pytest.raises(Unproven, match="JWE differs"):
        check(msgspec.structs.replace(other, provenance=v1.provenance))


@pytest.mark.parametrize(
    "change",
    [{"access": "admin"}, {"scope": "ai"}, {"key_id": "fgk_" + "x" * 21}],
    ids=["access", "scope", "key_id"],
)
def test_api_key_info_changed_in_the_bucket_is_unproven(change: dict[str, str]) -> None:
    env = envelope(API_KEY)
    assert env.api_key is not None
    changed = msgspec.structs.replace(env, api_key=msgspec.structs.replace(env.api_key, **change))
    with pytest.raises(Unproven):
        check(changed)


def test_an_api_key_whose_id_is_not_the_envelope_name_is_unproven_even_if_stated() -> None:
    env = envelope(API_KEY)
    assert env.api_key is not None
    other = msgspec.structs.replace(env.api_key, key_id="fgk_" + "x" * 21)
    # the admin's key signs it (a mistake, or an old tool): the node still refuses it
    stated = proven(msgspec.structs.replace(env, api_key=other, provenance=None), fleet().admin_key)
    with pytest.raises(Unproven, match="id and envelope name differ"):
        check(stated)


def test_api_key_info_dropped_or_added_is_unproven() -> None:
    with pytest.raises(Unproven):
        check(msgspec.structs.replace(envelope(API_KEY), api_key=None))
    with pytest.raises(Unproven):
        info = ApiKeyInfo(key_id=SECRET.name, scope="storage", access="admin", label="x")
        check(msgspec.structs.replace(envelope(SECRET), api_key=info))


def test_a_renamed_api_key_stays_proven() -> None:
    """The label is not proven: ``apikey.rename`` changes it and authorizes nothing."""
    env = envelope(API_KEY)
    assert env.api_key is not None
    check(msgspec.structs.replace(env, api_key=msgspec.structs.replace(env.api_key, label="new")))


# --- re-wraps ------------------------------------------------------------------------------


def rewrapped(
    by: str, *, epoch: int = EPOCH + 1, key: Ed25519PrivateKey | None = None
) -> SecretEnvelope:
    """SECRET re-wrapped to ``epoch`` (the same test key stands in for the new epoch's) and
    attested by node ``by``."""
    original = envelope(SECRET)
    entry = new_store([SECRET]).current[SECRET.key]
    token = rewrap(entry.parsed, reference_y(entry.ciphertext), public_key(), public_key())
    assert original.provenance is not None
    attestation = RewrapAttestation(
        node_id=by,
        epoch=epoch,
        jwe_sha256=jwe_sha256(token),
        statement_signature=original.provenance.statement.signature,
    )
    signed = sign(attestation, key or bundle(by).signing_key)
    provenance = Provenance(statement=original.provenance.statement, rewrap=signed)
    return msgspec.structs.replace(original, jwe=token, epoch=epoch, provenance=provenance)


def members_check(members: dict[str, int], revoked: tuple[str, ...] = ()) -> ProvenanceCheck:
    fleet_roster = roster(revoked=revoked)
    return ProvenanceCheck(
        admin=fleet().admin_key.public_key(),
        roster=lambda: fleet_roster,
        members=lambda epoch: members if epoch == EPOCH + 1 else None,
    )


def test_a_rewrap_attested_by_an_active_member_of_the_new_epoch_is_proven() -> None:
    check(rewrapped("node-3"), members_check(MEMBERS))


def test_a_rewrap_by_a_revoked_node_or_a_non_member_is_unproven() -> None:
    with pytest.raises(Unproven, match="not an active member"):
        check(rewrapped("node-3"), members_check(MEMBERS, revoked=("node-3",)))
    without = {n: i for n, i in MEMBERS.items() if n != "node-3"}
    with pytest.raises(Unproven, match="not an active member"):
        check(rewrapped("node-3"), members_check(without))


def test_a_rewrap_attestation_signed_by_another_key_or_about_another_jwe_is_unproven() -> None:
    with pytest.raises(Unproven, match="does not verify"):
        check(rewrapped("node-3", key=bundle("node-4").signing_key), members_check(MEMBERS))
    good = rewrapped("node-3")
    assert good.provenance is not None and good.provenance.rewrap is not None
    other = rewrapped("node-3")  # another OAEP wrapping of the same content key
    with pytest.raises(Unproven, match="another envelope"):
        check(msgspec.structs.replace(other, provenance=good.provenance), members_check(MEMBERS))


def test_a_rewrap_that_changes_the_payload_is_unproven() -> None:
    good = rewrapped("node-3")
    other = envelope(dataclasses.replace(SECRET, value=b"attacker"))
    assert good.provenance is not None and good.provenance.rewrap is not None
    attestation = sign(
        msgspec.structs.replace(
            good.provenance.rewrap, jwe_sha256=jwe_sha256(other.jwe), signature=""
        ),
        bundle("node-3").signing_key,
    )
    forged = msgspec.structs.replace(
        other,
        epoch=EPOCH + 1,
        provenance=msgspec.structs.replace(good.provenance, rewrap=attestation),
    )
    with pytest.raises(Unproven, match="JWE differs"):
        check_provenance(
            forged, fleet().admin_key.public_key(), members_check(MEMBERS).rewrapper_key
        )


# --- the store and the responder ----------------------------------------------------------


def test_the_store_refuses_an_unproven_envelope_and_keeps_the_reason() -> None:
    store = new_store()
    raw = ENVELOPE_CODEC.encode(msgspec.structs.replace(envelope(SECRET), provenance=None))
    assert store.ingest(SECRET.key, 1, raw) is None
    assert store.rejected == {SECRET.key: "unproven"}


async def test_a_responder_computes_no_partial_for_an_unproven_envelope() -> None:
    store = new_store(SAMPLE_SECRETS)
    spec = SAMPLE_SECRETS[0]
    unproven = msgspec.structs.replace(envelope(spec), provenance=None)
    raw = ENVELOPE_CODEC.encode(unproven)
    digest = hashlib.sha256(store.current[spec.key].parsed.encrypted_key).digest()
    assert store.ingest(spec.key, 99, raw) is None
    node = bundle("node-2")
    fleet_roster = roster()
    responder = Responder(
        node_id="node-2",
        fleet=FLEET,
        signing_key=node.signing_key,
        roster=lambda: fleet_roster,
        members=lambda epoch: MEMBERS if epoch == EPOCH else None,
    )
    cache = PartialCache(node.share, node.public, workers=1)
    try:
        service = ShareService(responder, store, lambda epoch: cache if epoch == EPOCH else None)
        raw_request, request, reply_key = build_request(
            node_id="node-1",
            responder="node-2",
            fleet=FLEET,
            epoch=EPOCH,
            signing_key=bundle("node-1").signing_key,
            items=[ShareItem(spec.key, 99, digest)],
        )
        results = open_response(
            await service.answer(raw_request), request, reply_key, "node-2", fleet_roster
        )
    finally:
        cache.close()
    assert results.partials == []
    assert [r.reason for r in results.refusals] == ["unknown_secret"]


# --- what `fleet attest` re-states -----------------------------------------------------------


def test_fleet_attest_restates_unproven_envelopes_whose_value_is_the_admins_only() -> None:
    from flashgate.cli.attest import _needs_statement

    active, revoked = members_check(MEMBERS), members_check(MEMBERS, revoked=("node-3",))
    assert not _needs_statement(envelope(SECRET), active)
    assert _needs_statement(msgspec.structs.replace(envelope(SECRET), provenance=None), active)
    assert not _needs_statement(rewrapped("node-3"), active)
    # re-wrapped by a node revoked since: the admin's original statement proves the body
    assert _needs_statement(rewrapped("node-3"), revoked)
    # a statement not the admin's, or a body the admin did not state: never adopted
    foreign = proven(
        msgspec.structs.replace(envelope(SECRET), provenance=None), Ed25519PrivateKey.generate()
    )
    assert not _needs_statement(foreign, active)
    planted = envelope(dataclasses.replace(SECRET, value=b"attacker"))
    good = rewrapped("node-3")
    assert not _needs_statement(
        msgspec.structs.replace(planted, epoch=EPOCH + 1, provenance=good.provenance), revoked
    )


def test_a_rewrap_by_a_node_revoked_since_is_dropped_from_the_store() -> None:
    """A running node stops serving envelopes re-wrapped by a node revoked after it
    loaded them (it used to keep them until a restart)."""
    revoked: tuple[str, ...] = ()
    proof = ProvenanceCheck(
        admin=fleet().admin_key.public_key(),
        roster=lambda: roster(revoked=revoked),
        members=lambda epoch: MEMBERS if epoch == EPOCH + 1 else None,
    )
    store = EnvelopeStore(FLEET, {EPOCH + 1: public_key()}, proof)
    good = rewrapped("node-3")
    assert store.ingest(SECRET.key, 5, ENVELOPE_CODEC.encode(good)) is not None
    assert store.drop_where(proof.rewrap_revoked, "unproven") == []
    revoked = ("node-3",)
    assert store.drop_where(proof.rewrap_revoked, "unproven") == [SECRET.key]
    assert store.lookup(SECRET.key, 5) is None and store.rejected[SECRET.key] == "unproven"

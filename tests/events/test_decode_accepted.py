"""``Codec.decode_accepted``: bytes the strict decode accepted before, decoded into the same
types without their constraints checked again (what a node does with a value it proved)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from flashgate.errors import MalformedMessage, OversizedInput
from flashgate.events.codec import Codec, unconstrained
from flashgate.events.envelope import (
    ENVELOPE_CODEC,
    ApiKeyInfo,
    EnvelopeStatement,
    Provenance,
    ProvenApiKey,
    SecretEnvelope,
)
from flashgate.events.signing import signing_bytes
from tests.events import samples
from tests.events.test_wire import CASES, IDS


@pytest.mark.parametrize(("name", "codec", "value"), CASES, ids=IDS)
def test_accepted_decode_equals_the_strict_one(name: str, codec: Codec[Any], value: Any) -> None:
    raw = codec.encode(value)
    strict = codec.decode(raw)
    accepted = codec.decode_accepted(raw)
    assert isinstance(accepted, type(strict))
    assert msgspec.to_builtins(accepted) == msgspec.to_builtins(strict)
    assert codec.encode(accepted) == raw


def test_an_accepted_envelope_is_a_secret_envelope_with_the_same_proof() -> None:
    for value in (samples.envelope(), samples.apikey_envelope()):
        raw = ENVELOPE_CODEC.encode(value)
        accepted = ENVELOPE_CODEC.decode_accepted(raw)
        assert isinstance(accepted, SecretEnvelope)
        assert accepted.key == value.key
        assert accepted.context == value.context
        assert repr(accepted) == repr(value)  # the envelope's own repr (no JWE)
        provenance = accepted.provenance
        assert isinstance(provenance, Provenance)
        assert isinstance(provenance.statement, EnvelopeStatement)
        assert value.provenance is not None
        assert signing_bytes(provenance.statement) == signing_bytes(value.provenance.statement)


def test_api_key_types_stay_exact_they_are_compared() -> None:
    accepted = ENVELOPE_CODEC.decode_accepted(ENVELOPE_CODEC.encode(samples.apikey_envelope()))
    assert type(accepted.api_key) is ApiKeyInfo
    assert accepted.provenance is not None
    assert type(accepted.provenance.statement.api_key) is ProvenApiKey
    assert accepted.provenance.statement.api_key == ProvenApiKey(
        key_id=accepted.api_key.key_id, scope=accepted.api_key.scope, access=accepted.api_key.access
    )


def test_constraints_are_not_checked_so_only_bytes_known_accepted_may_take_it() -> None:
    """Why a node takes this way only for a value its memo proves: a name the strict decode
    refuses decodes here."""
    raw = ENVELOPE_CODEC.encode(samples.envelope()).replace(
        b'"repo":"' + samples.envelope().repo.encode(), b'"repo":"Not.A.Name'
    )
    with pytest.raises(MalformedMessage, match=r"\$\.repo"):
        ENVELOPE_CODEC.decode(raw)
    assert ENVELOPE_CODEC.decode_accepted(raw).repo.startswith("Not.A.Name")


def test_types_unknown_fields_and_size_are_still_checked() -> None:
    raw = ENVELOPE_CODEC.encode(samples.envelope())
    with pytest.raises(MalformedMessage):
        ENVELOPE_CODEC.decode_accepted(raw.replace(b'"version":1', b'"version":"1"'))
    with pytest.raises(MalformedMessage):
        ENVELOPE_CODEC.decode_accepted(raw[:-1] + b',"extra":1}')
    with pytest.raises(MalformedMessage):
        ENVELOPE_CODEC.decode_accepted(b"not json")
    with pytest.raises(OversizedInput):
        ENVELOPE_CODEC.decode_accepted(b" " * (ENVELOPE_CODEC.max_bytes + 1))


def test_unconstrained_keeps_fields_defaults_and_options() -> None:
    plain = unconstrained(SecretEnvelope, (ApiKeyInfo, ProvenApiKey))
    assert issubclass(plain, SecretEnvelope) and plain is not SecretEnvelope
    assert unconstrained(SecretEnvelope, (ApiKeyInfo, ProvenApiKey)) is plain  # made once
    strict_fields = msgspec.structs.fields(SecretEnvelope)
    plain_fields = msgspec.structs.fields(plain)
    assert [(f.name, f.encode_name, f.default) for f in plain_fields] == [
        (f.name, f.encode_name, f.default) for f in strict_fields
    ]
    for option in ("frozen", "forbid_unknown_fields", "gc", "omit_defaults", "tag", "tag_field"):
        assert getattr(plain.__struct_config__, option) == getattr(
            SecretEnvelope.__struct_config__, option
        )
    assert unconstrained(int) is int and unconstrained(ApiKeyInfo, (ApiKeyInfo,)) is ApiKeyInfo

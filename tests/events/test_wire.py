"""Wire types: round trips, strict decoding, canonical signed bytes, schemas, subjects."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgate.crypto.encoding import b64url_decode
from flashgate.errors import (
    ContextMismatch,
    FlashgateError,
    InvalidName,
    MalformedMessage,
    OversizedInput,
    SignatureInvalid,
)
from flashgate.events.codec import Codec
from flashgate.events.commands import COMMAND_CODEC, COMMAND_TYPES, Command, PutSecret
from flashgate.events.domain import (
    EVENT_DATA_TYPES,
    EVENT_TYPE_PREFIX,
    MAX_EVENT_BYTES,
    decode_event,
    encode_event,
)
from flashgate.events.envelope import ENVELOPE_CODEC, check_envelope_location
from flashgate.events.fleet import DESCRIPTOR_CODEC, ROSTER_CODEC
from flashgate.events.node_status import (
    HEARTBEAT_CODEC,
    STATUS_REQUEST_CODEC,
    STATUS_RESPONSE_CODEC,
)
from flashgate.events.schemas import SPECS, drift, normalize_description, render, render_text
from flashgate.events.share import (
    MAX_SHARE_ITEMS,
    SHARE_REQUEST_CODEC,
    SHARE_RESPONSE_CODEC,
    SHARE_RESULTS_CODEC,
)
from flashgate.events.signing import signing_bytes, verify
from flashgate.events.subjects import FleetNames, secret_key, split_secret_key
from flashgate.fleet.identity_keys import load_ed25519_public
from flashgate.names import validate_name
from tests.events import samples

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def cases() -> list[tuple[str, Codec[Any], msgspec.Struct]]:
    out: list[tuple[str, Codec[Any], msgspec.Struct]] = [
        ("envelope", ENVELOPE_CODEC, samples.envelope()),
        ("apikey-envelope", ENVELOPE_CODEC, samples.apikey_envelope()),
        ("descriptor", DESCRIPTOR_CODEC, samples.fleet().descriptor),
        ("roster", ROSTER_CODEC, samples.roster()),
        ("share-request", SHARE_REQUEST_CODEC, samples.share_request()),
        ("share-response", SHARE_RESPONSE_CODEC, samples.share_response()),
        ("share-results", SHARE_RESULTS_CODEC, samples.share_results()),
        ("heartbeat", HEARTBEAT_CODEC, samples.heartbeat()),
        ("status-request", STATUS_REQUEST_CODEC, samples.status_request()),
        ("status-response", STATUS_RESPONSE_CODEC, samples.status_response()),
    ]
    out += [(f"command:{c.command_type}", COMMAND_CODEC, c) for c in samples.command_samples()]
    return out


CASES = cases()
IDS = [name for name, _, _ in CASES]
SIGNED = [(n, c, v) for n, c, v in CASES if hasattr(type(v), "signing_domain")]


# --- round trips and strictness ------------------------------------------------------------


@pytest.mark.parametrize(("name", "codec", "value"), CASES, ids=IDS)
def test_round_trip(name: str, codec: Codec[Any], value: msgspec.Struct) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_every_command_type_has_a_sample() -> None:
    assert {type(c) for c in samples.command_samples()} == set(COMMAND_TYPES)


@pytest.mark.parametrize("event", samples.event_samples(), ids=lambda e: e.type)
def test_event_round_trip(event) -> None:
    raw = encode_event(event)
    assert decode_event(raw) == event
    doc = json.loads(raw)  # CloudEvents 1.0 structured mode, required attributes present
    assert doc["specversion"] == "1.0"
    assert {"id", "source", "type", "time", "data"} <= set(doc)
    assert doc["type"].startswith(EVENT_TYPE_PREFIX)
    assert doc["dataschema"].startswith("urn:flashgate:schema:event-")


def test_every_event_type_has_a_sample() -> None:
    assert {type(e.data) for e in samples.event_samples()} == set(EVENT_DATA_TYPES)


@pytest.mark.parametrize(("name", "codec", "value"), SIGNED, ids=[n for n, _, _ in SIGNED])
def test_unknown_fields_are_refused_on_signed_types(name, codec, value) -> None:
    doc = _native(value, codec)
    doc["smuggled"] = 1
    raw = msgspec.json.encode(doc) if codec.fmt == "json" else msgspec.msgpack.encode(doc)
    with pytest.raises(MalformedMessage, match="smuggled"):
        codec.decode(raw)


@pytest.mark.parametrize(("name", "codec", "value"), CASES, ids=IDS)
def test_size_limit_is_checked_before_parsing(name, codec, value) -> None:
    with pytest.raises(OversizedInput):
        codec.decode(b"\x00" * (codec.max_bytes + 1))


def _native(value: msgspec.Struct, codec: Codec[Any]) -> Any:
    """Builtins as the codec's format carries them (msgpack keeps raw bytes)."""
    return msgspec.to_builtins(value, builtin_types=(bytes,) if codec.fmt == "msgpack" else ())


def test_decode_errors_name_the_path() -> None:
    doc = _native(samples.share_request(), SHARE_REQUEST_CODEC)
    doc["items"][2][0] = "Not.A.Key"
    with pytest.raises(MalformedMessage, match=r"\$\.items\[2\]\[0\]"):
        SHARE_REQUEST_CODEC.decode(msgspec.msgpack.encode(doc))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fleet", "UPPER"),
        ("version", 0),
        ("epoch", -1),
        ("kind", "password"),
        ("jwe", ""),
        ("repo", "a.b"),
        ("written_at", "yesterday"),
    ],
)
def test_envelope_field_constraints(field: str, value: object) -> None:
    doc = msgspec.to_builtins(samples.envelope())
    doc[field] = value
    with pytest.raises(MalformedMessage, match=field):
        ENVELOPE_CODEC.decode(msgspec.json.encode(doc))


def test_share_request_item_count_is_bounded() -> None:
    doc = _native(samples.share_request(items=1), SHARE_REQUEST_CODEC)
    doc["items"] = doc["items"] * (MAX_SHARE_ITEMS + 1)
    with pytest.raises((MalformedMessage, OversizedInput)):
        SHARE_REQUEST_CODEC.decode(msgspec.msgpack.encode(doc))
    doc["items"] = []
    with pytest.raises(MalformedMessage):
        SHARE_REQUEST_CODEC.decode(msgspec.msgpack.encode(doc))


def test_unknown_event_type_is_refused() -> None:
    doc = json.loads(encode_event(samples.event_samples()[0]))
    doc["type"] = "io.flashgate.secret.exploded"
    with pytest.raises(MalformedMessage, match="unknown domain event type"):
        decode_event(json.dumps(doc).encode())
    with pytest.raises(OversizedInput):
        decode_event(b" " * (MAX_EVENT_BYTES + 1))


def test_events_never_carry_a_secret_value() -> None:
    forbidden = {"value", "plaintext", "secret", "jwe", "partial", "share", "cek", "password"}
    for data_type in EVENT_DATA_TYPES:
        fields = msgspec.structs.fields(data_type)
        assert not {f.name for f in fields} & forbidden, data_type
        assert all(f.type is not bytes for f in fields), data_type


def test_status_and_heartbeat_carry_no_values() -> None:
    for value in (samples.status_response(), samples.heartbeat()):
        names = {f.name for f in msgspec.structs.fields(type(value))}
        assert not names & {"value", "plaintext", "partial", "partials", "jwe"}


# --- signatures over canonical bytes ---------------------------------------------------------


def _signer_key(value: msgspec.Struct):
    fleet = samples.fleet()
    node_keyed = {"share-request": 1, "share-response": 2, "heartbeat": 1, "status-response": 2}
    index = node_keyed.get(type(value).signing_domain)  # type: ignore[attr-defined]
    if index is None:
        return fleet.admin_key.public_key()
    return load_ed25519_public(fleet.descriptor.nodes[index - 1].signing_key)


def _rederive(value: msgspec.Struct, codec: Codec[Any]) -> bytes:
    """Rebuild the signed bytes from the wire bytes with the standard library only."""
    wire = codec.encode(value)
    doc = json.loads(wire) if codec.fmt == "json" else _bytes_to_b64(msgspec.msgpack.decode(wire))
    doc.pop("signature")
    # a field added later is signed only away from its default (events/canonical.py)
    for name, default in getattr(type(value), "unsigned_at_default", {}).items():
        if doc.get(name, default) == default:
            doc.pop(name, None)
    domain = type(value).signing_domain  # type: ignore[attr-defined]
    return (
        f"flashgate/v1/{domain}\n".encode()
        + json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def _bytes_to_b64(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    if isinstance(obj, dict):
        return {k: _bytes_to_b64(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bytes_to_b64(v) for v in obj]
    return obj


@pytest.mark.parametrize(("name", "codec", "value"), SIGNED, ids=[n for n, _, _ in SIGNED])
def test_signed_bytes_are_re_derivable_and_verify(name, codec, value) -> None:
    rebuilt = _rederive(value, codec)
    assert rebuilt == signing_bytes(value)
    signature = value.signature
    raw = signature if isinstance(signature, bytes) else b64url_decode(signature)
    _signer_key(value).verify(raw, rebuilt)
    verify(codec.decode(codec.encode(value)), _signer_key(value))


def _mutations(value: msgspec.Struct) -> list[msgspec.Struct]:
    out = []
    for field in msgspec.structs.fields(type(value)):
        current = getattr(value, field.name)
        if field.name == "signature":
            continue
        if isinstance(current, bool):
            new: Any = not current
        elif isinstance(current, int):
            new = current + 1
        elif isinstance(current, str) and current:
            new = current[:-1] + ("x" if current[-1] != "x" else "y")
        elif isinstance(current, bytes) and current:
            new = bytes([current[0] ^ 1]) + current[1:]
        elif isinstance(current, list) and current:
            new = current[:-1] if len(current) > 1 else current * 2
        else:
            continue
        out.append(msgspec.structs.replace(value, **{field.name: new}))
    return out


@pytest.mark.parametrize(("name", "codec", "value"), SIGNED, ids=[n for n, _, _ in SIGNED])
def test_any_changed_field_fails_verification(name, codec, value) -> None:
    mutated = _mutations(value)
    assert len(mutated) >= 3
    key = _signer_key(value)
    for changed in mutated:
        with pytest.raises(SignatureInvalid):
            verify(changed, key)


def test_a_signature_does_not_transfer_between_command_types() -> None:
    put = next(c for c in samples.command_samples() if isinstance(c, PutSecret))
    doc = msgspec.to_builtins(put)
    doc["type"] = "secret.rotate"
    rotated = COMMAND_CODEC.decode(msgspec.json.encode(doc))
    with pytest.raises(SignatureInvalid):
        verify(rotated, samples.admin().public_key())


def test_wrong_signer_is_refused() -> None:
    command: Command = samples.command_samples()[0]
    node_key = load_ed25519_public(samples.fleet().descriptor.nodes[0].signing_key)
    with pytest.raises(SignatureInvalid):
        verify(command, node_key)


# --- schemas ----------------------------------------------------------------------------------


def test_committed_schemas_match_the_structs() -> None:
    assert drift(SCHEMAS_DIR) == [], "run: flashgate schemas export"


def test_schemas_do_not_depend_on_how_the_library_renders_docstrings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """msgspec < 0.23 copies a docstring verbatim, 0.23 dedents it, Python 3.13 strips the
    indentation at compile time: the committed schemas must come out the same every way."""
    real = msgspec.json.schema

    def reindented(indent: str) -> Any:
        def schema(type_: Any) -> Any:
            def walk(node: Any) -> Any:
                if isinstance(node, dict):
                    return {
                        k: (
                            "\n".join(
                                line if i == 0 or not line else indent + line.lstrip()
                                for i, line in enumerate(v.split("\n"))
                            )
                            if k == "description" and isinstance(v, str)
                            else walk(v)
                        )
                        for k, v in node.items()
                    }
                if isinstance(node, list):
                    return [walk(item) for item in node]
                return node

            return walk(real(type_))

        return schema

    renderings = []
    for indent in ("", "    ", "\t  "):
        monkeypatch.setattr(msgspec.json, "schema", reindented(indent))
        renderings.append([render_text(spec) for spec in SPECS])
    assert renderings[0] == renderings[1] == renderings[2]
    assert any("\\n\\n" in text for text in renderings[0])  # paragraphs survive


def test_normalized_description_keeps_paragraphs_and_words() -> None:
    text = "First line\n    goes on.\n\n    Second   paragraph\n    here."
    assert normalize_description(text) == "First line goes on.\n\nSecond paragraph here."


def test_every_schema_is_2020_12_with_an_id() -> None:
    ids = set()
    for spec in SPECS:
        schema = render(spec)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].startswith("urn:flashgate:schema:")
        assert schema["$id"].endswith(f":{spec.version}")
        ids.add(schema["$id"])
    assert len(ids) == len(SPECS)


def _schema_named(name: str) -> dict[str, Any]:
    return next(render(s) for s in SPECS if s.name == name)


SCHEMA_OF = {
    "envelope": "secret-envelope",
    "apikey-envelope": "secret-envelope",
    "descriptor": "fleet-descriptor",
    "roster": "roster",
    "share-request": "share-request",
    "share-response": "share-response",
    "share-results": "share-results",
    "heartbeat": "heartbeat",
    "status-request": "status-request",
    "status-response": "status-response",
}


@pytest.mark.parametrize(("name", "codec", "value"), CASES, ids=IDS)
def test_samples_validate_against_their_schema(name, codec, value) -> None:
    schema = _schema_named(SCHEMA_OF.get(name, "command"))
    jsonschema.validate(samples.to_json_view(value), schema)


def test_events_validate_against_their_schemas() -> None:
    attributes = _schema_named("domain-event")
    for event in samples.event_samples():
        doc = json.loads(encode_event(event))
        jsonschema.validate(doc, attributes)
        data_schema = next(render(s) for s in SPECS if render(s)["$id"] == doc["dataschema"])
        jsonschema.validate(doc["data"], data_schema)


@pytest.mark.parametrize(
    ("schema_name", "mutate"),
    [
        ("secret-envelope", lambda d: d.update(repo="Bad.Repo")),
        ("secret-envelope", lambda d: d.pop("jwe")),
        ("secret-envelope", lambda d: d.update(extra=True)),
        ("roster", lambda d: d.update(serial=0)),
        ("command", lambda d: d.update(type="secret.explode")),
    ],
)
def test_invalid_documents_fail_schema_validation(schema_name, mutate) -> None:
    source = {
        "secret-envelope": samples.envelope(),
        "roster": samples.roster(),
        "command": samples.command_samples()[0],
    }[schema_name]
    doc = samples.to_json_view(source)
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema_named(schema_name))


# --- fuzzing the decoders ---------------------------------------------------------------------

DECODERS = [codec for _, codec, _ in CASES[:10]] + [COMMAND_CODEC]


@given(st.binary(max_size=2048), st.sampled_from(range(len(DECODERS))))
def test_decoders_raise_only_typed_errors_on_random_bytes(data: bytes, which: int) -> None:
    with contextlib.suppress(FlashgateError):
        DECODERS[which].decode(data)


@given(st.data())
def test_decoders_raise_only_typed_errors_on_mutated_messages(data) -> None:
    _name, codec, value = data.draw(st.sampled_from(CASES))
    raw = bytearray(codec.encode(value))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    with contextlib.suppress(FlashgateError):
        codec.decode(bytes(raw))
    with contextlib.suppress(FlashgateError):
        decode_event(bytes(raw))


# --- envelopes in place --------------------------------------------------------------------


def test_envelope_location_check() -> None:
    env = samples.envelope()
    parsed = check_envelope_location(env, samples.FLEET, "payments.s3")
    assert parsed.context == env.context
    with pytest.raises(ContextMismatch):
        check_envelope_location(env, samples.FLEET, "payments.other")
    with pytest.raises(ContextMismatch):
        check_envelope_location(env, "elsewhere", "payments.s3")
    moved = msgspec.structs.replace(env, version=2)  # metadata says v2, the JWE binds v1
    with pytest.raises(ContextMismatch):
        check_envelope_location(moved, samples.FLEET, "payments.s3")
    with pytest.raises(InvalidName):
        check_envelope_location(env, samples.FLEET, "payments")


# --- subjects and names ----------------------------------------------------------------------


def test_subjects_and_buckets() -> None:
    names = FleetNames("acme")
    assert names.secrets_bucket == "fg-acme-secrets"
    assert names.fleet_bucket == "fg-acme-fleet"
    assert names.command_stream == "fg-acme-cmd"
    assert names.command_subjects == "fg.acme.cmd.>"
    assert names.command_subject("secret.put") == "fg.acme.cmd.secret.put"
    assert names.event_subject("secret.created") == "fg.acme.evt.secret.created"
    assert names.share_subject("node-1") == "fg.acme.share.node-1"
    assert names.heartbeat_subject("node-1") == "fg.acme.node.node-1.heartbeat"
    assert names.status_subject("node-1") == "fg.acme.node.node-1.status"
    assert secret_key("payments", "s3") == "payments.s3"
    assert split_secret_key("payments.s3") == ("payments", "s3")


@pytest.mark.parametrize(
    "bad", ["", "a" * 65, "UPPER", "a.b", "a*", "a>", "a b", "é", "a/b", "a\x00", ">"]
)
def test_bad_names_are_refused_before_any_subject(bad: str) -> None:
    with pytest.raises(InvalidName):
        FleetNames(bad)
    names = FleetNames("acme")
    with pytest.raises(InvalidName):
        names.share_subject(bad)
    with pytest.raises(InvalidName):
        secret_key("repo", bad)
    with pytest.raises(InvalidName):
        names.command_subject(bad + ".>")


def test_names_found_valid_are_remembered_and_nothing_else() -> None:
    """validate_name remembers valid names (a node checks the same few in every envelope);
    a bad name is refused every time, and a str subclass that claims to equal a
    remembered name is still checked (and refused when it is not a name)."""
    from flashgate import names as names_module

    assert validate_name("payments") == "payments"
    assert "payments" in names_module._VALID

    class Liar(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("payments")

    with pytest.raises(InvalidName):
        validate_name(Liar("a.b"))
    for _ in range(2):
        with pytest.raises(InvalidName):
            validate_name("a.b")
    assert "a.b" not in names_module._VALID
    for i in range(names_module._VALID_MAX + 10):  # bounded
        validate_name(f"n{i}")
    assert len(names_module._VALID) <= names_module._VALID_MAX


def test_every_command_and_event_type_makes_a_valid_subject() -> None:
    names = FleetNames("acme")
    for command_type in COMMAND_TYPES:
        subject = names.command_subject(command_type.__struct_config__.tag)
        assert subject.startswith("fg.acme.cmd.") and "*" not in subject
    for data_type in EVENT_DATA_TYPES:
        assert names.event_subject(data_type.event_type).startswith("fg.acme.evt.")

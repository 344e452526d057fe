"""The JWE envelope (DESIGN §2.2): encrypt, parse, threshold open, context binding, rewrap.

Every bad input must raise its own typed error (checked with the exact class, not a parent),
and no error or repr may carry the plaintext.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgate.crypto import jwe
from flashgate.crypto.context import MAX_VERSION, SecretContext, check_context
from flashgate.crypto.decrypt import OpenedSecret, open_jwe, rewrap
from flashgate.crypto.encoding import b64url_decode, b64url_encode
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.oaep import mgf1_sha256, oaep_decode
from flashgate.crypto.threshold import combine, partial_decrypt
from flashgate.crypto.threshold.dealing import Dealing
from flashgate.errors import (
    ContextMismatch,
    DecryptionError,
    FlashgateError,
    InvalidCiphertext,
    MalformedEnvelope,
    MissingContext,
    OversizedInput,
    UnsupportedAlgorithm,
    UnsupportedHeader,
)
from tests.support.material import CANARY, dealing, reference_private_key

CTX = SecretContext(fleet="prod", repo="payments", name="db-password", kind="password", version=3)


# --- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def raises_exactly(cls: type[BaseException]) -> Iterator[pytest.ExceptionInfo[Any]]:
    """pytest.raises, but a subclass of ``cls`` does not count."""
    with pytest.raises(cls) as info:
        yield info
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {info.type.__name__}"


def fleet() -> Dealing:
    return dealing(5, 3)


def threshold_y(d: Dealing, parsed: jwe.ParsedJWE) -> int:
    """y = c^d mod N for the envelope's wrapped key, from t partial decryptions."""
    public = d.public
    c = parsed.wrapped_key(public.key)
    partials = {s.index: partial_decrypt(s, public, c) for s in d.shares[: public.threshold]}
    return combine(public, c, partials)


def threshold_open(
    d: Dealing,
    token: str | bytes,
    expected: SecretContext | None,
    *,
    require_context: bool = True,
) -> OpenedSecret:
    parsed = jwe.parse(token)
    y = threshold_y(d, parsed)
    return open_jwe(parsed, y, d.public.key, expected, require_context=require_context)


def parts_of(token: str) -> list[str]:
    parts = token.split(".")
    assert len(parts) == 5
    return parts


def with_part(token: str, index: int, value: str) -> str:
    parts = parts_of(token)
    parts[index] = value
    return ".".join(parts)


def with_header(token: str, header: dict[str, Any] | str | bytes) -> str:
    """The token with its protected header replaced (JSON object, raw JSON text or bytes)."""
    if isinstance(header, dict):
        raw = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    return with_part(token, 0, b64url_encode(raw))


def flip_bit(token: str, index: int, byte: int = -1, bit: int = 0) -> str:
    raw = bytearray(b64url_decode(parts_of(token)[index]))
    raw[byte] ^= 1 << bit
    return with_part(token, index, b64url_encode(bytes(raw)))


def base_header(**extra: Any) -> dict[str, Any]:
    return {"alg": jwe.ALG, "enc": jwe.ENC, **extra}


@pytest.fixture(scope="module")
def token() -> str:
    """A valid envelope of CANARY under CTX."""
    return encrypt_secret(fleet().public.key, CTX, CANARY)


@pytest.fixture(scope="module")
def bare_token() -> str:
    """A valid envelope of CANARY with no flashgate context."""
    return encrypt_secret(fleet().public.key, None, CANARY)


# --- round trips --------------------------------------------------------------------------


def test_round_trip_with_context(token: str) -> None:
    opened = threshold_open(fleet(), token, CTX)
    assert opened.plaintext == CANARY
    assert opened.context == CTX


def test_context_is_in_the_protected_header(token: str) -> None:
    parsed = jwe.parse(token)
    assert parsed.header == base_header(flashgate=CTX.to_header())
    assert parsed.context == CTX
    assert parsed.aad == parts_of(token)[0].encode("ascii")


def test_context_envelope_opens_without_expected_context(token: str) -> None:
    """Offline recovery (no location known) still opens and reports the bound context."""
    opened = threshold_open(fleet(), token, None)
    assert opened.plaintext == CANARY
    assert opened.context == CTX


def test_round_trip_without_context(bare_token: str) -> None:
    opened = threshold_open(fleet(), bare_token, None, require_context=False)
    assert opened.plaintext == CANARY
    assert opened.context is None
    assert jwe.parse(bare_token).header == base_header()


def test_missing_context_refused_when_required(bare_token: str) -> None:
    with raises_exactly(MissingContext):
        threshold_open(fleet(), bare_token, None, require_context=True)


def test_missing_context_refused_when_a_context_is_expected(bare_token: str) -> None:
    with raises_exactly(MissingContext):
        threshold_open(fleet(), bare_token, CTX, require_context=False)


def test_empty_and_maximal_plaintexts_round_trip() -> None:
    d = fleet()
    longest = SecretContext(
        fleet="f" * 64, repo="r" * 64, name="n" * 64, kind="k" * 64, version=MAX_VERSION
    )
    for plaintext in (b"", b"\x00", bytes(range(256)) * (jwe.MAX_PLAINTEXT_BYTES // 256)):
        token = encrypt_secret(d.public.key, longest, plaintext)
        assert len(token) <= jwe.MAX_TOKEN_BYTES
        assert threshold_open(d, token, longest).plaintext == plaintext


def test_bytes_token_is_accepted(token: str) -> None:
    assert threshold_open(fleet(), token.encode("ascii"), CTX).plaintext == CANARY


def test_threshold_result_is_the_rsa_private_operation(token: str) -> None:
    parsed = jwe.parse(token)
    numbers = reference_private_key().private_numbers()
    c = parsed.wrapped_key(fleet().public.key)
    assert threshold_y(fleet(), parsed) == pow(c, numbers.d, numbers.public_numbers.n)


def test_encrypt_secret_refuses_oversized_plaintext() -> None:
    with raises_exactly(OversizedInput):
        encrypt_secret(fleet().public.key, CTX, b"\x00" * (jwe.MAX_PLAINTEXT_BYTES + 1))


NAMES = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
CONTEXTS = st.builds(
    SecretContext,
    fleet=NAMES,
    repo=NAMES,
    name=NAMES,
    kind=NAMES,
    version=st.integers(min_value=1, max_value=MAX_VERSION),
)


@given(plaintext=st.binary(max_size=2048), context=st.one_of(st.none(), CONTEXTS))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_property_round_trip(plaintext: bytes, context: SecretContext | None) -> None:
    d = fleet()
    token = encrypt_secret(d.public.key, context, plaintext)
    parsed = jwe.parse(token)
    assert parsed.context == context
    opened = threshold_open(d, token, context, require_context=context is not None)
    assert opened.plaintext == plaintext
    assert opened.context == context


@given(plaintext=st.binary(max_size=2048), context=CONTEXTS)
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=50)
def test_parse_proven_reads_what_parse_read(plaintext: bytes, context: SecretContext) -> None:
    """A value proven before is only split and decoded (parse_proven): every part, the
    header and the additional data are what the strict parse read."""
    token = encrypt_secret(fleet().public.key, context, plaintext)
    strict = jwe.parse(token)
    proven = jwe.parse_proven(token, context)
    for part in ("protected", "encrypted_key", "iv", "ciphertext", "tag", "context", "aad"):
        assert getattr(proven, part) == getattr(strict, part), part
    assert proven.header == strict.header  # read when asked for
    assert proven.serialize() == strict.serialize() == token


# --- context binding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fleet", "staging"),
        ("repo", "billing"),
        ("name", "db-user"),
        ("kind", "api-key"),
        ("version", 4),
    ],
)
def test_context_mismatch_names_the_field(token: str, field: str, value: Any) -> None:
    expected = replace(CTX, **{field: value})
    with raises_exactly(ContextMismatch) as info:
        threshold_open(fleet(), token, expected)
    assert str(info.value).startswith(f"envelope {field} ")
    assert CANARY.decode() not in str(info.value)


def test_context_is_checked_before_any_threshold_work(token: str) -> None:
    """A mismatch is refused from the parsed envelope alone (y is never looked at)."""
    parsed = jwe.parse(token)
    with raises_exactly(ContextMismatch):
        open_jwe(parsed, 0, fleet().public.key, replace(CTX, version=1))


def edited_context_token(token: str, **changes: Any) -> tuple[str, SecretContext]:
    edited = replace(CTX, **changes)
    header = base_header(flashgate=edited.to_header())
    return with_part(token, 0, jwe.encode_header(header)), edited


@pytest.mark.parametrize(
    "changes",
    [{"version": 4}, {"repo": "billing"}, {"name": "other"}, {"kind": "token"}, {"fleet": "dev"}],
)
def test_edited_header_context_fails_authentication(token: str, changes: dict[str, Any]) -> None:
    """Moving an envelope to another context by editing its header breaks the GCM AAD."""
    edited_token, edited = edited_context_token(token, **changes)
    assert jwe.parse(edited_token).context == edited
    with raises_exactly(DecryptionError) as info:
        threshold_open(fleet(), edited_token, edited)
    assert CANARY.decode() not in str(info.value)
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), edited_token, None)


def test_reencoded_identical_header_fails_authentication(token: str) -> None:
    """The AAD is the header *as received*: even a semantically equal re-encoding fails."""
    header = json.dumps(base_header(flashgate=CTX.to_header()), indent=1).encode()
    reencoded = with_header(token, header)
    assert jwe.parse(reencoded).context == CTX
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), reencoded, CTX)


def test_stripping_the_context_fails_authentication(token: str) -> None:
    stripped = with_part(token, 0, jwe.encode_header(base_header()))
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), stripped, None, require_context=False)


# --- malformed envelopes ------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 7])
def test_wrong_number_of_parts(token: str, count: int) -> None:
    parts = (parts_of(token) * 2)[:count]
    with raises_exactly(MalformedEnvelope):
        jwe.parse(".".join(parts))


@pytest.mark.parametrize("bad", ["", ".", "....", "......", "not a jwe", '{"protected":"e30"}'])
def test_garbage_is_malformed(bad: str) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(bad)


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("junk", ["+", "/", "*", " ", "\t", "%"])
def test_bad_base64url_characters(token: str, index: int, junk: str) -> None:
    part = parts_of(token)[index]
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, index, part[:4] + junk + part[5:]))


@pytest.mark.parametrize("index", range(5))
def test_padded_base64url_refused(token: str, index: int) -> None:
    part = parts_of(token)[index]
    padded = part + "=" * (-len(part) % 4 or 4)
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, index, padded))


@pytest.mark.parametrize("index", range(5))
def test_base64url_of_impossible_length_refused(token: str, index: int) -> None:
    part = parts_of(token)[index]
    cut = part[: len(part) - (len(part) % 4) - 3] if len(part) % 4 else part[:-3]
    assert len(cut) % 4 == 1
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, index, cut))


def test_non_canonical_trailing_bits_refused(token: str) -> None:
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    tag = parts_of(token)[4]  # 16 bytes: 22 characters, the last carries 4 unused bits
    assert len(tag) == 22
    noncanonical = tag[:-1] + alphabet[alphabet.index(tag[-1]) | 1]
    assert noncanonical != tag
    # A lenient decoder reads the same bytes; the strict one refuses the alias.
    assert base64.urlsafe_b64decode(noncanonical + "==") == base64.urlsafe_b64decode(tag + "==")
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, 4, noncanonical))


@pytest.mark.parametrize("index", range(5))
def test_non_ascii_text_refused(token: str, index: int) -> None:
    part = parts_of(token)[index]
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, index, part[:3] + "é" + part[4:]))


def test_non_ascii_bytes_refused(token: str) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(token.encode("ascii")[:-1] + b"\xff")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM"',
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}}',
        b"\xff\xfe{}",
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"\xe9"}',
        b"[" * 1500 + b"]" * 1500,
    ],
    ids=["empty", "text", "truncated", "trailing", "bom-like", "latin1", "deep-nesting"],
)
def test_header_not_json(token: str, raw: bytes) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, raw))


@pytest.mark.parametrize(
    "raw",
    ['["RSA-OAEP-256","A256GCM"]', '"RSA-OAEP-256"', "42", "null", "true"],
)
def test_header_not_an_object(token: str, raw: str) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, raw))


def test_duplicate_header_keys(token: str) -> None:
    raw = '{"alg":"RSA-OAEP-256","enc":"A256GCM","enc":"A256GCM"}'
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, raw))


def test_duplicate_keys_in_nested_context(token: str) -> None:
    ctx = json.dumps(CTX.to_header())[:-1] + ',"version":3}'
    raw = '{"alg":"RSA-OAEP-256","enc":"A256GCM","flashgate":' + ctx + "}"
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, raw))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants(token: str, constant: str) -> None:
    raw = '{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":' + constant + "}"
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, raw))


@pytest.mark.parametrize(
    "alg",
    [
        "RSA-OAEP",
        "RSA1_5",
        "dir",
        "A256KW",
        "ECDH-ES",
        "rsa-oaep-256",
        "",
        None,
        1,
        ["RSA-OAEP-256"],
    ],
)
def test_wrong_alg(token: str, alg: object) -> None:
    with raises_exactly(UnsupportedAlgorithm):
        jwe.parse(with_header(token, {"alg": alg, "enc": jwe.ENC}))


def test_missing_alg(token: str) -> None:
    with raises_exactly(UnsupportedAlgorithm):
        jwe.parse(with_header(token, {"enc": jwe.ENC}))


@pytest.mark.parametrize(
    "enc", ["A128GCM", "A192GCM", "A256CBC-HS512", "A128CBC-HS256", "a256gcm", None, 256]
)
def test_wrong_enc(token: str, enc: object) -> None:
    with raises_exactly(UnsupportedAlgorithm):
        jwe.parse(with_header(token, {"alg": jwe.ALG, "enc": enc}))


def test_missing_enc(token: str) -> None:
    with raises_exactly(UnsupportedAlgorithm):
        jwe.parse(with_header(token, {"alg": jwe.ALG}))


@pytest.mark.parametrize("value", ["DEF", "", None])
def test_zip_refused(token: str, value: object) -> None:
    with raises_exactly(UnsupportedHeader):
        jwe.parse(with_header(token, base_header(zip=value)))


@pytest.mark.parametrize("value", [["flashgate"], [], ["exp"], "flashgate"])
def test_crit_refused(token: str, value: object) -> None:
    with raises_exactly(UnsupportedHeader):
        jwe.parse(with_header(token, base_header(crit=value)))


@pytest.mark.parametrize(
    "param", ["jku", "jwk", "x5u", "x5c", "x5t", "epk", "apu", "p2s", "epoch", "Flashgate", "foo"]
)
def test_unknown_header_parameter_refused(token: str, param: str) -> None:
    with raises_exactly(UnsupportedHeader):
        jwe.parse(with_header(token, base_header(**{param: "x"})))


def test_allowed_optional_parameters_accepted(token: str) -> None:
    header = base_header(kid="flashgate:prod:1", typ="JWE", cty="text/plain")
    assert jwe.parse(with_header(token, header)).header == header


@pytest.mark.parametrize("name", ["kid", "typ", "cty"])
@pytest.mark.parametrize("value", [1, None, ["a"], {"a": 1}, "x" * 257])
def test_optional_parameter_must_be_short_string(token: str, name: str, value: object) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, base_header(**{name: value})))


def _context_header(**changes: Any) -> dict[str, Any]:
    ctx = CTX.to_header()
    for key, value in changes.items():
        if value is _DROP:
            del ctx[key]
        else:
            ctx[key] = value
    return ctx


_DROP = object()


@pytest.mark.parametrize(
    "context",
    [
        _context_header(version=_DROP),
        _context_header(fleet=_DROP),
        _context_header(v=_DROP),
        _context_header(extra="x"),
        _context_header(epoch=1),
        _context_header(name="Bad.Name"),
        _context_header(name=""),
        _context_header(repo="a" * 65),
        _context_header(kind="pass word"),
        _context_header(fleet=7),
        _context_header(version=0),
        _context_header(version=-1),
        _context_header(version=MAX_VERSION + 1),
        _context_header(version="3"),
        _context_header(version=3.0),
        _context_header(version=True),
        _context_header(version=None),
        _context_header(v=2),
        _context_header(v="1"),
        _context_header(v=True),
        _context_header(v=1.0),
        "prod/payments/db-password",
        ["prod", "payments"],
        None,
        {},
    ],
    ids=[
        "missing-version",
        "missing-fleet",
        "missing-v",
        "extra-field",
        "extra-epoch",
        "bad-name",
        "empty-name",
        "long-repo",
        "space-in-kind",
        "fleet-int",
        "version-0",
        "version-negative",
        "version-too-big",
        "version-string",
        "version-float",
        "version-bool",
        "version-null",
        "format-2",
        "format-string",
        "format-bool",
        "format-float",
        "string",
        "array",
        "null",
        "empty-object",
    ],
)
def test_malformed_context(token: str, context: object) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_header(token, base_header(flashgate=context)))


@pytest.mark.parametrize("size", [0, 1, 11, 13, 16])
def test_iv_of_wrong_length(token: str, size: int) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, 2, b64url_encode(b"\x01" * size)))


@pytest.mark.parametrize("size", [0, 12, 15, 17, 32])
def test_tag_of_wrong_length(token: str, size: int) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, 4, b64url_encode(b"\x01" * size)))


def test_empty_encrypted_key(token: str) -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, 1, ""))


def test_encrypted_key_over_the_largest_modulus(token: str) -> None:
    too_long = b64url_encode(b"\x01" * (jwe.MAX_ENCRYPTED_KEY_BYTES + 1))
    with raises_exactly(MalformedEnvelope):
        jwe.parse(with_part(token, 1, too_long))


@pytest.mark.parametrize("delta", [-1, 1, 128])
def test_encrypted_key_of_wrong_length_for_fleet_key(token: str, delta: int) -> None:
    k = fleet().public.key.byte_length
    parsed = jwe.parse(with_part(token, 1, b64url_encode(b"\x01" * (k + delta))))
    with raises_exactly(MalformedEnvelope):
        parsed.wrapped_key(fleet().public.key)


@pytest.mark.parametrize("offset", ["n", "n+1", "max", "zero", "one"])
def test_encrypted_key_out_of_range(token: str, offset: str) -> None:
    key = fleet().public.key
    k, n = key.byte_length, key.modulus
    value = {"n": n, "n+1": n + 1, "max": (1 << (8 * k)) - 1, "zero": 0, "one": 1}[offset]
    parsed = jwe.parse(with_part(token, 1, b64url_encode(value.to_bytes(k, "big"))))
    with raises_exactly(InvalidCiphertext):
        parsed.wrapped_key(key)


def test_token_over_max_size_refused_before_parsing() -> None:
    # Not even a JWE: the size check must come first, so this is not MalformedEnvelope.
    with raises_exactly(OversizedInput):
        jwe.parse("!" * (jwe.MAX_TOKEN_BYTES + 1))
    with raises_exactly(OversizedInput):
        jwe.parse(b"\xff" * (jwe.MAX_TOKEN_BYTES + 1))


def test_token_at_max_size_is_not_refused_for_size() -> None:
    with raises_exactly(MalformedEnvelope):
        jwe.parse("!" * jwe.MAX_TOKEN_BYTES)


def test_header_over_max_chars(token: str) -> None:
    """A header that would otherwise be valid is refused for its size alone."""
    raw = json.dumps(base_header(), separators=(",", ":"))
    while len(b64url_encode(raw.encode())) <= jwe.MAX_HEADER_CHARS:
        raw = raw[:-1] + " }"
    assert len(b64url_encode(raw.encode())) > jwe.MAX_HEADER_CHARS
    with raises_exactly(OversizedInput):
        jwe.parse(with_header(token, raw))


def test_header_at_max_chars_is_not_refused_for_size(token: str) -> None:
    raw = json.dumps(base_header(), separators=(",", ":"))
    while len(b64url_encode(raw.encode())) < jwe.MAX_HEADER_CHARS - 3:
        raw = raw[:-1] + " }"
    assert len(b64url_encode(raw.encode())) <= jwe.MAX_HEADER_CHARS
    assert jwe.parse(with_header(token, raw)).header == base_header()


def test_ciphertext_over_max_plaintext(token: str) -> None:
    big = b64url_encode(b"\x00" * (jwe.MAX_PLAINTEXT_BYTES + 1))
    candidate = with_part(token, 3, big)
    assert len(candidate) <= jwe.MAX_TOKEN_BYTES
    with raises_exactly(OversizedInput):
        jwe.parse(candidate)


def test_surrounding_whitespace_is_tolerated(token: str) -> None:
    assert jwe.parse(f"  {token}\n").serialize() == token


def test_parse_serialize_round_trip(token: str) -> None:
    assert jwe.parse(token).serialize() == token


# --- tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "byte"),
    [(3, 0), (3, -1), (4, 0), (4, -1), (2, 0), (2, -1), (1, -1)],
    ids=[
        "ciphertext-first",
        "ciphertext-last",
        "tag-first",
        "tag-last",
        "iv-first",
        "iv-last",
        "encrypted-key",
    ],
)
def test_bit_flip_fails_decryption(token: str, index: int, byte: int) -> None:
    # For the encrypted key the lowest bit is flipped: c stays < N, so it is another valid
    # RSA ciphertext, combine succeeds (y^e = c') and OAEP decoding fails.
    tampered = flip_bit(token, index, byte=byte, bit=0)
    with raises_exactly(DecryptionError) as info:
        threshold_open(fleet(), tampered, CTX)
    for text in (str(info.value), repr(info.value)):
        assert CANARY.decode() not in text
        assert CANARY.hex() not in text


@pytest.mark.parametrize("bit", range(8))
def test_every_bit_of_the_tag_matters(token: str, bit: int) -> None:
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), flip_bit(token, 4, byte=7, bit=bit), CTX)


def test_swapped_payload_from_another_envelope_fails(token: str) -> None:
    other = encrypt_secret(fleet().public.key, CTX, b"another value, same context")
    mixed = ".".join(parts_of(token)[:2] + parts_of(other)[2:])
    with raises_exactly(DecryptionError):
        threshold_open(fleet(), mixed, CTX)


def test_wrong_y_fails_decryption(token: str) -> None:
    parsed = jwe.parse(token)
    key = fleet().public.key
    y = threshold_y(fleet(), parsed)
    for bad in (y ^ 1, 0, 1, key.modulus - 1):
        with raises_exactly(DecryptionError):
            open_jwe(parsed, bad, key, CTX)


# --- fuzzing the parser -------------------------------------------------------------------


def _mutate(token: str, data: st.DataObject) -> str:
    chars = list(token)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(chars) - 1, 0)))
        if kind == "replace" and chars:
            chars[pos] = data.draw(st.characters(codec="utf-8"))
        elif kind == "insert":
            chars.insert(pos, data.draw(st.sampled_from(list(".=+/ \n\x00é-_Aa0"))))
        elif kind == "delete" and chars:
            del chars[pos]
        else:
            chars = chars[:pos]
    return "".join(chars)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CONTEXT_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), JSON_SCALARS),
        "fleet": st.one_of(NAMES, JSON_SCALARS),
        "repo": st.one_of(NAMES, JSON_SCALARS),
        "name": st.one_of(NAMES, JSON_SCALARS),
        "kind": st.one_of(NAMES, JSON_SCALARS),
        "version": st.one_of(st.integers(), JSON_SCALARS),
        "extra": JSON_VALUES,
    },
)
HEADERS = st.fixed_dictionaries(
    {
        "alg": st.one_of(st.just(jwe.ALG), JSON_VALUES),
        "enc": st.one_of(st.just(jwe.ENC), JSON_VALUES),
    },
    optional={
        "kid": JSON_VALUES,
        "typ": JSON_VALUES,
        "zip": JSON_VALUES,
        "crit": JSON_VALUES,
        "flashgate": st.one_of(CONTEXT_LIKE, JSON_VALUES),
        "other": JSON_VALUES,
    },
)


# Parsing is cheap: fuzz harder than the profile's default, but never less than it asks.
FUZZ_EXAMPLES = max(300, settings().max_examples)


def _parse_only_typed_errors(candidate: str | bytes) -> None:
    try:
        parsed = jwe.parse(candidate)
        parsed.wrapped_key(fleet().public.key)
        repr(parsed)
    except FlashgateError:
        pass


@given(candidate=st.one_of(st.text(max_size=400), st.binary(max_size=400)))
@settings(max_examples=FUZZ_EXAMPLES)
def test_fuzz_random_input_raises_only_typed_errors(candidate: str | bytes) -> None:
    _parse_only_typed_errors(candidate)


@given(data=st.data())
@settings(max_examples=FUZZ_EXAMPLES)
def test_fuzz_mutated_tokens_raise_only_typed_errors(token: str, data: st.DataObject) -> None:
    mutated = _mutate(token, data)
    _parse_only_typed_errors(mutated)
    _parse_only_typed_errors(mutated.encode("utf-8"))


@given(header=HEADERS, sort=st.booleans())
@settings(max_examples=FUZZ_EXAMPLES)
def test_fuzz_headers_raise_only_typed_errors(
    token: str, header: dict[str, Any], sort: bool
) -> None:
    raw = json.dumps(header, sort_keys=sort).encode()
    _parse_only_typed_errors(with_header(token, raw))


@given(
    parts=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_=", max_size=40),
        min_size=5,
        max_size=5,
    )
)
@settings(max_examples=FUZZ_EXAMPLES)
def test_fuzz_base64_parts_raise_only_typed_errors(token: str, parts: list[str]) -> None:
    header = parts_of(token)[0]
    _parse_only_typed_errors(".".join([header, *parts[1:]]))
    _parse_only_typed_errors(".".join(parts))


# --- rewrap (fleet key rotation) ----------------------------------------------------------


def test_rewrap_moves_the_content_key_to_the_new_fleet_key(token: str) -> None:
    old, new = fleet(), dealing(5, 3, pair=1)
    assert old.public.modulus != new.public.modulus
    parsed = jwe.parse(token)
    rewrapped = rewrap(parsed, threshold_y(old, parsed), old.public.key, new.public.key)
    before, after = parts_of(token), parts_of(rewrapped)
    assert after[0] == before[0]  # header
    assert after[2:] == before[2:]  # IV, ciphertext, tag
    assert after[1] != before[1]  # encrypted key
    assert len(b64url_decode(after[1])) == new.public.key.byte_length
    opened = threshold_open(new, rewrapped, CTX)
    assert opened.plaintext == CANARY
    assert opened.context == CTX
    # The old fleet cannot open the rewrapped envelope.
    with pytest.raises((DecryptionError, InvalidCiphertext)):
        threshold_open(old, rewrapped, CTX)


def test_rewrap_refuses_a_tampered_payload(token: str) -> None:
    old, new = fleet(), dealing(5, 3, pair=1)
    parsed = jwe.parse(flip_bit(token, 3, byte=0))
    y = threshold_y(old, parsed)  # the wrapped key itself is intact
    with raises_exactly(DecryptionError):
        rewrap(parsed, y, old.public.key, new.public.key)


def test_rewrap_refuses_a_wrong_y(token: str) -> None:
    old, new = fleet(), dealing(5, 3, pair=1)
    parsed = jwe.parse(token)
    with raises_exactly(DecryptionError):
        rewrap(parsed, threshold_y(old, parsed) ^ 1, old.public.key, new.public.key)


# --- reprs --------------------------------------------------------------------------------


def test_reprs_do_not_leak_the_plaintext(token: str) -> None:
    parsed = jwe.parse(token)
    opened = threshold_open(fleet(), token, CTX)
    secret = CANARY.decode()
    for text in (repr(parsed), str(parsed), repr(opened), str(opened), f"{opened}"):
        assert secret not in text
        assert CANARY.hex() not in text
        assert repr(CANARY) not in text
    assert f"<{len(CANARY)} bytes>" in repr(opened)


# --- OAEP decoding ------------------------------------------------------------------------

K = 128  # 1024-bit test modulus
H = 32
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _raw_rsa_decrypt(ciphertext: bytes) -> int:
    numbers = reference_private_key().private_numbers()
    return pow(int.from_bytes(ciphertext, "big"), numbers.d, numbers.public_numbers.n)


@pytest.mark.parametrize("length", [0, 1, 16, 32, K - 2 * H - 2])
def test_oaep_decode_matches_cryptography(length: int) -> None:
    message = bytes((i * 7 + length) % 256 for i in range(length))
    ciphertext = reference_private_key().public_key().encrypt(message, OAEP)
    assert oaep_decode(_raw_rsa_decrypt(ciphertext), K) == message


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _encode(db: bytes, *, seed: bytes = b"\x5a" * H, first: int = 0) -> int:
    """EME-OAEP encoding (RFC 8017 §7.1.1 step 2) of an explicit data block."""
    assert len(db) == K - H - 1
    masked_db = _xor(db, mgf1_sha256(seed, len(db)))
    masked_seed = _xor(seed, mgf1_sha256(masked_db, H))
    return int.from_bytes(bytes([first]) + masked_seed + masked_db, "big")


def _db(
    message: bytes, *, label: bytes = b"", separator: bytes = b"\x01", ps: bytes | None = None
) -> bytes:
    lhash = hashlib.sha256(label).digest()
    if ps is None:
        ps = bytes(K - H - 1 - H - len(separator) - len(message))
    return lhash + ps + separator + message


def test_oaep_reference_encoder_is_sound() -> None:
    message = b"\x01\x00content key\x01"
    assert oaep_decode(_encode(_db(message)), K) == message
    assert oaep_decode(_encode(_db(b"")), K) == b""
    # No padding string at all: the separator directly follows the label hash.
    longest = b"m" * (K - 2 * H - 2)
    assert oaep_decode(_encode(_db(longest)), K) == longest


BAD_ENCODINGS: dict[str, Callable[[], int]] = {
    "first-byte-nonzero": lambda: _encode(_db(b"key"), first=1),
    "first-byte-ff": lambda: _encode(_db(b"key"), first=0xFF),
    "wrong-label-hash": lambda: _encode(_db(b"key", label=b"label")),
    "no-separator": lambda: _encode(_db(b"", separator=b"")),
    "0x02-in-padding": lambda: _encode(
        _db(b"key", ps=b"\x00" * 10 + b"\x02" + b"\x00" * (K - 2 * H - 2 - 3 - 11))
    ),
    "0x02-separator": lambda: _encode(_db(b"key", separator=b"\x02")),
    "0xff-first-padding-byte": lambda: _encode(
        _db(b"key", ps=b"\xff" + b"\x00" * (K - 2 * H - 2 - 3 - 1))
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENCODINGS))
def test_oaep_bad_encodings_fail_opaquely(case: str) -> None:
    with raises_exactly(DecryptionError) as info:
        oaep_decode(BAD_ENCODINGS[case](), K)
    assert str(info.value) == "decryption failed"


@pytest.mark.parametrize(
    ("y", "k"),
    [(0, 2 * H + 1), (1, 2 * H + 1), (0, 0), (1 << (8 * K), K), (-1, K)],
    ids=["k-too-small", "k-too-small-y1", "k-zero", "y-too-large", "y-negative"],
)
def test_oaep_out_of_range_fails_opaquely(y: int, k: int) -> None:
    with raises_exactly(DecryptionError) as info:
        oaep_decode(y, k)
    assert str(info.value) == "decryption failed"


def test_oaep_all_failures_share_one_message(token: str) -> None:
    messages = set()
    for make in BAD_ENCODINGS.values():
        with raises_exactly(DecryptionError) as info:
            oaep_decode(make(), K)
        messages.add(str(info.value))
    with raises_exactly(DecryptionError) as info:
        oaep_decode(0, 2 * H + 1)
    messages.add(str(info.value))
    with raises_exactly(DecryptionError) as info:  # a GCM failure, too
        threshold_open(fleet(), flip_bit(token, 4), CTX)
    messages.add(str(info.value))
    assert messages == {"decryption failed"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("fleet", "other"), ("repo", "other"), ("name", "other"), ("kind", "ai"), ("version", 2)],
)
def test_check_context_names_the_field_that_differs(field: str, value: object) -> None:
    actual = SecretContext(fleet="f", repo="r", name="n", kind="storage", version=1)
    check_context(actual, actual)
    expected = replace(actual, **{field: value})
    with pytest.raises(ContextMismatch, match=f"envelope {field} "):
        check_context(actual, expected)
    with pytest.raises(MissingContext):
        check_context(None, expected)

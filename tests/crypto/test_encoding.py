"""Strict base64url: the decoder agrees with a plain reference decoder on every input."""

from __future__ import annotations

import base64
import binascii
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgate.crypto.encoding import b64url_decode, b64url_decode_checked, b64url_encode
from flashgate.errors import MalformedEnvelope

_ALPHABET_RE = re.compile(rb"^[A-Za-z0-9_-]*$")


def reference_decode(text: str) -> bytes | None:
    """The rule spelled out slowly: the alphabet only, no length 1 mod 4, and the one
    canonical encoding (decode, encode again, compare). None: refused."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    if _ALPHABET_RE.fullmatch(raw) is None or len(raw) % 4 == 1:
        return None
    try:
        out = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(out).rstrip(b"=") != raw:
        return None
    return out


def decoded(text: str) -> bytes | None:
    try:
        return b64url_decode(text)
    except MalformedEnvelope:
        return None


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n.é"))
def test_agrees_with_the_reference_on_any_text(text: str) -> None:
    assert decoded(text) == reference_decode(text)


@given(st.binary(max_size=600))
def test_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data
    assert b64url_decode(b64url_encode(data).encode("ascii")) == data


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n.é"))
def test_the_checked_decoder_agrees_on_every_text_the_strict_one_accepts(text: str) -> None:
    """b64url_decode_checked reads only what b64url_decode accepted before: on that, the
    two agree (on anything else it is never used)."""
    strict = decoded(text)
    if strict is not None:
        assert b64url_decode_checked(text) == strict


@given(st.binary(max_size=600))
def test_the_checked_decoder_round_trips(data: bytes) -> None:
    assert b64url_decode_checked(b64url_encode(data)) == data


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=15))
def test_non_canonical_trailing_bits_refused(data: bytes, bits: int) -> None:
    text = b64url_encode(data)
    unused = {2: 0x0F, 3: 0x03}.get(len(text) % 4)
    if unused is None:
        return
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1]) | (bits & unused)
    if last == alphabet.index(text[-1]):
        return
    with pytest.raises(MalformedEnvelope, match="not canonical"):
        b64url_decode(text[:-1] + alphabet[last])


@pytest.mark.parametrize("text", ["A", "AB==", "AB=", "A B", "ab+c", "ab/c", "AB\n", "é", "AAAAA"])
def test_refused(text: str) -> None:
    with pytest.raises(MalformedEnvelope):
        b64url_decode(text)


# --- the JWE header's JSON: the quick reader agrees with the strict one ----------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=10), _json_values, max_size=6), st.booleans(), st.booleans()
)
def test_header_json_agrees_with_the_strict_reader(
    header: dict[str, object], sort_keys: bool, compact: bool
) -> None:
    import json

    from flashgate.crypto import jwe

    text = json.dumps(
        header,
        sort_keys=sort_keys,
        separators=(",", ":") if compact else (", ", ": "),
        ensure_ascii=True,
    )
    assert jwe._header_json(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"alg":"RSA-OAEP-256","alg":"RSA-OAEP-256"}',  # a duplicate, else canonical
        b'{"a":{"b":1,"b":1}}',
        b'{"alg":NaN}',
    ],
)
def test_header_json_refuses_what_the_strict_reader_refuses(raw: bytes) -> None:
    from flashgate.crypto import jwe

    with pytest.raises(MalformedEnvelope):
        jwe._header_json(raw)

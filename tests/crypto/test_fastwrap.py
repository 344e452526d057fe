"""The fast path's cryptography (flashgate/crypto/fastwrap.py): terms, wraps, binding."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgate.crypto import fastwrap, jwe
from flashgate.crypto.context import SecretContext
from flashgate.crypto.decrypt import open_jwe
from flashgate.crypto.encrypt import encrypt_secret
from flashgate.crypto.rng import SYSTEM_RNG
from flashgate.errors import (
    ContextMismatch,
    DecryptionError,
    InvalidKey,
    MalformedEnvelope,
    MissingContext,
)
from tests.support.bridge_units import public_key, reference_y

AAD_FIELDS = {
    "fleet": "acme",
    "key": "payments.s3",
    "version": 3,
    "epoch": 2,
    "wrapped_key_sha256": bytes(range(32)),
    "term_id": "ab" * 16,
    "writer": "node-1",
}
CHANGED = {
    "fleet": "acmf",
    "key": "payments.s4",
    "version": 4,
    "epoch": 3,
    "wrapped_key_sha256": bytes(range(1, 33)),
    "term_id": "ac" * 16,
    "writer": "node-2",
}


@given(cek=st.binary(min_size=32, max_size=32), term=st.binary(min_size=32, max_size=32))
def test_a_wrap_round_trips(cek: bytes, term: bytes) -> None:
    aad = fastwrap.wrap_aad(**AAD_FIELDS)  # type: ignore[arg-type]
    nonce, sealed = fastwrap.wrap_cek(term, cek, aad, SYSTEM_RNG)
    assert len(sealed) == fastwrap.SEALED_CEK_BYTES and cek not in sealed
    assert fastwrap.unwrap_cek(term, nonce, sealed, aad) == bytearray(cek)


@pytest.mark.parametrize("field", sorted(AAD_FIELDS))
def test_every_bound_field_is_checked(field: str) -> None:
    term, cek = secrets.token_bytes(32), secrets.token_bytes(32)
    nonce, sealed = fastwrap.wrap_cek(term, cek, fastwrap.wrap_aad(**AAD_FIELDS), SYSTEM_RNG)  # type: ignore[arg-type]
    moved = fastwrap.wrap_aad(**{**AAD_FIELDS, field: CHANGED[field]})  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        fastwrap.unwrap_cek(term, nonce, sealed, moved)


def test_the_aad_fields_cannot_run_into_each_other() -> None:
    a = fastwrap.wrap_aad(**{**AAD_FIELDS, "fleet": "ab", "key": "c.d"})  # type: ignore[arg-type]
    b = fastwrap.wrap_aad(**{**AAD_FIELDS, "fleet": "a", "key": "bc.d"})  # type: ignore[arg-type]
    assert a != b


def test_another_term_or_a_damaged_wrap_fails() -> None:
    term, cek = secrets.token_bytes(32), secrets.token_bytes(32)
    aad = fastwrap.wrap_aad(**AAD_FIELDS)  # type: ignore[arg-type]
    nonce, sealed = fastwrap.wrap_cek(term, cek, aad, SYSTEM_RNG)
    with pytest.raises(DecryptionError):
        fastwrap.unwrap_cek(secrets.token_bytes(32), nonce, sealed, aad)
    with pytest.raises(DecryptionError):
        fastwrap.unwrap_cek(term, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad)
    with pytest.raises(DecryptionError):
        fastwrap.unwrap_cek(term, nonce[:-1], sealed, aad)


def _secret(value: bytes) -> tuple[jwe.ParsedJWE, SecretContext]:
    context = SecretContext(fleet="unit", repo="r", name="n", kind="generic", version=1)
    return jwe.parse(encrypt_secret(public_key(), context, value)), context


def test_a_payload_opens_with_its_content_key_only() -> None:
    parsed, context = _secret(b"the value")
    y = reference_y(parsed.wrapped_key(public_key()))
    cek = fastwrap.content_key(parsed, y, public_key())
    assert bytes(fastwrap.open_payload(parsed, cek, context)) == b"the value"
    assert open_jwe(parsed, y, public_key(), context).plaintext == b"the value"
    with pytest.raises(DecryptionError):
        fastwrap.open_payload(parsed, secrets.token_bytes(32), context)
    other = SecretContext(fleet="unit", repo="r", name="n", kind="generic", version=2)
    with pytest.raises(ContextMismatch):
        fastwrap.open_payload(parsed, cek, other)


def test_a_term_opens_by_the_threshold_result_and_is_no_secret_envelope() -> None:
    key = secrets.token_bytes(32)
    token = fastwrap.seal_term(public_key(), key, SYSTEM_RNG)
    parsed = fastwrap.parse_term(token)
    y = reference_y(parsed.wrapped_key(public_key()))
    assert fastwrap.open_term(parsed, y, public_key()) == bytearray(key)
    with pytest.raises(DecryptionError):
        fastwrap.open_term(parsed, y + 1, public_key())
    # a term's JWE is not a secret's (no context), and a secret's JWE is not a term
    with pytest.raises(MissingContext):
        open_jwe(parsed, y, public_key(), None)
    secret, _ = _secret(b"x" * 32)
    with pytest.raises(MalformedEnvelope):
        fastwrap.parse_term(secret.serialize())


def test_wipe_zeroes() -> None:
    buffer = bytearray(b"\x07" * 32)
    fastwrap.wipe(buffer)
    assert buffer == bytearray(32)


def test_the_additional_data_is_frozen() -> None:
    """The layout of the module docstring, byte for byte (wraps already in the bucket
    open only while it stays so): a frozen vector, and the layout spelled out."""
    fields = {**AAD_FIELDS, "version": 7, "term_id": "t" * 32, "writer": "node-3"}
    aad = fastwrap.wrap_aad(**fields)  # type: ignore[arg-type]
    assert aad.hex() == (
        "666c617368676174652f666173742d777261702f7631000461636d65000b7061796d656e74732e7333"
        "0004000000070004000000020020000102030405060708090a0b0c0d0e0f101112131415161718191a"
        "1b1c1d1e1f0020747474747474747474747474747474747474747474747474747474747474747400066e"
        "6f64652d33"
    )

    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    assert aad == b"flashgate/fast-wrap/v1" + b"".join(
        [
            field(b"acme"),
            field(b"payments.s3"),
            field((7).to_bytes(4, "big")),
            field((2).to_bytes(4, "big")),
            field(bytes(range(32))),
            field(b"t" * 32),
            field(b"node-3"),
        ]
    )


@given(cek=st.binary(min_size=32, max_size=32), term=st.binary(min_size=32, max_size=32))
def test_a_term_cipher_and_its_key_are_the_same_term(cek: bytes, term: bytes) -> None:
    """A wrap made with the term's key opens with its cipher, and the other way round."""
    aad = fastwrap.wrap_aad(**AAD_FIELDS)  # type: ignore[arg-type]
    cipher = fastwrap.TermCipher(bytearray(term))
    nonce, sealed = fastwrap.wrap_cek(term, cek, aad, SYSTEM_RNG)
    assert fastwrap.unwrap_cek(cipher, nonce, sealed, aad) == bytearray(cek)
    nonce, sealed = fastwrap.wrap_cek(cipher, cek, aad, SYSTEM_RNG)
    assert fastwrap.unwrap_cek(term, nonce, sealed, aad) == bytearray(cek)
    assert term.hex() not in repr(cipher) and "key not shown" in repr(cipher)


def test_a_term_cipher_needs_a_32_byte_key() -> None:
    with pytest.raises(InvalidKey):
        fastwrap.TermCipher(bytes(31))

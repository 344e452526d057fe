"""Unit tests of sealing share results to a one-time X25519 key (flashgate/crypto/box.py)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from flashgate.crypto import box
from flashgate.crypto.rng import DeterministicRng
from flashgate.errors import DecryptionError, InvalidKey

AAD = b"flashgate/share-results/v1|unit|1|request-id|node-2"
PLAINTEXT = b"partials for the requester only"

#: X25519 public keys of small order: the shared secret with any (clamped) scalar is zero.
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # p - 1
]


def flip(data: bytes, at: int = 0) -> bytes:
    """``data`` with one bit of byte ``at`` flipped."""
    changed = bytearray(data)
    changed[at % len(changed)] ^= 0x01
    return bytes(changed)


@pytest.fixture
def recipient() -> tuple[X25519PrivateKey, bytes]:
    return box.new_keypair(DeterministicRng(b"box-recipient"))


@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=512))
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    private, public = box.new_keypair()
    sealed = box.seal(public, plaintext, aad)
    assert box.open_sealed(private, sealed, aad) == plaintext


def test_sealed_shape(recipient: tuple[X25519PrivateKey, bytes]) -> None:
    _, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    assert len(sealed.sender_key) == 32
    assert len(sealed.nonce) == box.NONCE_BYTES
    assert len(sealed.ciphertext) == len(PLAINTEXT) + 16  # GCM tag
    assert PLAINTEXT not in sealed.ciphertext


def test_every_seal_uses_a_fresh_sender_key_and_nonce(
    recipient: tuple[X25519PrivateKey, bytes],
) -> None:
    _, public = recipient
    first, second = box.seal(public, PLAINTEXT, AAD), box.seal(public, PLAINTEXT, AAD)
    assert first.sender_key != second.sender_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_wrong_recipient_key_does_not_open(recipient: tuple[X25519PrivateKey, bytes]) -> None:
    _, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    other, _ = box.new_keypair()
    with pytest.raises(DecryptionError):
        box.open_sealed(other, sealed, AAD)


@given(position=st.integers(min_value=0, max_value=10_000))
def test_modified_aad_does_not_open(position: int) -> None:
    private, public = box.new_keypair(DeterministicRng(b"box-aad"))
    sealed = box.seal(public, PLAINTEXT, AAD)
    with pytest.raises(DecryptionError):
        box.open_sealed(private, sealed, flip(AAD, position))


def test_missing_or_extended_aad_does_not_open(
    recipient: tuple[X25519PrivateKey, bytes],
) -> None:
    private, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    for aad in (b"", AAD[:-1], AAD + b"|extra"):
        with pytest.raises(DecryptionError):
            box.open_sealed(private, sealed, aad)


@pytest.mark.parametrize("part", ["nonce", "ciphertext", "sender_key"])
@pytest.mark.parametrize("position", [0, 7, -1])
def test_modified_part_does_not_open(
    recipient: tuple[X25519PrivateKey, bytes], part: str, position: int
) -> None:
    private, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    value: bytes = getattr(sealed, part)
    tampered = dataclasses.replace(sealed, **{part: flip(value, position)})
    with pytest.raises(DecryptionError):
        box.open_sealed(private, tampered, AAD)


@pytest.mark.parametrize("part", ["nonce", "ciphertext", "sender_key"])
def test_truncated_part_does_not_open(recipient: tuple[X25519PrivateKey, bytes], part: str) -> None:
    private, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    value: bytes = getattr(sealed, part)
    tampered = dataclasses.replace(sealed, **{part: value[:-1]})
    with pytest.raises(DecryptionError):
        box.open_sealed(private, tampered, AAD)


def test_low_order_sender_key_does_not_open(recipient: tuple[X25519PrivateKey, bytes]) -> None:
    private, public = recipient
    sealed = box.seal(public, PLAINTEXT, AAD)
    with pytest.raises(DecryptionError):
        box.open_sealed(private, dataclasses.replace(sealed, sender_key=bytes(32)), AAD)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_seal_to_a_low_order_key_raises_invalid_key(point: bytes) -> None:
    with pytest.raises(InvalidKey):
        box.seal(point, PLAINTEXT, AAD)


@given(length=st.integers(min_value=0, max_value=100).filter(lambda n: n != 32))
def test_seal_to_a_key_of_the_wrong_length_raises_invalid_key(length: int) -> None:
    with pytest.raises(InvalidKey):
        box.seal(b"\x09" * length, PLAINTEXT, AAD)


def test_invalid_key_is_not_a_decryption_error() -> None:
    """Callers can tell "this reply key is unusable" from "this does not open"."""
    assert not issubclass(InvalidKey, DecryptionError)


def test_new_keypair_is_deterministic_under_a_seeded_rng() -> None:
    _, first = box.new_keypair(DeterministicRng(b"seed"))
    _, second = box.new_keypair(DeterministicRng(b"seed"))
    _, third = box.new_keypair(DeterministicRng(b"other seed"))
    assert first == second != third

"""Passphrase sealing of files at rest (flashgate.crypto.seal).

A wrong passphrase and any alteration are the same UnsealError; a file that is not a sealed
file of the expected purpose (or is truncated, or asks for out-of-bounds KDF costs) is its
child MalformedSealedFile. FAST_KDF everywhere except the one test of the defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgate.crypto import seal as seal_module
from flashgate.crypto.seal import (
    DEFAULT_KDF,
    MAGIC,
    MAX_SEALED_BYTES,
    NONCE_BYTES,
    SALT_BYTES,
    KdfParams,
    seal,
    unseal,
)
from flashgate.errors import (
    ConfigurationError,
    MalformedSealedFile,
    OversizedInput,
    UnsealError,
)
from tests.support.material import CANARY, FAST_KDF, TEST_PASSPHRASE

PURPOSE = "node-bundle"
PARAMS_OFFSET = 8 + len(PURPOSE) + 1  # magic, version, purpose length, purpose, KDF id
HEADER_BYTES = PARAMS_OFFSET + 12 + SALT_BYTES + NONCE_BYTES
TAG_BYTES = 16


@contextlib.contextmanager
def raises_exactly(cls: type[BaseException]) -> Iterator[pytest.ExceptionInfo[Any]]:
    """pytest.raises, but a subclass of ``cls`` does not count."""
    with pytest.raises(cls) as info:
        yield info
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {info.type.__name__}"


def fast_seal(data: bytes, purpose: str = PURPOSE, passphrase: str = TEST_PASSPHRASE) -> bytes:
    return seal(data, passphrase, purpose, params=FAST_KDF)


@pytest.fixture(scope="module")
def small_blob() -> bytes:
    return fast_seal(b"sixteen byte msg")


def test_malformed_sealed_file_is_an_unseal_error() -> None:
    assert issubclass(MalformedSealedFile, UnsealError)


def test_round_trip() -> None:
    blob = fast_seal(CANARY)
    assert unseal(blob, TEST_PASSPHRASE, PURPOSE) == CANARY


@given(data=st.binary(max_size=4096))
def test_property_round_trip(data: bytes) -> None:
    blob = fast_seal(data)
    assert len(blob) == HEADER_BYTES + len(data) + TAG_BYTES
    assert unseal(blob, TEST_PASSPHRASE, PURPOSE) == data


def test_layout_matches_the_documented_format(small_blob: bytes) -> None:
    assert small_blob[:6] == MAGIC
    assert small_blob[6] == 1
    assert small_blob[7] == len(PURPOSE)
    assert small_blob[8 : 8 + len(PURPOSE)] == PURPOSE.encode("ascii")
    assert small_blob[8 + len(PURPOSE)] == seal_module.KDF_ARGON2ID
    params = small_blob[PARAMS_OFFSET : PARAMS_OFFSET + 12]
    assert params == b"".join(
        v.to_bytes(4, "big") for v in (FAST_KDF.memory_kib, FAST_KDF.iterations, FAST_KDF.lanes)
    )


def test_sealing_twice_uses_fresh_salt_and_nonce() -> None:
    a, b = fast_seal(CANARY), fast_seal(CANARY)
    assert a != b
    salt = slice(PARAMS_OFFSET + 12, PARAMS_OFFSET + 12 + SALT_BYTES)
    nonce = slice(salt.stop, salt.stop + NONCE_BYTES)
    assert a[salt] != b[salt]
    assert a[nonce] != b[nonce]


def test_default_parameters_round_trip() -> None:
    assert KdfParams(memory_kib=64 * 1024, iterations=3, lanes=4) == DEFAULT_KDF
    blob = seal(CANARY, TEST_PASSPHRASE, PURPOSE)
    params = blob[PARAMS_OFFSET : PARAMS_OFFSET + 12]
    assert params == (64 * 1024).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(
        4, "big"
    )
    assert unseal(blob, TEST_PASSPHRASE, PURPOSE) == CANARY


def test_sealed_bytes_do_not_contain_the_plaintext() -> None:
    blob = fast_seal(CANARY)
    assert CANARY not in blob
    assert CANARY[:16] not in blob
    assert TEST_PASSPHRASE.encode() not in blob


@pytest.mark.parametrize(
    "passphrase",
    [TEST_PASSPHRASE + "x", TEST_PASSPHRASE[:-1], TEST_PASSPHRASE.upper(), "another-passphrase"],
)
def test_wrong_passphrase(small_blob: bytes, passphrase: str) -> None:
    with raises_exactly(UnsealError) as info:
        unseal(small_blob, passphrase, PURPOSE)
    assert not isinstance(info.value, MalformedSealedFile)
    assert TEST_PASSPHRASE not in str(info.value)
    assert passphrase not in str(info.value)


def test_non_ascii_passphrase_round_trips() -> None:
    passphrase = "pässwörd-ünïcode"
    blob = fast_seal(CANARY, passphrase=passphrase)
    assert unseal(blob, passphrase, PURPOSE) == CANARY
    with raises_exactly(UnsealError):
        unseal(blob, "passwörd-ünïcode", PURPOSE)


@pytest.mark.parametrize("other", ["admin-key", "node-bundl", "node-bundle2", "NODE-BUNDLE"])
def test_purpose_mismatch(small_blob: bytes, other: str) -> None:
    with raises_exactly(MalformedSealedFile):
        unseal(small_blob, TEST_PASSPHRASE, other)


def test_relabelled_purpose_fails_authentication() -> None:
    """Rewriting the purpose field (same length) to pass the check breaks the tag."""
    blob = bytearray(fast_seal(CANARY, purpose="admin-key"))
    blob[8 : 8 + len("admin-key")] = b"admin-kez"
    with raises_exactly(UnsealError):
        unseal(bytes(blob), TEST_PASSPHRASE, "admin-kez")


def test_truncated_at_every_length(small_blob: bytes) -> None:
    for length in range(len(small_blob)):
        truncated = small_blob[:length]
        if length < HEADER_BYTES + TAG_BYTES:
            with raises_exactly(MalformedSealedFile):
                unseal(truncated, TEST_PASSPHRASE, PURPOSE)
        else:  # a whole header and a tag's worth of bytes: only the tag can tell
            with raises_exactly(UnsealError):
                unseal(truncated, TEST_PASSPHRASE, PURPOSE)


def test_every_single_bit_flip_is_detected(small_blob: bytes) -> None:
    for position in range(len(small_blob)):
        damaged = bytearray(small_blob)
        damaged[position] ^= 1 << (position % 8)
        with pytest.raises(UnsealError):
            unseal(bytes(damaged), TEST_PASSPHRASE, PURPOSE)


def test_appended_bytes_are_detected(small_blob: bytes) -> None:
    with raises_exactly(UnsealError):
        unseal(small_blob + b"\x00", TEST_PASSPHRASE, PURPOSE)


def _with_params(blob: bytes, memory_kib: int, iterations: int, lanes: int) -> bytes:
    params = b"".join(v.to_bytes(4, "big") for v in (memory_kib, iterations, lanes))
    return blob[:PARAMS_OFFSET] + params + blob[PARAMS_OFFSET + 12 :]


@pytest.mark.parametrize(
    ("memory_kib", "iterations", "lanes"),
    [
        (0, 1, 1),
        (8 * 1024 - 1, 1, 1),
        (1024 * 1024 + 1, 1, 1),
        (2**32 - 1, 1, 1),
        (8 * 1024, 0, 1),
        (8 * 1024, 21, 1),
        (8 * 1024, 2**32 - 1, 1),
        (8 * 1024, 1, 0),
        (8 * 1024, 1, 17),
        (8 * 1024, 1, 2**32 - 1),
    ],
)
def test_kdf_params_out_of_bounds(
    small_blob: bytes, memory_kib: int, iterations: int, lanes: int
) -> None:
    with raises_exactly(MalformedSealedFile):
        unseal(_with_params(small_blob, memory_kib, iterations, lanes), TEST_PASSPHRASE, PURPOSE)


def test_kdf_params_in_bounds_but_edited_fail_authentication(small_blob: bytes) -> None:
    edited = _with_params(small_blob, FAST_KDF.memory_kib, 2, FAST_KDF.lanes)
    with raises_exactly(UnsealError):
        unseal(edited, TEST_PASSPHRASE, PURPOSE)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, ord("X")), (5, ord("x")), (6, 0), (6, 2), (8 + len(PURPOSE), 0), (8 + len(PURPOSE), 2)],
    ids=["magic-first", "magic-last", "version-0", "version-2", "kdf-id-0", "kdf-id-2"],
)
def test_bad_magic_version_or_kdf(small_blob: bytes, offset: int, value: int) -> None:
    damaged = bytearray(small_blob)
    damaged[offset] = value
    with raises_exactly(MalformedSealedFile):
        unseal(bytes(damaged), TEST_PASSPHRASE, PURPOSE)


@pytest.mark.parametrize("length", [0, 1, len(PURPOSE) - 1, len(PURPOSE) + 1, 255])
def test_bad_purpose_length_byte(small_blob: bytes, length: int) -> None:
    damaged = bytearray(small_blob)
    damaged[7] = length
    with raises_exactly(MalformedSealedFile):
        unseal(bytes(damaged), TEST_PASSPHRASE, PURPOSE)


@pytest.mark.parametrize("passphrase", ["", "short", "1234567"])
def test_short_passphrase_on_seal(passphrase: str) -> None:
    with raises_exactly(ConfigurationError):
        seal(CANARY, passphrase, PURPOSE, params=FAST_KDF)


@pytest.mark.parametrize("purpose", ["", "p" * 33, "bündle"], ids=["empty", "long", "non-ascii"])
def test_bad_purpose_on_seal(purpose: str) -> None:
    with raises_exactly(ConfigurationError):
        seal(CANARY, TEST_PASSPHRASE, purpose, params=FAST_KDF)


@pytest.mark.parametrize("purpose", ["", "p" * 33, "bündle"], ids=["empty", "long", "non-ascii"])
def test_bad_purpose_on_unseal(small_blob: bytes, purpose: str) -> None:
    with raises_exactly(ConfigurationError):
        unseal(small_blob, TEST_PASSPHRASE, purpose)


def test_oversized_blob_refused_before_parsing() -> None:
    with raises_exactly(OversizedInput):
        unseal(b"\x00" * (MAX_SEALED_BYTES + 1), TEST_PASSPHRASE, PURPOSE)


def test_blob_at_max_size_is_not_refused_for_size() -> None:
    with raises_exactly(MalformedSealedFile):
        unseal(b"\x00" * MAX_SEALED_BYTES, TEST_PASSPHRASE, PURPOSE)


def test_seal_refuses_data_it_could_not_unseal() -> None:
    """Whatever seal accepts, unseal must open: seal must not write an unopenable file.

    unseal refuses blobs over MAX_SEALED_BYTES, so data of MAX_SEALED_BYTES (which seals to
    MAX_SEALED_BYTES + header + tag) must be refused by seal itself, with OversizedInput.
    """
    data = b"\x00" * (MAX_SEALED_BYTES - HEADER_BYTES - TAG_BYTES + 1)
    with raises_exactly(OversizedInput):
        seal(data, TEST_PASSPHRASE, PURPOSE, params=FAST_KDF)


def test_largest_sealable_data_round_trips() -> None:
    data = b"\x00" * (MAX_SEALED_BYTES - HEADER_BYTES - TAG_BYTES)
    blob = fast_seal(data)
    assert len(blob) == MAX_SEALED_BYTES
    assert unseal(blob, TEST_PASSPHRASE, PURPOSE) == data

"""Unit tests of the in-memory vault (flashgate/bridge/vault.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgate.bridge.vault import Vault
from flashgate.errors import SecretNotHeld, StaleVersion
from tests.support.material import CANARY

KEY = "payments.s3"
API_KEY = "payments.fgk_abcdefghijklmnopqrstuvwx"
API_KEY_ID = "fgk_abcdefghijklmnopqrstuvwx"
API_SECRET = b"fgs_unit-test-api-key-secret-0123456789abcdefghi"


def read(vault: Vault, key: str) -> bytes:
    with vault.use(key) as view:
        return bytes(view)


class RecordingBuffer(bytearray):
    """A bytearray that remembers what it held at the moment it was cleared."""

    contents_when_cleared: bytes | None = None

    def clear(self) -> None:
        self.contents_when_cleared = bytes(self)
        super().clear()


# --- put / use ----------------------------------------------------------------------------


def test_put_then_use_lends_the_value() -> None:
    vault = Vault()
    assert vault.put(KEY, 1, 1, "storage", b"value-1") is True
    assert read(vault, KEY) == b"value-1"
    assert vault.version_of(KEY) == 1
    assert len(vault) == 1


def test_use_lends_a_read_only_view() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    with vault.use(KEY) as view:
        assert isinstance(view, memoryview)
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 0
    assert read(vault, KEY) == b"value-1"


def test_the_view_is_released_after_the_block() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    with vault.use(KEY) as view:
        pass
    with pytest.raises(ValueError, match="released"):
        bytes(view)


def test_the_view_is_released_when_the_block_raises() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    with pytest.raises(RuntimeError), vault.use(KEY) as view:
        raise RuntimeError("consumer failed")
    with pytest.raises(ValueError, match="released"):
        bytes(view)


def test_use_of_an_unknown_key_raises_secret_not_held() -> None:
    with pytest.raises(SecretNotHeld), Vault().use("nobody.home"):
        pass  # pragma: no cover - never entered


def test_use_of_an_api_key_secret_raises_secret_not_held() -> None:
    vault = Vault()
    vault.put(API_KEY, 1, 1, "apikey", API_SECRET, api_key_id=API_KEY_ID)
    with pytest.raises(SecretNotHeld), vault.use(API_KEY):
        pass  # pragma: no cover - never entered


def test_put_wipes_the_callers_bytearray() -> None:
    vault = Vault()
    plaintext = bytearray(b"value-1")
    vault.put(KEY, 1, 1, "storage", plaintext)
    assert plaintext == bytearray(len(plaintext))
    assert read(vault, KEY) == b"value-1"


def test_put_wipes_the_callers_bytearray_on_a_no_op_and_a_rollback() -> None:
    vault = Vault()
    vault.put(KEY, 2, 1, "storage", b"value-2")
    same = bytearray(b"value-2 again")
    older = bytearray(b"value-1")
    assert vault.put(KEY, 2, 1, "storage", same) is False
    with pytest.raises(StaleVersion):
        vault.put(KEY, 1, 1, "storage", older)
    assert same == bytearray(len(same))
    assert older == bytearray(len(older))


# --- versions -----------------------------------------------------------------------------


def test_rotation_swaps_in_the_new_version_and_zeroes_the_old_buffer() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    old = vault._slots[KEY].data
    assert vault.put(KEY, 2, 1, "storage", b"value-2") is True
    assert read(vault, KEY) == b"value-2"
    assert vault.version_of(KEY) == 2
    assert vault._slots[KEY].data is not old
    assert b"value-1" not in bytes(old)
    assert not any(old)


def test_rotation_overwrites_the_old_bytes_with_zeros_before_releasing_them() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    recorder = RecordingBuffer(b"value-1")
    vault._slots[KEY].data = recorder
    vault.put(KEY, 2, 1, "storage", b"value-2")
    assert recorder.contents_when_cleared == bytes(len(b"value-1"))


def test_same_version_is_a_no_op() -> None:
    vault = Vault()
    vault.put(KEY, 3, 1, "storage", b"value-3")
    buffer = vault._slots[KEY].data
    assert vault.put(KEY, 3, 1, "storage", b"something else") is False
    assert read(vault, KEY) == b"value-3"
    assert vault._slots[KEY].data is buffer
    assert vault.rollbacks_refused == 0


def test_same_version_from_another_envelope_records_its_epoch_and_source() -> None:
    vault = Vault()
    vault.put(KEY, 3, 1, "storage", b"value-3", source=b"a" * 32)
    assert vault.put(KEY, 3, 2, "storage", b"value-3", source=b"b" * 32) is False  # re-wrapped
    assert [(h.version, h.epoch) for h in vault.held()] == [(3, 2)]
    assert vault.held_as(KEY) == (3, 2, b"b" * 32)
    # A re-wrap put back: the epoch it was opened under is the one held, not the highest.
    assert vault.put(KEY, 3, 1, "storage", b"value-3", source=b"a" * 32) is False
    assert vault.held_as(KEY) == (3, 1, b"a" * 32)


def test_lower_version_raises_stale_version_and_is_counted() -> None:
    vault = Vault()
    vault.put(KEY, 5, 1, "storage", b"value-5")
    with pytest.raises(StaleVersion):
        vault.put(KEY, 4, 1, "storage", b"value-4")
    with pytest.raises(StaleVersion):
        vault.put(KEY, 1, 1, "storage", b"value-1")
    assert vault.rollbacks_refused == 2
    assert read(vault, KEY) == b"value-5"
    assert vault.version_of(KEY) == 5


# --- delete and purge ---------------------------------------------------------------------


def test_delete_wipes_and_forgets() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    buffer = vault._slots[KEY].data
    assert vault.delete(KEY) is True
    assert not any(buffer) and b"value-1" not in bytes(buffer)
    assert vault.version_of(KEY) is None
    assert vault.held() == []
    with pytest.raises(SecretNotHeld), vault.use(KEY):
        pass  # pragma: no cover - never entered
    assert vault.delete(KEY) is False


def test_purge_wipes_everything_and_returns_the_count() -> None:
    vault = Vault()
    vault.put("a.one", 1, 1, "ai", b"value-one")
    vault.put("a.two", 7, 1, "storage", b"value-two")
    vault.put(API_KEY, 1, 1, "apikey", API_SECRET, api_key_id=API_KEY_ID)
    buffers = [slot.data for slot in vault._slots.values()]
    assert vault.purge() == 3
    assert all(not any(b) for b in buffers)
    assert len(vault) == 0
    assert vault.held() == []
    assert vault.verify_api_key(API_KEY_ID, API_SECRET) is False
    assert vault.purge() == 0


def test_after_purge_an_older_version_can_be_loaded_again() -> None:
    """Purge forgets versions too: a restarted node starts from what the bucket says."""
    vault = Vault()
    vault.put(KEY, 5, 1, "storage", b"value-5")
    vault.purge()
    assert vault.put(KEY, 2, 1, "storage", b"value-2") is True


def test_rotation_while_a_view_is_lent_swaps_and_wipes() -> None:
    """A consumer inside ``use()`` (e.g. awaiting I/O with the view) must not break a
    rotation: the new version goes in, the old one is wiped, and nothing raises."""
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", b"value-1")
    with vault.use(KEY):
        vault.put(KEY, 2, 1, "storage", b"value-2")
    assert read(vault, KEY) == b"value-2"


def test_purge_while_a_view_is_lent_still_wipes_everything() -> None:
    """Shutdown purges while a consumer may still hold a lent view: every other secret
    must still be wiped and forgotten."""
    vault = Vault()
    vault.put("a.one", 1, 1, "ai", b"value-one")
    vault.put("a.two", 1, 1, "ai", b"value-two")
    buffers = [slot.data for slot in vault._slots.values()]
    with vault.use("a.one"):
        assert vault.purge() == 2
    assert len(vault) == 0
    assert all(not any(b) for b in buffers)


# --- API keys -----------------------------------------------------------------------------


def test_verify_api_key() -> None:
    vault = Vault()
    vault.put(API_KEY, 1, 1, "apikey", bytearray(API_SECRET), api_key_id=API_KEY_ID)
    assert vault.verify_api_key(API_KEY_ID, API_SECRET) is True
    assert vault.verify_api_key(API_KEY_ID, API_SECRET[:-1] + b"X") is False
    assert vault.verify_api_key(API_KEY_ID, API_SECRET + b"0") is False
    assert vault.verify_api_key(API_KEY_ID, b"") is False
    assert vault.verify_api_key("fgk_unknownunknownunknownun", API_SECRET) is False


def test_verify_api_key_with_an_all_zero_secret_for_an_unknown_id_is_false() -> None:
    """The dummy compared for an unknown id is zeros: presenting zeros must not match."""
    vault = Vault()
    zeros = bytes(len(API_SECRET))
    assert vault.verify_api_key("fgk_unknownunknownunknownun", zeros) is False


def test_verify_api_key_after_delete_is_false() -> None:
    vault = Vault()
    vault.put(API_KEY, 1, 1, "apikey", API_SECRET, api_key_id=API_KEY_ID)
    vault.delete(API_KEY)
    assert vault.verify_api_key(API_KEY_ID, API_SECRET) is False


def test_verify_api_key_follows_rotation() -> None:
    vault = Vault()
    vault.put(API_KEY, 1, 1, "apikey", API_SECRET, api_key_id=API_KEY_ID)
    vault.put(API_KEY, 2, 1, "apikey", API_SECRET + b"-v2", api_key_id=API_KEY_ID)
    assert vault.verify_api_key(API_KEY_ID, API_SECRET + b"-v2") is True
    assert vault.verify_api_key(API_KEY_ID, API_SECRET) is False


def test_a_plain_secret_is_not_an_api_key() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", API_SECRET)
    assert vault.verify_api_key(KEY, API_SECRET) is False


# --- nothing leaks through repr -----------------------------------------------------------


def test_repr_never_shows_a_value() -> None:
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", CANARY)
    vault.put(API_KEY, 1, 1, "apikey", CANARY + b"-api", api_key_id=API_KEY_ID)
    shown = [repr(vault), str(vault), repr(vault.held()), str(vault.held())]
    with vault.use(KEY) as view:
        shown.append(repr(view))
    for text in shown:
        assert CANARY.decode() not in text
    assert "2 secrets held" in repr(vault)


def test_slot_repr_never_shows_a_value() -> None:
    """The internal slot is what a traceback-with-locals or a debugger prints for
    ``current``/``slot`` in put(): like every other holder of key material in the project
    (KeyShare, OpenedSecret, ShareResults, NodeBundle) it must redact its value."""
    vault = Vault()
    vault.put(KEY, 1, 1, "storage", CANARY)
    assert CANARY.decode() not in repr(vault._slots[KEY])


# --- property: a random sequence of operations agrees with a model ------------------------

KEYS = ["r.a", "r.b", "r.c"]


@dataclass(frozen=True)
class Put:
    key: str
    version: int


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Purge:
    pass


Operation = Put | Delete | Purge

operations = st.lists(
    st.one_of(
        st.builds(Put, st.sampled_from(KEYS), st.integers(1, 6)),
        st.builds(Delete, st.sampled_from(KEYS)),
        st.just(Purge()),
    ),
    max_size=40,
)


def value_for(op: Put) -> bytes:
    return f"{op.key}@v{op.version}".encode()


@given(operations)
def test_random_operations_keep_held_consistent_with_a_model(ops: list[Operation]) -> None:
    vault = Vault()
    model: dict[str, int] = {}
    refused = 0
    for op in ops:
        before = dict(model)
        if isinstance(op, Put):
            held = model.get(op.key)
            if held is not None and op.version < held:
                with pytest.raises(StaleVersion):
                    vault.put(op.key, op.version, 1, "ai", bytearray(value_for(op)))
                refused += 1
            else:
                changed = vault.put(op.key, op.version, 1, "ai", bytearray(value_for(op)))
                assert changed is (held is None or op.version > held)
                model[op.key] = op.version
        elif isinstance(op, Delete):
            assert vault.delete(op.key) is (op.key in model)
            model.pop(op.key, None)
        else:
            assert vault.purge() == len(model)
            model.clear()
        # held() agrees with the model, and a key still held never went backwards
        assert [(h.key, h.version) for h in vault.held()] == sorted(model.items())
        for key, version in model.items():
            if key in before:
                assert version >= before[key]
            assert read(vault, key) == f"{key}@v{version}".encode()
        assert len(vault) == len(model)
    assert vault.rollbacks_refused == refused

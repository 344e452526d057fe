"""Tombstones (:mod:`flashgate.bridge.tombstones`): admin-signed, kept for good, and what
they kill (issue 14: a deleted secret or a revoked API key cannot be put back)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flashgate.bridge.tombstones import Tombstones, api_key_target, secret_target, tombstones_path
from flashgate.errors import Tombstoned
from flashgate.events import commands as cmd
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.signing import sign
from tests.support.bridge_units import FLEET, SecretSpec, envelope_bytes, fleet, new_store

SECRET = SecretSpec("payments", "openai", b"sk-1")
API_KEY = SecretSpec(
    "payments", "fgk_aaaaaaaaaaaaaaaaaaaaaaaa", b"fgs_x", kind="apikey",
    api_key_id="fgk_aaaaaaaaaaaaaaaaaaaaaaaa",
)  # fmt: skip


def _envelope(spec: SecretSpec, *, stated_at: int = 0) -> SecretEnvelope:
    envelope = ENVELOPE_CODEC.decode(envelope_bytes(spec))
    assert envelope.provenance is not None
    statement = msgspec.structs.replace(
        envelope.provenance.statement, issued_at=stated_at, signature=""
    )
    provenance = msgspec.structs.replace(
        envelope.provenance, statement=sign(statement, fleet().admin_key)
    )
    return msgspec.structs.replace(envelope, provenance=provenance)


def _delete(
    repo: str = "payments",
    name: str = "openai",
    *,
    at: int = 10,
    key: Ed25519PrivateKey | None = None,
    fleet_name: str = FLEET,
) -> bytes:
    command = cmd.DeleteSecret(
        command_id=f"cmd-delete-{at:08d}",
        fleet=fleet_name,
        actor="admin:test",
        issued_at=at,
        repo=repo,
        name=name,
    )
    return cmd.COMMAND_CODEC.encode(sign(command, key or fleet().admin_key))


def _revoke(key_id: str, *, at: int = 10) -> bytes:
    command = cmd.RevokeApiKey(
        command_id=f"cmd-revoke-{at:08d}",
        fleet=FLEET,
        actor="admin:test",
        issued_at=at,
        key_id=key_id,
    )
    return cmd.COMMAND_CODEC.encode(sign(command, fleet().admin_key))


def _book(path: Path | None = None) -> Tombstones:
    return Tombstones(FLEET, fleet().admin_key.public_key(), path)


def test_a_deletion_kills_what_was_stated_before_it_and_nothing_after() -> None:
    book = _book()
    tombstone = book.accept(_delete(at=10))
    assert tombstone is not None and tombstone.target == secret_target("payments", "openai")
    with pytest.raises(Tombstoned, match=r"payments\.openai"):
        book.check(_envelope(SECRET, stated_at=5))
    book.check(_envelope(SECRET, stated_at=11))  # put again after the deletion: alive
    book.check(_envelope(SecretSpec("payments", "other", b"x"), stated_at=5))


def test_a_revocation_kills_the_api_keys_envelope() -> None:
    book = _book()
    assert book.accept(_revoke(API_KEY.name, at=10)) is not None
    assert book.dead(_envelope(API_KEY, stated_at=3))
    assert list(book._latest) == [api_key_target(API_KEY.name)]


@pytest.mark.parametrize(
    "raw",
    [
        _delete(key=Ed25519PrivateKey.generate()),  # not the admin
        _delete(fleet_name="other"),  # another fleet's
        b"not json",
        b"{" + b" " * 5000 + b"}",  # oversized
    ],
    ids=["forged", "foreign", "garbage", "oversized"],
)
def test_a_tombstone_that_does_not_check_kills_nothing(raw: bytes) -> None:
    book = _book()
    assert book.accept(raw) is None
    assert book.refused == 1 and len(book) == 0
    book.check(_envelope(SECRET, stated_at=5))


def test_other_admin_commands_are_not_tombstones() -> None:
    command = cmd.RenameApiKey(
        command_id="cmd-rename-00000001",
        fleet=FLEET,
        actor="admin:test",
        issued_at=10,
        key_id=API_KEY.name,
        label="x",
    )
    book = _book()
    assert book.accept(cmd.COMMAND_CODEC.encode(sign(command, fleet().admin_key))) is None
    assert book.refused == 1


def test_an_older_deletion_replayed_changes_nothing() -> None:
    book = _book()
    assert book.accept(_delete(at=20)) is not None
    assert book.accept(_delete(at=10)) is None  # older: no news
    assert book.accept(_delete(at=20)) is None  # the same again
    assert book.dead(_envelope(SECRET, stated_at=15))


def test_tombstones_are_kept_on_disk_and_survive_their_removal_from_the_bucket(
    tmp_path: Path,
) -> None:
    path = tombstones_path(tmp_path / "node-1.bundle")
    assert path.name == "node-1.bundle.tombstones"
    first = _book(path)
    first.accept(_delete(at=10))
    first.accept(_revoke(API_KEY.name, at=11))
    first.save()
    assert path.stat().st_mode & 0o777 == 0o600

    again = _book(path)  # a restart: the bucket no longer has them
    assert again.load() == 2
    assert again.dead(_envelope(SECRET, stated_at=9))
    assert again.dead(_envelope(API_KEY, stated_at=9))


def test_a_tampered_line_on_disk_is_ignored_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "n.tombstones"
    forged = _delete(name="other", key=Ed25519PrivateKey.generate())
    path.write_bytes(_delete(at=10) + b"\n" + forged + b"\n\n")
    book = _book(path)
    assert book.load() == 1 and book.refused == 1
    book.check(_envelope(SecretSpec("payments", "other", b"x"), stated_at=5))


def test_the_store_drops_what_a_new_tombstone_kills() -> None:
    book = _book()
    other = SecretSpec("payments", "db", b"pw")
    store = new_store([other])
    store.prove = lambda envelope: book.check(envelope)  # type: ignore[method-assign]
    assert store.ingest(SECRET.key, 7, envelope_bytes(SECRET)) is not None
    book.accept(_delete(at=10))  # the fixtures' statements are issued at 0
    assert store.drop_where(book.dead_entry) == [SECRET.key]
    assert store.rejected[SECRET.key] == "deleted"
    assert store.lookup(SECRET.key, 7) is None
    assert store.lookup(other.key, 1) is not None
    # written back into the bucket: refused on arrival
    assert store.ingest(SECRET.key, 8, envelope_bytes(SECRET)) is None
    assert store.rejected[SECRET.key] == "deleted"


def test_an_older_revision_stays_refused_once_the_current_one_is_dropped() -> None:
    """The store forgets a dropped entry but not its revision: the revision before it,
    offered again (a broker replaying history), is not taken."""
    book = _book()
    store = new_store([SECRET])
    store.prove = lambda envelope: book.check(envelope)  # type: ignore[method-assign]
    assert store.ingest(SECRET.key, 7, envelope_bytes(SECRET)) is not None
    assert store.latest_taken(SECRET.key) == 7
    book.accept(_delete(at=10))
    assert store.drop_where(book.dead_entry) == [SECRET.key]
    assert store.latest_taken(SECRET.key) == 7
    book2 = _book()  # even were it alive again
    store.prove = lambda envelope: book2.check(envelope)  # type: ignore[method-assign]
    assert store.ingest(SECRET.key, 6, envelope_bytes(SECRET)) is None
    assert SECRET.key not in store.current

"""Unit tests of the loader (flashgate/bridge/loader.py) with a stub collector.

The stub "combines" with the full test private key (y = c^d mod N), or fails the keys it
is told to; the loader opens the JWEs and fills a real vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest

from flashgate.bridge.collector import Collector, CollectResult
from flashgate.bridge.gateway_authority import VaultAuthority
from flashgate.bridge.loader import MAX_BACKOFF_S, Loader
from flashgate.bridge.store import Entry
from flashgate.bridge.vault import Vault
from flashgate.errors import SecretNotHeld
from flashgate.events.values import S3Storage
from flashgate.gateway.authority import Grant
from tests.support.bridge_units import EPOCH, SecretSpec, make_test_entry, public_key, reference_y

WAIT_S = 5.0  # upper bound for anything awaited here; never reached when things work


def s3_value(secret: str) -> bytes:
    """A storage value (flashgate/events/values.py) for an S3 bucket."""
    return json.dumps(
        {
            "type": "storage",
            "provider": "s3",
            "bucket": "media",
            "region": "eu-west-1",
            "access_key_id": "AKIA-unit",
            "secret_access_key": secret,
        },
        sort_keys=True,
    ).encode()


S3_V1 = SecretSpec("payments", "s3", s3_value("s3-secret-v1"), version=1, kind="storage")
S3_V2 = SecretSpec("payments", "s3", s3_value("s3-secret-v2"), version=2, kind="storage")
OPENAI = SecretSpec(
    "payments", "openai", b'{"api_key": "sk-openai-unit", "provider": "openai", "type": "ai"}'
)
WEBHOOK = SecretSpec("ops", "webhook", b"whsec-unit", kind="integration")
API_KEY = SecretSpec(
    "payments",
    "fgk_abcdefghijklmnopqrstuvwx",
    b"fgs_unit-api-key-secret-0123456789abcdefghijklm",
    kind="apikey",
    api_key_id="fgk_abcdefghijklmnopqrstuvwx",
)


@dataclass
class StubCollector:
    """Stands in for :class:`Collector`: y from the full private key, or a failure."""

    failing: dict[str, str] = field(default_factory=dict)  # key -> reason to fail with
    wrong: set[str] = field(default_factory=set)  # keys to answer with a wrong y
    hold: asyncio.Event | None = None  # when set up, collect() waits for it
    batches: asyncio.Queue[list[str]] = field(default_factory=asyncio.Queue)
    calls: int = 0
    public: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(key=public_key()))

    async def collect(self, entries: Sequence[Entry]) -> CollectResult:
        self.calls += 1
        self.batches.put_nowait([e.key for e in entries])
        if self.hold is not None:
            await self.hold.wait()
        result = CollectResult()
        for entry in entries:
            if entry.key in self.failing:
                result.failed[entry.key] = self.failing[entry.key]
            else:
                y = reference_y(entry.ciphertext)
                result.values[entry.key] = y + 1 if entry.key in self.wrong else y
        return result

    async def next_batch(self) -> list[str]:
        return await asyncio.wait_for(self.batches.get(), WAIT_S)


@dataclass
class LoaderScene:
    vault: Vault
    collector: StubCollector
    loader: Loader

    def offer(self, *specs: SecretSpec, revision: int = 1) -> list[Entry]:
        entries = [make_test_entry(spec, revision) for spec in specs]
        for entry in entries:
            self.loader.offer(entry)
        return entries

    async def idle(self) -> None:
        assert await self.loader.wait_idle(WAIT_S), "the loader did not become idle"

    def value(self, key: str) -> bytes:
        with self.vault.use(key) as view:
            return bytes(view)


@pytest.fixture
async def scene() -> AsyncIterator[LoaderScene]:
    vault = Vault()
    stub = StubCollector()
    loader = Loader(vault=vault, collectors={EPOCH: cast(Collector, stub)})
    task = asyncio.create_task(loader.run(), name="loader under test")
    yield LoaderScene(vault, stub, loader)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


# --- loading ------------------------------------------------------------------------------


async def test_offered_entries_are_loaded_into_the_vault(scene: LoaderScene) -> None:
    scene.offer(S3_V1, OPENAI, WEBHOOK)
    await scene.idle()
    assert scene.value(S3_V1.key) == S3_V1.value
    assert scene.value(OPENAI.key) == OPENAI.value
    assert scene.value(WEBHOOK.key) == WEBHOOK.value
    assert [(h.key, h.version, h.kind) for h in scene.vault.held()] == [
        ("ops.webhook", 1, "integration"),
        ("payments.openai", 1, "ai"),
        ("payments.s3", 1, "storage"),
    ]
    assert scene.loader.pending == {}
    assert scene.loader.loaded == 3
    assert sorted(await scene.collector.next_batch()) == sorted(
        [S3_V1.key, OPENAI.key, WEBHOOK.key]
    )  # one batch


async def test_offer_marks_the_entry_loading_until_it_is_held(scene: LoaderScene) -> None:
    scene.collector.hold = asyncio.Event()
    scene.offer(OPENAI)
    assert scene.loader.pending == {OPENAI.key: "loading"}
    await scene.collector.next_batch()
    assert scene.loader.pending == {OPENAI.key: "loading"}
    scene.collector.hold.set()
    await scene.idle()
    assert scene.loader.pending == {}


async def test_an_api_key_is_loaded_for_verification_only(scene: LoaderScene) -> None:
    scene.offer(API_KEY)
    await scene.idle()
    assert API_KEY.api_key_id is not None
    assert scene.vault.verify_api_key(API_KEY.api_key_id, API_KEY.value) is True
    with pytest.raises(SecretNotHeld), scene.vault.use(API_KEY.key):
        pass  # pragma: no cover - never entered


async def test_the_gateway_authority_reads_what_the_loader_held(scene: LoaderScene) -> None:
    """A key's repository, scope and access are the proven ones; values are decoded per
    request (a rotation is seen next time, a deleted key is unknown at once)."""
    ready = False
    authority = VaultAuthority(scene.vault, lambda: ready)
    assert not authority.ready()
    scene.offer(API_KEY, S3_V1, OPENAI)
    await scene.idle()
    ready = True
    assert authority.ready()
    key_id = API_KEY.api_key_id
    assert key_id is not None
    expected = Grant(key_id=key_id, repo="payments", scope="storage", access="read")
    assert authority.grant(key_id) == expected
    assert authority.verify(key_id, API_KEY.value) == expected
    assert authority.verify(key_id, API_KEY.value[:-1] + b"x") is None
    assert authority.verify("fgk_unknownunknownunknownu", API_KEY.value) is None
    with authority.key_secret(key_id) as secret:
        assert bytes(secret) == API_KEY.value
    assert authority.storage_names("payments") == ["s3"]
    assert authority.storage_names("ops") == []
    with authority.storage("payments", "s3") as storage:
        assert isinstance(storage, S3Storage) and storage.secret_access_key == "s3-secret-v1"
    with authority.ai("payments", "openai") as credential:
        assert credential.api_key == "sk-openai-unit"
    for lookup in (
        lambda: authority.ai("payments", "anthropic"),
        lambda: authority.storage("payments", "openai"),  # not a storage secret
        lambda: authority.storage("payments", "nope"),
    ):
        with pytest.raises(SecretNotHeld), lookup():
            pass  # pragma: no cover - never entered
    scene.offer(S3_V2)
    await scene.idle()
    with authority.storage("payments", "s3") as storage:
        assert storage.secret_access_key == "s3-secret-v2"
    scene.loader.forget(API_KEY.key)  # revoked: its envelope deleted
    assert authority.grant(key_id) is None
    assert authority.verify(key_id, API_KEY.value) is None


async def test_rotation_replaces_the_held_version(scene: LoaderScene) -> None:
    scene.offer(S3_V1)
    await scene.idle()
    scene.offer(S3_V2, revision=2)
    await scene.idle()
    assert scene.value(S3_V1.key) == S3_V2.value
    assert scene.vault.version_of(S3_V1.key) == 2
    assert scene.loader.loaded == 2


# --- values that do not match their kind ---------------------------------------------------


async def test_a_value_that_is_not_of_its_kind_is_not_served(
    scene: LoaderScene, capsys: pytest.CaptureFixture[str]
) -> None:
    """A storage envelope that opens to a partial value (the old `secret rotate` wrote
    ``{"secret_access_key": ..., "type": "storage"}``), an ai value of an unknown provider,
    an API key that is not one: refused, reported as pending, counted, never held."""
    partial = b'{"secret_access_key": "canary-partial", "type": "storage"}'
    bad = [
        SecretSpec("payments", "partial", partial, kind="storage"),
        SecretSpec("payments", "nope", b'{"api_key": "sk", "provider": "nope", "type": "ai"}'),
        SecretSpec("payments", "text", b"not json", kind="storage"),
        SecretSpec(
            "payments",
            "fgk_zzzzzzzzzzzzzzzzzzzzzzzz",
            b"fgs_short",
            kind="apikey",
            api_key_id="fgk_zzzzzzzzzzzzzzzzzzzzzzzz",
        ),
    ]
    scene.offer(*bad, OPENAI)
    await scene.idle()
    assert [h.key for h in scene.vault.held()] == [OPENAI.key]
    assert scene.loader.pending == {spec.key: "invalid_value" for spec in bad}
    assert scene.loader.invalid_values == len(bad)
    for spec in bad:
        with pytest.raises(SecretNotHeld), scene.vault.use(spec.key):
            pass  # pragma: no cover - never entered
    assert scene.vault.verify_api_key("fgk_zzzzzzzzzzzzzzzzzzzzzzzz", b"fgs_short") is False
    logged = capsys.readouterr()
    assert "invalid_value" in logged.out + logged.err  # logged (structlog prints) ...
    assert "canary-partial" not in logged.out + logged.err  # ... without the value


async def test_an_invalid_new_version_leaves_the_held_one(scene: LoaderScene) -> None:
    scene.offer(S3_V1)
    await scene.idle()
    partial = b'{"secret_access_key": "new", "type": "storage"}'
    scene.offer(SecretSpec("payments", "s3", partial, version=2, kind="storage"), revision=2)
    await scene.idle()
    assert scene.value(S3_V1.key) == S3_V1.value
    assert scene.loader.pending == {S3_V1.key: "invalid_value"}


# --- versions never go backwards -----------------------------------------------------------


async def test_offer_of_a_lower_version_than_held_is_refused(scene: LoaderScene) -> None:
    scene.offer(S3_V2, revision=2)
    await scene.idle()
    calls = scene.collector.calls
    scene.offer(S3_V1, revision=3)  # e.g. an old value written back
    await scene.idle()
    assert scene.vault.rollbacks_refused == 1
    assert scene.collector.calls == calls  # never even collected
    assert scene.value(S3_V1.key) == S3_V2.value
    assert S3_V1.key not in scene.loader.pending


async def test_offer_of_the_held_version_is_a_no_op(scene: LoaderScene) -> None:
    scene.offer(S3_V1)
    await scene.idle()
    calls = scene.collector.calls
    scene.offer(S3_V1, revision=2)
    await scene.idle()
    assert scene.collector.calls == calls
    assert scene.vault.rollbacks_refused == 0
    assert scene.loader.loaded == 1


async def test_a_rollback_that_reaches_the_vault_is_refused(scene: LoaderScene) -> None:
    """v1 is being collected when v2 lands in the vault: v1 must not replace it."""
    scene.collector.hold = asyncio.Event()
    scene.offer(S3_V1)
    await scene.collector.next_batch()
    scene.vault.put(S3_V2.key, 2, EPOCH, "storage", S3_V2.value)
    scene.collector.hold.set()
    await scene.idle()
    assert scene.value(S3_V1.key) == S3_V2.value
    assert scene.vault.rollbacks_refused == 1
    assert S3_V1.key not in scene.loader.pending


# --- deletes --------------------------------------------------------------------------------


async def test_forget_purges_the_secret_from_the_vault(scene: LoaderScene) -> None:
    scene.offer(S3_V1, OPENAI)
    await scene.idle()
    buffer = scene.vault._slots[S3_V1.key].data
    scene.loader.forget(S3_V1.key)
    assert scene.vault.version_of(S3_V1.key) is None
    assert not any(buffer)
    with pytest.raises(SecretNotHeld), scene.vault.use(S3_V1.key):
        pass  # pragma: no cover - never entered
    assert scene.value(OPENAI.key) == OPENAI.value


async def test_forget_drops_a_queued_entry(scene: LoaderScene) -> None:
    scene.collector.hold = asyncio.Event()
    scene.offer(OPENAI)
    await scene.collector.next_batch()  # the loader is busy with OPENAI
    scene.offer(S3_V1)
    scene.loader.forget(S3_V1.key)
    scene.collector.hold.set()
    await scene.idle()
    assert scene.vault.version_of(S3_V1.key) is None
    assert S3_V1.key not in scene.loader.pending
    assert scene.collector.calls == 1


async def test_a_secret_deleted_while_being_collected_is_not_loaded(scene: LoaderScene) -> None:
    """Delete marker arrives while the loader waits on the collector for that secret:
    the deleted value must not end up in the vault afterwards."""
    scene.collector.hold = asyncio.Event()
    scene.offer(S3_V1)
    await scene.collector.next_batch()
    scene.loader.forget(S3_V1.key)
    scene.collector.hold.set()
    await scene.idle()
    assert scene.vault.version_of(S3_V1.key) is None, "a deleted secret was loaded"


async def test_a_secret_deleted_while_its_collection_fails_is_not_retried(
    scene: LoaderScene,
) -> None:
    scene.collector.hold = asyncio.Event()
    scene.collector.failing[S3_V1.key] = "no_quorum"
    scene.offer(S3_V1)
    await scene.collector.next_batch()
    scene.loader.forget(S3_V1.key)
    scene.collector.hold.set()
    idle = asyncio.create_task(scene.loader.wait_idle(WAIT_S))
    retried = asyncio.create_task(scene.collector.batches.get())
    done, _ = await asyncio.wait({idle, retried}, return_when=asyncio.FIRST_COMPLETED)
    idle.cancel()
    retried.cancel()
    assert retried not in done, "a deleted secret was collected again"
    assert idle.result() is True
    assert S3_V1.key not in scene.loader.pending, "a deleted secret is still pending"


# --- what cannot be loaded (yet) -----------------------------------------------------------


async def test_an_envelope_for_another_epoch_is_pending(scene: LoaderScene) -> None:
    other = SecretSpec("payments", "s3", s3_value("s3-secret-e2"), epoch=EPOCH + 1, kind="storage")
    scene.offer(other)
    await scene.idle()
    assert scene.loader.pending == {other.key: "other_epoch"}
    assert scene.collector.calls == 0
    assert scene.vault.version_of(other.key) is None


async def test_reject_records_the_reason(scene: LoaderScene) -> None:
    scene.loader.reject(OPENAI.key, "context_mismatch")
    await scene.idle()
    assert scene.loader.pending == {OPENAI.key: "context_mismatch"}
    assert scene.collector.calls == 0


async def test_a_failed_collection_is_pending_then_retried_after_wake(
    scene: LoaderScene,
) -> None:
    scene.loader._backoff = MAX_BACKOFF_S  # no retry before wake() within this test
    scene.collector.failing[S3_V1.key] = "no_quorum"
    scene.offer(S3_V1, OPENAI)
    assert sorted(await scene.collector.next_batch()) == [OPENAI.key, S3_V1.key]
    assert scene.loader.pending == {S3_V1.key: "no_quorum"}
    assert scene.value(OPENAI.key) == OPENAI.value
    scene.collector.failing.clear()  # the peers are back
    scene.loader.wake()
    assert await scene.collector.next_batch() == [S3_V1.key]
    await scene.idle()
    assert scene.value(S3_V1.key) == S3_V1.value
    assert scene.loader.pending == {}


async def test_a_newer_version_offered_while_pending_is_the_one_retried(
    scene: LoaderScene,
) -> None:
    scene.loader._backoff = MAX_BACKOFF_S
    scene.collector.failing[S3_V1.key] = "combine_failed"
    scene.offer(S3_V1)
    await scene.collector.next_batch()
    assert scene.loader.pending == {S3_V1.key: "combine_failed"}
    scene.collector.failing.clear()
    scene.offer(S3_V2, revision=2)  # offer() wakes the loader itself
    assert await scene.collector.next_batch() == [S3_V2.key]
    await scene.idle()
    assert scene.vault.version_of(S3_V1.key) == 2
    assert scene.value(S3_V1.key) == S3_V2.value


async def test_an_envelope_that_does_not_open_is_pending_with_the_reason(
    scene: LoaderScene,
) -> None:
    scene.collector.wrong.add(OPENAI.key)
    scene.offer(OPENAI, WEBHOOK)
    await scene.idle()
    assert scene.loader.pending == {OPENAI.key: "decryption_failed"}
    assert scene.vault.version_of(OPENAI.key) is None
    assert scene.value(WEBHOOK.key) == WEBHOOK.value


# --- the same version from another envelope (fleet key rotation) ----------------------------


def _rewrapped(entry: Entry, *, good: bool, revision: int) -> Entry:
    """``entry``'s envelope with its content key wrapped again (OAEP is randomised, so the
    wrapped key differs); ``good=False`` wraps a wrong content key, as a faulty node might."""
    import secrets

    import msgspec

    from flashgate.bridge.store import make_entry
    from flashgate.crypto import jwe
    from flashgate.crypto.decrypt import rewrap
    from flashgate.crypto.encrypt import wrap_key
    from flashgate.events.envelope import ENVELOPE_CODEC
    from tests.support.bridge_units import FLEET, fleet, prove_check
    from tests.support.material import proven

    p = entry.parsed
    token = (
        rewrap(p, reference_y(entry.ciphertext), public_key(), public_key())
        if good
        else jwe.serialize(
            p.protected, wrap_key(public_key(), secrets.token_bytes(32)), p.iv, p.ciphertext, p.tag
        )
    )
    envelope = proven(msgspec.structs.replace(entry.envelope, jwe=token), fleet().admin_key)
    raw = ENVELOPE_CODEC.encode(envelope)
    return make_entry(FLEET, entry.key, revision, raw, {EPOCH: public_key()}, prove=prove_check())


async def test_the_same_envelope_again_is_not_reloaded(scene: LoaderScene) -> None:
    [entry] = scene.offer(S3_V1)
    await scene.idle()
    scene.loader.offer(entry)
    await scene.idle()
    assert scene.collector.calls == 1 and scene.loader.pending == {}


async def test_the_same_version_wrapped_again_is_opened_again(scene: LoaderScene) -> None:
    """A node reports holding only envelopes it has opened: a re-wrap of the version it holds
    is loaded too, and one that does not open is reported, with the value still held."""
    unopenable: list[Entry] = []
    scene.loader.on_unopenable = unopenable.append
    [entry] = scene.offer(S3_V1)
    original = make_test_entry(S3_V1)  # the bucket's value, as read again later
    await scene.idle()
    good = _rewrapped(original, good=True, revision=2)
    scene.loader.offer(good)
    await scene.idle()
    assert scene.collector.calls == 2 and scene.loader.pending == {}
    assert scene.vault.held_as(S3_V1.key) == (1, EPOCH, good.digest)

    bad = _rewrapped(original, good=False, revision=3)
    scene.loader.offer(bad)
    await scene.idle()
    assert scene.collector.calls == 3
    assert scene.loader.pending == {S3_V1.key: "decryption_failed"}
    assert [e.revision for e in unopenable] == [3]
    assert scene.value(S3_V1.key) == S3_V1.value  # still held, from the envelope that opened
    assert scene.vault.held_as(S3_V1.key) == (1, EPOCH, good.digest)

    scene.loader.offer(original)  # the original put back: opened again, nothing pending
    await scene.idle()
    assert scene.loader.pending == {} and scene.collector.calls == 4
    assert scene.vault.held_as(S3_V1.key) == (1, EPOCH, entry.digest)


async def test_the_same_version_with_another_value_does_not_replace_the_held_one(
    scene: LoaderScene,
) -> None:
    """A re-wrap opens to the same value; an envelope of the held version that opens to
    another value is not a re-wrap: refused (pending ``version_conflict``), the held value
    and the envelope it was opened from stay (issue 14 §4)."""
    [entry] = scene.offer(S3_V1)
    await scene.idle()
    other = SecretSpec("payments", "s3", s3_value("attacker-bucket"), version=1, kind="storage")
    scene.offer(other, revision=2)
    await scene.idle()
    assert scene.loader.pending == {S3_V1.key: "version_conflict"}
    assert scene.value(S3_V1.key) == S3_V1.value
    assert scene.vault.held_as(S3_V1.key) == (1, EPOCH, entry.digest)
    assert scene.vault.conflicts_refused == 1

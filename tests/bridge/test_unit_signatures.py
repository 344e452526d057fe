"""Signatures verified in bulk: the worker process, its fallback, and the store's two-step
check (checked first, admitted once verified, in order)."""

from __future__ import annotations

import asyncio
import io
import struct
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flashgate.bridge import signature_worker
from flashgate.bridge.signatures import InlineChecker, Signature, SignatureWorker
from flashgate.errors import StaleEpoch, Tombstoned
from flashgate.events.envelope import SecretEnvelope
from tests.support.bridge_units import (
    EPOCH,
    SAMPLE_SECRETS,
    SecretSpec,
    envelope_bytes,
    new_store,
    prove_check,
)

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signatures(count: int, *, bad: set[int] = frozenset()) -> list[Signature]:  # type: ignore[assignment]
    """``count`` signatures over distinct messages; those at ``bad`` do not verify."""
    out = []
    for i in range(count):
        message = f"statement {i}".encode() * (1 + i % 7)
        signature = KEY.sign(message)
        if i in bad:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        out.append(Signature(PUBLIC, signature, message, f"refused {i}"))
    return out


@pytest.mark.processes
async def test_the_worker_answers_as_this_process_would() -> None:
    items = signatures(300, bad={0, 7, 299})
    worker = SignatureWorker()
    await worker.start()
    try:
        assert worker.running
        assert await worker.check(items) == await InlineChecker().check(items)
        assert worker.batches == 1 and worker.inline == 0
    finally:
        await worker.close()
    assert not worker.running


@pytest.mark.processes
async def test_batches_sent_at_once_come_back_each_to_its_own_caller() -> None:
    batches = [signatures(40, bad={i}) for i in range(12)]
    worker = SignatureWorker()
    await worker.start()
    try:
        answers = await asyncio.gather(*(worker.check(batch) for batch in batches))
    finally:
        await worker.close()
    for i, answer in enumerate(answers):
        assert answer == [j != i for j in range(40)]
    assert worker.batches == 12


@pytest.mark.processes
async def test_a_killed_worker_is_given_up_and_nothing_is_lost() -> None:
    """SIGKILL the worker: the batch waiting on it, and every later one, are verified in
    the node (same answers), and the node keeps running."""
    worker = SignatureWorker()
    await worker.start()
    process = worker._process
    assert process is not None
    process.kill()
    await process.wait()
    items = signatures(50, bad={3})
    assert await worker.check(items) == [i != 3 for i in range(50)]
    assert not worker.running
    assert await worker.check(items) == [i != 3 for i in range(50)]
    assert worker.inline == 2
    await worker.close()


async def test_a_worker_that_cannot_start_leaves_verification_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("no python")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refused)
    worker = SignatureWorker()
    await worker.start()
    assert not worker.running
    assert await worker.check(signatures(5, bad={1})) == [True, False, True, True, True]


async def test_the_worker_is_given_no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    async def spy(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise FileNotFoundError("not started")

    monkeypatch.setenv("FLASHGATE_NODE_PASSPHRASE", "canary-passphrase")
    monkeypatch.setenv("FLASHGATE_PASSPHRASE", "canary-passphrase")
    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    await SignatureWorker().start()
    env = seen["env"]
    assert isinstance(env, dict)
    assert "canary-passphrase" not in repr(env)


def frame(items: list[Signature]) -> bytes:
    body = bytes([signature_worker.SIGNATURES]) + b"".join(
        s.public + s.signature + struct.pack(">I", len(s.message)) + s.message for s in items
    )
    return struct.pack(">I", len(body)) + body


def test_the_worker_protocol_round_trip() -> None:
    items = signatures(9, bad={4})
    out = io.BytesIO()
    code = signature_worker.serve(io.BytesIO(frame(items) + frame(items[:2])), out)
    assert code == 0
    data = out.getvalue()
    assert data == struct.pack(">I", 9) + bytes(i != 4 for i in range(9)) + struct.pack(
        ">I", 2
    ) + bytes([1, 1])


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 10) + b"x" * 10,  # an unknown kind of batch
        struct.pack(">I", 11) + b"\x00" + b"x" * 10,  # an item shorter than its head
        struct.pack(">I", 101) + b"\x00" + PUBLIC + bytes(64) + struct.pack(">I", 50) + b"short",
        struct.pack(">I", 1),  # no kind
        struct.pack(">I", 20) + b"\x01" + PUBLIC[:19],  # values: a truncated admin key
        struct.pack(">I", 36) + b"\x01" + PUBLIC + struct.pack(">H", 9) + b"f",  # fleet cut
        struct.pack(">I", 38) + b"\x01" + PUBLIC + struct.pack(">H", 1) + b"f" + b"\x00",
        struct.pack(">I", signature_worker.MAX_BATCH_BYTES + 1),
    ],
)
def test_a_malformed_batch_ends_the_worker(garbage: bytes) -> None:
    out = io.BytesIO()
    assert signature_worker.serve(io.BytesIO(garbage), out) != 0 or out.getvalue() == b""
    assert out.getvalue() == b""


# --- the store: checked, then admitted --------------------------------------------------------


def test_a_value_checked_before_a_tombstone_is_refused_when_admitted() -> None:
    """The tombstone arrives (and drops entries) while the value's signatures are being
    verified: admitting it afterwards must not bring the deleted secret back."""
    spec = SAMPLE_SECRETS[0]
    dead: set[str] = set()
    check = prove_check()

    def prove(envelope: SecretEnvelope) -> list[Signature]:
        found = check.signatures(envelope)
        if envelope.key in dead:
            raise Tombstoned(f"{envelope.key}: deleted")
        return found

    store = new_store()
    store.prove = prove
    checked = store.check(spec.key, 1, envelope_bytes(spec))
    assert checked.error is None and checked.signatures
    dead.add(spec.key)
    store.drop_where(lambda entry: entry.key in dead)
    assert store.admit(checked, [True] * len(checked.signatures)) is None
    assert store.rejected[spec.key] == Tombstoned.code


def test_a_value_whose_epoch_retired_meanwhile_is_refused() -> None:
    spec = SAMPLE_SECRETS[1]
    store = new_store()
    store.prove = prove_check().signatures
    checked = store.check(spec.key, 1, envelope_bytes(spec))
    del store.keys[EPOCH]
    assert store.admit(checked, [True] * len(checked.signatures)) is None
    assert store.rejected[spec.key] == StaleEpoch.code


def test_a_signature_that_did_not_verify_makes_the_value_unproven() -> None:
    spec = SAMPLE_SECRETS[2]
    store = new_store()
    store.prove = prove_check().signatures  # as a node's store: signatures left to verify
    checked = store.check(spec.key, 1, envelope_bytes(spec))
    assert store.admit(checked, [False] * len(checked.signatures)) is None
    assert store.rejected[spec.key] == "unproven"
    again = store.check(spec.key, 2, envelope_bytes(spec))
    assert store.admit(again, [True] * len(again.signatures)) is not None


# A "worker" that answers every batch with one byte too many: out of turn.
_OUT_OF_TURN_WORKER = r"""
import sys, struct
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    h = i.read(4)
    if len(h) < 4: break
    i.read(struct.unpack('>I', h)[0])
    o.write(struct.pack('>I', 3) + b'\x01\x01\x01'); o.flush()
"""


@pytest.mark.processes
async def test_an_answer_out_of_turn_is_verified_here_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: the batch whose answer was out of turn was never resolved, and the
    start-up pipeline waited for it forever."""
    import sys

    from flashgate.bridge import signatures as module

    real = asyncio.create_subprocess_exec

    async def spawn(*args: object, **kwargs: object) -> object:
        return await real(sys.executable, "-c", _OUT_OF_TURN_WORKER, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module.asyncio, "create_subprocess_exec", spawn)
    worker = SignatureWorker()
    await worker.start()
    try:
        items = signatures(2, bad={1})
        assert await asyncio.wait_for(worker.check(items), 5) == [True, False]
        assert not worker.running
    finally:
        await worker.close()


async def test_a_value_in_flight_when_its_epoch_arrives_is_admitted() -> None:
    """Found in review: a value checked while its epoch was missing, and admitted after the
    epoch arrived, stayed refused (``stale_epoch``) until the next restart: it was not in
    ``rejected`` yet when the node read the refused values again."""
    later = SecretSpec("payments", "rewrapped", b"sk-unit-rewrapped", epoch=EPOCH + 1)
    store = new_store()
    store.prove = prove_check().signatures
    checked = store.check(later.key, 2, envelope_bytes(later))
    assert checked.error is not None and checked.error.code == StaleEpoch.code
    store.keys[EPOCH + 1] = store.keys[EPOCH]  # the epoch arrives before it is admitted
    entry = store.admit(checked, [])
    assert entry is not None and later.key in store.current
    assert later.key not in store.rejected


async def test_upkeep_waits_for_the_load_at_most_a_while_once_the_values_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: the fast path's upkeep (writing wraps, purging old terms) waited
    for an idle loader, which a secret retried for a long while never gives. It now waits
    at most LOAD_UPKEEP_WAIT_S once every initial value is read."""
    from types import SimpleNamespace

    from flashgate.bridge import node as node_module
    from flashgate.bridge.node import LOAD_UPKEEP_WAIT_S, BridgeNode

    now = [1000.0]
    monkeypatch.setattr(node_module.time, "monotonic", lambda: now[0])
    secrets = SimpleNamespace(initial_load_done=asyncio.Event(), initial_values_taken_at=None)
    fake = SimpleNamespace(secrets=secrets)
    assert BridgeNode._loading(fake)  # type: ignore[arg-type]  # values still being read
    secrets.initial_values_taken_at = now[0]
    assert BridgeNode._loading(fake)  # type: ignore[arg-type]  # the loader works on them
    now[0] += LOAD_UPKEEP_WAIT_S + 1
    assert not BridgeNode._loading(fake)  # type: ignore[arg-type]  # a retry must not block it
    secrets.initial_values_taken_at = now[0]
    secrets.initial_load_done.set()
    assert not BridgeNode._loading(fake)  # type: ignore[arg-type]


async def test_the_end_of_the_initial_values_is_marked_however_busy_the_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from flashgate.bridge import secrets_watch
    from flashgate.broker.watch import InitialDone, Value

    spec = SAMPLE_SECRETS[0]

    async def follow_batches(kv: object, **options: object) -> Any:
        yield [Value(spec.key, 1, envelope_bytes(spec))]
        yield [InitialDone(1)]
        await asyncio.Event().wait()

    class BusyLoader:  # never idle: a secret retried for a long while
        offered: ClassVar[list[str]] = []

        def offer(self, entry: Any) -> None:
            self.offered.append(entry.key)

        def reject(self, key: str, reason: str) -> None: ...
        def forget(self, key: str) -> None: ...

        async def wait_idle(self, timeout: float | None = None) -> bool:
            await asyncio.Event().wait()
            return True

    monkeypatch.setattr(secrets_watch, "follow_batches", follow_batches)
    store = new_store()
    store.prove = prove_check().signatures
    spawned: list[asyncio.Task[None]] = []
    watch = secrets_watch.SecretsWatch(
        "unit",
        store,
        BusyLoader(),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        spawn=lambda coro: spawned.append(asyncio.ensure_future(coro)),
    )
    run = asyncio.create_task(watch.run(SimpleNamespace()))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(5):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
        assert not watch.initial_load_done.is_set() and BusyLoader.offered == [spec.key]
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)

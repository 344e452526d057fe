"""Envelope values proven by the signature worker: the worker proves exactly the stateless
part of a value's proof (what a proven-value fingerprint stands for), and a node checks a
value the worker proved only against its own state, as it does one proven at an earlier
start. A value the worker does not prove is checked in full by the node."""

from __future__ import annotations

import asyncio
import io
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flashgate.bridge import secrets_watch, signature_worker
from flashgate.bridge.signatures import InlineChecker, SignatureWorker
from flashgate.bridge.value_proof import VALUE_TAG, value_proven
from flashgate.broker.watch import InitialDone, Value
from flashgate.errors import Tombstoned
from flashgate.events.envelope import ENVELOPE_CODEC, SecretEnvelope
from flashgate.events.signing import sign
from tests.bridge.test_unit_proven_values import SPECS, Node
from tests.bridge.test_unit_provenance import SECRET, rewrapped
from tests.support.bridge_units import FLEET, SAMPLE_SECRETS, envelope_bytes, fleet

ADMIN = fleet().admin_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
OTHER_ADMIN = Ed25519PrivateKey.generate()


def _encode(envelope: SecretEnvelope) -> bytes:
    return ENVELOPE_CODEC.encode(envelope)


def _variants() -> list[tuple[str, str, bytes, bool]]:
    """(what, bucket key, value, whether its stateless part is proven)."""
    good = envelope_bytes(SECRET)
    env = ENVELOPE_CODEC.decode(good)
    assert env.provenance is not None
    statement = env.provenance.statement
    other_value = ENVELOPE_CODEC.decode(envelope_bytes(SPECS[0]))
    resigned = sign(statement, OTHER_ADMIN)
    return [
        *((f"sample {s.key}", s.key, envelope_bytes(s), True) for s in SAMPLE_SECRETS),
        ("as written", SECRET.key, good, True),
        # a re-wrap: its statement is the worker's to prove; its attestation is the node's
        ("re-wrapped", SECRET.key, _encode(rewrapped("node-2")), True),
        ("under another key", "payments.other", good, False),
        (
            "no provenance",
            SECRET.key,
            _encode(msgspec.structs.replace(env, provenance=None)),
            False,
        ),
        (
            "statement signed by another key",
            SECRET.key,
            _encode(
                msgspec.structs.replace(
                    env, provenance=msgspec.structs.replace(env.provenance, statement=resigned)
                )
            ),
            False,
        ),
        (
            "another envelope's JWE",
            SECRET.key,
            _encode(msgspec.structs.replace(env, jwe=other_value.jwe)),
            False,
        ),
        (
            "another version",
            SECRET.key,
            _encode(msgspec.structs.replace(env, version=2)),
            False,
        ),
        ("not JSON", SECRET.key, b"{" + good, False),
        ("empty", SECRET.key, b"", False),
    ]


VARIANTS = _variants()


@pytest.mark.parametrize(("what", "key", "raw", "expected"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_the_worker_proves_what_a_full_check_of_the_stateless_part_proves(
    what: str, key: str, raw: bytes, expected: bool, tmp_path: Path
) -> None:
    assert value_proven(ADMIN, FLEET, key, raw) is expected
    assert not value_proven(ADMIN, "another-fleet", key, raw)
    other_admin = OTHER_ADMIN.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    # under another admin key only what that key signed is proven
    assert value_proven(other_admin, FLEET, key, raw) is what.startswith("statement signed by")
    # The node's own full check agrees wherever its state has no say (every node of the
    # test fleet active and a member of every epoch).
    node = Node(tmp_path / "v")
    assert (node.store.ingest(key, 1, raw) is not None) is expected


def test_the_worker_protocol_proves_values_in_order() -> None:
    values = [(key, raw) for _, key, raw, _ in VARIANTS]
    items = b"".join(
        struct.pack(">H", len(k)) + k.encode() + struct.pack(">I", len(v)) + v for k, v in values
    )

    def frame(tag: bytes) -> bytes:
        head = ADMIN + struct.pack(">H", len(FLEET)) + FLEET.encode()
        body = bytes([signature_worker.VALUES]) + head + struct.pack(">H", len(tag)) + tag + items
        return struct.pack(">I", len(body)) + body

    out = io.BytesIO()
    stale = b"flashgate proven envelope value v1 0.0.9 0.18.0\x00"
    assert signature_worker.serve(io.BytesIO(frame(VALUE_TAG) + frame(stale)), out) == 0
    expected = bytes(v[3] for v in VARIANTS)
    # a node of other rules (another release on disk than the worker's): nothing proven
    none = bytes(len(VARIANTS))
    count = struct.pack(">I", len(VARIANTS))
    assert out.getvalue() == count + expected + count + none


@pytest.mark.processes
async def test_the_worker_process_answers_as_this_process_would() -> None:
    worker = SignatureWorker()
    await worker.start()
    try:
        values = [(key, raw) for _, key, raw, _ in VARIANTS]
        assert await worker.prove(ADMIN, FLEET, values) == [v[3] for v in VARIANTS]
        assert worker.batches == 1
        # a key that cannot be sent is answered "not proven" (the node checks it itself)
        odd = [("payments.é", envelope_bytes(SECRET)), values[0]]
        assert await worker.prove(ADMIN, FLEET, odd) == [False, True]
    finally:
        await worker.close()
    # no worker (closed, or never started): nothing proven, everything checked in full
    assert await worker.prove(ADMIN, FLEET, values) == [False] * len(values)
    assert await InlineChecker().prove(ADMIN, FLEET, values) == [False] * len(values)


def test_a_value_the_worker_proved_is_checked_only_against_the_nodes_state(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "v")
    for revision, spec in enumerate(SPECS, start=1):
        raw = envelope_bytes(spec)
        found = node.store.fingerprint(spec.key, raw)
        assert found is not None and not found[1]  # never seen by this node
        assert value_proven(ADMIN, FLEET, spec.key, raw)
        checked = node.store.check(spec.key, revision, raw, found=(found[0], True))
        assert checked.proven and not checked.signatures
        full = Node(tmp_path / "other").store.check(spec.key, revision, raw)
        assert checked.entry is not None and full.entry is not None
        assert checked.entry.parsed == full.entry.parsed
        assert node.store.admit(checked, []) is not None
    assert node.verifier.verified == 0  # no statement checked or verified in the node
    # remembered like a value proven in the node: the next start knows them
    assert node.verifier.cache is not None and len(node.verifier.cache) == len(SPECS)
    # its state still decides: a tombstone refuses a value the worker proved
    node.dead.add(SPECS[0].key)
    raw = envelope_bytes(SPECS[0])
    found = node.store.fingerprint(SPECS[0].key, raw)
    assert found is not None
    checked = node.store.check(SPECS[0].key, len(SPECS) + 1, raw, found=(found[0], True))
    assert checked.entry is None and checked.error is not None
    assert checked.error.code == Tombstoned.code


class _Loader:
    def __init__(self) -> None:
        self.offered: list[str] = []
        self.rejected: dict[str, str] = {}

    def offer(self, entry: Any) -> None:
        self.offered.append(entry.key)

    def reject(self, key: str, reason: str) -> None:
        self.rejected[key] = reason

    def forget(self, key: str) -> None: ...

    async def wait_idle(self, timeout: float | None = None) -> bool:
        return True


class _Prover(InlineChecker):
    """Answers "proven" for the values it is told to; verifies signatures here."""

    def __init__(self, proven: set[str]) -> None:
        self.proven = proven
        self.asked: list[str] = []

    async def prove(self, admin: bytes, fleet: str, values: Any) -> list[bool]:
        assert admin == ADMIN and fleet == FLEET
        self.asked += [key for key, _ in values]
        return [key in self.proven for key, _ in values]


async def _watch(
    node: Node,
    values: list[tuple[str, bytes]],
    checker: Any,
    monkeypatch: pytest.MonkeyPatch,
    lists: int | None = None,
) -> tuple[secrets_watch.SecretsWatch, _Loader]:
    """``lists``: values per list the watch hands on (default SIGNATURE_BATCH)."""
    per_list = lists or secrets_watch.SIGNATURE_BATCH

    async def follow_batches(kv: object, **options: object) -> Any:
        events = [Value(key, revision, raw) for revision, (key, raw) in enumerate(values, 1)]
        for at in range(0, len(events), per_list):  # as they arrive
            yield events[at : at + per_list]
        yield [InitialDone(len(values))]
        await asyncio.Event().wait()

    monkeypatch.setattr(secrets_watch, "follow_batches", follow_batches)
    loader = _Loader()
    spawned: list[asyncio.Task[None]] = []
    watch = secrets_watch.SecretsWatch(
        FLEET,
        node.store,
        loader,  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        spawn=lambda coro: spawned.append(asyncio.ensure_future(coro)),
        checker=checker,
        admin=ADMIN,
    )
    run = asyncio.create_task(watch.run(SimpleNamespace()))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)
    return watch, loader


async def test_the_watch_has_the_worker_prove_new_values_and_checks_the_rest_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is asked about values never proven here; a value it does not prove is
    checked in full by the node (and refused with its own reason when bad)."""
    bad = ENVELOPE_CODEC.decode(envelope_bytes(SECRET))
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    values.append((SECRET.key, _encode(msgspec.structs.replace(bad, provenance=None))))
    prover = _Prover({SPECS[0].key, SPECS[1].key})
    node = Node(tmp_path / "v")
    watch, loader = await _watch(node, values, prover, monkeypatch)
    assert prover.asked == [key for key, _ in values]
    assert watch.proven_by_worker == 2
    assert node.verifier.verified == len(SPECS) - 2  # the rest verified in the node
    assert loader.offered == [s.key for s in SPECS]
    assert loader.rejected == {SECRET.key: "unproven"}


class _BatchProver(_Prover):
    """Also records the values of each batch it is asked to prove or verify."""

    def __init__(self, proven: set[str]) -> None:
        super().__init__(proven)
        self.batches: list[list[str]] = []

    async def prove(self, admin: bytes, fleet: str, values: Any) -> list[bool]:
        self.batches.append([key for key, _ in values])
        return await super().prove(admin, fleet, values)


async def test_lists_longer_than_a_batch_are_cut_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What arrived together may be more than a batch (two lists taken at once): the
    batch takes SIGNATURE_BATCH values, the rest starts the next one, in order."""
    monkeypatch.setattr(secrets_watch, "SIGNATURE_BATCH", 3)
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    prover = _BatchProver({s.key for s in SPECS})
    node = Node(tmp_path / "v")
    watch, loader = await _watch(node, values, prover, monkeypatch, lists=len(values))
    assert [len(b) for b in prover.batches] == [3, len(values) - 3]
    assert prover.asked == [key for key, _ in values]
    assert loader.offered == [s.key for s in SPECS]
    assert watch.proven_by_worker == len(SPECS)


async def test_values_proven_at_an_earlier_start_are_not_sent_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v"
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    first = Node(path)
    await _watch(first, values, _Prover({k for k, _ in values}), monkeypatch)
    first.save()
    prover = _Prover(set())
    again = Node(path)
    watch, loader = await _watch(again, values, prover, monkeypatch)
    assert prover.asked == [] and watch.proven_by_worker == 0
    assert again.verifier.values_known == len(SPECS) and again.verifier.verified == 0
    assert loader.offered == [s.key for s in SPECS]


@pytest.mark.processes
async def test_a_worker_killed_while_proving_leaves_every_value_to_the_node() -> None:
    """SIGKILL the worker with a batch of values waiting on it: the batch comes back "not
    proven" (the node checks each in full, so nothing is lost or admitted unchecked),
    and so does every later one; the node keeps running."""
    worker = SignatureWorker()
    await worker.start()
    process = worker._process
    assert process is not None
    values = [(key, raw) for _, key, raw, _ in VARIANTS] * 40  # a batch the pipe holds
    asked = asyncio.ensure_future(worker.prove(ADMIN, FLEET, values))
    await asyncio.sleep(0)  # written to the pipe, not answered yet
    process.kill()
    assert await asyncio.wait_for(asked, 10) == [False] * len(values)
    assert not worker.running
    assert await worker.prove(ADMIN, FLEET, values[:3]) == [False] * 3
    await worker.close()


@pytest.mark.processes
async def test_a_worker_answering_out_of_turn_proves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose answer has the wrong length is given up: nothing it said counts."""
    import sys

    from flashgate.bridge import signatures as module
    from tests.bridge.test_unit_signatures import _OUT_OF_TURN_WORKER

    real = asyncio.create_subprocess_exec

    async def spawn(*args: object, **kwargs: object) -> object:
        return await real(sys.executable, "-c", _OUT_OF_TURN_WORKER, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module.asyncio, "create_subprocess_exec", spawn)
    worker = SignatureWorker()
    await worker.start()
    try:
        values = [(key, raw) for _, key, raw, _ in VARIANTS]
        assert await asyncio.wait_for(worker.prove(ADMIN, FLEET, values), 5) == [False] * len(
            values
        )
        assert not worker.running
    finally:
        await worker.close()


async def _held_watch(
    node: Node, values: list[tuple[str, bytes]], checker: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[secrets_watch.SecretsWatch, _Loader, asyncio.Task[None], list[asyncio.Task[None]]]:
    """A watch started with its checks held back (as a node starts while it reads the
    fast path's wraps)."""

    async def follow_batches(kv: object, **options: object) -> Any:
        events = [Value(key, revision, raw) for revision, (key, raw) in enumerate(values, 1)]
        for at in range(0, len(events), secrets_watch.SIGNATURE_BATCH):  # as they arrive
            yield events[at : at + secrets_watch.SIGNATURE_BATCH]
        yield [InitialDone(len(values))]
        await asyncio.Event().wait()

    monkeypatch.setattr(secrets_watch, "follow_batches", follow_batches)
    loader = _Loader()
    spawned: list[asyncio.Task[None]] = []
    watch = secrets_watch.SecretsWatch(
        FLEET,
        node.store,
        loader,  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        spawn=lambda coro: spawned.append(asyncio.ensure_future(coro)),
        checker=checker,
        admin=ADMIN,
    )
    watch.checking.clear()
    run = asyncio.create_task(watch.run(SimpleNamespace()))  # type: ignore[arg-type]
    return watch, loader, run, spawned


async def test_while_checks_are_held_back_values_are_only_proved_then_admitted_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node reading its wraps holds the checks back: the worker proves every value
    meanwhile, but none is checked here (not even in full), offered or refused; once
    released, each is checked against the node's state only, in the order it came."""
    bad = ENVELOPE_CODEC.decode(envelope_bytes(SECRET))
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    values.append((SECRET.key, _encode(msgspec.structs.replace(bad, provenance=None))))
    prover = _Prover({s.key for s in SPECS})
    node = Node(tmp_path / "v")
    watch, loader, run, spawned = await _held_watch(node, values, prover, monkeypatch)
    try:
        async with asyncio.timeout(10):
            while len(prover.asked) < len(values):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert loader.offered == [] and loader.rejected == {}
        assert node.verifier.verified == 0 and watch.initial_values_taken_at is None
        watch.checking.set()
        async with asyncio.timeout(10):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)
    assert watch.proven_by_worker == len(SPECS)
    assert node.verifier.verified == 0  # every signature was the worker's to verify
    assert loader.offered == [s.key for s in SPECS]
    assert loader.rejected == {SECRET.key: "unproven"}


async def test_held_back_values_wait_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most HELD_BATCHES batches wait (and the one being admitted): the watch stops
    reading rather than hold a whole bucket's values while checks are held back; a
    worker with PROVE_AHEAD batches to prove is waited for, not replaced by a full check
    here."""
    monkeypatch.setattr(secrets_watch, "SIGNATURE_BATCH", 1)
    monkeypatch.setattr(secrets_watch, "HELD_BATCHES", 2)
    monkeypatch.setattr(secrets_watch, "PROVE_AHEAD", 1)
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    prover = _Prover({s.key for s in SPECS})
    node = Node(tmp_path / "v")
    watch, loader, run, spawned = await _held_watch(node, values, prover, monkeypatch)
    try:
        await asyncio.sleep(0.2)
        assert len(prover.asked) == 3 < len(values)
        assert node.verifier.verified == 0 and loader.offered == []
        watch.checking.set()
        async with asyncio.timeout(10):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)
    assert prover.asked == [key for key, _ in values]
    assert loader.offered == [s.key for s in SPECS] and node.verifier.verified == 0


class _SlowProver(_Prover):
    """Proves every value, each batch after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__({s.key for s in SPECS})
        self.delay = delay

    async def prove(self, admin: bytes, fleet: str, values: Any) -> list[bool]:
        await asyncio.sleep(self.delay)
        return await super().prove(admin, fleet, values)


async def test_a_batch_the_busy_worker_has_no_room_for_is_checked_in_full_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks not held back, a batch that comes while the worker has PROVE_AHEAD batches
    to prove is checked in full by the node at once (about half what it saves the
    worker); every value is still admitted, in the order it came."""
    monkeypatch.setattr(secrets_watch, "SIGNATURE_BATCH", 1)
    monkeypatch.setattr(secrets_watch, "PROVE_AHEAD", 1)
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    prover = _SlowProver(0.05)
    node = Node(tmp_path / "v")
    watch, loader, run, spawned = await _held_watch(node, values, prover, monkeypatch)
    watch.checking.set()
    try:
        async with asyncio.timeout(10):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)
    assert loader.offered == [s.key for s in SPECS]
    assert 0 < len(prover.asked) < len(values)
    assert watch.proven_by_worker == len(prover.asked)
    assert node.verifier.verified == len(values) - len(prover.asked)


async def test_values_proven_at_an_earlier_start_wait_while_checks_are_held_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values the worker is not asked about (proven at an earlier start) are not checked
    or offered while checks are held back either; released, all are, in order."""
    path = tmp_path / "v"
    values = [(s.key, envelope_bytes(s)) for s in SPECS]
    first = Node(path)
    await _watch(first, values, _Prover({k for k, _ in values}), monkeypatch)
    first.save()
    prover = _Prover(set())
    again = Node(path)
    watch, loader, run, spawned = await _held_watch(again, values, prover, monkeypatch)
    try:
        await asyncio.sleep(0.2)
        assert loader.offered == [] and watch.initial_values_taken_at is None
        watch.checking.set()
        async with asyncio.timeout(10):
            while watch.initial_values_taken_at is None:
                await asyncio.sleep(0.01)
    finally:
        run.cancel()
        for task in spawned:
            task.cancel()
        await asyncio.gather(run, *spawned, return_exceptions=True)
    assert prover.asked == [] and again.verifier.values_known == len(SPECS)
    assert loader.offered == [s.key for s in SPECS]

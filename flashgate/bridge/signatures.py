"""Signatures an envelope's proof rests on, verified in bulk on another core.

Checking an envelope on arrival (:mod:`flashgate.bridge.provenance`) ends in one or two
Ed25519 verifications (the admin's statement; a re-wrapping node's attestation). The
store checks everything else at once and hands those over as :class:`Signature` items;
the secrets watch (:mod:`flashgate.bridge.secrets_watch`) verifies them in batches
while it decodes and checks the next envelopes, then admits or refuses each envelope in
the order it arrived. :class:`SignatureWorker` verifies in a child process
(:mod:`flashgate.bridge.signature_worker`, given only public keys, signatures and signed
bytes); :class:`InlineChecker` in this process. A worker that cannot be started, dies or
answers out of turn is given up: its batches, and every later one, are verified here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from flashgate import environment
from flashgate.bridge import signature_worker
from flashgate.bridge.value_proof import VALUE_TAG
from flashgate.crypto import ed25519
from flashgate.errors import Unproven

log = structlog.get_logger("flashgate.bridge")

_HEAD = struct.Struct(">I")
_SHORT = struct.Struct(">H")
_STOP_WAIT_S = 2.0
#: The pipe to the worker holds this much (where the system lets it).
PIPE_BYTES = 1 << 20
#: Envelope values sent to the worker in one batch: at most about this many bytes.
PROVE_BATCH_BYTES = PIPE_BYTES // 2
_MAX_KEY_BYTES = 1024
#: A bucket value to prove: its key and its bytes.
Value = tuple[str, bytes]


def _text(text: str) -> bytes:
    raw = text.encode("ascii")
    return _SHORT.pack(len(raw)) + raw


@dataclass(frozen=True, slots=True)
class Signature:
    """An Ed25519 signature an envelope's proof rests on, not verified yet: verified in
    bulk (:class:`SignatureWorker`) or at once (:meth:`verify`). ``refusal``
    is the :class:`Unproven` message if it does not verify; ``remember`` is called once it
    has (its fingerprint is kept, :mod:`~flashgate.bridge.verified_statements`).
    ``in_value_proof``: part of what a proven value's fingerprint stands for (the admin's
    statement), so not remembered on its own when that fingerprint is."""

    public: bytes  # raw Ed25519 public key
    signature: bytes
    message: bytes
    refusal: str
    remember: Callable[[], None] | None = None
    in_value_proof: bool = False

    def verify(self) -> bool:
        return ed25519.verify(self.public, self.signature, self.message)


def settle(
    signatures: Sequence[Signature], valid: Sequence[bool], *, value_remembered: bool = False
) -> None:
    """Raise :class:`Unproven` for the first signature that did not verify; remember the
    ones that did (only when all did). ``value_remembered``: the value's own fingerprint
    is kept, which stands for the signatures ``in_value_proof`` (not kept beside it)."""
    for signature, ok in zip(signatures, valid, strict=True):
        if not ok:
            raise Unproven(signature.refusal)
    for signature in signatures:
        if signature.remember is not None and not (value_remembered and signature.in_value_proof):
            signature.remember()


class SignatureChecker(Protocol):
    async def start(self) -> None: ...
    async def check(self, signatures: Sequence[Signature]) -> list[bool]: ...
    async def prove(self, admin: bytes, fleet: str, values: Sequence[Value]) -> list[bool]: ...
    async def close(self) -> None: ...


class InlineChecker:
    """Verifies in this process, in the caller's turn of the event loop."""

    async def start(self) -> None:
        return None

    async def check(self, signatures: Sequence[Signature]) -> list[bool]:
        return [s.verify() for s in signatures]

    async def prove(self, admin: bytes, fleet: str, values: Sequence[Value]) -> list[bool]:
        """None proven here: the node checks each value in full, its signatures through
        :meth:`check` (proving a value here first would only do that work twice)."""
        return [False] * len(values)

    async def close(self) -> None:
        return None


class _WorkerGone(Exception):
    pass


def _widen_pipe(stream: asyncio.StreamWriter | None) -> None:
    """Let a whole batch of values wait in the pipe to the worker (Linux: up to
    ``/proc/sys/fs/pipe-max-size``, 1 MiB by default). With the default 64 KiB, the
    worker, done with one batch, waited for this process's event loop to refill the pipe
    many times over for the next (the loop busy checking values meanwhile): it sat idle
    about a third of a 10k-secret start."""
    if stream is None or not hasattr(fcntl, "F_SETPIPE_SZ"):
        return
    pipe = stream.transport.get_extra_info("pipe")
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class SignatureWorker:
    """A child process verifying batches in order (module docs). :meth:`check` falls back
    to this process when the worker is not running."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: deque[tuple[asyncio.Future[bytes], int]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._given_up: list[asyncio.subprocess.Process] = []  # killed: reaped by close()
        self.batches = 0  # verified by the worker
        self.inline = 0  # batches verified here (no worker)

    @property
    def running(self) -> bool:
        return self._process is not None

    async def start(self) -> None:
        """Start the worker (once: a worker already running is kept)."""
        if self._process is not None:
            return
        env = environment.only(environment.FOR_A_PYTHON_HELPER)  # never a passphrase
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flashgate.bridge.signature_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            log.warning("signature worker not started; verifying in the node", error=str(exc))
            return
        _widen_pipe(self._process.stdin)
        self._reader = asyncio.create_task(self._read(self._process))

    async def check(self, signatures: Sequence[Signature]) -> list[bool]:
        if not signatures:
            return []
        body = b"".join(
            s.public + s.signature + _HEAD.pack(len(s.message)) + s.message for s in signatures
        )
        answer = await self._ask(signature_worker.SIGNATURES, body, len(signatures))
        if answer is None:
            self.inline += 1
            return [s.verify() for s in signatures]
        return answer

    async def prove(self, admin: bytes, fleet: str, values: Sequence[Value]) -> list[bool]:
        """Which of ``values`` (bucket key, value) are proven (their stateless part,
        :func:`~flashgate.bridge.value_proof.value_proven`, under the raw admin key
        ``admin``), sent in batches of about :data:`PROVE_BATCH_BYTES`. A value not proven
        (or not sent: no worker, or a key that is not short ASCII) is checked in full by
        the node itself."""
        proven = [False] * len(values)
        if self._process is None or not values:
            return proven
        head = admin + _text(fleet) + _SHORT.pack(len(VALUE_TAG)) + VALUE_TAG
        chunks: list[tuple[list[int], list[bytes]]] = [([], [])]
        size = 0
        for i, (key, raw) in enumerate(values):
            if not key.isascii() or len(key) > _MAX_KEY_BYTES:
                continue
            if size >= PROVE_BATCH_BYTES:
                chunks.append(([], []))
                size = 0
            item = _text(key) + _HEAD.pack(len(raw)) + raw
            chunks[-1][0].append(i)
            chunks[-1][1].append(item)
            size += len(item)
        for sent, items in chunks:
            if not items:
                continue
            answer = await self._ask(signature_worker.VALUES, head + b"".join(items), len(items))
            if answer is None:
                break
            for at, ok in zip(sent, answer, strict=True):
                proven[at] = ok
        return proven

    async def _ask(self, kind: int, body: bytes, count: int) -> list[bool] | None:
        """One batch to the worker and its answer; None when the worker is not running
        or stops answering (given up)."""
        process = self._process
        if process is None or process.stdin is None:
            return None
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.append((future, count))
        try:
            process.stdin.write(_HEAD.pack(len(body) + 1) + bytes([kind]) + body)
            await process.stdin.drain()
            answer = await future
        except asyncio.CancelledError:
            future.cancel()  # its answer (or the worker's end) is read by no one
            raise
        except (_WorkerGone, ConnectionError, RuntimeError):
            self._give_up("the signature worker stopped answering")
            return None
        self.batches += 1
        return [byte == 1 for byte in answer]

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                (count,) = _HEAD.unpack(await process.stdout.readexactly(_HEAD.size))
                answer = await process.stdout.readexactly(count)
                future, expected = self._waiting.popleft()
                if count != expected or answer.translate(None, b"\x00\x01"):
                    if not future.done():  # verified here, as every batch from now on
                        future.set_exception(_WorkerGone())
                    raise ValueError("answer out of turn")
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ValueError, IndexError, ConnectionError):
            self._give_up("the signature worker stopped answering")

    def _give_up(self, why: str) -> None:
        """Verify here from now on: every batch waiting on the worker is verified again."""
        process, self._process = self._process, None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(_WorkerGone())
        if process is not None:
            log.warning(why + "; verifying in the node")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            self._given_up.append(process)

    async def close(self) -> None:
        """Stop the worker (it exits when its input closes)."""
        process, self._process = self._process, None
        while self._given_up:  # killed already: reap it, close its pipes
            dead = self._given_up.pop()
            if dead.stdin is not None:
                dead.stdin.close()
            await dead.wait()
        if process is None:
            return
        log.info("signature worker stopped", batches=self.batches, verified_here=self.inline)
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _STOP_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(_WorkerGone())

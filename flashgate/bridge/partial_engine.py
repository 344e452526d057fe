"""Partial decryptions on every core: the thread pool a Bridge Node computes partials on.

The arithmetic (and the ciphertext check) is :mod:`flashgate.crypto.threshold.partial`'s;
the pool lives here, at the edge that uses it, so the crypto package stays pure.

``gmpy2.powmod_sec`` holds the GIL by default. gmpy2 >= 2.2 can release it around a
computation (``context(allow_release_gil=True)``), so a thread pool scales across cores
without copying the key share into other processes (a process pool would have to pickle
s_i through a pipe into each worker). ``bench/crypto.py`` measures both; threads scale as
well as processes here. Proofs (:meth:`PartialEngine.prove`) run on the same pool with
the GIL released too. The engine is compute only: no I/O, no event loop; an asyncio
caller wraps :meth:`PartialEngine.submit` with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import gmpy2

from flashgate.crypto.threshold.keys import KeyShare, ThresholdPublicKey
from flashgate.crypto.threshold.partial import Proof, check_ciphertext, prove


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _partials_chunk(exponent: gmpy2.mpz, n: gmpy2.mpz, cs: Sequence[int]) -> list[int]:
    with gmpy2.context(allow_release_gil=True):
        return [int(gmpy2.powmod_sec(c, exponent, n)) for c in cs]


def _prove_releasing(share: KeyShare, public: ThresholdPublicKey, c: int, x: int) -> Proof:
    """The proof's secret-exponent powmods release the GIL (the arithmetic is crypto's)."""
    with gmpy2.context(allow_release_gil=True):
        return prove(share, public, c, x)


class PartialEngine:
    """Computes x_i = c^(2·Delta·s_i) for batches of ciphertexts on a pool of threads."""

    def __init__(
        self, share: KeyShare, public: ThresholdPublicKey, workers: int | None = None
    ) -> None:
        self._share = share
        self._public = public
        self._n = gmpy2.mpz(public.modulus)
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fg-partial")

    @property
    def index(self) -> int:
        return self._share.index

    def submit(self, cs: Sequence[int]) -> Future[list[int]]:
        """Start computing the partials of ``cs``; the future yields them in order."""
        for c in cs:
            check_ciphertext(self._public, c)
        cs = list(cs)
        if not cs:
            done: Future[list[int]] = Future()
            done.set_result([])
            return done
        chunks = _split(cs, self.workers)
        parts = [
            self._pool.submit(_partials_chunk, self._share.partial_exponent, self._n, chunk)
            for chunk in chunks
        ]
        result: Future[list[int]] = Future()
        remaining = len(parts)
        lock = threading.Lock()

        def _done(_: Future[list[int]]) -> None:
            nonlocal remaining
            with lock:  # callbacks run in worker threads (or here, if already done)
                remaining -= 1
                if remaining:
                    return
            try:
                result.set_result([x for part in parts for x in part.result()])
            except BaseException as exc:  # propagate a worker failure to the caller
                result.set_exception(exc)

        for part in parts:
            part.add_done_callback(_done)
        return result

    def prove(self, c: int, x: int) -> Future[Proof]:
        """Start proving that ``x`` is this share's partial of ``c``, on the pool, the GIL
        released during the powmods (a proof must not stall the caller's event loop)."""
        return self._pool.submit(_prove_releasing, self._share, self._public, c, x)

    def partials(self, cs: Sequence[int]) -> list[int]:
        """Blocking form of :meth:`submit`."""
        return self.submit(cs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PartialEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PartialEngine(index={self.index}, workers={self.workers})"


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out

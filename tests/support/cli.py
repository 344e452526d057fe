"""``flashgate`` for tests, two ways:

* :func:`run_cli` (the default): in this process, through click's :class:`CliRunner`
  isolation around :func:`flashgate.cli.main.main` (the same entry point the console script
  calls): stdin, stdout, stderr, the environment and the working directory are the run's
  own. No interpreter start-up and no imports: about 2 s less per command.
* :func:`run_cli_process`: ``python -m flashgate.cli.main`` as a real subprocess, for the
  few smoke tests that need a process of its own (a terminal, signals, the printed commands
  run by /bin/sh, ``dev up``). Tier ``processes``.

In-process runs seal files at :data:`~tests.support.material.FAST_KDF` where the command
would use the default Argon2 cost (``kdf=`` says otherwise; ``kdf=None`` keeps the product's
default): the CLI tests are not about the KDF's cost, and opening a file reads the cost it
was sealed with. A subprocess always seals at the product's default cost.

Also here: the CLI fleets (``fleet init`` with an INSECURE 1024-bit key) and the assertion
every refusal must pass (:func:`assert_error`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog
from click.testing import CliRunner

from flashgate import logs
from flashgate.bridge import hardening
from flashgate.cli.main import main
from flashgate.crypto import seal as seal_module
from flashgate.crypto.rng import SYSTEM_RNG, Rng
from flashgate.crypto.seal import DEFAULT_KDF, KdfParams
from flashgate.environment import PASSPHRASE_ENV
from tests.support.material import FAST_KDF, TEST_PASSPHRASE

#: Generous bound on one subprocess run: a 1024-bit safe-prime search is usually well under
#: a second.
TIMEOUT = 120
#: Flags that keep ``fleet init`` fast and silent.
FAST_INIT = ("--insecure-test-key", "--key-bits", "1024", "--quiet")

#: Sentinel for ``run_cli(..., passphrase=UNSET)``: FLASHGATE_PASSPHRASE is not set at all.
UNSET = object()

#: Every byte value (so not UTF-8), then some text.
BINARY_SECRET = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28\n"


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def __str__(self) -> str:  # shown by pytest when an assertion about a run fails
        return (
            f"flashgate {' '.join(self.args)}\n  exit {self.returncode}\n"
            f"  stdout {self.stdout[:300]!r}\n  stderr {self.err[:2000]}"
        )


Runner = Callable[..., Result]
Env = Mapping[str, str | None]


def without_flashgate_env(**values: str) -> dict[str, str | None]:
    """Overrides for :func:`run_cli`'s ``env``: every ``FLASHGATE_*`` variable of this
    process unset (as in a new shell), then ``values``."""
    cleared: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FLASHGATE_")}
    return cleared | values


# --- in process ------------------------------------------------------------------------------

#: One in-process run at a time: a run swaps process-wide state (sys.std*, os.environ, the
#: working directory), and tests run commands from worker threads (``asyncio.to_thread``).
_IN_PROCESS = threading.Lock()


def run_cli(
    *args: str | os.PathLike[str],
    input: bytes = b"",
    passphrase: object = TEST_PASSPHRASE,
    cwd: Path | None = None,
    env: Env | None = None,
    kdf: KdfParams | None = FAST_KDF,
) -> Result:
    """Run ``flashgate ARGS`` in this process with ``input`` on stdin.

    The environment is this process's, with ``FLASHGATE_PASSPHRASE`` set to ``passphrase``
    (or unset: :data:`UNSET`) and ``env`` applied on top (a value of None unsets). ``kdf``
    replaces the default Argon2 cost of what the command seals (None: the default cost)."""
    str_args = tuple(str(a) for a in args)
    overrides: dict[str, str | None] = {
        PASSPHRASE_ENV: None if passphrase is UNSET else str(passphrase)
    }
    overrides.update(env or {})
    with _IN_PROCESS, contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        if kdf is not None:
            stack.enter_context(default_kdf_replaced(kdf))
        stack.enter_context(_logs_of_this_run())
        stack.enter_context(this_process_not_hardened())
        out, err, _ = stack.enter_context(CliRunner().isolation(input=input, env=overrides))
        try:
            status = main(list(str_args))
        except SystemExit as exc:  # not expected: main() returns its status
            status = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Result(str_args, status, out.getvalue(), err.getvalue())


_REAL_HARDEN = hardening.harden


@contextlib.contextmanager
def this_process_not_hardened() -> Iterator[None]:
    """Commands harden their process first (no core dumps, not dumpable, memory locked):
    in process, that would be the test runner itself. While a command runs here, ``harden``
    only reports; a test that records ``harden`` itself keeps its own replacement."""
    if hardening.harden is not _REAL_HARDEN:
        yield
        return

    def report_only(*, lock_memory: bool = True) -> hardening.HardeningReport:
        return hardening.HardeningReport(
            core_dumps_disabled=True, not_dumpable=True, memory_locked=lock_memory, notes=()
        )

    hardening.harden = report_only  # type: ignore[assignment]
    try:
        yield
    finally:
        hardening.harden = _REAL_HARDEN


@contextlib.contextmanager
def default_kdf_replaced(kdf: KdfParams) -> Iterator[None]:
    """While it lasts, in this process, what is sealed at the default Argon2 cost
    (:data:`~flashgate.crypto.seal.DEFAULT_KDF`) is sealed at ``kdf``. A test-side patch of
    :func:`flashgate.crypto.seal.seal` (every sealing call goes through it): the product
    has no such knob. Explicit costs are left alone."""
    real = seal_module.seal

    def seal(
        data: bytes,
        passphrase: str,
        purpose: str,
        *,
        params: KdfParams = DEFAULT_KDF,
        rng: Rng = SYSTEM_RNG,
    ) -> bytes:
        cost = kdf if params == DEFAULT_KDF else params
        return real(data, passphrase, purpose, params=cost, rng=rng)

    seal_module.seal = seal
    try:
        yield
    finally:
        seal_module.seal = real


class _ByThread:
    """A file for structlog's PrintLogger during an in-process run: lines logged by the
    command's thread go to the run's stderr (what the command would print), lines logged by
    any other thread (a backend in the test's event loop) to where they went before."""

    def __init__(self, elsewhere: IO[str]) -> None:
        self._thread = threading.get_ident()
        self._elsewhere = elsewhere

    def _target(self) -> IO[str]:
        return sys.stderr if threading.get_ident() == self._thread else self._elsewhere

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()


@contextlib.contextmanager
def _logs_of_this_run() -> Iterator[None]:
    """The command configures logging as it does in its own process (:func:`logs.configure`,
    called by the ``flashgate`` group), but into the run's stderr, without caching loggers
    that would keep writing there; afterwards structlog is as it was."""
    saved = structlog.get_config() if structlog.is_configured() else None
    route = _ByThread(sys.stderr)
    real = logs.configure

    def configure(**kwargs: object) -> None:
        real(**kwargs)  # type: ignore[arg-type]
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(file=route),  # type: ignore[arg-type]
            cache_logger_on_first_use=False,
        )

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=route),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    logs.configure = configure
    try:
        yield
    finally:
        logs.configure = real
        if saved is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved)


# --- as a subprocess -------------------------------------------------------------------------


def flashgate_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The command line that runs ``flashgate ARGS`` from this checkout."""
    return [sys.executable, "-m", "flashgate.cli.main", *(str(a) for a in args)]


def subprocess_env(passphrase: object = TEST_PASSPHRASE, env: Env | None = None) -> dict[str, str]:
    """This process's environment with FLASHGATE_PASSPHRASE set to ``passphrase`` (or
    unset: :data:`UNSET`) and ``env`` on top (a value of None unsets)."""
    full = dict(os.environ)
    full.pop(PASSPHRASE_ENV, None)
    if passphrase is not UNSET:
        full[PASSPHRASE_ENV] = str(passphrase)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return full


def run_cli_process(
    *args: str | os.PathLike[str],
    input: bytes = b"",
    passphrase: object = TEST_PASSPHRASE,
    cwd: Path | None = None,
    env: Env | None = None,
    timeout: float = TIMEOUT,
) -> Result:
    """Run ``python -m flashgate.cli.main ARGS`` as a subprocess with ``input`` on stdin
    (same arguments as :func:`run_cli`; what it seals is sealed at the default cost)."""
    proc = subprocess.run(
        flashgate_argv(*args),
        input=input,
        capture_output=True,
        env=subprocess_env(passphrase, env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Result(tuple(str(a) for a in args), proc.returncode, proc.stdout, proc.stderr)


# --- what every refusal looks like ----------------------------------------------------------


def assert_error(result: Result, *words: str) -> str:
    """A deliberate refusal: exit 1, exactly one stderr line ``flashgate: error: ...``
    naming every one of ``words`` (case-insensitive), no traceback, empty stdout."""
    err = result.err
    assert result.returncode == 1, str(result)
    assert "Traceback" not in err, str(result)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"not one line:\n{result}"
    line = lines[0]
    assert line.startswith("flashgate: error: "), str(result)
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    assert result.stdout == b"", str(result)
    assert TEST_PASSPHRASE not in err
    return line


# --- fleets made by `fleet init` --------------------------------------------------------------


@dataclass
class Fleet:
    name: str
    dir: Path
    nodes: int
    threshold: int
    init: Result
    node_ids: list[str] = field(default_factory=list)

    def bundle(self, node: int | str) -> Path:
        node_id = f"node-{node}" if isinstance(node, int) else node
        return self.dir / "nodes" / f"{node_id}.bundle"

    @property
    def bundles(self) -> list[Path]:
        return [self.bundle(n) for n in self.node_ids]

    def encrypt(
        self,
        plaintext: bytes,
        *,
        repo: str = "app",
        name: str = "db-password",
        kind: str = "generic",
        version: int | None = None,
    ) -> bytes:
        args: list[str | os.PathLike[str]] = ["encrypt", "--fleet-dir", self.dir]
        args += ["--repo", repo, "--name", name, "--kind", kind]
        if version is not None:
            args += ["--version", str(version)]
        result = run_cli(*args, input=plaintext)
        assert result.returncode == 0, str(result)
        return result.stdout

    def recover(self, token: bytes, bundles: Sequence[Path], **kwargs: object) -> Result:
        args: list[str | os.PathLike[str]] = ["recover", "--fleet-dir", self.dir]
        for path in bundles:
            args += ["--bundle", path]
        return run_cli(*args, input=token, **kwargs)  # type: ignore[arg-type]


def init_fleet(base: Path, name: str, nodes: int, threshold: int) -> Fleet:
    """``flashgate fleet init`` (in process: bundles sealed at FAST_KDF) into ``base/NAME``."""
    out = base / name
    result = run_cli(
        "fleet",
        "init",
        "--fleet",
        name,
        "--nodes",
        str(nodes),
        "--threshold",
        str(threshold),
        *FAST_INIT,
        "--out",
        out,
        cwd=base,
    )
    assert result.returncode == 0, str(result)
    return Fleet(
        name=name,
        dir=out,
        nodes=nodes,
        threshold=threshold,
        init=result,
        node_ids=[f"node-{i}" for i in range(1, nodes + 1)],
    )

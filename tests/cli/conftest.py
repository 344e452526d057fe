"""Fixtures for the CLI tests: the ``flashgate`` command run as a real subprocess.

One 3-of-5 fleet ("demo") and one 2-of-3 fleet ("other") are dealt per session with
``fleet init`` (1024-bit INSECURE test keys) and shared by every test; tests that alter a
file copy it first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import TEST_PASSPHRASE

#: Generous: a 1024-bit safe-prime search is usually well under a second.
TIMEOUT = 120
#: Flags that keep ``fleet init`` fast and silent.
FAST_INIT = ("--insecure-test-key", "--key-bits", "1024", "--quiet")

#: Sentinel for ``run(..., passphrase=UNSET)``: remove FLASHGATE_PASSPHRASE from the env.
UNSET = object()


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


def run_cli(
    *args: str | os.PathLike[str],
    input: bytes = b"",
    passphrase: object = TEST_PASSPHRASE,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``python -m flashgate.cli.main ARGS`` with ``input`` on stdin."""
    full_env = dict(os.environ)
    full_env.pop("FLASHGATE_PASSPHRASE", None)
    if passphrase is not UNSET:
        full_env["FLASHGATE_PASSPHRASE"] = str(passphrase)
    if env:
        full_env.update(env)
    str_args = tuple(str(a) for a in args)
    proc = subprocess.run(
        [sys.executable, "-m", "flashgate.cli.main", *str_args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=TIMEOUT,
        check=False,
    )
    return Result(str_args, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def run() -> Runner:
    return run_cli


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
        args = ["encrypt", "--fleet-dir", self.dir, "--repo", repo, "--name", name, "--kind", kind]
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


@pytest.fixture(scope="session")
def fleets_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleets")


@pytest.fixture(scope="session")
def demo(fleets_base: Path) -> Fleet:
    """The main fleet: 'demo', 3-of-5, nodes node-1..node-5."""
    return init_fleet(fleets_base, "demo", nodes=5, threshold=3)


@pytest.fixture(scope="session")
def other(fleets_base: Path) -> Fleet:
    """A second, unrelated fleet: 'other', 2-of-3."""
    return init_fleet(fleets_base, "other", nodes=3, threshold=2)


#: Every byte value (so not UTF-8), then some text.
BINARY_SECRET = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28\n"


@pytest.fixture(scope="session")
def demo_token(demo: Fleet) -> bytes:
    """BINARY_SECRET encrypted for demo as app/db-password (generic) v3."""
    return demo.encrypt(BINARY_SECRET, version=3)


@pytest.fixture(scope="session")
def other_token(other: Fleet) -> bytes:
    """A JWE encrypted for the 'other' fleet."""
    return other.encrypt(b"belongs to other", repo="app", name="api-key", kind="generic")
